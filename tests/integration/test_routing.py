"""
Routing through the topology values, against the real broker: direct exchanges
with several bindings per queue, topic patterns (``*`` one word, ``#`` zero or
more), headers exchanges with ``x-match`` all and any, exchange-to-exchange
bindings, and all of these declared again after the broker drops the connection.

Each publish is confirmed, and the broker confirms a routed message only once
its queues hold it: after the confirms, a queue's depth is final, so each test
checks exactly what arrived and what did not, without waiting on a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from txmsg import (
    Binding,
    Connection,
    Consumer,
    Exchange,
    ExchangeBinding,
    Message,
    Producer,
    Queue,
    Unroutable,
)

from .support import PikaPeer, close_connection, eventually, unique

pytestmark = pytest.mark.integration


async def consume(connection: Connection, queue: Queue | str, n: int, timeout: float = 10.0) -> list[Message]:
    """
    Consume C{n} messages from C{queue} with a txmsg consumer, then stop it.
    """
    got: list[Message] = []
    enough: Deferred[None] = Deferred()

    def handle(message: Message) -> None:
        got.append(message)
        if len(got) == n and not enough.called:
            enough.callback(None)

    consumer = Consumer(connection, queue, handle)
    consumer.startService()
    try:
        await consumer.when_ready()
        if n:
            await enough.addTimeout(timeout, reactor)
    finally:
        await consumer.stopService()
    return got


async def arrived(connection: Connection, pika_peer: PikaPeer, queue: str) -> list[str]:
    """
    The routing keys of everything C{queue} holds (its depth, as pika sees it,
    is what must arrive), consumed by a txmsg consumer.
    """
    n = await pika_peer.depth(queue)
    return [m.routing_key for m in await consume(connection, queue, n)]


async def cleanup(pika_peer: PikaPeer, queues: Iterable[str] = (), exchanges: Iterable[str] = ()) -> None:
    for q in queues:
        await pika_peer.delete_queue(q)
    for x in exchanges:
        await pika_peer.delete_exchange(x)


@pytest_twisted.ensureDeferred
async def test_direct_queue_with_two_bindings_gets_both_keys_and_no_other(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    A queue bound to a direct exchange with ``black`` and ``green`` gets both
    and not ``red``; a second queue bound with ``green`` gets its own copy of
    green; ``red``, bound nowhere, is unroutable.
    """
    logs = Exchange(unique("direct"), "direct")
    both, greens = unique("both"), unique("greens")
    await connection.declare(
        logs,
        Queue(both),
        Queue(greens),
        Binding(both, logs, "black"),
        Binding(both, logs, "green"),
        Binding(greens, logs.name, "green"),
    )
    producer = Producer(connection)
    try:
        await producer.publish(logs.name, "black", "b", mandatory=True)
        await producer.publish(logs.name, "green", "g", mandatory=True)
        with pytest.raises(Unroutable):
            await producer.publish(logs.name, "red", "r", mandatory=True)
        await producer.publish(logs.name, "blackgreen", "neither")  # exact match only
        assert await arrived(connection, pika_peer, both) == ["black", "green"]
        assert await arrived(connection, pika_peer, greens) == ["green"]
    finally:
        await cleanup(pika_peer, [both, greens], [logs.name])


#: binding pattern -> the keys of KEYS it matches
TOPIC_MATCHES = {
    "a.#": ["a", "a.b", "a.c", "a.c.b", "a.x.c", "a.x.y.c"],  # '#' may be zero words: 'a' matches
    "*.b": ["a.b", "x.b"],  # '*' is exactly one word: not 'b', not 'a.c.b'
    "a.*.c": ["a.x.c"],
    "a.#.c": ["a.c", "a.x.c", "a.x.y.c"],
    "*": ["a", "b"],
    "#": ["a", "b", "a.b", "x.b", "a.c", "a.c.b", "a.x.c", "a.x.y.c"],
}
KEYS = ["a", "b", "a.b", "x.b", "a.c", "a.c.b", "a.x.c", "a.x.y.c"]


@pytest_twisted.ensureDeferred
async def test_topic_star_is_one_word_and_hash_zero_or_more(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    One queue per pattern on a topic exchange; each of eight keys published
    once.  Each queue holds exactly the keys its pattern matches: ``a.#``
    matches ``a``, ``*.b`` does not match ``a.c.b`` nor ``b``, ``a.#.c``
    matches ``a.c``.
    """
    topics = Exchange(unique("topic"), "topic")
    queues = {pattern: unique("topic-q") for pattern in TOPIC_MATCHES}
    await connection.declare(
        topics,
        *(Queue(q) for q in queues.values()),
        *(Binding(q, topics, pattern) for pattern, q in queues.items()),
    )
    producer = Producer(connection)
    try:
        for key in KEYS:
            await producer.publish(topics.name, key, key, mandatory=True)
        for pattern, q in queues.items():
            assert await arrived(connection, pika_peer, q) == TOPIC_MATCHES[pattern], pattern
    finally:
        await cleanup(pika_peer, queues.values(), [topics.name])


@pytest_twisted.ensureDeferred
async def test_headers_exchange_match_all_and_any(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    On a headers exchange (routing key ignored): ``x-match all`` needs every
    bound header (extra headers are fine), ``any`` needs one; an integer header
    matches an integer and not its string; a message matching no binding is
    unroutable.  Bindings made with L{Binding.headers} and with a raw
    arguments table route alike.
    """
    docs = Exchange(unique("headers"), "headers")
    all_q, any_q, int_q = unique("hdr-all"), unique("hdr-any"), unique("hdr-int")
    await connection.declare(
        docs,
        Queue(all_q),
        Queue(any_q),
        Queue(int_q),
        Binding.headers(all_q, docs, format="pdf", type="report"),  # match="all" by default
        Binding(any_q, docs, "", {"x-match": "any", "format": "pdf", "type": "report"}),
        Binding.headers(int_q, docs, match="all", version=2),
    )
    producer = Producer(connection)
    messages: list[tuple[str, dict[str, Any]]] = [
        ("pdf-report", {"format": "pdf", "type": "report"}),
        ("pdf-report-extra", {"format": "pdf", "type": "report", "lang": "en"}),
        ("pdf", {"format": "pdf"}),
        ("zip-report", {"format": "zip", "type": "report"}),
        ("v2", {"version": 2}),
    ]
    try:
        for key, headers in messages:
            await producer.publish(docs.name, key, key, headers=headers, mandatory=True)
        for key, headers in [("zip-log", {"format": "zip", "type": "log"}), ("v2-text", {"version": "2"})]:
            with pytest.raises(Unroutable):
                await producer.publish(docs.name, key, key, headers=headers, mandatory=True)
        with pytest.raises(Unroutable):
            await producer.publish(docs.name, "no-headers", "x", mandatory=True)
        assert await arrived(connection, pika_peer, all_q) == ["pdf-report", "pdf-report-extra"]
        assert await arrived(connection, pika_peer, any_q) == [
            "pdf-report",
            "pdf-report-extra",
            "pdf",
            "zip-report",
        ]
        assert await arrived(connection, pika_peer, int_q) == ["v2"]
    finally:
        await cleanup(pika_peer, [all_q, any_q, int_q], [docs.name])


@pytest_twisted.ensureDeferred
async def test_exchange_to_exchange_binding_routes_to_the_destinations_queues(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    An L{ExchangeBinding} from a topic exchange to an internal fanout exchange
    with ``orders.#``: a message published to the source with a matching key
    reaches the queue bound to the destination (and the source's own queue);
    one that does not match reaches only the source's queue.
    """
    source = Exchange(unique("e2e-src"), "topic")
    destination = Exchange(unique("e2e-dst"), "fanout", internal=True)  # reachable only through bindings
    via_dst, on_src = unique("e2e-dq"), unique("e2e-sq")
    await connection.declare(
        source,
        destination,
        ExchangeBinding(destination, source, "orders.#"),
        Queue(via_dst),
        Queue(on_src),
        Binding(via_dst, destination),
        Binding(on_src, source.name, "#"),
    )
    producer = Producer(connection)
    try:
        for key in ("orders.eu.new", "users.new", "orders"):
            await producer.publish(source.name, key, key, mandatory=True)
        assert await arrived(connection, pika_peer, via_dst) == ["orders.eu.new", "orders"]
        assert await arrived(connection, pika_peer, on_src) == ["orders.eu.new", "users.new", "orders"]
    finally:
        await cleanup(pika_peer, [via_dst, on_src], [source.name, destination.name])


@pytest_twisted.ensureDeferred
async def test_bindings_are_declared_again_after_the_broker_closes_the_connection(
    connection: Connection,
) -> None:
    """
    Server-named exclusive queues on auto-delete exchanges, so that nothing
    survives the broker closing the connection (the queues go with it, their
    bindings with them, the exchanges with their last binding).  After txmsg
    reconnects the queues have new names, and every binding routes again
    (mandatory publishes are accepted): direct keys, a headers binding and an
    exchange-to-exchange binding; non-matching messages are still unroutable.
    """
    direct = Exchange(unique("rp-direct"), "direct", auto_delete=True)
    headers = Exchange(unique("rp-headers"), "headers", auto_delete=True)
    source = Exchange(unique("rp-src"), "topic", auto_delete=True)
    destination = Exchange(unique("rp-dst"), "fanout", auto_delete=True)
    by_key, by_header, by_e2e = (Queue(exclusive=True) for _ in range(3))
    await connection.declare(
        direct,
        headers,
        source,
        destination,
        by_key,
        by_header,
        by_e2e,
        Binding(by_key, direct, "black"),
        Binding(by_key, direct, "green"),
        Binding.headers(by_header, headers, match="any", kind="a", tier="gold"),
        ExchangeBinding(destination, source, "orders.#"),
        Binding(by_e2e, destination),
    )
    got: dict[Queue, list[str]] = {by_key: [], by_header: [], by_e2e: []}

    def collect(queue: Queue) -> Callable[[Message], None]:
        return lambda message: got[queue].append(message.body.decode())

    consumers = [Consumer(connection, q, collect(q)) for q in got]
    for c in consumers:
        c.startService()
        await c.when_ready()
    producer = Producer(connection)

    async def publish_all(tag: str) -> None:
        await producer.publish(direct.name, "black", f"black {tag}", mandatory=True)
        await producer.publish(direct.name, "green", f"green {tag}", mandatory=True)
        await producer.publish(headers.name, "", f"kind {tag}", headers={"kind": "a"}, mandatory=True)
        await producer.publish(source.name, "orders.new", f"order {tag}", mandatory=True)
        strays: list[tuple[str, str, dict[str, str] | None]] = [
            (direct.name, "red", None),
            (headers.name, "", {"kind": "b"}),
            (source.name, "users.new", None),
        ]
        for exchange, key, stray_headers in strays:
            with pytest.raises(Unroutable):
                await producer.publish(exchange, key, "stray", mandatory=True, headers=stray_headers)

    try:
        await publish_all("before")
        await eventually(lambda: sum(map(len, got.values())) == 4)
        old_names = {q: connection.names[q] for q in got}

        assert await close_connection(str(connection.name))
        await eventually(
            lambda: connection.is_connected and all(connection.names[q] != old_names[q] for q in got),
            timeout=20,
        )
        await publish_all("after")
        await eventually(lambda: sum(map(len, got.values())) == 8)
        assert got == {
            by_key: ["black before", "green before", "black after", "green after"],
            by_header: ["kind before", "kind after"],
            by_e2e: ["order before", "order after"],
        }
    finally:
        for c in consumers:
            await c.stopService()
