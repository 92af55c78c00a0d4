"""
Broker crashes on a private node: kill -9 and restart under a durable queue of
persistent messages.  The bar: no confirmed message is lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThread

from txmsg import Connection, Consumer, Message, Producer, Queue

from .nodes import RabbitNode, available, scratch
from .report import Tally, record, scaled
from .support import eventually, unique

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed"),
]


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitNode]:
    n = RabbitNode(scratch("nodes"), f"txmsg-{unique('n')[-6:]}")
    n.start()
    n.wait()
    yield n
    n.stop()


@pytest_twisted.ensureDeferred
async def test_kill_9_and_restart_loses_no_confirmed_message(node: RabbitNode) -> None:
    """
    Scenario 2: 5,000 persistent messages with unique ids are published with
    confirms to a durable queue; the node is killed with SIGKILL mid-stream and
    restarted.  The publisher waits and republishes across the crash; every id
    the broker confirmed is consumed after the restart (0 lost).
    """
    total = scaled(5000)
    name = unique("crash")
    queue = Queue(name, durable=True)
    pub = Connection(node.url, reactor=reactor, name=unique("crash-pub"))
    await pub.declare(queue)
    # The scenario is about messages in a queue that exists, not about a
    # declaration racing the crash.  In 2 of 7 full CI runs (never alone) every
    # message confirmed before the kill was gone after the restart (the broker
    # held 0 of them, and everything published afterwards arrived), which
    # points at the durable queue itself, declared a moment before, not
    # surviving the crash (not yet proven).  Write RabbitMQ's metadata log out
    # before crashing the node (Mnesia's on RabbitMQ 3; Khepri's on 4 is
    # synced at each change); the failure message below still tells.
    await deferToThread(node.flush_metadata)
    producer = Producer(pub)
    tally = Tally()
    confirmed = tally.confirmed
    failed: list[object] = []
    killed = False
    back_after = 0.0
    for batch in range(0, total, 500):
        ids = [f"m{i}" for i in range(batch, min(batch + 500, total))]
        ds = [producer.publish("", name, b"x" * 100, message_id=i, persistent=True, timeout=120) for i in ids]
        if batch >= total * 2 // 5 and not killed:
            # crash the node while this batch is in flight, then bring it back
            killed = True
            killed_at = time.monotonic()
            await deferToThread(node.kill9)
            await deferToThread(node.start)
            await deferToThread(node.wait)
            await eventually(lambda: pub.is_connected, timeout=60)
            back_after = time.monotonic() - killed_at
        results = await DeferredList(ds, consumeErrors=True)
        for i, (ok, value) in zip(ids, results, strict=True):
            (confirmed.add(i) if ok else failed.append(value))
    sub = Connection(node.url, reactor=reactor, name=unique("crash-sub"))
    consumer = Consumer(sub, name, tally.delivered, prefetch=500)
    consumer.startService()
    try:
        try:
            await eventually(lambda: tally.all_consumed, timeout=120)
        except AssertionError:
            # lost, or still on the broker? Say which, with the broker's own count.
            held = await deferToThread(
                node.ctl,
                "list_queues",
                "name",
                "messages",
                "messages_unacknowledged",
                "--no-table-headers",
                "-q",
            )
            raise AssertionError(
                f"{len(tally.lost)} of {len(confirmed)} confirmed ids not consumed after 120 s "
                f"(e.g. {sorted(tally.lost)[:5]}); consumed {len(tally.consumed)}, consumer handled "
                f"{consumer.consumed}, connected {sub.is_connected}; broker holds: {held.strip()}"
            ) from None
        record(
            "2 node kill -9 and restart",
            tally,
            reconnects=[back_after],
            detail=f"reconnect includes the node's restart; {len(failed)} publishes failed",
        )
        assert not tally.lost
        assert len(confirmed) == total, failed[:3]
    finally:
        await consumer.stopService()
        await sub.stopService()
        await pub.stopService()


@pytest_twisted.ensureDeferred
async def test_memory_alarm_pauses_publishers_and_they_resume_at_once(node: RabbitNode) -> None:
    """
    Scenario 5: with the node's memory alarm raised (watermark 0) publishers
    are told (connection.blocked) and pause: publishes wait instead of being
    written.  Within a second of the alarm clearing they resume; every message
    is confirmed and held; the first waiting publish is confirmed within a
    second of the broker's connection.unblocked.
    """
    from txmsg.producer import DEFAULT_WINDOW

    name = unique("alarm")
    conn = Connection(node.url, reactor=reactor, name=unique("alarm-pub"))
    await conn.declare(Queue(name, durable=True))
    producer = Producer(conn)
    await producer.publish("", name, b"before the alarm")
    await deferToThread(node.ctl, "set_vm_memory_high_watermark", "0")
    try:
        count = scaled(3000)
        ds = [producer.publish("", name, b"x" * 1000, message_id=f"m{i}") for i in range(count)]
        await eventually(lambda: conn.protocol is not None and conn.protocol.blocked is not None, timeout=20)
        await eventually(lambda: producer.waiting > 0, timeout=10)
        confirmed_while_blocked = sum(1 for d in ds if d.called)
        assert producer.unconfirmed <= DEFAULT_WINDOW
        assert confirmed_while_blocked < count
        unblocked_at: list[float] = []
        first_confirm_after: list[float] = []
        channel = producer._channel
        assert channel is not None
        drain = channel.on_writable
        assert drain is not None

        def flow() -> None:
            if channel.blocked is None and not unblocked_at:
                unblocked_at.append(time.monotonic())
            drain()

        channel.on_writable = flow
        waiting = [d for d in ds if not d.called]
        waiting[0].addBoth(lambda r: first_confirm_after.append(time.monotonic()) or r)
    finally:
        await deferToThread(node.ctl, "set_vm_memory_high_watermark", "0.4")
    results = await DeferredList(ds, consumeErrors=True)
    resumed = first_confirm_after[0] - unblocked_at[0]
    depth = int(
        node.ctl("list_queues", "name", "messages", "--no-table-headers", "-q").split(name)[1].split()[0]
    )
    confirmed = 1 + sum(1 for ok, _ in results if ok)
    record(
        "5 memory alarm",
        confirmed=confirmed,
        held=depth,
        lost=confirmed - depth,
        reconnects=[resumed],
        detail=f"{len(waiting)} publishes waited; first confirm {resumed * 1000:.0f} ms after unblocked",
    )
    assert resumed < 1.0
    assert all(ok for ok, _ in results)
    assert depth == count + 1
    await conn.stopService()


@pytest_twisted.ensureDeferred
async def test_consumer_timeout_closing_the_channel_is_recovered(node: RabbitNode) -> None:
    """
    Scenario 6: RabbitMQ's consumer_timeout (1 s here) acts on a consumer
    that holds a delivery too long.  RabbitMQ 3 closes the channel (406);
    RabbitMQ 4 applies it to quorum queues only (this test's queue there),
    cancelling the consumer and returning the message.  Either way the
    consumer opens a new channel and consumes again; the message comes back,
    flagged redelivered, and is handled.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.task import deferLater

    await deferToThread(node.ctl, "eval", "application:set_env(rabbit, consumer_timeout, 1000).")
    await deferToThread(node.ctl, "eval", "application:set_env(rabbit, channel_tick_interval, 500).")
    name = unique("timeout")
    conn = Connection(node.url, reactor=reactor, name=unique("timeout-sub"))
    rabbitmq_4 = node.version() >= (4, 0)
    await conn.declare(Queue.quorum(name) if rabbitmq_4 else Queue(name))
    attempts: list[bool] = []

    def handler(m: Message) -> Deferred[None]:
        attempts.append(m.redelivered)
        if len(attempts) == 1:
            return deferLater(reactor, 30, lambda: None)  # far over the consumer timeout
        return deferLater(reactor, 0, lambda: None)

    consumer = Consumer(conn, name, handler, stop_timeout=1)
    consumer.startService()
    try:
        await consumer.when_ready()
        first = consumer.channel
        await Producer(conn).publish("", name, b"slow")
        started = time.monotonic()
        await eventually(lambda: len(attempts) >= 2, timeout=60)
        back = time.monotonic() - started
        record(
            "6 consumer_timeout (1 s) "
            + ("cancelled the consumer (quorum queue)" if rabbitmq_4 else "closed the channel"),
            reconnects=[back],
            detail=f"the held message came back on a new channel {back:.1f} s after it was published",
        )
        assert attempts[:2] == [False, True]
        assert consumer.channel is not None and consumer.channel is not first
        assert conn.is_connected
        await eventually(lambda: consumer.consumed == 1, timeout=10)
    finally:
        await consumer.stopService()
        await conn.stopService()
        await deferToThread(node.ctl, "eval", "application:unset_env(rabbit, consumer_timeout).")
