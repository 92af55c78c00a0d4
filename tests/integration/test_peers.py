"""
Open peer groups over fanout against the real broker.
"""

from __future__ import annotations

from typing import Any

import pika
import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from txmsg import Connection, Message
from txmsg.peers import PeerGroup

from .support import BROKER_URL, PikaPeer, eventually, rabbitmqctl, sleep, unique

pytestmark = pytest.mark.integration


def queue_names() -> list[str]:
    return rabbitmqctl("list_queues", "name", "--no-table-headers", "-q").split()


@pytest_twisted.ensureDeferred
async def test_every_peer_hears_every_shout_including_its_own(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    Three peers each shout once: every peer hears all three shouts, its own
    included, each tagged with who shouted it.
    """
    group = unique("group")
    heard: dict[str, list[tuple[str | None, Any]]] = {}
    peers = []
    for i in range(3):
        pid = f"p{i}"
        heard[pid] = []
        peer = PeerGroup(
            connection,
            group,
            lambda m, pid=pid: heard[pid].append((PeerGroup.sender(m), m.payload)),
            peer_id=pid,
        )
        peer.startService()
        await peer.declared
        await peer.consumer.when_ready()
        peers.append(peer)
    try:
        for peer in peers:
            await peer.shout({"from": peer.peer_id})
        await eventually(lambda: all(len(v) == 3 for v in heard.values()))
        for got in heard.values():
            assert sorted(got, key=lambda x: x[0] or "") == [(f"p{i}", {"from": f"p{i}"}) for i in range(3)]
    finally:
        for peer in peers:
            await peer.leave()
        await pika_peer.delete_exchange(group)


@pytest_twisted.ensureDeferred
async def test_ignore_self_skips_own_shouts(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    With ignore_self a peer hears the others' shouts but not its own.
    """
    group = unique("group")
    a_heard: list[Any] = []
    b_heard: list[Any] = []
    a = PeerGroup(connection, group, lambda m: a_heard.append(m.payload), peer_id="a", ignore_self=True)
    b = PeerGroup(connection, group, lambda m: b_heard.append(m.payload), peer_id="b")
    for p in (a, b):
        p.startService()
        await p.declared
        await p.consumer.when_ready()
    try:
        await a.shout("from a")
        await b.shout("from b")
        await eventually(lambda: len(b_heard) == 2 and len(a_heard) == 1)
        await sleep(0.2)
        assert a_heard == ["from b"]
        assert sorted(b_heard) == ["from a", "from b"]
    finally:
        await a.leave()
        await b.leave()
        await pika_peer.delete_exchange(group)


@pytest_twisted.ensureDeferred
async def test_durable_peer_hears_what_was_shouted_while_it_was_away(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    A durable peer's queue stays while it is away and collects shouts; when it
    comes back it hears them.  A transient peer's queue is gone once it leaves,
    and leave(discard=True) deletes a durable peer's queue.
    """
    group = unique("group")
    got: list[Any] = []
    durable = PeerGroup(connection, group, lambda m: got.append(m.payload), peer_id="keeper", durable=True)
    transient = PeerGroup(connection, group, lambda m: None, peer_id="passer")
    for p in (durable, transient):
        p.startService()
        await p.declared
        await p.consumer.when_ready()
    shouter = PeerGroup(connection, group, lambda m: None, peer_id="shouter")
    try:
        await durable.stopService()
        await transient.leave()
        await eventually(lambda: f"{group}.passer" not in queue_names())
        for i in range(3):
            await shouter.shout(f"while away {i}")
        assert await pika_peer.depth(f"{group}.keeper") == 3
        back = PeerGroup(connection, group, lambda m: got.append(m.payload), peer_id="keeper", durable=True)
        back.startService()
        await eventually(lambda: len(got) == 3)
        assert got == [f"while away {i}" for i in range(3)]
        await back.leave(discard=True)
        await eventually(lambda: f"{group}.keeper" not in queue_names())
    finally:
        await pika_peer.delete_queue(f"{group}.keeper")
        await pika_peer.delete_exchange(group)


def pika_listen_then_shout(group: str, shout: bytes, expect: int, ready: Any) -> list[bytes]:
    """
    A pika peer: binds its own exclusive queue to the group's exchange, says it
    is ready, shouts once, and collects C{expect} shouts.
    """
    from twisted.internet import reactor

    conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        ch = conn.channel()
        ch.exchange_declare(group, "fanout", durable=True)
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, group)
        reactor.callFromThread(ready.callback, None)
        got: list[bytes] = []
        for method, _props, body in ch.consume(q, auto_ack=True, inactivity_timeout=10):
            if method is None:
                break
            got.append(body)
            if body == b"txmsg here":
                ch.basic_publish(group, "", shout)
            if len(got) >= expect:
                break
        ch.cancel()
        return got
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_pika_peer_and_txmsg_peer_hear_each_other(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    A pika client that binds its own queue to the group's fanout exchange is a
    peer: it hears txmsg's shout, and txmsg hears the pika peer's shout.
    """
    from twisted.internet.defer import Deferred

    group = unique("group")
    heard: list[bytes] = []
    peer = PeerGroup(connection, group, lambda m: heard.append(m.body), peer_id="tx")
    peer.startService()
    await peer.declared
    await peer.consumer.when_ready()
    ready: Deferred[None] = Deferred()
    pika_side = deferToThread(pika_listen_then_shout, group, b"pika here", 2, ready)
    try:
        await ready
        await peer.shout(b"txmsg here")
        pika_got = await pika_side
        assert pika_got == [b"txmsg here", b"pika here"]
        await eventually(lambda: heard == [b"txmsg here", b"pika here"])
    finally:
        await peer.leave()
        await pika_peer.delete_exchange(group)


@pytest_twisted.ensureDeferred
async def test_message_sender_is_none_without_the_header() -> None:
    """
    A message without the peer header has no sender.
    """
    assert PeerGroup.sender(Message(body=b"x")) is None
    assert PeerGroup.sender(Message(body=b"x", headers={"x-txmsg-peer": "p1"})) == "p1"
