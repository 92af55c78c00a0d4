"""
What RabbitMQ 4 changed, met by txmsg against the in-memory broker made to
behave as 4.3 does (and as 3.10 does, where the two differ): transient
shared queues refused with 541, the 16 MiB max_message_size, and quorum
queues counting a nack apart from a reject.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.python.failure import Failure

from txmsg import (
    Consumer,
    DeprecatedFeature,
    Message,
    MessageTooLarge,
    Producer,
    Queue,
    Requeue,
)
from txmsg.testing import MemoryBroker


def outcome(d: Any) -> list[Any]:
    box: list[Any] = []
    d.addBoth(box.append)
    return box


def test_a_transient_shared_queue_is_refused_with_one_line_and_not_replayed() -> None:
    """
    RabbitMQ 4.3 closes the connection (541) at a transient non-exclusive
    queue: the declaration fails with DeprecatedFeature, which names the
    queue and what to do instead; the connection comes back by itself, the
    refused queue is not declared again, and the next declarations work.
    """
    broker = MemoryBroker(version="4.3")
    conn = broker.connection()
    refused = outcome(conn.declare(Queue("hello", durable=False)))
    broker.flush(advance=5)
    failure = refused[0]
    assert isinstance(failure, Failure) and failure.check(DeprecatedFeature)
    error = failure.value
    assert error.reply_code == 541 and error.feature == "transient_nonexcl_queues"
    assert "queue 'hello' (transient)" in str(error)
    assert "durable" in str(error) and "\n" not in str(error)
    broker.flush(advance=5)  # the broker closed the connection: it comes back
    assert conn.is_connected
    assert not broker.has_queue("hello")
    fine = outcome(conn.declare(Queue("hello")))
    broker.flush()
    assert fine and not isinstance(fine[0], Failure)
    assert broker.state.queues["hello"].durable


def test_the_default_queues_are_ones_rabbitmq_4_accepts() -> None:
    """
    Queue("name") is durable and shared, Queue() server-named and exclusive:
    both are declared on RabbitMQ 4.3 as upstream ships it.
    """
    broker = MemoryBroker(version="4.3")
    conn = broker.connection()
    named, own = Queue("jobs"), Queue()
    assert named.durable and not named.exclusive
    assert own.exclusive and not own.durable
    done = outcome(conn.declare(named, own))
    broker.flush()
    assert not isinstance(done[0], Failure), done
    assert broker.state.queues["jobs"].durable


def test_rabbitmq_3_takes_a_transient_shared_queue() -> None:
    """
    The same explicit transient queue is declared on RabbitMQ 3.10.
    """
    broker = MemoryBroker(version="3.10")
    conn = broker.connection()
    done = outcome(conn.declare(Queue("hello", durable=False)))
    broker.flush()
    assert not isinstance(done[0], Failure), done
    assert not broker.state.queues["hello"].durable


def test_a_consumer_refused_its_transient_queue_says_so_once_and_stops_asking() -> None:
    """
    A consumer that owns a transient queue on 4.3: wait_consuming fails with
    DeprecatedFeature naming the queue, and the consumer does not ask again
    on later connections (no reconnect loop).
    """
    broker = MemoryBroker(version="4.3")
    conn = broker.connection()
    consumer = Consumer(conn, Queue("hello", durable=False), lambda m: None)
    consumer.startService()
    broker.flush(advance=1)
    failure = outcome(consumer.when_ready())[0]
    assert isinstance(failure, Failure) and failure.check(DeprecatedFeature)
    assert "queue 'hello'" in str(failure.value)
    broker.flush(advance=5)  # the connection the broker closed comes back
    assert conn.is_connected
    servers = [server.connection_id for _, server, _ in broker._links]
    broker.flush(advance=60)
    assert conn.is_connected and [server.connection_id for _, server, _ in broker._links] == servers


def test_an_adopting_queue_uses_the_one_that_exists_with_other_flags() -> None:
    """
    Queue(name, adopt=True) declared where another program made the queue a
    quorum queue: no 406 failure, the existing queue is used as it is.
    """
    broker = MemoryBroker()
    conn = broker.connection()
    outcome(conn.declare(Queue.quorum("hello")))
    broker.flush()
    strict = outcome(conn.declare(Queue("hello")))
    adopted = outcome(conn.declare(Queue("hello", adopt=True)))
    broker.flush()
    assert isinstance(strict[0], Failure) and "x-queue-type" in str(strict[0].value)
    assert not isinstance(adopted[0], Failure), adopted
    assert broker.state.queues["hello"].quorum


def test_only_the_message_over_max_message_size_fails() -> None:
    """
    before, a 20 MiB body and after, pipelined: the broker (16 MiB limit)
    closes the channel at the big one; only that publish fails, with
    MessageTooLarge naming size and limit; before and after are confirmed
    and held once each.  The limit is kept: the next big body fails at once,
    with no channel closed.
    """
    broker = MemoryBroker(version="4.3")
    conn = broker.connection()
    outcome(conn.declare(Queue("big")))
    broker.flush()
    producer = Producer(conn)
    bodies = (b"before", b"x" * (20 << 20), b"after")
    results = [outcome(producer.publish("", "big", body)) for body in bodies]
    broker.flush()
    assert results[0] == [None] and results[2] == [None]
    failure = results[1][0]
    assert isinstance(failure, Failure) and failure.check(MessageTooLarge)
    assert (failure.value.size, failure.value.limit) == (20 << 20, 16 << 20)
    assert "16 MiB" in str(failure.value)
    assert sorted(broker.bodies("big")) == [b"after", b"before"]
    assert producer.max_message_size == 16 << 20
    channel = producer._channel
    again = outcome(producer.publish("", "big", b"y" * (17 << 20)))
    assert isinstance(again[0], Failure) and again[0].check(MessageTooLarge)
    broker.flush()
    assert producer._channel is channel and channel is not None and channel.is_open


def test_rabbitmq_3_takes_bodies_up_to_128_mib() -> None:
    """
    On 3.10 (128 MiB limit) a 20 MiB body is confirmed.
    """
    broker = MemoryBroker(version="3.10")
    conn = broker.connection()
    outcome(conn.declare(Queue("big")))
    done = outcome(Producer(conn).publish("", "big", b"x" * (20 << 20)))
    broker.flush()
    assert done == [None]


@pytest.mark.parametrize("version", ["4.3", "3.10"])
def test_not_now_on_a_quorum_queue(version: str) -> None:
    """
    A handler that says Requeue ("not now") nine times, then handles the
    message, on a quorum queue with max_redeliveries 5.  On 4.3 the nacks do
    not count as failed deliveries: it is handled, and its headers carry
    x-acquired-count 9 and no x-delivery-count.  On 3.10 every return counts:
    it is dead-lettered after max_redeliveries, never handled.
    """
    broker = MemoryBroker(version=version)
    conn = broker.connection()
    seen: list[dict[str, Any]] = []

    def handler(message: Message) -> None:
        seen.append(dict(message.headers or {}))
        if len(seen) < 10:
            raise Requeue()

    consumer = Consumer(conn, Queue.quorum("work"), handler, max_redeliveries=5)
    consumer.startService()
    Producer(conn).publish("", "work", b"task")
    broker.flush()
    if version == "4.3":
        assert len(seen) == 10 and consumer.consumed - consumer.requeued == 1
        assert seen[0] == {} and seen[9] == {"x-acquired-count": 9}
    else:
        assert [h["x-delivery-count"] for h in seen] == [0, 1, 2, 3, 4, 5]
        assert consumer.rejected == 1
    assert broker.depth("work") == 0
