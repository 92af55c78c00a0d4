"""
Broker crashes on a private node: kill -9 and restart under a durable queue of
persistent messages.  The bar: no confirmed message is lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThread

from txmsg import Connection, Consumer, Message, Producer, Queue

from .conftest import eventually, unique
from .nodes import RabbitNode, available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed"),
]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    n = RabbitNode(Path(tmp_path_factory.mktemp("nodes")), f"txmsg-{unique('n')[-6:]}")
    n.start()
    n.wait()
    yield n
    n.stop()


@pytest_twisted.ensureDeferred
async def test_kill_9_and_restart_loses_no_confirmed_message(node: RabbitNode) -> None:
    """
    Scenario 2: 5,000 persistent messages with unique ids are published with
    confirms to a durable queue; the node is killed with SIGKILL mid-stream and
    restarted.  The publisher waits and republishes across the crash; every id
    the broker confirmed is consumed after the restart (0 lost).
    """
    total = 5000
    name = unique("crash")
    queue = Queue(name, durable=True)
    pub = Connection(node.url, reactor=reactor, name=unique("crash-pub"))
    await pub.declare(queue)
    producer = Producer(pub)
    confirmed: set[str] = set()
    failed: list[object] = []
    killed = False
    start = time.monotonic()
    for batch in range(0, total, 500):
        ids = [f"m{i}" for i in range(batch, batch + 500)]
        ds = [producer.publish("", name, b"x" * 100, message_id=i, persistent=True, timeout=120) for i in ids]
        if batch == 2000 and not killed:
            # crash the node while this batch is in flight, then bring it back
            killed = True
            await deferToThread(node.kill9)
            await deferToThread(node.start)
            await deferToThread(node.wait)
        results = await DeferredList(ds, consumeErrors=True)
        for i, (ok, value) in zip(ids, results, strict=True):
            (confirmed.add(i) if ok else failed.append(value))
    published_in = time.monotonic() - start
    consumed: dict[str, int] = {}

    def handle(m: Message) -> None:
        consumed[m.message_id or ""] = consumed.get(m.message_id or "", 0) + 1

    sub = Connection(node.url, reactor=reactor, name=unique("crash-sub"))
    consumer = Consumer(sub, name, handle, prefetch=500)
    consumer.startService()
    try:
        await eventually(lambda: confirmed <= consumed.keys(), timeout=60)
        lost = confirmed - consumed.keys()
        print(
            f"\nkill -9: confirmed {len(confirmed)}/{total}, consumed {len(consumed)}, lost {len(lost)}, "
            f"duplicates {sum(n - 1 for n in consumed.values())}, failed {len(failed)}, "
            f"published in {published_in:.1f} s"
        )
        assert not lost
        assert len(confirmed) == total, failed[:3]
    finally:
        await consumer.stopService()
        await sub.stopService()
        await pub.stopService()
