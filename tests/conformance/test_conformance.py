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
    in RabbitMQ's words (RabbitMQ 4 too: the queue exists, so this is not a
    new transient queue).
    """
    conn = await broker.connect()
    q = broker.name("flags")
    await broker.wait(conn.declare(Queue(q)))
    with pytest.raises(PreconditionFailed) as caught:
        await broker.wait(conn.declare(Queue(q, durable=False)))
    assert f"inequivalent arg 'durable' for queue '{q}' in vhost '/'" in caught.value.reply_text
    assert "received 'false' but current is 'true'" in caught.value.reply_text


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
    await broker.wait(a.when_ready())
    b = Consumer(conn, q, lambda m: fast.append(m.body), prefetch=1)
    b.startService()
    await broker.wait(b.when_ready())
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
    await broker.wait(consumer.when_ready())
    channel = await broker.wait(owner.channel())
    await broker.wait(channel.call("queue.delete", queue=q))
    await broker.until(lambda: cancelled == ["cancelled"])
    await broker.wait(consumer.stopService())


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"a": 1}, [False, True]),
        ({"a": 1, "b": 2}, [True, True]),
        ({"a": 2, "c": 3}, [False, False]),
    ],
)
@pytest_twisted.ensureDeferred
async def test_headers_exchange_matches_all_or_any(
    broker: Env, headers: dict[str, Any], expected: list[bool]
) -> None:
    """
    A headers exchange: an x-match all binding needs every pair, an any
    binding one of them.
    """
    conn = await broker.connect()
    exchange = Exchange(broker.name("headers"), "headers")
    all_q, any_q = Queue(broker.name("all")), Queue(broker.name("any"))
    await broker.wait(
        conn.declare(
            exchange,
            all_q,
            any_q,
            Binding(all_q, exchange, "", {"x-match": "all", "a": 1, "b": 2}),
            Binding(any_q, exchange, "", {"x-match": "any", "a": 1, "b": 2}),
        )
    )
    await broker.wait(Producer(conn).publish(exchange.name, "", "x", headers=headers))
    assert [await broker.depth(conn, q.name) == 1 for q in (all_q, any_q)] == expected


@pytest_twisted.ensureDeferred
async def test_exchange_to_exchange_binding(broker: Env) -> None:
    """
    A message reaches a queue through an exchange bound to another exchange.
    """
    from txmsg import ExchangeBinding

    conn = await broker.connect()
    source = Exchange(broker.name("source"), "topic")
    destination = Exchange(broker.name("destination"), "direct")
    q = Queue(broker.name("e2e"))
    await broker.wait(
        conn.declare(
            source,
            destination,
            q,
            ExchangeBinding(destination, source, "logs.#"),
            Binding(q, destination, "logs.kern"),
        )
    )
    producer = Producer(conn)
    await broker.wait(producer.publish(source.name, "logs.kern", "routed"))
    await broker.wait(producer.publish(source.name, "logs.mail", "not for q"))
    assert await broker.depth(conn, q.name) == 1


async def _dead_letter_pair(broker: Env, conn: Any, **arguments: Any) -> tuple[Queue, Queue]:
    dlx = Exchange(broker.name("dlx"), "fanout")
    dlq = Queue(broker.name("dlq"))
    q = Queue(broker.name("dead"), arguments={"x-dead-letter-exchange": dlx.name, **arguments})
    await broker.wait(conn.declare(dlx, dlq, Binding(dlq, dlx, ""), q))
    return q, dlq


async def _take_one(broker: Env, conn: Any, queue: str) -> Message:
    got: list[Message] = []
    consumer = Consumer(conn, queue, got.append)
    consumer.startService()
    await broker.until(lambda: len(got) == 1)
    await broker.wait(consumer.stopService())
    return got[0]


@pytest_twisted.ensureDeferred
async def test_rejected_message_is_dead_lettered_with_x_death(broker: Env) -> None:
    """
    A message rejected without requeue goes to the queue's dead-letter
    exchange, with an x-death entry: count 1, reason rejected, the queue, the
    original exchange and routing keys.
    """
    from txmsg import Reject

    conn = await broker.connect()
    q, dlq = await _dead_letter_pair(broker, conn)
    await broker.wait(Producer(conn).publish("", q.name, "poison", headers={"tenant": "acme"}))

    def refuse(m: Message) -> None:
        raise Reject()

    consumer = Consumer(conn, q, refuse)
    consumer.startService()
    await broker.until(lambda: consumer.rejected == 1)
    await broker.wait(consumer.stopService())
    dead = await _take_one(broker, conn, dlq.name)
    assert dead.body == b"poison"
    headers = dead.headers or {}
    [death] = headers["x-death"]
    assert (death["count"], death["reason"], death["queue"]) == (1, "rejected", q.name)
    assert (death["exchange"], death["routing-keys"]) == ("", [q.name])
    assert headers["x-first-death-reason"] == "rejected" and headers["tenant"] == "acme"


@pytest.mark.parametrize("how", ["queue x-message-ttl", "message expiration"])
@pytest_twisted.ensureDeferred
async def test_expired_message_is_dead_lettered(broker: Env, how: str) -> None:
    """
    A message left in a queue past its TTL (the queue's x-message-ttl, or its
    own expiration) is dead-lettered with reason expired.
    """
    conn = await broker.connect()
    if how == "queue x-message-ttl":
        q, dlq = await _dead_letter_pair(broker, conn, **{"x-message-ttl": 100})
        await broker.wait(Producer(conn).publish("", q.name, "stale"))
    else:
        q, dlq = await _dead_letter_pair(broker, conn)
        await broker.wait(Producer(conn).publish("", q.name, "stale", expiration=100))
    await broker.sleep(0.5)
    assert await broker.depth(conn, q.name) == 0
    dead = await _take_one(broker, conn, dlq.name)
    assert dead.body == b"stale"
    assert (dead.headers or {})["x-death"][0]["reason"] == "expired"


@pytest_twisted.ensureDeferred
async def test_max_length_drops_the_oldest_to_the_dead_letter_exchange(broker: Env) -> None:
    """
    x-max-length 2 (overflow drop-head): a third message pushes the oldest out,
    dead-lettered with reason maxlen.
    """
    conn = await broker.connect()
    q, dlq = await _dead_letter_pair(broker, conn, **{"x-max-length": 2})
    producer = Producer(conn)
    for i in range(3):
        await broker.wait(producer.publish("", q.name, f"m{i}"))
    assert await broker.depth(conn, q.name) == 2
    dead = await _take_one(broker, conn, dlq.name)
    assert dead.body == b"m0"
    assert (dead.headers or {})["x-death"][0]["reason"] == "maxlen"


@pytest_twisted.ensureDeferred
async def test_max_length_reject_publish_nacks_the_publish(broker: Env) -> None:
    """
    x-max-length 1 with x-overflow reject-publish: the second confirmed publish
    is nacked and the queue keeps the first.
    """
    from txmsg.producer import Nacked

    conn = await broker.connect()
    q = Queue(broker.name("full"), arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    await broker.wait(conn.declare(q))
    producer = Producer(conn)
    await broker.wait(producer.publish("", q.name, "first"))
    with pytest.raises(Nacked):
        await broker.wait(producer.publish("", q.name, "second"))
    assert await broker.depth(conn, q.name) == 1


@pytest_twisted.ensureDeferred
async def test_rpc_over_direct_reply_to(broker: Env) -> None:
    """
    Direct reply-to: a request published with reply_to amq.rabbitmq.reply-to
    gets its reply on the requesting channel, no reply queue declared; the
    server sees a reply_to naming that channel.
    """
    from txmsg import RpcClient, RpcServer

    server_conn = await broker.connect()
    client_conn = await broker.connect()
    name = broker.name("rpc")
    seen: list[str] = []

    def answer(m: Message) -> Any:
        seen.append(m.reply_to or "")
        return m.payload * 2

    server = RpcServer(server_conn, Queue(name), answer)
    server.startService()
    await broker.wait(server.when_ready())
    client = RpcClient(client_conn)
    assert await broker.wait(client.call(name, 21)) == 42
    assert seen[0].startswith("amq.rabbitmq.reply-to.")
    await broker.wait(server.stopService())


@pytest_twisted.ensureDeferred
async def test_auto_delete_queue_goes_with_its_last_consumer(broker: Env) -> None:
    """
    An auto-delete queue stays while consumed and is deleted when its last
    consumer is cancelled.
    """
    conn = await broker.connect()
    q = Queue(broker.name("auto"), auto_delete=True)
    consumer = Consumer(conn, q, lambda m: None)
    consumer.startService()
    await broker.wait(consumer.when_ready())
    assert await broker.depth(conn, q.name) == 0
    await broker.wait(consumer.stopService())
    with pytest.raises(NotFound):
        await broker.depth(conn, q.name)


@pytest_twisted.ensureDeferred
async def test_channel_closed_with_unacked_messages_requeues_them_flagged(broker: Env) -> None:
    """
    Messages delivered on a channel that closes before acking them go back to
    the queue, and come again with redelivered set.
    """
    conn = await broker.connect()
    q = broker.name("unacked")
    await broker.wait(conn.declare(Queue(q)))
    await broker.wait(Producer(conn).publish("", q, "held"))
    channel = await broker.wait(conn.channel())
    await broker.wait(channel.call("basic.consume", queue=q, consumer_tag="c1", no_ack=False))
    await broker.sleep(0.1)
    await broker.wait(channel.close())
    redelivered: list[bool] = []
    consumer = Consumer(conn, q, lambda m: redelivered.append(m.redelivered))
    consumer.startService()
    await broker.until(lambda: redelivered == [True])
    await broker.wait(consumer.stopService())


@pytest_twisted.ensureDeferred
async def test_a_retry_waits_in_its_delay_queue_and_the_last_attempt_rests_in_the_dlq(broker: Env) -> None:
    """
    A consumer's retry policy on the broker's own TTL and dead-lettering: a
    failed message waits in QUEUE.retry.200ms (nobody sees it there), comes
    back to the queue after the delay, and after its last attempt is in
    QUEUE.dlq with txmsg's attempt count: the same on both brokers.
    """
    from txmsg import RetryPolicy

    conn = await broker.connect()
    name = broker.name("retry")
    for extra in (f"{name}.retry.200ms", f"{name}.dlq"):
        broker.names.append(extra)
    seen: list[int] = []

    def failing(m: Message) -> None:
        seen.append((m.headers or {}).get("x-txmsg-attempts", 0))
        raise RuntimeError("not today")

    consumer = Consumer(conn, Queue(name), failing, retry=RetryPolicy(retries=1, delay=0.2))
    consumer.startService()
    await broker.until(lambda: consumer.channel is not None and consumer.consumer_tag is not None)
    await broker.wait(Producer(conn).publish("", name, "retry me"))
    await broker.until(lambda: consumer.retries_scheduled == 1)
    assert seen == [0]
    await broker.sleep(0.6)
    await broker.until(lambda: consumer.dead_lettered == 1)
    assert seen == [0, 1]
    await broker.wait(consumer.stopService())
    assert await broker.depth(conn, name) == 0
    dead = await _take_one(broker, conn, f"{name}.dlq")
    assert dead.body == b"retry me" and (dead.headers or {})["x-txmsg-attempts"] == 2


@pytest_twisted.ensureDeferred
async def test_queue_info_and_check_exchange_ask_once_without_topology(broker: Env) -> None:
    """
    Connection.queue_info counts a queue's ready messages and consumers;
    a missing queue or exchange is NotFound; nothing joins the topology.
    """
    conn = await broker.connect()
    q = Queue(broker.name("info"))
    await broker.wait(conn.declare(q))
    conn.forget(q)
    producer = Producer(conn)
    for body in ("a", "b"):
        await broker.wait(producer.publish("", q.name, body))
    info = await broker.wait(conn.queue_info(q.name))
    assert (info.message_count, info.consumer_count) == (2, 0)
    with pytest.raises(NotFound):
        await broker.wait(conn.queue_info(broker.name("missing")))
    with pytest.raises(NotFound):
        await broker.wait(conn.check_exchange(broker.name("missing-x")))
    assert await broker.wait(conn.check_exchange("amq.direct")) is None
    assert q not in conn.topology


@pytest_twisted.ensureDeferred
async def test_manual_settlement_holds_the_prefetch_and_no_ack_holds_nothing(broker: Env) -> None:
    """
    acks="manual" with prefetch 2: two of three messages arrive and the
    third waits until one is acked; acks="none" takes the rest at once.
    """
    conn = await broker.connect()
    q = Queue(broker.name("settle"))
    await broker.wait(conn.declare(q))
    producer = Producer(conn)
    for body in ("a", "b", "c", "d", "e"):
        await broker.wait(producer.publish("", q.name, body))
    held: list[Message] = []
    manual = Consumer(conn, q.name, held.append, acks="manual", prefetch=2)
    manual.startService()
    await broker.until(lambda: len(held) == 2)
    await broker.sleep(0.3)
    assert [m.body for m in held] == [b"a", b"b"] and await broker.depth(conn, q.name) == 3
    held[0].ack()
    await broker.until(lambda: len(held) == 3)
    held[1].ack()
    held[2].ack()
    await broker.until(lambda: len(held) == 5)
    await broker.wait(manual.stopService())
    taken: list[Message] = []
    fast = Consumer(conn, q.name, taken.append, acks="none")
    fast.startService()
    await broker.until(lambda: len(taken) == 2)
    await broker.wait(fast.stopService())
    assert sorted(m.body for m in taken) == [b"d", b"e"]
    assert await broker.depth(conn, q.name) == 0
