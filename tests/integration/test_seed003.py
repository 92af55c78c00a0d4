"""
Seed 003: a txmsg producer (``examples/seed003/producer.py``) and the
``twistd txmsg --role consumer`` process need not run at the same time:
messages published while no consumer runs wait in the durable queue.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pika
import pytest

from .support import BROKER_URL, Twistd, rabbitmqctl, unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def produce(queue: str, *messages: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "examples/seed003/producer.py", "--url", BROKER_URL, "--queue", queue, *messages],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=60,
    )


def queue_facts(queue: str) -> tuple[str, int, int]:
    """
    (durable, ready messages, persistent messages) as the broker reports them.
    """
    out = rabbitmqctl(
        "list_queues", "name", "durable", "messages_ready", "messages_persistent", "--no-table-headers", "-q"
    )
    for line in out.splitlines():
        name, durable, ready, persistent = line.split("\t")
        if name == queue:
            return durable, int(ready), int(persistent)
    raise AssertionError(f"no queue {queue}:\n{out}")


def depth(queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


def test_messages_wait_in_the_queue_until_the_consumer_starts(tmp_path: Path) -> None:
    """
    Two messages published while no consumer runs are held by the durable
    queue, persistent; ``twistd -n txmsg --role consumer --queue Q --durable``
    then logs each once and acks it (none is back in the queue after it
    stops).  A message published while it runs shows too, and SIGTERM stops
    it cleanly.
    """
    q = unique("seed003")
    first, second, third = (f"producer-to-consumer test message {n}" for n in (1, 2, 3))
    try:
        out = produce(q, first, second)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"published 2 messages to {q}, all confirmed"
        assert depth(q) == 2
        assert queue_facts(q) == ("true", 2, 2)

        consumer = Twistd(tmp_path, "--role", "consumer", "--queue", q, "--durable")
        try:
            consumer.wait_for(second)
            out = produce(q, third)
            assert out.returncode == 0, out.stderr
            consumer.wait_for(third)
            log = consumer.text()
            assert [log.count(m) for m in (first, second, third)] == [1, 1, 1], log
            assert log.index(first) < log.index(second) < log.index(third)
            assert consumer.stop() == 0, consumer.text()
            assert "Traceback" not in consumer.text()
            # handled messages were acked: none went back to the queue when it stopped
            assert depth(q) == 0
        finally:
            if consumer.proc.poll() is None:
                consumer.proc.kill()
                consumer.proc.wait()
    finally:
        conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        conn.channel().queue_delete(q)
        conn.close()
