"""
Settlement modes on the in-memory broker: a handler that settles its own
messages (unsettled ones hold the prefetch), settling twice or after a
reconnect is a clear error and never breaks the channel, consuming without
acks, and batches acked together.
"""

from __future__ import annotations

from typing import Any

import pytest

from txmsg import Consumer, Message, Producer, Queue, TxmsgError
from txmsg.consumer import AlreadySettled, StaleDelivery
from txmsg.testing import MemoryBroker


def _setup(n: int, **kwargs: Any) -> tuple[MemoryBroker, Any, list[Message], Consumer]:
    broker = MemoryBroker()
    conn = broker.connection()
    got: list[Message] = []
    handler = kwargs.pop("handler", got.append)
    consumer = Consumer(conn, Queue("work"), handler, **kwargs)
    consumer.startService()
    broker.flush()
    producer = Producer(conn)
    for i in range(n):
        producer.publish("", "work", f"m{i}")
    broker.flush()
    return broker, conn, got, consumer


def _unacked(broker: MemoryBroker) -> int:
    return sum(len(ch.unacked) for _, server, _ in broker._links for ch in server.channels.values())


def test_a_manual_handler_settles_later_and_unsettled_messages_hold_the_prefetch() -> None:
    """
    With prefetch 3 and five messages, the handler gets three and holds
    them unacked; acking two lets two more in; nothing is acked by returning.
    """
    broker, _, got, consumer = _setup(5, acks="manual", prefetch=3)
    assert [m.body for m in got] == [b"m0", b"m1", b"m2"]
    assert _unacked(broker) == 3 and broker.depth("work") == 2
    got[0].ack()
    got[1].ack()
    broker.flush()
    assert len(got) == 5 and _unacked(broker) == 3 and broker.depth("work") == 0
    for m in got[2:]:
        m.ack()
    broker.flush()
    assert _unacked(broker) == 0 and consumer.consumed == 5


def test_settling_twice_or_after_a_reconnect_is_a_clear_error_and_the_consumer_goes_on() -> None:
    """
    A second ack raises AlreadySettled; an ack of a message whose channel
    went (the broker requeued it) raises StaleDelivery; the consumer gets
    the message again on the new connection and can ack it there.
    """
    broker, conn, got, consumer = _setup(1, acks="manual")
    first = got[0]
    first.ack()
    with pytest.raises(AlreadySettled):
        first.ack()
    Producer(conn).publish("", "work", "again")
    broker.flush()
    held = got[1]
    broker.drop(conn)
    broker.flush(5)
    with pytest.raises(StaleDelivery):
        held.ack()
    broker.flush(5)
    assert got[-1].body == b"again" and got[-1].redelivered
    got[-1].ack()
    broker.flush()
    assert _unacked(broker) == 0 and broker.depth("work") == 0 and consumer.channel is not None


def test_a_manual_handler_that_raises_before_settling_has_its_message_rejected() -> None:
    """
    An exception with the message unsettled settles it as a failure (rejected).
    """

    def handler(message: Message) -> None:
        raise RuntimeError("boom")

    broker, _, _, consumer = _setup(1, acks="manual", handler=handler)
    assert consumer.rejected == 1 and _unacked(broker) == 0


def test_consuming_without_acks_forgets_each_message_as_it_is_sent() -> None:
    """
    acks="none": the broker keeps nothing unacked, even when the handler fails.
    """

    def handler(message: Message) -> None:
        raise RuntimeError("lost, as no_ack means")

    broker, _, _, consumer = _setup(4, acks="none", handler=handler)
    assert broker.depth("work") == 0 and _unacked(broker) == 0 and consumer.consumed == 4


def test_a_message_of_an_auto_consumer_cannot_be_settled_by_hand() -> None:
    """
    message.ack() outside manual mode says what is needed.
    """
    _, _, got, _ = _setup(1)
    with pytest.raises(TxmsgError, match="acks='manual'"):
        got[0].ack()


def test_batches_of_n_or_what_came_within_the_wait_are_handled_and_acked_together() -> None:
    """
    batch_size 3, batch_wait 1 s: seven messages come as [3], [3], then
    (a second later) [1]; each batch is acked once the handler returns.
    """
    batches: list[list[bytes]] = []
    broker, _, _, consumer = _setup(
        7, handler=lambda ms: batches.append([m.body for m in ms]), batch_size=3, batch_wait=1.0, prefetch=10
    )
    assert batches == [[b"m0", b"m1", b"m2"], [b"m3", b"m4", b"m5"]]
    assert _unacked(broker) == 1
    broker.flush(1.1)
    assert batches[-1] == [b"m6"] and _unacked(broker) == 0 and consumer.consumed == 7


def test_a_failed_batch_settles_each_message_as_a_failure() -> None:
    """
    A batch handler that raises: every message of the batch is rejected.
    """

    def handler(messages: list[Message]) -> None:
        raise RuntimeError("the database refused the bulk insert")

    broker, _, _, consumer = _setup(2, handler=handler, batch_size=2, prefetch=10)
    assert consumer.rejected == 2 and _unacked(broker) == 0


def test_bad_settlement_arguments_are_refused() -> None:
    """
    An unknown mode, a batch without acks, or a prefetch too small for a batch.
    """
    broker = MemoryBroker()
    conn = broker.connection()
    for kwargs in (
        {"acks": "sometimes"},
        {"acks": "none", "batch_size": 2},
        {"prefetch": 5, "batch_size": 10},
    ):
        with pytest.raises(ValueError):
            Consumer(conn, "q", lambda m: None, **kwargs)
