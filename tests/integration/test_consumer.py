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

from .conftest import PikaPeer, eventually, unique

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
        await eventually(lambda: pika_peer.depth(name).addCallback(lambda n: n == 0))
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
        await consumer.wait_consuming()
        for body, ctype in [
            (b"{not json", "application/json"),
            (b"\xff\xfe", "text/plain"),
            (b"\x80\x04K\x01.", "application/python-pickle"),
            (b'{"ok": true}', "application/json"),
        ]:
            await pika_peer.publish("", name, body, pika.BasicProperties(content_type=ctype))
        await eventually(lambda: handled)
        await eventually(lambda: pika_peer.depth(name).addCallback(lambda n: n == 0))
        assert [m.payload for m in handled] == [{"ok": True}]
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)
