"""
The README's main job (``make demo``'s script): a ``twistd txmsg`` consumer
fed by ``txmsg publish``, shown on screen, stopped cleanly.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pika
import pytest

from .support import BROKER_URL, unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_demo_script_consumes_what_it_publishes() -> None:
    """
    scripts/demo.sh publishes four confirmed messages to a twistd consumer,
    which logs all four; the consumer stops cleanly and the queue is empty.
    """
    queue = unique("demo")
    env = dict(os.environ, TXMSG_DEMO_QUEUE=queue, TXMSG_URL=BROKER_URL)
    try:
        out = subprocess.run(
            ["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stdout + out.stderr
        shown = [line for line in out.stdout.splitlines() if f"/{queue}: " in line]
        assert len(shown) == 4, out.stdout
        assert "Hello from txmsg!" in shown[0]
        assert "stopped cleanly" in out.stdout
        assert out.stderr.count("confirmed 2") == 2, out.stderr
        assert "Traceback" not in out.stdout + out.stderr
    finally:
        conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        ch = conn.channel()
        assert ch.queue_declare(queue, passive=True).method.message_count == 0
        ch.queue_delete(queue)
        conn.close()
