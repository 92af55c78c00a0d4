"""
The state and the rules of the in-memory broker: exchanges, queues, bindings,
routing, consumers, deliveries and acknowledgements, as RabbitMQ applies them.
It knows nothing of frames; L{txmsg.testing._server} speaks AMQP for it.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

EXCHANGE_TYPES = ("direct", "fanout", "topic")


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


@dataclass
class Binding:
    queue: str
    key: str


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


def _flag(value: Any) -> str:
    return "true" if value else "false"


class MemoryBrokerState:
    """
    One virtual host's exchanges and queues.
    """

    def __init__(self, vhost: str = "/") -> None:
        self.vhost = vhost
        self.exchanges: dict[str, Exchange] = {
            "": Exchange("", "direct", True),
            "amq.direct": Exchange("amq.direct", "direct", True),
            "amq.fanout": Exchange("amq.fanout", "fanout", True),
            "amq.topic": Exchange("amq.topic", "topic", True),
        }
        self.queues: dict[str, Queue] = {}
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
        if type_ == "headers":
            raise ConnectionError(
                540, "NOT_IMPLEMENTED - headers exchanges are not implemented by txmsg.testing"
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
            exchange.bindings = [b for b in exchange.bindings if b.queue != name]
        for consumer in list(queue.consumers):
            queue.consumers.remove(consumer)
            consumer.owner.cancelled(consumer)
        return len(queue.messages)

    def bind(self, queue: str, exchange: str, key: str, connection_id: int) -> None:
        self.queue(queue, connection_id)
        target = self.exchange(exchange)
        if exchange == "":
            raise ChannelError(403, "ACCESS_REFUSED - operation not permitted on the default exchange")
        if not any(b.queue == queue and b.key == key for b in target.bindings):
            target.bindings.append(Binding(queue, key))

    def unbind(self, queue: str, exchange: str, key: str, connection_id: int) -> None:
        self.queue(queue, connection_id)
        target = self.exchange(exchange)
        target.bindings = [b for b in target.bindings if not (b.queue == queue and b.key == key)]

    def connection_closed(self, connection_id: int) -> None:
        """
        A connection is gone: its exclusive queues go with it.
        """
        for queue in [q for q in self.queues.values() if q.exclusive_to == connection_id]:
            self.delete_queue(queue.name, connection_id)

    # --- routing and delivery -----------------------------------------------

    def route(self, exchange_name: str, key: str) -> list[Queue]:
        exchange = self.exchange(exchange_name)
        if exchange.name == "":
            queue = self.queues.get(key)
            return [queue] if queue is not None else []
        names: list[str] = []
        for binding in exchange.bindings:
            if exchange.type == "fanout" or (
                binding.key == key if exchange.type == "direct" else topic_matches(binding.key, key)
            ):
                if binding.queue not in names:
                    names.append(binding.queue)
        return [self.queues[n] for n in names if n in self.queues]

    def enqueue(self, queue: Queue, message: Stored, front: bool = False) -> None:
        if front:
            queue.messages.appendleft(message)
        else:
            queue.messages.append(message)
        self.dispatch(queue)

    def dispatch(self, queue: Queue) -> None:
        """
        Hand queued messages to consumers with room, round-robin.
        """
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
