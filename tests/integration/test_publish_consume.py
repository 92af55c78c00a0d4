"""
Publishing and consuming you can trust, checked against the real broker: what
the broker holds after confirms, nacks and returns, backpressure while the
broker blocks publishers, fair dispatch between consumers, the redelivery cap,
handlers in threads beside heartbeats, and a consumer stopped and started
mid-stream without losing or repeating a message.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pika
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from txmsg import Connection, Consumer, Message, Producer, Queue, Requeue
from txmsg.producer import Nacked, Unroutable

from .. import broker
from .report import record
from .support import BROKER_URL, PikaPeer, eventually, rabbitmqctl, sleep, unique

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_ten_thousand_persistent_messages_all_confirmed_and_held(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    10,000 persistent messages published at once: every Deferred fires, and the
    durable queue holds exactly 10,000, each with delivery mode 2.
    """
    name = unique("confirm")
    await connection.declare(Queue(name, durable=True))
    producer = Producer(connection)
    try:
        results = await DeferredList(
            [producer.publish("", name, b"m%d" % i, persistent=True) for i in range(10_000)],
            fireOnOneErrback=True,
            consumeErrors=True,
        )
        assert len(results) == 10_000 and all(ok for ok, _ in results)
        assert producer.unconfirmed == 0 and producer.waiting == 0
        assert await pika_peer.depth(name) == 10_000
        [(_, props, body)] = await pika_peer.get(name)
        assert props.delivery_mode == 2 and body == b"m0"
    finally:
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_publish_to_a_full_reject_publish_queue_is_nacked(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    A queue with x-max-length 2 and x-overflow reject-publish takes two
    messages; the broker nacks the rest, and their Deferreds fail with Nacked.
    """
    name = unique("full")
    await connection.declare(Queue(name, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}))
    producer = Producer(connection)
    try:
        ds = [producer.publish("", name, f"m{i}") for i in range(4)]
        results = await DeferredList(ds, consumeErrors=True)
        assert [ok for ok, _ in results] == [True, True, False, False]
        assert all(r.check(Nacked) for ok, r in results if not ok)
        assert await pika_peer.depth(name) == 2
    finally:
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_mandatory_publish_to_an_unbound_key_is_unroutable(connection: Connection) -> None:
    """
    A mandatory message no queue is bound for comes back: Unroutable, 312
    NO_ROUTE; the same message to a bound key is confirmed.
    """
    name = unique("bound")
    await connection.declare(Queue(name, auto_delete=True, exclusive=True))
    producer = Producer(connection)
    with pytest.raises(Unroutable) as info:
        await producer.publish("", unique("nobody"), b"lost?", mandatory=True)
    assert info.value.reply_code == 312 and info.value.reply_text == "NO_ROUTE"
    await producer.publish("", name, b"fine", mandatory=True)


def memory_watermark() -> str:
    return rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()


@pytest_twisted.ensureDeferred
async def test_publishes_wait_while_the_broker_blocks_publishers(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    With the broker's memory alarm raised (watermark 0) the broker sends
    connection.blocked: publishes then wait inside the producer, none written to
    the socket (memory stays bounded by what the caller holds).  When the alarm
    clears, every one is written and confirmed, and the queue holds them all.
    """
    name = unique("blocked")
    await connection.declare(Queue(name))
    producer = Producer(connection)
    await producer.publish("", name, b"before")
    protocol = connection.protocol
    assert protocol is not None
    old = memory_watermark()
    try:
        await deferToThread(rabbitmqctl, "set_vm_memory_high_watermark", "0")
        # RabbitMQ tells publishing connections: publish one more to be told
        first = producer.publish("", name, b"first")
        await eventually(lambda: protocol.blocked is not None, timeout=20)
        held = [producer.publish("", name, b"m%d" % i) for i in range(500)]
        await sleep(0.5)
        assert producer.waiting == 500  # held back, not written
        assert not any(d.called for d in held)
    finally:
        await deferToThread(rabbitmqctl, "set_vm_memory_high_watermark", old)
    await eventually(lambda: protocol.blocked is None, timeout=20)
    await first
    await DeferredList(held, fireOnOneErrback=True)
    assert await pika_peer.depth(name) == 502
    await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_fair_dispatch_a_late_consumer_gets_its_share(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    Consumer A (slow handler) is connected; 30 messages are queued; consumer B
    joins afterwards.  With the default prefetch A cannot hoard the backlog:
    B processes at least a third of the messages, and all 30 are handled once.
    """
    name = unique("fair")
    await connection.declare(Queue(name))
    by_a: list[bytes] = []
    by_b: list[bytes] = []

    def slow(message: Message) -> Any:
        by_a.append(message.body)
        return deferLater(reactor, 0.3, lambda: None)

    a = Consumer(connection, name, slow)
    a.startService()
    await a.when_ready()
    producer = Producer(connection)
    await DeferredList([producer.publish("", name, b"%d" % i) for i in range(30)], fireOnOneErrback=True)
    b = Consumer(connection, name, lambda m: by_b.append(m.body))
    b.startService()
    try:
        await eventually(lambda: len(by_a) + len(by_b) == 30, timeout=30)
        assert len(by_b) >= 10, (len(by_a), len(by_b))
        assert sorted(by_a + by_b, key=int) == [b"%d" % i for i in range(30)]
    finally:
        await a.stopService()
        await b.stopService()
    assert await pika_peer.depth(name) == 0
    await pika_peer.delete_queue(name)


async def _redelivery_cap(
    connection: Connection, pika_peer: PikaPeer, queue_type: str, busy: int = 1000
) -> tuple[int, Any]:
    """
    A message on a queue with a dead-letter queue, to a handler that raises
    Requeue C{busy} times and then handles it (max_redeliveries 3): how many
    times the handler saw it, and what reached the dead-letter queue.
    """
    work, dlq = unique("cap"), unique("capdlq")
    arguments: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
    if queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    await connection.declare(Queue(dlq), Queue(work, arguments=arguments))
    calls: list[Message] = []
    handled: list[Message] = []

    def busy_for_a_while(message: Message) -> None:
        calls.append(message)
        if len(calls) <= busy:
            raise Requeue()
        handled.append(message)

    consumer = Consumer(connection, work, busy_for_a_while, max_redeliveries=3)
    consumer.startService()
    try:
        await Producer(connection).publish("", work, b"poison")
        got = await pika_peer.get(dlq, timeout=20 if busy >= 1000 else 3)
        if not got:
            await eventually(lambda: handled, timeout=20)
        await sleep(0.5)  # a further redelivery would show up as another call
        return len(calls), got
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(work)
        await pika_peer.delete_queue(dlq)


@pytest_twisted.ensureDeferred
async def test_requeues_on_a_quorum_queue(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    A handler that says "not now" (Requeue) six times, then handles the
    message, on a quorum queue with max_redeliveries 3.  RabbitMQ 4 does not
    count a nack as a failed delivery: the message comes back each time and is
    handled on the seventh, never dead-lettered.  RabbitMQ 3 counts every
    return in x-delivery-count: after 1 + 3 deliveries it is dead-lettered.
    """
    calls, got = await _redelivery_cap(connection, pika_peer, "quorum", busy=6)
    if broker.at_least(4):
        assert (calls, got) == (7, [])
    else:
        assert calls == 4
        assert [body for _, _, body in got] == [b"poison"]


@pytest_twisted.ensureDeferred
async def test_redelivery_cap_on_a_classic_queue(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    A classic queue does not count deliveries: the handler sees the message
    once more after its first Requeue (flagged redelivered), then it is
    dead-lettered.
    """
    calls, got = await _redelivery_cap(connection, pika_peer, "classic")
    assert calls == 2
    assert [body for _, _, body in got] == [b"poison"]


@pytest_twisted.ensureDeferred
async def test_blocking_work_in_a_thread_keeps_heartbeats_going(pika_peer: PikaPeer) -> None:
    """
    A handler that blocks for 4 s in a thread (deferToThread) on a connection
    with a 1 s heartbeat: the connection is not dropped and the message is
    acked afterwards.
    """
    conn = Connection(BROKER_URL + "?heartbeat=1", reactor=reactor, name=unique("hb"))
    name = unique("thread")
    await conn.declare(Queue(name))
    protocol = conn.protocol
    done: list[bytes] = []

    def handler(message: Message) -> Any:
        return deferToThread(time.sleep, 4).addCallback(lambda _: done.append(message.body))

    consumer = Consumer(conn, name, handler)
    consumer.startService()
    try:
        await Producer(conn).publish("", name, b"long job")
        await eventually(lambda: done, timeout=20)
        assert conn.protocol is protocol and protocol is not None and protocol.is_open
        assert protocol.heartbeat == 1
        await consumer.stopService()
        assert await pika_peer.depth(name) == 0
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)
        await conn.stopService()


@pytest_twisted.ensureDeferred
async def test_stop_and_start_mid_stream_loses_and_repeats_nothing(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    2,000 messages; the consumer (asynchronous handler, 20 at once) is stopped
    after about 500 and started again: every message is handled exactly once
    and the broker holds none at the end.
    """
    name = unique("stopstart")
    await connection.declare(Queue(name, durable=True))
    ids = [uuid.uuid4().hex for _ in range(2000)]
    producer = Producer(connection)
    await DeferredList(
        [producer.publish("", name, b"x", message_id=i, persistent=True) for i in ids], fireOnOneErrback=True
    )
    seen: list[str] = []

    def handler(message: Message) -> Any:
        seen.append(message.message_id or "")
        return deferLater(reactor, 0.002, lambda: None)

    consumer = Consumer(connection, name, handler, prefetch=50, concurrency=20)
    consumer.startService()
    try:
        await eventually(lambda: len(seen) >= 500, timeout=30)
        await consumer.stopService()
        stopped_at = len(seen)
        assert 500 <= stopped_at < 2000
        remaining = await pika_peer.depth(name)
        assert remaining == 2000 - stopped_at  # acked exactly what it handled
        consumer.startService()
        await eventually(lambda: len(seen) >= 2000, timeout=60)
        await sleep(0.3)
    finally:
        await consumer.stopService()
    assert len(seen) == 2000 and set(seen) == set(ids)
    assert await pika_peer.depth(name) == 0
    await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_pika_worker_takes_txmsg_persistent_tasks(connection: Connection) -> None:
    """
    The tutorial's work queue across clients: txmsg publishes persistent tasks to
    a durable queue; a pika worker (prefetch 1, manual acks) receives each one
    as persistent, with its body.
    """
    name = unique("task_queue")
    await connection.declare(Queue(name, durable=True))
    producer = Producer(connection)
    await DeferredList(
        [producer.publish("", name, f"task {i}...", persistent=True) for i in range(5)], fireOnOneErrback=True
    )

    def work() -> list[tuple[bytes, int]]:
        conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)
        got = []
        for method, props, body in ch.consume(name, inactivity_timeout=5):
            if method is None:
                break
            got.append((body, props.delivery_mode))
            ch.basic_ack(method.delivery_tag)
            if len(got) == 5:
                break
        ch.cancel()
        ch.queue_delete(name)
        conn.close()
        return got

    got = await deferToThread(work)
    assert got == [(f"task {i}...".encode(), 2) for i in range(5)]


@pytest_twisted.ensureDeferred
async def test_consumer_of_a_missing_queue_fails_to_start_but_the_connection_lives(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    Consuming a queue that does not exist fails wait_consuming() with
    NotFound; the connection stays up and other work goes on; once the queue
    appears the consumer starts by itself.
    """
    from txmsg.errors import NotFound

    name = unique("missing")
    received: list[bytes] = []
    consumer = Consumer(connection, name, lambda m: received.append(m.body))
    consumer.startService()
    try:
        with pytest.raises(NotFound):
            await consumer.when_ready()
        await connection.when_ready()
        protocol = connection.protocol
        await sleep(0.3)
        assert connection.is_connected and connection.protocol is protocol
        await connection.declare(Queue(name))
        await consumer.when_ready()
        await pika_peer.publish("", name, b"now")
        await eventually(lambda: received == [b"now"], timeout=15)
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_deleted_owned_queue_is_declared_again_and_consumed(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    Deleting the queue a consumer owns makes the broker cancel it; the consumer
    declares the queue again and resumes: a message published afterwards is
    handled.
    """
    name = unique("owned")
    received: list[bytes] = []
    consumer = Consumer(connection, Queue(name), lambda m: received.append(m.body))
    consumer.startService()
    try:
        await consumer.when_ready()
        first_channel = consumer.channel
        deleted_at = time.monotonic()
        await pika_peer.delete_queue(name)
        await eventually(lambda: consumer.channel is not None and consumer.channel is not first_channel)
        await consumer.when_ready()
        again = time.monotonic() - deleted_at
        await pika_peer.publish("", name, b"after")
        await eventually(lambda: received == [b"after"], timeout=15)
        record(
            "6 consumer cancelled (queue deleted)",
            reconnects=[again],
            detail=f"queue declared again and consumed {again * 1000:.0f} ms after the delete",
        )
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_timestamp_in_milliseconds_from_pika_is_handled(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    A peer that writes the timestamp property in milliseconds (beyond what a
    datetime holds) does not break the consumer: the handler sees the integer.
    """
    name = unique("millis")
    await connection.declare(Queue(name))
    received: list[Message] = []
    consumer = Consumer(connection, name, received.append)
    consumer.startService()
    try:
        await consumer.when_ready()
        millis = 1_700_000_000_000_000_000
        await pika_peer.publish("", name, b"x", pika.BasicProperties(timestamp=millis))
        await eventually(lambda: received, timeout=10)
        assert received[0].timestamp == millis
        assert connection.is_connected
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_big_bodies_arrive_intact_both_ways(big_messages_url: str) -> None:
    """
    Bodies of many frames (up to 24 MB, more than the socket takes at once, so
    part goes straight to the socket and the rest through the transport's
    buffer) published back to back by txmsg arrive byte for byte at a pika
    consumer; the same bodies published by pika arrive whole at a txmsg
    consumer, whose reads stream them into place (on a broker that takes
    bodies over RabbitMQ 4's default 16 MiB).
    """
    import hashlib
    import os

    connection = Connection(big_messages_url, reactor=reactor, name=unique("big"))
    pika_peer = PikaPeer(big_messages_url)
    name = unique("big")
    await connection.declare(Queue(name))
    bodies = [os.urandom(size) for size in (200_000, 1_048_576 + 7, 8 * 1_048_576, 24 * 1_048_576)]
    digests = [hashlib.sha256(b).hexdigest() for b in bodies]
    try:
        producer = Producer(connection)
        await DeferredList([producer.publish("", name, b) for b in bodies], fireOnOneErrback=True)
        got = await pika_peer.get(name, count=len(bodies), timeout=30)
        assert [hashlib.sha256(body).hexdigest() for _, _, body in got] == digests

        for b in bodies:
            await pika_peer.publish("", name, b)
        received: list[str] = []
        consumer = Consumer(connection, name, lambda m: received.append(hashlib.sha256(m.body).hexdigest()))
        consumer.startService()
        await eventually(lambda: len(received) == len(bodies), timeout=30)
        await consumer.stopService()
        assert received == digests
    finally:
        await pika_peer.delete_queue(name)
        await connection.stopService()
