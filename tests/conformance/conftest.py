"""
One suite of broker behaviours, run twice: against txmsg.testing's in-memory
broker and against the real RabbitMQ.  A test gets C{broker}, an L{Env} that
hides the difference: it makes connections, waits for Deferreds (pumping the
memory broker, or letting the reactor run) and for conditions.
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

from ..integration.conftest import BROKER_URL, eventually, sleep


class Env:
    """
    A broker for one conformance test: C{kind} is "memory" or "rabbitmq".
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.memory = MemoryBroker() if kind == "memory" else None
        self.connections: list[Connection] = []
        self.names: list[str] = []

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


@pytest.fixture(params=["memory", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Env]:
    env = Env(request.param)
    yield env
    pytest_twisted.blockon(ensureDeferred(env.cleanup()))


__all__ = ["Env", "broker", "pytest_twisted"]
