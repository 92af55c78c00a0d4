"""
Scenario 3: a three-node cluster with a quorum queue, the client given all
three URLs.  The node the client is connected to is killed, then every node in
turn (rolling kills); no confirmed message is lost, and failover times are
reported.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThread

from txmsg import Connection, Consumer, Producer, Queue

from .nodes import RabbitNode, available, scratch
from .report import Tally, record, scaled
from .support import eventually, unique

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[RabbitNode]]:
    base = scratch("cluster")
    tag = unique("c")[-5:]
    nodes = [RabbitNode(base, f"txmsg-{tag}-{i}") for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda n: (n.start(), n.wait()), nodes))
    try:
        for n in nodes[1:]:
            n.ctl("stop_app")
            n.ctl("join_cluster", nodes[0].node)
            n.ctl("start_app")
        nodes[0].ctl("await_online_nodes", "3")
        yield nodes
    finally:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda n: n.stop(), nodes))


def restart(node: RabbitNode, others: list[RabbitNode]) -> None:
    node.kill9()
    node.start()
    node.wait()
    others[0].ctl("await_online_nodes", "3")


@pytest_twisted.ensureDeferred
async def test_failover_and_rolling_kills_lose_no_confirmed_message(cluster: list[RabbitNode]) -> None:
    """
    Publish 6,000 persistent messages with unique ids to a quorum queue while
    first the client's own node, then each node in turn, is killed (-9) and
    restarted; every confirmed id is consumed afterwards (0 lost).
    """
    total = scaled(6000) // 500 * 500
    urls = [n.url for n in cluster]
    name = unique("quorum")
    pub = Connection(urls, reactor=reactor, name=unique("cluster-pub"))
    await pub.declare(Queue.quorum(name))
    producer = Producer(pub)
    by_port = {n.port: n for n in cluster}
    tally = Tally()
    confirmed = tally.confirmed
    failed: list[object] = []
    failovers: list[float] = []
    killed_at: list[float] = []

    def ready_again(_: object) -> None:
        if killed_at:
            failovers.append(time.monotonic() - killed_at.pop())

    pub.add_ready_hook(ready_again)
    # at 1/6 of the messages the client's own node, then each node in turn
    plan = {total * n // 12 // 500 * 500: step for n, step in ((2, "connected"), (5, 0), (7, 1), (9, 2))}
    for batch in range(0, total, 500):
        ids = [f"m{i}" for i in range(batch, batch + 500)]
        ds = [producer.publish("", name, b"x" * 100, message_id=i, persistent=True, timeout=180) for i in ids]
        step = plan.get(batch)
        if step is not None:
            assert pub.protocol is not None
            victim = by_port[pub.protocol.params.port] if step == "connected" else cluster[int(step)]
            others = [n for n in cluster if n is not victim]
            if victim.port == pub.protocol.params.port:
                killed_at[:] = [time.monotonic()]
            await deferToThread(restart, victim, others)
        results = await DeferredList(ds, consumeErrors=True)
        for i, (ok, value) in zip(ids, results, strict=True):
            (confirmed.add(i) if ok else failed.append(value))
    sub = Connection(urls, reactor=reactor, name=unique("cluster-sub"))
    consumer = Consumer(sub, name, tally.delivered, prefetch=500)
    consumer.startService()
    try:
        await eventually(lambda: tally.all_consumed, timeout=90)
        record(
            "3 cluster failover, rolling kills",
            tally,
            reconnects=failovers,
            detail=f"quorum queue on 3 nodes; {len(failovers)} failovers; {len(failed)} publishes failed",
        )
        assert not tally.lost
        assert len(confirmed) == total, failed[:3]
        assert failovers, "the client's own node was never killed"
    finally:
        await consumer.stopService()
        await sub.stopService()
        await pub.stopService()
