"""
examples/web_embedding.py run as a real program against the broker: its web
handler publishes each POST (answered once confirmed), its consumer in the
same reactor handles each job, and SIGTERM stops it with exit status 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from .support import BROKER_URL, unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "web_embedding.py"


class Program:
    """
    The example as a subprocess; stdout and stderr go to files we can read.
    """

    def __init__(self, tmp: Path, *args: str) -> None:
        self.stdout_path = tmp / "stdout.txt"
        self.stderr_path = tmp / "stderr.txt"
        self._out = self.stdout_path.open("w")
        self._err = self.stderr_path.open("w")
        # the checkout's txmsg, not an installed copy
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), *args], stdout=self._out, stderr=self._err, cwd=tmp, env=env
        )

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.stdout())
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in stdout:\n{self.stdout()}\nstderr:\n{self.stderr()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        self._err.close()


@pytest.fixture
def program(tmp_path: Path) -> Iterator[Callable[..., Program]]:
    started: list[Program] = []

    def start(*args: str) -> Program:
        p = Program(tmp_path, *args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


def queue_state(queue: str) -> tuple[int, int]:
    """
    (ready messages, consumers) of C{queue}, as the broker says.
    """
    conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        method: Any = conn.channel().queue_declare(queue, passive=True).method
        return int(method.message_count), int(method.consumer_count)
    finally:
        conn.close()


def delete_queue(queue: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        conn.channel().queue_delete(queue)
    finally:
        conn.close()


def post(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read().decode()


def test_posts_are_published_confirmed_and_consumed_in_the_same_process(
    program: Callable[..., Program],
) -> None:
    """
    Five POSTs to /jobs are each answered 202 with a message id once
    confirmed; the program's own consumer prints one "handled <id>: <body>"
    line per job, the queue ends empty with the program consuming it, and
    SIGTERM stops the program with exit status 0 and its consumer gone.
    """
    queue = unique("example-web")
    p = program("--port", "0", "--url", BROKER_URL, "--queue", queue)
    try:
        listening = p.wait_for(r"listening on http://127\.0\.0\.1:(\d+)/")
        url = f"http://127.0.0.1:{listening.group(1)}/jobs"
        ids = {}
        for i in range(5):
            status, text = post(url, f"job {i}".encode())
            assert status == 202, text
            found = re.fullmatch(r"queued (\S+)\n", text)
            assert found, text
            ids[found.group(1)] = f"job {i}"
        assert len(ids) == 5
        for message_id, body in ids.items():
            p.wait_for(rf"handled {re.escape(message_id)}: {re.escape(body)}\n")
        assert p.stdout().count("handled ") == 5
        assert queue_state(queue) == (0, 1)
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(30) == 0, p.stderr()
        assert "Traceback" not in p.stderr()
        assert queue_state(queue) == (0, 0)
    finally:
        delete_queue(queue)


def test_refused_login_is_one_line_and_exit_status_1(program: Callable[..., Program]) -> None:
    """
    With a password the broker refuses, the program says so in one line on
    stderr and exits 1 without announcing an address.
    """
    bad = re.sub(r"//([^:@/]+):[^@]*@", r"//\1:not-the-password@", BROKER_URL)
    assert bad != BROKER_URL
    p = program("--port", "0", "--url", bad, "--queue", unique("example-web-bad"))
    assert p.proc.wait(30) == 1
    assert "cannot connect:" in p.stderr() and "refused" in p.stderr()
    assert "not-the-password" not in p.stderr()
    assert "listening" not in p.stdout()
