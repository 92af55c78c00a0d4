"""
Settlement modes on the real broker, with a pika peer publishing: what the
broker holds unacked while a manual handler holds messages, a batch of a
bulk insert acked together, consuming without acks, and a stale ack after
the broker closed the connection.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from txmsg import Connection, Consumer, Message, Queue
from txmsg.consumer import StaleDelivery

from .support import PikaPeer, close_connection, eventually, rabbitmqctl, sleep, unique

pytestmark = pytest.mark.integration


def _unacked(queue: str) -> int:
    out = rabbitmqctl("list_queues", "name", "messages_unacknowledged", "--no-table-headers", "-q")
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == queue:
            return int(parts[1])
    raise AssertionError(f"{queue} not listed: {out}")


async def _fill(pika_peer: PikaPeer, name: str, n: int) -> None:
    def fill(ch: Any) -> None:
        ch.queue_declare(name, durable=True)
        for i in range(n):
            ch.basic_publish("", name, f"row {i}".encode())

    await pika_peer._run(fill)


@pytest_twisted.ensureDeferred
async def test_a_manual_handler_holds_messages_unacked_at_the_broker_until_it_acks(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    prefetch 3: the broker holds three unacked and sends no more until the
    handler acks; once it acks them all, the queue is empty.
    """
    name = unique("manual")
    await _fill(pika_peer, name, 6)
    held: list[Message] = []
    consumer = Consumer(connection, name, held.append, acks="manual", prefetch=3)
    consumer.startService()
    try:
        await eventually(lambda: len(held) == 3)
        await sleep(0.3)
        assert len(held) == 3 and await deferToThread(_unacked, name) == 3
        for m in held[:3]:
            m.ack()
        await eventually(lambda: len(held) == 6)
        for m in held[3:]:
            m.ack()
        await eventually(lambda: deferToThread(_unacked, name).addCallback(lambda n: n == 0))
        assert await pika_peer.depth(name) == 0
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_a_bulk_insert_of_a_batch_is_acked_together(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    "Consume 500, insert them, ack all": batch_size 100 hands the handler five
    lists of 100; each is acked when the insert returns; nothing is left.
    """
    name = unique("batch")
    await _fill(pika_peer, name, 500)
    table: list[list[bytes]] = []
    consumer = Consumer(
        connection,
        name,
        lambda rows: table.append([m.body for m in rows]),
        batch_size=100,
        batch_wait=2.0,
        prefetch=200,
    )
    consumer.startService()
    try:
        await eventually(lambda: sum(map(len, table)) == 500, timeout=20)
        assert [len(b) for b in table] == [100] * 5
        assert [row for batch in table for row in batch] == [f"row {i}".encode() for i in range(500)]
        await eventually(lambda: deferToThread(_unacked, name).addCallback(lambda n: n == 0))
        assert await pika_peer.depth(name) == 0 and consumer.consumed == 500
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_consuming_without_acks_leaves_nothing_unacked(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    acks="none": every message arrives, the broker holds none unacked.
    """
    name = unique("noack")
    await _fill(pika_peer, name, 50)
    got: list[Message] = []
    consumer = Consumer(connection, name, got.append, acks="none")
    consumer.startService()
    try:
        await eventually(lambda: len(got) == 50)
        assert await deferToThread(_unacked, name) == 0 and await pika_peer.depth(name) == 0
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_an_ack_after_the_broker_closed_the_connection_is_stale_and_the_message_comes_again(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    A held message whose connection the broker closed: its ack raises
    StaleDelivery (no channel error); it comes again, redelivered, and its
    ack on the new connection empties the queue.
    """
    name = unique("stale")
    await _fill(pika_peer, name, 1)
    held: list[Message] = []
    consumer = Consumer(connection, Queue(name, durable=True), held.append, acks="manual")
    consumer.startService()
    try:
        await eventually(lambda: len(held) == 1)
        await close_connection(str(connection.name))
        await eventually(lambda: len(held) == 2, timeout=20)
        with pytest.raises(StaleDelivery):
            held[0].ack()
        assert held[1].redelivered
        held[1].ack()
        await eventually(lambda: deferToThread(_unacked, name).addCallback(lambda n: n == 0))
        assert await pika_peer.depth(name) == 0
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)
