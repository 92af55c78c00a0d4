"""
The helpers the broker tests share: the test broker (L{tests.broker}:
localhost:5672 or $TXMSG_TEST_URL) and its C{rabbitmqctl}, a pika peer run in
threads, waiting for a condition, what the broker knows of our connections, a
fault proxy in front of the broker, and the C{txmsg} command and
C{twistd txmsg} run as processes.

Test modules import these from here (never from each other or from a
conftest); the fixtures over them are in C{tests/integration/conftest.py}.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from .. import broker
from ..broker import URL as BROKER_URL
from ..broker import rabbitmqctl
from .faults import FaultProxy

__all__ = [
    "BIG_MESSAGE_SIZE",
    "BROKER_URL",
    "COMMAND",
    "ROOT",
    "TWISTD",
    "PikaPeer",
    "Ran",
    "Twistd",
    "close_connection",
    "connection_pids",
    "eventually",
    "proxied",
    "rabbitmqctl",
    "run",
    "sleep",
    "unique",
]

#: the repository root: the working tree's txmsg, examples and scripts
ROOT = Path(__file__).resolve().parents[2]

#: what the big-body tests need: RabbitMQ 3's default limit (128 MiB)
BIG_MESSAGE_SIZE = 128 << 20


def unique(prefix: str = "t") -> str:
    """
    A name no other test uses (queues, exchanges, connections).
    """
    return f"txmsg-test-{prefix}-{uuid.uuid4().hex[:10]}"


# --- the reactor side --------------------------------------------------------


def sleep(seconds: float) -> Deferred[None]:
    """
    A Deferred that fires after C{seconds} on the reactor.
    """
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """
    Wait until C{check()} returns something truthy (awaiting it if it is a
    Deferred); fail the test with the last value after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    value: Any = None
    while True:
        value = check()
        if isinstance(value, Deferred):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        await sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")


class PikaPeer:
    """
    A blocking pika client used as an independent peer; every call runs in a
    thread so the reactor keeps turning.
    """

    def __init__(self, url: str = BROKER_URL) -> None:
        self.url = url

    def _run(self, fn: Callable[[Any], Any]) -> Deferred[Any]:
        def work() -> Any:
            conn = pika.BlockingConnection(pika.URLParameters(self.url))
            try:
                return fn(conn.channel())
            finally:
                conn.close()

        return deferToThread(work)

    def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties | None = None
    ) -> Deferred[None]:
        return self._run(lambda ch: ch.basic_publish(exchange, routing_key, body, properties))

    def depth(self, queue: str) -> Deferred[int]:
        """
        How many ready messages the broker holds in C{queue}.
        """
        return self._run(lambda ch: ch.queue_declare(queue, passive=True).method.message_count)

    def get(
        self, queue: str, count: int = 1, timeout: float = 10.0
    ) -> Deferred[list[tuple[Any, Any, bytes]]]:
        """
        Fetch up to C{count} messages from C{queue}, acking each.
        """

        def fetch(ch: Any) -> list[tuple[Any, Any, bytes]]:
            got = []
            for method, props, body in ch.consume(queue, inactivity_timeout=timeout):
                if method is None:
                    break
                ch.basic_ack(method.delivery_tag)
                got.append((method, props, body))
                if len(got) >= count:
                    break
            ch.cancel()
            return got

        return self._run(fetch)

    def delete_queue(self, queue: str) -> Deferred[None]:
        return self._run(lambda ch: ch.queue_delete(queue))

    def delete_exchange(self, exchange: str) -> Deferred[None]:
        return self._run(lambda ch: ch.exchange_delete(exchange))


def connection_pids(connection_name: str) -> list[str]:
    """
    The broker's pids of the connections whose client_properties carry this name.
    """
    out = rabbitmqctl("list_connections", "pid", "client_properties", "--no-table-headers", "-q")
    return [
        m.group(0)
        for line in out.splitlines()
        if connection_name in line and (m := re.match(r"<[^>]+>", line.strip()))
    ]


def close_connection(connection_name: str, reason: str = "closed by test") -> Deferred[list[str]]:
    """
    Have the broker close our connection (rabbitmqctl close_connection).
    """

    def work() -> list[str]:
        pids = connection_pids(connection_name)
        for pid in pids:
            rabbitmqctl("close_connection", pid, reason)
        return pids

    return deferToThread(work)


async def proxied() -> tuple[FaultProxy, str]:
    """
    A L{FaultProxy} in front of the test broker, started, and the URL that
    connects through it (short heartbeat and connection timeout, so a cut is
    noticed soon).
    """
    proxy = FaultProxy(reactor, broker.HOST, broker.PORT)
    port = await proxy.start()
    return proxy, f"amqp://guest:guest@127.0.0.1:{port}/%2F?heartbeat=5&connection_timeout=5"


# --- processes: the txmsg command and twistd txmsg ---------------------------

#: the C{txmsg} command: the working tree's, run from the repository root
COMMAND = [sys.executable, "-m", "txmsg.cli"]

#: twistd from this interpreter (the working tree's txmsg on PYTHONPATH), in the foreground, no pidfile
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "txmsg"]


@dataclass
class Ran:
    """
    How a process run by L{run} ended: its exit status, its stdout and
    stderr together, and how long it took.
    """

    code: int
    text: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]


def run(args: list[str], cwd: Path, timeout: float = 60) -> Ran:
    """
    Run C{args} to its end in C{cwd}, with the working tree and C{cwd} on
    PYTHONPATH (for handlers written there) and C{$TXMSG_URL} naming the
    test broker.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(cwd)]), TXMSG_URL=BROKER_URL)
    start = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    return Ran(done.returncode, done.stdout + done.stderr, time.monotonic() - start)


class Twistd:
    """
    A C{twistd -n txmsg ...} process on the test broker; its log goes to a
    file we can read.
    """

    def __init__(self, tmp: Path, *args: str) -> None:
        self.log = tmp / f"twistd-{uuid.uuid4().hex[:6]}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.out = self.log.open("w")
        self.proc = subprocess.Popen(
            [
                *TWISTD,
                "--url",
                BROKER_URL,
                *args,
            ],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env=env,
        )

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the log:\n{self.text()}")

    def stop(self, timeout: float = 30.0) -> int:
        """
        SIGTERM; 0 when the process shut down cleanly.  (twistd ends by
        re-raising the signal it was stopped by, as Unix tools should.)
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.out.close()
        if code == -signal.SIGTERM and "Server Shut Down." in self.text():
            return 0
        return code
