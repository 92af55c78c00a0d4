"""
Topology as data: exchanges, queues and bindings are small immutable values.

Give them to L{txmsg.connection.Connection.declare}: they are declared at once and
again after every reconnect.  A server-named queue (L{Queue} with no name) gets a
new name from the broker on each connection, and bindings that refer to it follow.

Queues default to what RabbitMQ 4 accepts and a RabbitMQ expert would choose: a
named queue is durable (shared queues outlive a broker restart), a server-named
one is exclusive (a process's own, gone with its connection).  A transient
non-exclusive queue is only declared when asked for exactly
(C{Queue(name, durable=False)}); RabbitMQ 4.3 as upstream ships refuses it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet.defer import Deferred

from txmsg.connection import Channel, QueueInfo

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")


@dataclass(frozen=True)
class Exchange:
    """
    An exchange: C{type} is direct, fanout, topic, headers or a plugin's type.
    """

    name: str
    type: str = "direct"
    durable: bool = False
    auto_delete: bool = False
    internal: bool = False
    passive: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.type not in EXCHANGE_TYPES and not self.type.startswith("x-"):
            # the broker answers an unknown type by closing the whole connection (503)
            raise ValueError(
                f"unknown exchange type {self.type!r}: use one of {', '.join(EXCHANGE_TYPES)}, "
                "or a plugin's x-... type"
            )
        if not self.name or self.name.startswith("amq."):
            if not self.passive:
                raise ValueError(
                    f"cannot declare exchange {self.name!r}: the default exchange and "
                    "amq.* names are the broker's (use passive=True to check one exists)"
                )

    def declare(self, channel: Channel, names: dict[Any, str]) -> Deferred[Any]:
        """
        Declare this exchange on C{channel}; fires with this exchange.
        """
        return channel.exchange_declare(
            self.name,
            self.type,
            passive=self.passive,
            durable=self.durable,
            auto_delete=self.auto_delete,
            internal=self.internal,
            arguments=dict(self.arguments),
        ).addCallback(lambda _: self)

    def delete(self, channel: Channel, if_unused: bool = False) -> Deferred[Any]:
        """
        Delete this exchange (only if it has no bindings, with C{if_unused}).
        """
        return channel.exchange_delete(self.name, if_unused=if_unused)


@dataclass(frozen=True)
class Queue:
    """
    A queue.  With no name, the broker names it (and names it anew after each
    reconnect).

    @ivar durable: whether it survives a broker restart; by default a queue
        is durable unless it is exclusive.
    @ivar exclusive: whether only this connection may use it (and it goes
        with the connection); by default a server-named queue is exclusive
        and a named one is not.
    @ivar adopt: if the queue already exists with other flags or arguments,
        use it as it is (a passive declare) instead of failing with 406
        PRECONDITION_FAILED; it is declared with these flags only when
        missing.  For a queue that other programs declare their own way.
    """

    name: str = ""
    durable: bool | None = None
    exclusive: bool | None = None
    auto_delete: bool = False
    passive: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: tells server-named queues apart (two server-named queues are two queues)
    token: str = field(default="", repr=False)
    adopt: bool = False

    def __post_init__(self) -> None:
        if self.exclusive is None:
            object.__setattr__(self, "exclusive", not self.name)
        if self.durable is None:
            object.__setattr__(self, "durable", not self.exclusive)
        if not self.name and not self.token:
            object.__setattr__(self, "token", uuid.uuid4().hex)

    @classmethod
    def quorum(cls, name: str, **arguments: Any) -> Queue:
        """
        A durable quorum queue (replicated across a cluster's nodes).
        """
        args = {"x-queue-type": "quorum"}
        args.update({k.replace("_", "-"): v for k, v in arguments.items()})
        return cls(name, durable=True, arguments=args)

    @property
    def server_named(self) -> bool:
        """
        Whether the broker names this queue (it has no name of its own).
        """
        return not self.name

    def resolve(self, names: Mapping[Any, str]) -> str:
        """
        The name of this queue on the current connection.
        """
        if self.name:
            return self.name
        try:
            return names[self]
        except KeyError:
            raise LookupError("this server-named queue has not been declared yet") from None

    def if_inequivalent(self) -> Queue | None:
        """
        What to declare instead when the broker says this queue exists with
        other properties (406): with C{adopt}, a passive check that it exists;
        else None (the declaration fails).
        """
        return replace(self, passive=True, adopt=False) if self.adopt and not self.passive else None

    def describe(self) -> str:
        """
        The queue and its flags, for messages: C{queue 'hello' (durable, classic)}.
        """
        flags = ["durable" if self.durable else "transient"]
        if self.exclusive:
            flags.append("exclusive")
        if self.auto_delete:
            flags.append("auto-delete")
        kind = self.arguments.get("x-queue-type")
        if kind:
            flags.append(str(kind))
        name = repr(self.name) if self.name else "(server-named)"
        return f"queue {name} ({', '.join(flags)})"

    def delete(self, channel: Channel, if_unused: bool = False, if_empty: bool = False) -> Deferred[Any]:
        """
        Delete this queue (by its name; a server-named queue has none to give).
        """
        return channel.queue_delete(self.name, if_unused=if_unused, if_empty=if_empty)

    def declare(self, channel: Channel, names: dict[Any, str]) -> Deferred[QueueInfo]:
        """
        Declare this queue on C{channel}; fires with a L{QueueInfo}, and records its name in C{names}.
        """

        def declared(result: dict[str, Any]) -> QueueInfo:
            names[self] = result["queue"]
            return QueueInfo(result["queue"], result["message_count"], result["consumer_count"])

        return channel.queue_declare(
            self.name,
            passive=self.passive,
            durable=bool(self.durable),
            exclusive=bool(self.exclusive),
            auto_delete=self.auto_delete,
            arguments=dict(self.arguments),
        ).addCallback(declared)


def _name(thing: Queue | Exchange | str, names: Mapping[Any, str]) -> str:
    if isinstance(thing, Queue):
        return thing.resolve(names)
    if isinstance(thing, Exchange):
        return thing.name
    return thing


@dataclass(frozen=True)
class Binding:
    """
    Route messages from C{exchange} to C{queue} by C{routing_key} (or, for a
    headers exchange, by C{arguments} with C{x-match}).
    """

    queue: Queue | str
    exchange: Exchange | str
    routing_key: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def headers(
        cls, queue: Queue | str, exchange: Exchange | str, match: str = "all", **headers: Any
    ) -> Binding:
        """
        A headers-exchange binding: C{match} is C{"all"} or C{"any"}.
        """
        if match not in ("all", "any"):
            raise ValueError("match must be 'all' or 'any'")
        return cls(queue, exchange, "", {"x-match": match, **headers})

    def declare(self, channel: Channel, names: dict[Any, str]) -> Deferred[Any]:
        """
        Bind on C{channel}, following a server-named queue to its name on this connection.
        """
        return channel.queue_bind(
            _name(self.queue, names),
            _name(self.exchange, names),
            self.routing_key,
            dict(self.arguments),
        ).addCallback(lambda _: self)


@dataclass(frozen=True)
class ExchangeBinding:
    """
    Route messages from exchange C{source} to exchange C{destination} (RabbitMQ's
    exchange-to-exchange bindings).
    """

    destination: Exchange | str
    source: Exchange | str
    routing_key: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def declare(self, channel: Channel, names: dict[Any, str]) -> Deferred[Any]:
        """
        Bind the exchanges on C{channel}.
        """
        return channel.exchange_bind(
            _name(self.destination, names),
            _name(self.source, names),
            self.routing_key,
            dict(self.arguments),
        ).addCallback(lambda _: self)
