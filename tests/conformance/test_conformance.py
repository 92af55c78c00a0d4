"""
Broker behaviours users' code relies on, each checked against the in-memory
broker (txmsg.testing) and against RabbitMQ: the same test, the same
assertions.  Where the memory broker cannot match RabbitMQ a case is marked
with the reason (none yet among these).
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from txmsg import Binding, Consumer, Exchange, Message, Producer, Queue
from txmsg.errors import NotFound, PreconditionFailed, ResourceLocked
from txmsg.producer import Unroutable

from .conftest import Env


@pytest_twisted.ensureDeferred
async def test_confirmed_publishes_are_held_by_the_queue(broker: Env) -> None:
    """
    Publisher confirms: every publish is confirmed, and the queue holds them.
    """
    conn = await broker.connect()
    q = broker.name("held")
    await broker.wait(conn.declare(Queue(q)))
    producer = Producer(conn)
    for i in range(5):
        await broker.wait(producer.publish("", q, f"m{i}"))
    assert await broker.depth(conn, q) == 5


@pytest_twisted.ensureDeferred
async def test_mandatory_unroutable_is_returned_with_312(broker: Env) -> None:
    """
    A mandatory message no queue takes comes back: Unroutable, 312 NO_ROUTE.
    """
    conn = await broker.connect()
    with pytest.raises(Unroutable) as caught:
        await broker.wait(Producer(conn).publish("", broker.name("nobody"), "x", mandatory=True))
    assert (caught.value.reply_code, caught.value.reply_text) == (312, "NO_ROUTE")


@pytest_twisted.ensureDeferred
async def test_publish_to_a_missing_exchange_is_404(broker: Env) -> None:
    """
    Publishing to an exchange that does not exist: the channel closes with 404.
    """
    conn = await broker.connect()
    with pytest.raises(NotFound) as caught:
        await broker.wait(Producer(conn).publish(broker.name("no-exchange"), "k", "x"))
    assert caught.value.reply_code == 404


@pytest_twisted.ensureDeferred
async def test_redeclare_with_other_flags_is_406_naming_the_flag(broker: Env) -> None:
    """
    A queue declared again with another durable flag: 406 naming 'durable',
    in RabbitMQ's words.
    """
    conn = await broker.connect()
    q = broker.name("flags")
    await broker.wait(conn.declare(Queue(q)))
    with pytest.raises(PreconditionFailed) as caught:
        await broker.wait(conn.declare(Queue(q, durable=True)))
    assert f"inequivalent arg 'durable' for queue '{q}' in vhost '/'" in caught.value.reply_text
    assert "received 'true' but current is 'false'" in caught.value.reply_text


@pytest_twisted.ensureDeferred
async def test_passive_declare_of_a_missing_queue_is_404(broker: Env) -> None:
    """
    Asking after a queue that does not exist: 404 NOT_FOUND naming it.
    """
    conn = await broker.connect()
    q = broker.name("missing")
    with pytest.raises(NotFound) as caught:
        await broker.depth(conn, q)
    assert caught.value.reply_text == f"NOT_FOUND - no queue '{q}' in vhost '/'"


@pytest_twisted.ensureDeferred
async def test_exclusive_queue_of_another_connection_is_locked(broker: Env) -> None:
    """
    Another connection's exclusive queue: 405 RESOURCE_LOCKED (RabbitMQ's code,
    where the AMQP spec would say 403).
    """
    owner = await broker.connect()
    other = await broker.connect()
    q = broker.name("exclusive")
    await broker.wait(owner.declare(Queue(q, exclusive=True)))
    with pytest.raises(ResourceLocked) as caught:
        await broker.wait(other.declare(Queue(q, exclusive=True)))
    assert caught.value.reply_code == 405


@pytest_twisted.ensureDeferred
async def test_server_named_queue(broker: Env) -> None:
    """
    A queue declared without a name gets one from the broker, amq.gen-...
    """
    conn = await broker.connect()
    channel = await broker.wait(conn.channel())
    ok = await broker.wait(channel.call("queue.declare", queue="", exclusive=True))
    assert ok["queue"].startswith("amq.gen-")


@pytest.mark.parametrize(
    "kind, bindings, key, expected",
    [
        ("direct", ["a", "b"], "b", [False, True]),
        ("fanout", ["a", "b"], "anything", [True, True]),
        ("topic", ["kern.*", "#.critical"], "kern.critical", [True, True]),
        ("topic", ["kern.*", "#.critical"], "kern.disk.full", [False, False]),
        ("topic", ["kern.#", "*.disk.*"], "kern.disk.full", [True, True]),
        ("topic", ["#", "a.*"], "a", [True, False]),
    ],
)
@pytest_twisted.ensureDeferred
async def test_exchange_routing(
    broker: Env, kind: str, bindings: list[str], key: str, expected: list[bool]
) -> None:
    """
    Direct (equal key), fanout (every queue), topic (* one word, # zero or more):
    which of two bound queues get a message.
    """
    conn = await broker.connect()
    exchange = Exchange(broker.name(kind), kind)
    queues = [Queue(broker.name("route")) for _ in bindings]
    await broker.wait(
        conn.declare(
            exchange, *queues, *[Binding(q, exchange, b) for q, b in zip(queues, bindings, strict=True)]
        )
    )
    await broker.wait(Producer(conn).publish(exchange.name, key, "x"))
    got = [await broker.depth(conn, q.name) == 1 for q in queues]
    assert got == expected


@pytest_twisted.ensureDeferred
async def test_prefetch_and_fair_dispatch(broker: Env) -> None:
    """
    A consumer with prefetch 1 holding its message gets no other; a second
    consumer is given the rest as it acks them.
    """
    from twisted.internet.defer import Deferred

    conn = await broker.connect()
    q = broker.name("fair")
    await broker.wait(conn.declare(Queue(q)))
    producer = Producer(conn)
    for i in range(4):
        await broker.wait(producer.publish("", q, f"m{i}"))
    held: Deferred[None] = Deferred()
    slow: list[bytes] = []
    fast: list[bytes] = []

    def hold(m: Message) -> Deferred[None]:
        slow.append(m.body)
        return held

    a = Consumer(conn, q, hold, prefetch=1)
    a.startService()
    await broker.wait(a.wait_consuming())
    b = Consumer(conn, q, lambda m: fast.append(m.body), prefetch=1)
    b.startService()
    await broker.wait(b.wait_consuming())
    await broker.until(lambda: len(fast) == 3)
    assert slow == [b"m0"] and fast == [b"m1", b"m2", b"m3"]
    held.callback(None)
    await broker.until(lambda: a.consumed == 1)
    for c in (a, b):
        await broker.wait(c.stopService())


@pytest_twisted.ensureDeferred
async def test_requeued_message_comes_back_flagged_redelivered(broker: Env) -> None:
    """
    A handler asking to requeue: the message is delivered again with
    redelivered set.
    """
    from txmsg import Requeue

    conn = await broker.connect()
    q = broker.name("requeue")
    await broker.wait(conn.declare(Queue(q)))
    await broker.wait(Producer(conn).publish("", q, "again"))
    seen: list[bool] = []

    def handle(m: Message) -> Any:
        seen.append(m.redelivered)
        if len(seen) == 1:
            raise Requeue()

    consumer = Consumer(conn, q, handle)
    consumer.startService()
    await broker.until(lambda: len(seen) == 2)
    assert seen == [False, True]
    await broker.wait(consumer.stopService())


@pytest_twisted.ensureDeferred
async def test_deleted_queue_cancels_its_consumer(broker: Env) -> None:
    """
    Deleting a consumed queue cancels the consumer (basic.cancel from the
    broker): a consumer of a queue it does not own is told through on_cancel.
    """
    owner = await broker.connect()
    other = await broker.connect()
    q = broker.name("cancel")
    await broker.wait(owner.declare(Queue(q)))
    cancelled: list[str] = []
    consumer = Consumer(other, q, lambda m: None, on_cancel=lambda c: cancelled.append("cancelled"))
    consumer.startService()
    await broker.wait(consumer.wait_consuming())
    channel = await broker.wait(owner.channel())
    await broker.wait(channel.call("queue.delete", queue=q))
    await broker.until(lambda: cancelled == ["cancelled"])
    await broker.wait(consumer.stopService())
