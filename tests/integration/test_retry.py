"""
Delayed retries on the real broker (run on RabbitMQ 3.10 and 4.3 by
C{make test}): the backoff holds within tolerance, attempts are bounded and
the last one rests in QUEUE.dlq with its reason (read by a pika peer), a
consumer stopped while retries wait gets each message back when it starts
again, and a quorum queue's delivery limit does not cut the attempts short.
"""

from __future__ import annotations

import itertools
import re
import signal
import time
from pathlib import Path
from typing import Any

import pika
import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from txmsg import Connection, Consumer, Message, Queue, RetryPolicy

from .support import BROKER_URL, PikaPeer, Twistd, eventually, sleep, unique

pytestmark = pytest.mark.integration


async def _cleanup(pika_peer: PikaPeer, name: str, policy: RetryPolicy) -> None:
    from txmsg.retry import retry_topology

    for queue in [name, *(q.name for q in retry_topology(name, policy))]:
        await pika_peer.delete_queue(queue)


@pytest_twisted.ensureDeferred
async def test_backoff_is_held_by_the_broker_and_the_last_attempt_rests_in_the_dlq(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    A message a pika peer published fails every time: txmsg sees it at t=0,
    then after about 0.5 s and 1 s more (never sooner), then a pika peer
    finds it in QUEUE.dlq with txmsg's reason headers and its body intact.
    """
    name = unique("retry")
    policy = RetryPolicy.from_text(2, "500ms..1s")
    seen: list[float] = []

    def handler(message: Message) -> None:
        seen.append(time.monotonic())
        raise ValueError("payment service down")

    consumer = Consumer(connection, Queue(name), handler, retry=policy)
    consumer.startService()
    try:
        await consumer.when_ready()
        await pika_peer.publish(
            "", name, b'{"order": 1}', pika.BasicProperties(content_type="application/json", message_id="o1")
        )
        await eventually(lambda: consumer.dead_lettered == 1, timeout=20)
        gaps = [b - a for a, b in itertools.pairwise(seen)]
        assert len(seen) == 3, seen
        assert 0.45 <= gaps[0] <= 2.0 and 0.95 <= gaps[1] <= 2.5, gaps
        got = await pika_peer.get(f"{name}.dlq")
        assert len(got) == 1
        _, props, body = got[0]
        headers = props.headers
        assert body == b'{"order": 1}' and props.message_id == "o1"
        assert headers["x-txmsg-attempts"] == 3
        assert headers["x-txmsg-dead-lettered"] == "retries exhausted"
        assert headers["x-txmsg-failure-type"] == "ValueError"
        assert headers["x-txmsg-failure"] == "payment service down"
        assert headers["x-txmsg-queue"] == name and headers["x-txmsg-routing-key"] == name
        assert await pika_peer.depth(name) == 0
        assert (consumer.retries_scheduled, consumer.retried) == (2, 2)
    finally:
        await consumer.stopService()
        await _cleanup(pika_peer, name, policy)


@pytest_twisted.ensureDeferred
async def test_a_consumer_stopped_while_retries_wait_gets_every_message_back_when_it_runs_again(
    pika_peer: PikaPeer,
) -> None:
    """
    Twenty messages fail once and wait in the delay queue; the consumer and
    its connection stop; the broker puts them back on the queue on time, and
    a consumer started later on a new connection handles each id exactly once more.
    """
    from twisted.internet import reactor

    name = unique("retry-stop")
    policy = RetryPolicy(retries=2, delay=2.0)
    first = Connection(BROKER_URL, reactor=reactor, name=unique("retry-first"))
    failed: list[str] = []
    consumer = Consumer(first, Queue(name), lambda m: failed.append(m.message_id) or 1 / 0, retry=policy)
    consumer.startService()
    second = Connection(BROKER_URL, reactor=reactor, name=unique("retry-second"))
    try:
        await consumer.when_ready()
        for i in range(20):
            await pika_peer.publish("", name, b"job", pika.BasicProperties(message_id=f"m{i}"))
        await eventually(lambda: consumer.retries_scheduled == 20, timeout=15)
        await consumer.stopService()
        await first.stopService()
        assert await pika_peer.depth(f"{name}.retry.2000ms") == 20
        await sleep(2.5)
        assert await pika_peer.depth(name) == 20  # back on the queue with nobody consuming
        handled: list[str] = []
        later = Consumer(second, Queue(name), lambda m: handled.append(m.message_id), retry=policy)
        later.startService()
        await eventually(lambda: len(handled) == 20, timeout=15)
        await sleep(0.3)
        assert sorted(handled) == sorted(f"m{i}" for i in range(20))
        assert sorted(failed) == sorted(handled)
        assert await pika_peer.depth(name) == 0 and await pika_peer.depth(f"{name}.dlq") == 0
        await later.stopService()
    finally:
        await first.stopService()
        await second.stopService()
        await _cleanup(pika_peer, name, policy)


@pytest_twisted.ensureDeferred
async def test_a_quorum_queues_delivery_limit_does_not_cut_the_attempts_short(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    On a quorum queue with x-delivery-limit 1, four attempts are still made
    (each retry is a new message, acked as the old one goes), and the last
    rests in QUEUE.dlq: the count is txmsg's header, not the broker's.
    """
    name = unique("retry-quorum")
    policy = RetryPolicy(retries=3, delay=0.2)
    attempts: list[Any] = []

    def handler(message: Message) -> None:
        attempts.append((message.headers or {}).get("x-txmsg-attempts"))
        raise RuntimeError("still failing")

    queue = Queue(name, arguments={"x-queue-type": "quorum", "x-delivery-limit": 1})
    consumer = Consumer(connection, queue, handler, retry=policy)
    consumer.startService()
    try:
        await consumer.when_ready()
        await pika_peer.publish("", name, b"q")
        await eventually(lambda: consumer.dead_lettered == 1, timeout=20)
        assert attempts == [None, 1, 2, 3]
        got = await pika_peer.get(f"{name}.dlq")
        assert got[0][1].headers["x-txmsg-attempts"] == 4
    finally:
        await consumer.stopService()
        await _cleanup(pika_peer, name, policy)


@pytest_twisted.ensureDeferred
async def test_a_twistd_consumer_killed_while_retries_wait_gets_them_back_when_started_again(
    pika_peer: PikaPeer, tmp_path: Path
) -> None:
    """
    C{twistd txmsg --role consumer --retry 1 --retry-delay 3s}: ten messages
    fail once and wait in the broker; the process is killed (SIGKILL, no
    goodbye); a new process started after the delay handles each once.
    """
    name = unique("retry-kill")
    args = ["--role", "consumer", "--queue", name, "--retry", "1", "--retry-delay", "3s"]
    args += ["--handler", "tests.integration.tap_handlers:first_try_fails"]
    first = Twistd(tmp_path, *args)
    second: Twistd | None = None
    try:
        await deferToThread(first.wait_for, f"consuming {name}")
        for i in range(10):
            await pika_peer.publish("", name, b"job", pika.BasicProperties(message_id=f"k{i}"))
        await eventually(lambda: pika_peer.depth(f"{name}.retry.3000ms").addCallback(lambda n: n == 10))
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        await sleep(3.5)
        assert await pika_peer.depth(name) == 10  # back on time, nobody consuming
        second = Twistd(tmp_path, *args)
        await eventually(lambda: second is not None and second.text().count("handled k") == 10, timeout=30)
        handled = re.findall(r"handled (k\d+)", second.text())
        assert sorted(handled) == sorted(f"k{i}" for i in range(10))
        assert await pika_peer.depth(name) == 0 and await pika_peer.depth(f"{name}.dlq") == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.proc.poll() is None:
                proc.stop()
        await _cleanup(pika_peer, name, RetryPolicy(retries=1, delay=3.0))
