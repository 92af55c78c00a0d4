"""
txmsg.testing as a user would use it, the examples of the README's guide: a
consumer handler, an RPC server and a peer group, each tested against the
in-memory broker with a Clock, without a RabbitMQ and without real time.
"""

from __future__ import annotations

import json
from typing import Any

from txmsg import Consumer, Message, PeerGroup, Producer, Queue, RpcClient, RpcServer
from txmsg.testing import MemoryBroker


def test_a_consumer_handler_sees_each_order_once_and_acks_it() -> None:
    """
    A user's handler stores each order; every published order is handled
    once and the queue is left empty (all acked).
    """
    broker = MemoryBroker()
    conn = broker.connection()
    stored: list[dict[str, Any]] = []

    def on_order(message: Message) -> None:
        stored.append(message.payload)

    consumer = Consumer(conn, Queue("orders", durable=True), on_order)
    consumer.startService()
    producer = Producer(conn)
    for n in range(3):
        producer.publish("", "orders", {"id": n}, persistent=True)
    broker.flush()
    assert stored == [{"id": 0}, {"id": 1}, {"id": 2}]
    assert broker.depth("orders") == 0
    assert consumer.consumed == 3


def test_an_rpc_server_answers_and_a_missing_server_fails_fast() -> None:
    """
    A user's RPC server doubles numbers; the client gets 42 for 21; a call to a
    key nobody serves fails at once with NoServer; a call the server never
    answers times out when the clock passes its timeout.
    """

    from txmsg import NoServer, RpcTimeout

    broker = MemoryBroker()
    server_conn, client_conn = broker.connection(), broker.connection()
    server = RpcServer(server_conn, "double", lambda m: m.payload * 2)
    server.startService()
    client = RpcClient(client_conn, reply_queue=True)
    broker.flush()  # the server's queue is declared and consumed
    answers: list[Any] = []
    refused: list[Any] = []
    client.call("double", 21).addBoth(answers.append)
    client.call("nobody-serves-this", 1).addBoth(refused.append)
    broker.flush()
    assert answers == [42]
    assert refused[0].check(NoServer)
    never = RpcServer(
        server_conn, "slow", lambda m: __import__("twisted.internet.defer").internet.defer.Deferred()
    )
    never.startService()
    broker.flush()
    late: list[Any] = []
    client.call("slow", 1, timeout=5).addBoth(late.append)
    broker.flush()
    assert late == []
    broker.flush(advance=5)
    assert late[0].check(RpcTimeout)


def test_every_peer_of_a_group_hears_every_shout() -> None:
    """
    Three peers of a group: each shout is heard by every peer, the shouter too.
    """
    broker = MemoryBroker()
    heard: dict[str, list[Any]] = {"ann": [], "bob": [], "cy": []}
    peers = []
    for name in heard:
        peer = PeerGroup(
            broker.connection(), "chat", lambda m, name=name: heard[name].append(m.payload), peer_id=name
        )
        peer.startService()
        peers.append(peer)
    broker.flush()
    peers[0].shout("hello")
    peers[2].shout({"n": 1})
    broker.flush()
    assert all(got == ["hello", {"n": 1}] for got in heard.values()), json.dumps(heard)


def test_a_dropped_connection_redelivers_what_was_unacked() -> None:
    """
    The fault hook: drop() cuts a connection; the message its handler held
    goes back to the queue flagged redelivered, and the consumer, reconnected,
    handles it again.
    """
    from twisted.internet.defer import Deferred

    broker = MemoryBroker()
    conn = broker.connection()
    held: list[Deferred[None]] = []
    seen: list[bool] = []

    def handle(m: Message) -> Deferred[None] | None:
        seen.append(m.redelivered)
        if len(seen) == 1:
            d: Deferred[None] = Deferred()
            held.append(d)
            return d
        return None

    consumer = Consumer(conn, Queue("work"), handle)
    consumer.startService()
    Producer(conn).publish("", "work", "job")
    broker.flush()
    assert seen == [False]
    broker.drop(conn)
    broker.flush(advance=10)  # the connection's retry delay
    assert conn.is_connected
    assert seen == [False, True]


def test_a_refusing_broker_keeps_connections_out_until_it_accepts() -> None:
    """
    refusing = True: a connection keeps retrying (on the clock) and gets in
    once the broker accepts again.
    """
    broker = MemoryBroker()
    broker.refusing = True
    conn = broker.connection()
    assert not conn.is_connected
    broker.refusing = False
    broker.flush(advance=30)
    assert conn.is_connected


def test_what_it_does_not_implement_fails_loudly() -> None:
    """
    A method it does not implement (AMQP transactions) closes the connection
    with 540 NOT_IMPLEMENTED instead of behaving wrongly in silence.
    """
    broker = MemoryBroker()
    conn = broker.connection()
    failures: list[Any] = []
    channel = conn.channel()
    broker.flush()
    channel.result.call("tx.select").addErrback(failures.append)
    broker.flush()
    assert failures and "NOT_IMPLEMENTED" in str(failures[0].value)


def test_blocked_publishers_wait_until_unblocked() -> None:
    """
    block(): connection.blocked reaches the producer, whose publishes wait
    unwritten; unblock() lets them go and they are confirmed.
    """
    broker = MemoryBroker()
    conn = broker.connection()
    conn.declare(Queue("q"))
    producer = Producer(conn)
    broker.block()
    d = producer.publish("", "q", "held")
    broker.flush()
    assert producer.waiting == 1 and broker.depth("q") == 0 and not d.called
    broker.unblock()
    assert d.called and broker.depth("q") == 1


def test_redeliver_gives_unacked_messages_again_flagged() -> None:
    """
    redeliver(): a message whose handler has not finished is delivered again,
    redelivered set, as after a lost ack.
    """
    from twisted.internet.defer import Deferred

    broker = MemoryBroker()
    conn = broker.connection()
    seen: list[bool] = []
    Consumer(conn, Queue("jobs"), lambda m: seen.append(m.redelivered) or Deferred()).startService()
    Producer(conn).publish("", "jobs", "job")
    broker.flush()
    broker.redeliver()
    assert seen == [False, True]


def test_rpc_over_direct_reply_to() -> None:
    """
    RpcClient's default, direct reply-to (amq.rabbitmq.reply-to), works on the
    memory broker as on RabbitMQ.
    """
    broker = MemoryBroker()
    RpcServer(broker.connection(), "echo", lambda m: m.payload).startService()
    client = RpcClient(broker.connection())
    broker.flush()
    answers: list[Any] = []
    client.call("echo", {"hi": 1}).addBoth(answers.append)
    broker.flush()
    assert answers == [{"hi": 1}]
