"""
Where RabbitMQ 4 differs from RabbitMQ 3, as txmsg meets it: each case runs
against the RabbitMQ of the run (3.10 or 4.3) and against the memory broker
imitating that version, and says which version does what.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from txmsg import Connection, DeprecatedFeature, MessageTooLarge, Producer, Queue

from .conftest import Env


async def get_one(broker: Env, channel: Any, queue: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    basic.get one message (a quorum queue takes a moment to put a returned
    message back); its delivery arguments and properties.
    """
    for _ in range(100):
        got = await broker.wait(channel.call("basic.get", queue=queue, no_ack=False))
        if isinstance(got, tuple):
            args, props, _body = got
            return args, props
        await broker.sleep(0.05)
    raise AssertionError(f"no message in {queue}")


def counts(props: dict[str, Any]) -> dict[str, int]:
    headers = props.get("headers") or {}
    return {k: headers[k] for k in ("x-delivery-count", "x-acquired-count") if k in headers}


@pytest_twisted.ensureDeferred
async def test_a_new_transient_shared_queue(broker: Env) -> None:
    """
    RabbitMQ 4.3 as upstream ships refuses a new transient non-exclusive queue
    by closing the connection with 541 (DeprecatedFeature, naming the queue);
    the connection comes back and the same queue declared durable works.
    RabbitMQ 3.10 declares it.
    """
    conn = await broker.connect()
    name = broker.name("transient")
    if broker.denies_transient_queues():
        with pytest.raises(DeprecatedFeature) as caught:
            await broker.wait(conn.declare(Queue(name, durable=False)))
        assert caught.value.reply_code == 541
        assert caught.value.reply_text.startswith(
            "INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated."
        )
        assert f"queue '{name}' (transient)" in str(caught.value)
        await broker.sleep(3)  # the broker closed the connection: it comes back
        info = await broker.wait(conn.declare(Queue(name)))
        assert info.name == name
    else:
        info = await broker.wait(conn.declare(Queue(name, durable=False)))
        assert info.name == name
    # exclusive transient queues are a process's own: every version takes them
    own = await broker.wait(conn.declare(Queue(exclusive=True)))
    assert own.name.startswith("amq.gen-")


@pytest.mark.rabbitmq(since="4.0")
@pytest_twisted.ensureDeferred
async def test_a_body_over_16_mib_fails_alone(broker: Env) -> None:
    """
    RabbitMQ 4's max_message_size is 16 MiB: a body one byte over it is
    refused (the broker closes the channel), that publish alone fails with
    MessageTooLarge, and the publishes on either side are confirmed and held.
    """
    conn = await broker.connect()
    q = broker.name("size")
    await broker.wait(conn.declare(Queue(q)))
    producer = Producer(conn)
    sent = [producer.publish("", q, body) for body in (b"before", b"x" * ((16 << 20) + 1), b"after")]
    await broker.wait(sent[0])
    with pytest.raises(MessageTooLarge) as caught:
        await broker.wait(sent[1])
    await broker.wait(sent[2])
    assert caught.value.limit == 16 << 20 and caught.value.size == (16 << 20) + 1
    assert await broker.depth(conn, q) == 2


@pytest_twisted.ensureDeferred
async def test_a_quorum_queue_counts_rejects_and_nacks(broker: Env) -> None:
    """
    One message of a quorum queue, got, rejected with requeue, got, nacked
    with requeue, got.  RabbitMQ 4 counts the reject in x-delivery-count and
    every earlier delivery in x-acquired-count (the nack only there; neither
    header on the first delivery); RabbitMQ 3 counts both returns in
    x-delivery-count, from 0.
    """
    conn = await broker.connect()
    q = broker.name("counted")
    await broker.wait(conn.declare(Queue.quorum(q)))
    await broker.wait(Producer(conn).publish("", q, "once"))
    channel = await broker.wait(conn.channel())
    seen = []
    args, props = await get_one(broker, channel, q)
    seen.append(counts(props))
    channel.reject(args["delivery_tag"], requeue=True)
    args, props = await get_one(broker, channel, q)
    seen.append(counts(props))
    channel.nack(args["delivery_tag"], requeue=True)
    args, props = await get_one(broker, channel, q)
    seen.append(counts(props))
    assert args["redelivered"]
    channel.ack(args["delivery_tag"])
    if broker.version >= (4, 0):
        assert seen == [
            {},
            {"x-delivery-count": 1, "x-acquired-count": 1},
            {"x-delivery-count": 1, "x-acquired-count": 2},
        ]
    else:
        assert seen == [{"x-delivery-count": 0}, {"x-delivery-count": 1}, {"x-delivery-count": 2}]
    await broker.wait(channel.close())


@pytest_twisted.ensureDeferred
async def test_a_quorum_queue_delivery_limit(broker: Env) -> None:
    """
    A quorum queue with x-delivery-limit 2 and a dead-letter queue.  On
    RabbitMQ 4 three nacks do not use the limit up and the third reject
    dead-letters the message; on RabbitMQ 3 the third return of any kind does.
    """
    conn: Connection = await broker.connect()
    q, dlq = broker.name("limited"), broker.name("limited-dlq")
    await broker.wait(conn.declare(Queue(dlq)))
    limited = Queue.quorum(q, x_delivery_limit=2, x_dead_letter_exchange="", x_dead_letter_routing_key=dlq)
    await broker.wait(conn.declare(limited))
    await broker.wait(Producer(conn).publish("", q, "tired"))
    channel = await broker.wait(conn.channel())
    returns = 0
    for how in [channel.nack] * 3 + [channel.reject] * 3:
        args, _props = await get_one(broker, channel, q)
        how(args["delivery_tag"], requeue=True)
        returns += 1
        # back in the queue, or dead-lettered
        for _ in range(100):
            if await broker.depth(conn, dlq) or await broker.depth(conn, q):
                break
            await broker.sleep(0.05)
        if await broker.depth(conn, dlq):
            break
    assert await broker.depth(conn, dlq) == 1
    assert await broker.depth(conn, q) == 0
    assert returns == (6 if broker.version >= (4, 0) else 3)
    await broker.wait(channel.close())
