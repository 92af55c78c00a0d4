"""
The state and the rules of the in-memory broker: exchanges, queues, bindings,
routing, consumers, deliveries and acknowledgements, as RabbitMQ applies them.
It knows nothing of frames; L{txmsg.testing._server} speaks AMQP for it.
"""

from __future__ import annotations

import datetime as _dt
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from txmsg.testing._versions import DEFAULT_DELIVERY_LIMIT, MAX_MESSAGE_SIZE, TRANSIENT_QUEUE_REFUSED

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")


class Refusal(Exception):
    """
    The broker refuses a method with AMQP reply C{code} and C{text}.
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class ChannelError(Refusal):
    """
    A soft error: the broker closes the channel.
    """


class ConnectionError(Refusal):
    """
    A hard error: the broker closes the connection.
    """


class Owner(Protocol):
    """
    What the broker needs of a channel: to deliver, to cancel a consumer.
    """

    connection_id: int

    def deliver(self, consumer: Consumer, message: Stored) -> None: ...

    def cancelled(self, consumer: Consumer) -> None: ...


@dataclass
class Stored:
    """
    A message in a queue.
    """

    exchange: str
    routing_key: str
    properties: dict[str, Any]
    body: bytes
    queue: str = ""
    redelivered: bool = False
    #: clock time after which it expires (queue TTL or per-message expiration)
    expires_at: float | None = None
    #: times delivered so far, given back (any way), and given back as failed
    #: (a reject, or a consumer lost with it unacked): quorum queues count them
    acquired: int = 0
    returned: int = 0
    failed: int = 0


@dataclass
class Queue:
    name: str
    durable: bool
    exclusive_to: int | None
    auto_delete: bool
    arguments: dict[str, Any]
    messages: deque[Stored] = field(default_factory=deque)
    consumers: list[Consumer] = field(default_factory=list)
    had_consumers: bool = False

    @property
    def quorum(self) -> bool:
        return self.arguments.get("x-queue-type") == "quorum"


@dataclass
class Binding:
    destination: str
    key: str
    arguments: dict[str, Any] = field(default_factory=dict)
    #: the destination is an exchange (exchange.bind), not a queue
    to_exchange: bool = False


@dataclass
class Exchange:
    name: str
    type: str
    durable: bool
    auto_delete: bool = False
    bindings: list[Binding] = field(default_factory=list)


@dataclass(eq=False)
class Consumer:
    tag: str
    queue: Queue
    owner: Owner
    no_ack: bool
    prefetch: int
    unacked: int = 0

    def has_room(self) -> bool:
        return self.no_ack or self.prefetch == 0 or self.unacked < self.prefetch


def topic_matches(pattern: str, key: str) -> bool:
    """
    Whether a topic binding's C{pattern} (words, C{*} one word, C{#} zero or
    more) matches routing C{key}.
    """

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        if not k:
            return False
        return (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


def headers_match(arguments: dict[str, Any], headers: dict[str, Any]) -> bool:
    """
    Whether a headers-exchange binding's C{arguments} (C{x-match} all or any,
    and the pairs to look for; a void value only asks for the key) match a
    message's C{headers}.
    """
    pairs = {k: v for k, v in arguments.items() if not k.startswith("x-")}
    if not pairs:
        return True

    def matches(key: str, value: Any) -> bool:
        return key in headers and (value is None or headers[key] == value)

    if arguments.get("x-match", "all") == "any":
        return any(matches(k, v) for k, v in pairs.items())
    return all(matches(k, v) for k, v in pairs.items())


def _flag(value: Any) -> str:
    return "true" if value else "false"


class MemoryBrokerState:
    """
    One virtual host's exchanges and queues.
    """

    def __init__(
        self,
        clock: Any,
        vhost: str = "/",
        version: tuple[int, int] = (4, 3),
        max_message_size: int | None = None,
    ) -> None:
        self.clock = clock
        self.vhost = vhost
        #: the RabbitMQ (major, minor) whose behaviour is imitated where versions differ
        self.version = version
        self.max_message_size = MAX_MESSAGE_SIZE[version[0]] if max_message_size is None else max_message_size
        #: RabbitMQ 4.3 as upstream ships it refuses transient non-exclusive queues
        self.deny_transient_queues = version >= (4, 0)
        self.exchanges: dict[str, Exchange] = {
            "": Exchange("", "direct", True),
            "amq.direct": Exchange("amq.direct", "direct", True),
            "amq.fanout": Exchange("amq.fanout", "fanout", True),
            "amq.topic": Exchange("amq.topic", "topic", True),
            "amq.headers": Exchange("amq.headers", "headers", True),
            "amq.match": Exchange("amq.match", "headers", True),
        }
        self.queues: dict[str, Queue] = {}
        #: direct reply-to: token -> the channel consuming its replies
        self.reply_channels: dict[str, Any] = {}
        self._names = itertools.count(1)

    # --- exchanges ----------------------------------------------------------

    def declare_exchange(
        self, name: str, type_: str, durable: bool, auto_delete: bool, passive: bool
    ) -> None:
        existing = self.exchanges.get(name)
        if passive:
            if existing is None:
                raise ChannelError(404, f"NOT_FOUND - no exchange '{name}' in vhost '{self.vhost}'")
            return
        if name.startswith("amq.") and existing is None:
            raise ChannelError(
                403, f"ACCESS_REFUSED - exchange name '{name}' contains reserved prefix 'amq.*'"
            )
        if type_ not in EXCHANGE_TYPES:
            raise ConnectionError(503, f"COMMAND_INVALID - invalid exchange type '{type_}'")
        if existing is None:
            self.exchanges[name] = Exchange(name, type_, durable, auto_delete)
            return
        if existing.type != type_:
            raise ChannelError(
                406,
                f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{name}' in vhost "
                f"'{self.vhost}': received '{type_}' but current is '{existing.type}'",
            )
        if existing.durable != durable:
            raise ChannelError(
                406,
                f"PRECONDITION_FAILED - inequivalent arg 'durable' for exchange '{name}' in vhost "
                f"'{self.vhost}': received '{_flag(durable)}' but current is '{_flag(existing.durable)}'",
            )

    def delete_exchange(self, name: str) -> None:
        if name in self.exchanges and name != "" and not name.startswith("amq."):
            del self.exchanges[name]
            for exchange in self.exchanges.values():
                exchange.bindings = [
                    b for b in exchange.bindings if not (b.to_exchange and b.destination == name)
                ]

    def exchange(self, name: str) -> Exchange:
        found = self.exchanges.get(name)
        if found is None:
            raise ChannelError(404, f"NOT_FOUND - no exchange '{name}' in vhost '{self.vhost}'")
        return found

    # --- queues -------------------------------------------------------------

    def declare_queue(
        self,
        name: str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
        passive: bool,
        connection_id: int,
    ) -> Queue:
        if not name and not passive:
            name = f"amq.gen-{next(self._names):022d}"
        existing = self.queues.get(name)
        if passive:
            if existing is None:
                raise ChannelError(404, f"NOT_FOUND - no queue '{name}' in vhost '{self.vhost}'")
            self._check_exclusive(existing, connection_id)
            return existing
        if name.startswith("amq.") and existing is None and not name.startswith("amq.gen-"):
            raise ChannelError(403, f"ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'")
        if existing is None:
            if not durable and not exclusive and self.deny_transient_queues:
                raise ConnectionError(541, TRANSIENT_QUEUE_REFUSED)
            if arguments.get("x-queue-type") == "quorum":
                for wrong, prop in (
                    (not durable, "non-durable"),
                    (exclusive, "exclusive-owner"),
                    (auto_delete, "auto-delete"),
                ):
                    if wrong:
                        raise ChannelError(
                            406,
                            f"PRECONDITION_FAILED - invalid property '{prop}' for queue '{name}' in "
                            f"vhost '{self.vhost}'",
                        )
            queue = Queue(name, durable, connection_id if exclusive else None, auto_delete, dict(arguments))
            self.queues[name] = queue
            return queue
        self._check_exclusive(existing, connection_id)
        for arg, wanted, current in (
            ("durable", durable, existing.durable),
            ("exclusive", exclusive, existing.exclusive_to is not None),
            ("auto_delete", auto_delete, existing.auto_delete),
        ):
            if wanted != current:
                raise ChannelError(
                    406,
                    f"PRECONDITION_FAILED - inequivalent arg '{arg}' for queue '{name}' in vhost "
                    f"'{self.vhost}': received '{_flag(wanted)}' but current is '{_flag(current)}'",
                )
        for key in set(arguments) | set(existing.arguments):
            if arguments.get(key) != existing.arguments.get(key):
                raise ChannelError(
                    406,
                    f"PRECONDITION_FAILED - inequivalent arg '{key}' for queue '{name}' in vhost "
                    f"'{self.vhost}': received {arguments.get(key)!r} but current is "
                    f"{existing.arguments.get(key)!r}",
                )
        return existing

    def _check_exclusive(self, queue: Queue, connection_id: int) -> None:
        if queue.exclusive_to is not None and queue.exclusive_to != connection_id:
            raise ChannelError(
                405,
                f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue.name}' in "
                f"vhost '{self.vhost}'. It could be originally declared on another connection or the "
                "exclusive property value does not match that of the original declaration.",
            )

    def queue(self, name: str, connection_id: int) -> Queue:
        found = self.queues.get(name)
        if found is None:
            raise ChannelError(404, f"NOT_FOUND - no queue '{name}' in vhost '{self.vhost}'")
        self._check_exclusive(found, connection_id)
        return found

    def delete_queue(self, name: str, connection_id: int) -> int:
        """
        Delete queue C{name}; its consumers are cancelled.  The count of
        messages it held.
        """
        queue = self.queues.get(name)
        if queue is None:
            return 0
        self._check_exclusive(queue, connection_id)
        del self.queues[name]
        for exchange in self.exchanges.values():
            exchange.bindings = [b for b in exchange.bindings if b.to_exchange or b.destination != name]
        for consumer in list(queue.consumers):
            queue.consumers.remove(consumer)
            consumer.owner.cancelled(consumer)
        return len(queue.messages)

    def bind(
        self, queue: str, exchange: str, key: str, arguments: dict[str, Any], connection_id: int
    ) -> None:
        self.queue(queue, connection_id)
        target = self.exchange(exchange)
        if exchange == "":
            raise ChannelError(403, "ACCESS_REFUSED - operation not permitted on the default exchange")
        self._add_binding(target, Binding(queue, key, dict(arguments)))

    def unbind(
        self, queue: str, exchange: str, key: str, arguments: dict[str, Any], connection_id: int
    ) -> None:
        self.queue(queue, connection_id)
        target = self.exchange(exchange)
        gone = Binding(queue, key, dict(arguments))
        target.bindings = [b for b in target.bindings if b != gone]

    def bind_exchange(self, destination: str, source: str, key: str, arguments: dict[str, Any]) -> None:
        self.exchange(destination)
        target = self.exchange(source)
        if "" in (source, destination):
            raise ChannelError(403, "ACCESS_REFUSED - operation not permitted on the default exchange")
        self._add_binding(target, Binding(destination, key, dict(arguments), to_exchange=True))

    def unbind_exchange(self, destination: str, source: str, key: str, arguments: dict[str, Any]) -> None:
        target = self.exchange(source)
        gone = Binding(destination, key, dict(arguments), to_exchange=True)
        target.bindings = [b for b in target.bindings if b != gone]

    @staticmethod
    def _add_binding(exchange: Exchange, binding: Binding) -> None:
        if binding not in exchange.bindings:
            exchange.bindings.append(binding)

    def connection_closed(self, connection_id: int) -> None:
        """
        A connection is gone: its exclusive queues go with it.
        """
        for queue in [q for q in self.queues.values() if q.exclusive_to == connection_id]:
            self.delete_queue(queue.name, connection_id)

    # --- routing and delivery -----------------------------------------------

    def route(self, exchange_name: str, key: str, headers: dict[str, Any] | None = None) -> list[Queue]:
        """
        The queues a message published to C{exchange_name} with C{key} reaches,
        through exchange-to-exchange bindings too, each once.
        """
        exchange = self.exchange(exchange_name)
        if exchange.name == "":
            queue = self.queues.get(key)
            return [queue] if queue is not None else []
        found: list[str] = []
        seen: set[str] = set()
        pending = [exchange]
        while pending:
            current = pending.pop(0)
            if current.name in seen:
                continue
            seen.add(current.name)
            for binding in current.bindings:
                if not self._binding_matches(current, binding, key, headers or {}):
                    continue
                if binding.to_exchange:
                    nxt = self.exchanges.get(binding.destination)
                    if nxt is not None:
                        pending.append(nxt)
                elif binding.destination not in found:
                    found.append(binding.destination)
        return [self.queues[n] for n in found if n in self.queues]

    @staticmethod
    def _binding_matches(exchange: Exchange, binding: Binding, key: str, headers: dict[str, Any]) -> bool:
        if exchange.type == "fanout":
            return True
        if exchange.type == "direct":
            return binding.key == key
        if exchange.type == "topic":
            return topic_matches(binding.key, key)
        return headers_match(binding.arguments, headers)

    # --- what happens to messages in a queue ------------------------------------

    def accept(self, queue: Queue, message: Stored) -> bool:
        """
        Put a newly routed message in C{queue}, applying its TTL and length
        limit; False if the queue refused it (x-overflow reject-publish).
        """
        limit = queue.arguments.get("x-max-length")
        overflow = queue.arguments.get("x-overflow", "drop-head")
        if limit is not None and len(queue.messages) >= limit:
            if overflow in ("reject-publish", "reject-publish-dlx"):
                if overflow == "reject-publish-dlx":
                    self.dead_letter(queue, message, "maxlen")
                return False
        ttls = [queue.arguments.get("x-message-ttl")]
        expiration = message.properties.get("expiration")
        if expiration is not None:
            try:
                ttls.append(int(expiration))
            except ValueError:
                raise ChannelError(406, f"PRECONDITION_FAILED - invalid expiration '{expiration}'") from None
        given = [t for t in ttls if t is not None]
        if given:
            ttl = min(given) / 1000
            message.expires_at = self.clock.seconds() + ttl
            self.clock.callLater(ttl, self.expire, queue)
        queue.messages.append(message)
        if limit is not None:
            while len(queue.messages) > limit:
                self.dead_letter(queue, queue.messages.popleft(), "maxlen")
        self.dispatch(queue)
        return True

    def expire(self, queue: Queue) -> None:
        """
        Dead-letter (or drop) the expired messages at the head of C{queue}, as
        RabbitMQ does: only at the head, in order.
        """
        now = self.clock.seconds()
        messages = queue.messages
        while messages and messages[0].expires_at is not None and messages[0].expires_at <= now:
            self.dead_letter(queue, messages.popleft(), "expired")

    def dead_letter(self, queue: Queue, message: Stored, reason: str) -> None:
        """
        Republish C{message} to C{queue}'s dead-letter exchange (if it has one)
        with an C{x-death} entry, as RabbitMQ does; else drop it.
        """
        dlx = queue.arguments.get("x-dead-letter-exchange")
        if dlx is None or dlx not in self.exchanges:
            return
        key = queue.arguments.get("x-dead-letter-routing-key") or message.routing_key
        props = dict(message.properties)
        headers = dict(props.get("headers") or {})
        deaths = list(headers.get("x-death") or [])
        entry: dict[str, Any] | None = None
        for old in deaths:
            if old.get("queue") == queue.name and old.get("reason") == reason:
                entry = old
                deaths.remove(old)
                break
        if entry is None:
            entry = {
                "count": 0,
                "reason": reason,
                "queue": queue.name,
                "time": _dt.datetime.fromtimestamp(int(self.clock.seconds()), _dt.timezone.utc),
                "exchange": message.exchange,
                "routing-keys": [message.routing_key],
            }
        entry = dict(entry, count=int(entry["count"]) + 1)
        if reason == "expired" and "expiration" in props:
            entry["original-expiration"] = props.pop("expiration")
        deaths.insert(0, entry)
        headers["x-death"] = deaths
        if "x-first-death-reason" not in headers:
            headers["x-first-death-reason"] = reason
            headers["x-first-death-queue"] = queue.name
            headers["x-first-death-exchange"] = message.exchange
        props["headers"] = headers
        for target in self.route(dlx, key, headers):
            self.accept(target, Stored(dlx, key, dict(props), message.body, target.name))

    def delivered(self, queue: Queue | None, message: Stored) -> dict[str, Any]:
        """
        The properties C{message} goes out with, now that it is delivered
        again: a quorum queue counts deliveries in its headers, as the
        imitated RabbitMQ does.  RabbitMQ 3 puts every return in
        C{x-delivery-count}, from 0 on the first delivery; RabbitMQ 4 counts
        the failed returns (reject, consumer lost) in C{x-delivery-count} and
        every earlier delivery in C{x-acquired-count}, each only once it is
        not 0.
        """
        props = message.properties
        if queue is not None and queue.quorum:
            headers = dict(props.get("headers") or {})
            if self.version >= (4, 0):
                if message.acquired:
                    headers["x-acquired-count"] = message.acquired
                if message.failed:
                    headers["x-delivery-count"] = message.failed
            else:
                headers["x-delivery-count"] = message.returned
            if headers:
                props = dict(props, headers=headers)
        message.acquired += 1
        return props

    def give_back(self, queue: Queue, message: Stored, failed: bool) -> None:
        """
        A delivered message comes back to the head of C{queue}, flagged
        redelivered; C{failed} for a reject or a lost consumer (not a nack or
        a recover).  A quorum queue dead-letters (or drops) one returned more
        times than its delivery limit.
        """
        message.redelivered = True
        message.returned += 1
        if failed:
            message.failed += 1
        if queue.quorum:
            limit = queue.arguments.get("x-delivery-limit")
            if limit is None and self.version >= (4, 0):
                limit = DEFAULT_DELIVERY_LIMIT
            count = message.failed if self.version >= (4, 0) else message.returned
            if limit is not None and limit >= 0 and count > limit:
                self.dead_letter(queue, message, "delivery_limit")
                return
        queue.messages.appendleft(message)

    def dispatch(self, queue: Queue) -> None:
        """
        Hand queued messages to consumers with room, round-robin.
        """
        self.expire(queue)
        while queue.messages and queue.consumers:
            for _ in range(len(queue.consumers)):
                consumer = queue.consumers[0]
                queue.consumers.append(queue.consumers.pop(0))
                if consumer.has_room():
                    break
            else:
                return  # every consumer is full
            message = queue.messages.popleft()
            if not consumer.no_ack:
                consumer.unacked += 1
            consumer.owner.deliver(consumer, message)

    def consume(self, queue: Queue, consumer: Consumer) -> None:
        queue.consumers.append(consumer)
        queue.had_consumers = True
        self.dispatch(queue)

    def cancel(self, consumer: Consumer) -> None:
        queue = consumer.queue
        if consumer in queue.consumers:
            queue.consumers.remove(consumer)
        if queue.auto_delete and queue.had_consumers and not queue.consumers and queue.name in self.queues:
            self.delete_queue(queue.name, queue.exclusive_to or 0)


__all__ = [
    "ChannelError",
    "ConnectionError",
    "Consumer",
    "MemoryBrokerState",
    "Queue",
    "Refusal",
    "Stored",
    "topic_matches",
]
