"""
The consumer against the real broker: a failing handler dead-letters the
message (RabbitMQ's x-death header decodes in full), Requeue puts it back,
and an undecodable body never reaches the handler.
"""

from __future__ import annotations

import datetime as dt

import pika
import pytest
import pytest_twisted

from txmsg import Connection, Consumer, Message, Producer, Queue, Requeue

from .support import PikaPeer, eventually, unique

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_handler_failure_dead_letters_with_x_death(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    A handler exception rejects the message without requeue; the broker
    dead-letters it to the DLQ, and the x-death header RabbitMQ adds (a list of
    tables with a long count, a timestamp and string fields) decodes in txmsg.
    """
    work, dlq = unique("work"), unique("dlq")
    await connection.declare(
        Queue(dlq),
        Queue(work, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}),
    )
    calls: list[Message] = []

    def fail(message: Message) -> None:
        calls.append(message)
        raise ValueError("cannot handle this")

    dead: list[Message] = []
    failing = Consumer(connection, work, fail)
    catcher = Consumer(connection, dlq, dead.append)
    failing.startService()
    catcher.startService()
    try:
        await Producer(connection).publish("", work, {"job": 1})
        await eventually(lambda: dead)
        assert len(calls) == 1  # rejected once, not redelivered to the failing handler
        death = dead[0].headers["x-death"]
        assert isinstance(death, list) and death[0]["queue"] == work
        assert death[0]["reason"] == "rejected" and death[0]["count"] == 1
        assert isinstance(death[0]["time"], dt.datetime)
        assert dead[0].payload == {"job": 1}
        await failing.stopService()  # an unacked message would return to the queue now
        assert await pika_peer.depth(work) == 0
    finally:
        await failing.stopService()
        await catcher.stopService()
        await pika_peer.delete_queue(work)
        await pika_peer.delete_queue(dlq)


@pytest_twisted.ensureDeferred
async def test_requeue_gives_the_message_to_another_consumer(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    A handler raising Requeue puts the message back; it is redelivered (flagged
    redelivered) and handled by the next attempt.
    """
    name = unique("requeue")
    await connection.declare(Queue(name))
    seen: list[Message] = []

    def once_busy(message: Message) -> None:
        seen.append(message)
        if len(seen) == 1:
            raise Requeue()

    consumer = Consumer(connection, name, once_busy)
    consumer.startService()
    try:
        await Producer(connection).publish("", name, b"create-vm")
        await eventually(lambda: len(seen) == 2)
        assert [m.redelivered for m in seen] == [False, True]
        await consumer.stopService()  # acked, so nothing returns to the queue
        assert await pika_peer.depth(name) == 0
        assert len(seen) == 2
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_undecodable_body_never_reaches_the_handler(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    A body that is not what its content type says (bad JSON, bad UTF-8, or
    pickle without opt-in) is rejected without calling the handler; the good
    message after it is handled.
    """
    name = unique("garbage")
    await connection.declare(Queue(name))
    handled: list[Message] = []
    consumer = Consumer(connection, name, handled.append)
    consumer.startService()
    try:
        await consumer.when_ready()
        for body, ctype in [
            (b"{not json", "application/json"),
            (b"\xff\xfe", "text/plain"),
            (b"\x80\x04K\x01.", "application/python-pickle"),
            (b'{"ok": true}', "application/json"),
        ]:
            await pika_peer.publish("", name, body, pika.BasicProperties(content_type=ctype))
        await eventually(lambda: handled)
        await consumer.stopService()  # rejected and acked: nothing returns to the queue
        assert await pika_peer.depth(name) == 0
        assert [m.payload for m in handled] == [{"ok": True}]
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_handlers_may_return_values_deferreds_or_coroutines(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    A plain function, one returning a Deferred and an async def all get their
    messages acked once they finish; a coroutine that raises rejects its
    message to the dead-letter queue instead.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    q_plain, q_deferred, q_coro, dlq = (unique(n) for n in ("plain", "deferred", "coro", "dlq"))
    dead_letter = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
    await connection.declare(
        Queue(dlq), Queue(q_plain), Queue(q_deferred), Queue(q_coro, arguments=dead_letter)
    )
    seen: list[str] = []

    def plain(m: Message) -> str:
        seen.append("plain")
        return "ignored"

    def deferred(m: Message) -> object:
        return deferLater(reactor, 0.01, seen.append, "deferred")

    async def coro(m: Message) -> None:
        await deferLater(reactor, 0.01, lambda: None)
        seen.append(f"coro:{m.body.decode()}")
        if m.body == b"bad":
            raise RuntimeError("async failure")

    consumers = [
        Consumer(connection, q, h) for q, h in ((q_plain, plain), (q_deferred, deferred), (q_coro, coro))
    ]
    for c in consumers:
        c.startService()
    try:
        producer = Producer(connection)
        for q in (q_plain, q_deferred):
            await producer.publish("", q, b"x")
        await producer.publish("", q_coro, b"good")
        await producer.publish("", q_coro, b"bad")
        await eventually(lambda: len(seen) == 4)
        assert sorted(seen) == ["coro:bad", "coro:good", "deferred", "plain"]
        for c in consumers:
            await c.stopService()  # unacked messages would return to their queues now
        for q in (q_plain, q_deferred, q_coro):
            assert await pika_peer.depth(q) == 0
        await eventually(lambda: pika_peer.depth(dlq).addCallback(lambda n: n == 1))
        [(_m, _p, body)] = await pika_peer.get(dlq)
        assert body == b"bad"
    finally:
        for c in consumers:
            await c.stopService()
        for q in (q_plain, q_deferred, q_coro, dlq):
            await pika_peer.delete_queue(q)
