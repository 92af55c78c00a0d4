"""
Integration test support: the real broker (L{tests.broker}: localhost:5672 or
$TXMSG_TEST_URL), a pika peer run in threads, and rabbitmqctl for what the
broker holds.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from txmsg import Connection

from .. import broker
from ..broker import URL as BROKER_URL
from ..broker import rabbitmqctl


def unique(prefix: str = "t") -> str:
    return f"txmsg-test-{prefix}-{uuid.uuid4().hex[:10]}"


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


@pytest.fixture
def pika_peer() -> PikaPeer:
    return PikaPeer()


#: what the big-body tests need: RabbitMQ 3's default limit (128 MiB)
BIG_MESSAGE_SIZE = 128 << 20


@pytest.fixture(scope="session")
def big_messages_url() -> Iterator[str]:
    """
    The URL of a broker that takes bodies up to 128 MiB: the test broker on
    RabbitMQ 3 (its default), else a private node of the test's RabbitMQ
    configured with C{max_message_size} 128 MiB (RabbitMQ 4 takes 16 MiB by
    default, as the test broker is left).
    """
    if not broker.at_least(4):
        yield BROKER_URL
        return
    from .nodes import RabbitNode, scratch

    config = f"max_message_size = {BIG_MESSAGE_SIZE}\n"
    node = RabbitNode(scratch("big"), f"txmsg-{unique('big')[-6:]}", config=config)
    node.start()
    try:
        node.wait()
        yield node.url
    finally:
        node.stop()


@pytest.fixture
def connection() -> Iterator[Connection]:
    """
    A txmsg connection with a unique name, stopped after the test.
    """
    conn = Connection(BROKER_URL, reactor=reactor, name=unique("conn"))
    yield conn
    if conn.running:
        from pytest_twisted import blockon

        blockon(conn.stopService())


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


def sleep(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


__all__ = [
    "BIG_MESSAGE_SIZE",
    "BROKER_URL",
    "PikaPeer",
    "big_messages_url",
    "close_connection",
    "eventually",
    "rabbitmqctl",
    "sleep",
    "unique",
]


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
