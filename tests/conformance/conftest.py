"""
One suite of broker behaviours, run twice: against txmsg.testing's in-memory
broker and against the real RabbitMQ.  A test gets C{broker}, an L{Env} that
hides the difference: it makes connections, waits for Deferreds (pumping the
memory broker, or letting the reactor run) and for conditions.

C{make test} runs the suite once per RabbitMQ (3.10 and 4.3); the memory
broker is made to behave as the RabbitMQ under test does (C{version}), so
each case runs against memory, 3.10 and 4.3.  A case about a behaviour that
only some versions have says so with C{@pytest.mark.rabbitmq(since="4.0")}
or C{(before="4.0")}; a case whose expectation depends on the version reads
C{broker.version}.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred

from txmsg import Connection
from txmsg.testing import MemoryBroker

from .. import broker as test_broker
from ..integration.support import BROKER_URL, eventually, sleep


def _version() -> tuple[int, int]:
    try:
        return test_broker.version()
    except Exception:
        return (4, 3)


class Env:
    """
    A broker for one conformance test: C{kind} is "memory" or "rabbitmq".
    """

    def __init__(self, kind: str, version: tuple[int, int]) -> None:
        self.kind = kind
        #: the RabbitMQ (major, minor) this case runs against, or imitates
        self.version = version
        self.memory = MemoryBroker(version=f"{version[0]}.{version[1]}") if kind == "memory" else None
        self.connections: list[Connection] = []
        self.names: list[str] = []

    def denies_transient_queues(self) -> bool:
        """
        Whether this broker refuses new transient non-exclusive queues
        (RabbitMQ 4.3 as upstream ships it; the memory broker imitating 4.x).
        """
        if self.memory is not None:
            return self.memory.state.deny_transient_queues
        return test_broker.denies_transient_queues()

    def name(self, prefix: str) -> str:
        name = f"txmsg-conf-{prefix}-{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        return name

    async def connect(self) -> Connection:
        if self.memory is not None:
            conn = self.memory.connection()
        else:
            from twisted.internet import reactor

            conn = Connection(BROKER_URL, reactor=reactor)
            conn.startService()
        self.connections.append(conn)
        await self.wait(conn.when_ready())
        return conn

    async def wait(self, d: Deferred[Any]) -> Any:
        """
        The result of C{d} (raising its failure).
        """
        if self.memory is not None:
            self.memory.flush()
            assert d.called, "the memory broker left this pending"
        return await d

    async def until(self, check: Callable[[], Any]) -> None:
        """
        Wait until C{check()} is true.
        """
        if self.memory is not None:
            self.memory.flush()
            assert check()
        else:
            await eventually(check)

    async def sleep(self, seconds: float) -> None:
        """
        Let C{seconds} pass: the memory broker's clock, or real time.
        """
        if self.memory is not None:
            self.memory.flush(advance=seconds)
        else:
            await sleep(seconds)

    async def depth(self, conn: Connection, queue: str) -> int:
        """
        What the broker says the queue holds (passive queue.declare).
        """
        channel = await self.wait(conn.channel())
        try:
            ok = await self.wait(channel.call("queue.declare", queue=queue, passive=True))
            return int(ok["message_count"])
        finally:
            channel.close()

    async def cleanup(self) -> None:
        if self.connections and self.kind == "rabbitmq":
            conn = self.connections[0]
            if conn.is_connected:
                for name in self.names:
                    for method, arg in (("queue.delete", "queue"), ("exchange.delete", "exchange")):
                        try:
                            channel = await conn.channel()
                            await channel.call(method, **{arg: name})
                            channel.close()
                        except Exception:
                            pass
        for conn in self.connections:
            d = conn.stopService()
            if self.memory is not None:
                self.memory.flush()
            else:
                await d


def _parse(text: str) -> tuple[int, int]:
    major, minor = (int(n) for n in text.split("."))
    return major, minor


@pytest.fixture(params=["memory", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Env]:
    version = _version()
    marker = request.node.get_closest_marker("rabbitmq")
    if marker is not None:
        since, before = marker.kwargs.get("since"), marker.kwargs.get("before")
        if since and version < _parse(since):
            pytest.skip(f"a RabbitMQ {since} and later behaviour (this run: {version[0]}.{version[1]})")
        if before and version >= _parse(before):
            pytest.skip(f"a behaviour of RabbitMQ before {before} (this run: {version[0]}.{version[1]})")
    env = Env(request.param, version)
    yield env
    pytest_twisted.blockon(ensureDeferred(env.cleanup()))


__all__ = ["Env", "broker", "pytest_twisted"]
