"""
Seed 001: a word count distributed to workers (``twistd txmsg --role worker``)
and reduced by the submitter; a worker killed mid-job changes nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support import BROKER_URL, TWISTD, rabbitmqctl, unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_word_count_survives_a_worker_killed_mid_job(tmp_path: Path) -> None:
    """
    Two workers share the job; one is killed with SIGKILL while it holds a
    task.  The job still completes, and the reduced counts equal a count made
    in one process.
    """
    queue = unique("wordcount")
    env = dict(os.environ, PYTHONPATH=str(ROOT), WORDCOUNT_DELAY="0.1", TXMSG_URL=BROKER_URL)
    handler = "examples.wordcount.tasks:count_words"
    workers = [
        subprocess.Popen(
            [*TWISTD, "--role", "worker", "--queue", queue, "--handler", handler],
            stdout=(tmp_path / f"w{i}.log").open("w"),
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all("consuming " in (tmp_path / f"w{i}.log").read_text() for i in range(2)):
                break
            time.sleep(0.05)
        submit = subprocess.Popen(
            [
                sys.executable,
                "examples/wordcount/submit.py",
                "--queue",
                queue,
                "--lines",
                "8000",
                "--chunk",
                "200",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        # 40 tasks of 0.1 s on two workers take 2 s at least: kill one a second in,
        # while it holds a task (prefetch 1: it always does while the job runs)
        time.sleep(1.0)
        assert submit.poll() is None, "the job ended before the worker was killed"
        workers[0].send_signal(signal.SIGKILL)
        out, err = submit.communicate(timeout=120)
        assert submit.returncode == 0, out + err
        assert "40/40 tasks" in out
        assert "matches a single-process count: yes" in out
        assert workers[0].wait(10) == -signal.SIGKILL
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
                w.wait(30)
        rabbitmqctl("delete_queue", queue)
