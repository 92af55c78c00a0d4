"""
Asking the broker about a queue or an exchange once, without touching the
topology a connection replays: what a pika peer put in a queue is counted,
a missing queue or exchange is NotFound, and the connection lives on.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from txmsg import Connection, NotFound

from .support import PikaPeer, unique

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_queue_info_counts_what_a_pika_peer_queued_and_touches_no_topology(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    Three messages a pika peer published are counted; a missing queue fails
    with NotFound; neither adds to the topology; the connection stays up.
    """
    name = unique("info")

    def fill(ch: object) -> None:
        ch.queue_declare(name, durable=True)  # type: ignore[attr-defined]
        for _ in range(3):
            ch.basic_publish("", name, b"x")  # type: ignore[attr-defined]

    await pika_peer._run(fill)
    try:
        before = list(connection.topology)
        info = await connection.queue_info(name)
        assert (info.name, info.message_count, info.consumer_count) == (name, 3, 0)
        with pytest.raises(NotFound):
            await connection.queue_info(unique("no-such-queue"))
        assert connection.topology == before and connection.is_connected
        assert (await connection.queue_info(name)).message_count == 3
    finally:
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_check_exchange_finds_existing_exchanges_and_refuses_missing_ones(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    amq.topic and an exchange a pika peer declared exist; a missing one is NotFound.
    """
    name = unique("info-x")
    await pika_peer._run(lambda ch: ch.exchange_declare(name, "fanout"))
    try:
        assert await connection.check_exchange("amq.topic") is None
        assert await connection.check_exchange(name) is None
        assert await connection.check_exchange("") is None
        with pytest.raises(NotFound):
            await connection.check_exchange(unique("no-such-exchange"))
        assert connection.is_connected and connection.topology == []
    finally:
        await pika_peer.delete_exchange(name)
