"""
A deterministic in-memory RabbitMQ for users' tests, like C{treq.testing} for
HTTP: txmsg's own L{Connection} talks to it in real AMQP 0-9-1 frames over an
in-memory transport, and a C{Clock} stands in for time, so a test steps
everything explicitly and nothing waits on the wall clock::

    broker = MemoryBroker()
    conn = broker.connection()
    producer = Producer(conn)
    d = producer.publish("", "hello", b"hi")
    broker.flush()                 # move every pending frame both ways
    assert broker.depth("hello") == ...

It holds to RabbitMQ's behaviour for what it implements (one conformance
suite runs against both, tests/conformance); the README lists where it
differs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect

from txmsg._guard import GuardedFactory, LostGuard
from txmsg.connection import Connection
from txmsg.testing._broker import MemoryBrokerState
from txmsg.testing._server import AMQPServer
from txmsg.testing._versions import parse_version

#: the URL memory connections are made with (any host: nothing is resolved)
MEMORY_URL = "amqp://guest:guest@memory:5672/%2F"


class _MemoryEndpoint:
    """
    Connects a txmsg Connection to the broker through an in-memory pump.
    """

    def __init__(self, broker: MemoryBroker, connection: Connection) -> None:
        self.broker = broker
        self.connection = connection
        self.current = connection.params[0]

    def connect(self, factory: Any) -> Deferred[Any]:
        broker = self.broker
        if broker.refusing:
            return fail(ConnectionRefusedError("txmsg.testing: the broker refuses connections"))
        client = GuardedFactory(factory).buildProtocol(None)
        server = AMQPServer(broker.state)
        pump = connect(
            server,
            FakeTransport(server, isServer=True),
            client,
            FakeTransport(client, isServer=False),
            greet=False,
            clock=broker.clock,
        )
        broker._links.append((self.connection, server, pump))
        broker.clock.callLater(0, broker.flush)
        return succeed(client._wrapped if isinstance(client, LostGuard) else client)


class MemoryBroker:
    """
    An in-memory AMQP 0-9-1 broker with RabbitMQ's semantics for default,
    direct, fanout and topic exchanges, queues (durable, exclusive,
    auto-delete, server-named), prefetch and fair dispatch, ack/nack/reject
    with requeue and C{redelivered}, publisher confirms, mandatory returns,
    consumer cancel on queue delete, and RabbitMQ's reply codes (404, 405, 406).

    Where RabbitMQ versions differ it behaves as C{version} does: C{"4.3"}
    (the default) as upstream RabbitMQ 4.3 ships, or C{"3.10"}.  On 4.x it
    refuses a transient non-exclusive queue with RabbitMQ's 541 (closing the
    connection), refuses bodies over 16 MiB (406, closing the channel), and
    counts a quorum queue's deliveries as 4.x does (C{x-delivery-count} for
    rejects and lost consumers, C{x-acquired-count} for every delivery,
    delivery limit 20 by default); on 3.x it takes transient queues and bodies
    up to 128 MiB and counts every return in C{x-delivery-count}.

    @param max_message_size: the largest body it takes (default: the
        version's).
    @ivar clock: the C{Clock} every connection of this broker runs on.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        vhost: str = "/",
        *,
        version: str = "4.3",
        max_message_size: int | None = None,
    ) -> None:
        self.clock = clock if clock is not None else Clock()
        self.version = version
        self.state = MemoryBrokerState(self.clock, vhost, parse_version(version), max_message_size)
        self.refusing = False
        self._links: list[tuple[Connection, AMQPServer, IOPump]] = []

    def connection(self, url: str = MEMORY_URL, *, name: str | None = None, start: bool = True) -> Connection:
        """
        A txmsg L{Connection} to this broker (started and connected unless
        C{start} is false).
        """
        conn = Connection(url, reactor=self.clock, name=name)
        conn.endpoint = _MemoryEndpoint(self, conn)  # type: ignore[assignment]
        if start:
            conn.startService()
            self.flush()
        return conn

    def flush(self, advance: float = 0.0) -> None:
        """
        Move every pending frame both ways until the connections are quiet,
        running what the clock has due; with C{advance}, move time forward
        that many seconds first.
        """
        if advance:
            self.clock.advance(advance)
        for _ in range(10_000):
            self.clock.advance(0)
            moved = [pump.pump(advanceClock=False) for _, _, pump in list(self._links)]
            if not any(moved) and not self._due():
                break
        self._links = [link for link in self._links if not link[2].clientIO.disconnected]

    def _due(self) -> bool:
        now = self.clock.seconds()
        return any(call.getTime() <= now for call in self.clock.getDelayedCalls())

    # --- what the broker holds ------------------------------------------------

    def depth(self, queue: str) -> int:
        """
        How many messages C{queue} holds, not counting those delivered and unacked.
        """
        return len(self.state.queues[queue].messages)

    def bodies(self, queue: str) -> list[bytes]:
        """
        The bodies C{queue} holds, in order.
        """
        return [m.body for m in self.state.queues[queue].messages]

    def has_queue(self, name: str) -> bool:
        """
        Whether a queue of this name exists.
        """
        return name in self.state.queues

    # --- faults for users' tests ------------------------------------------------

    def block(self, reason: str = "low on memory") -> None:
        """
        Raise a resource alarm: every connection is told C{connection.blocked}
        (txmsg's producers then hold their publishes) until L{unblock}.
        """
        for _, server, _ in self._links:
            server.send(0, "connection.blocked", reason=reason)
        self.flush()

    def unblock(self) -> None:
        """
        Clear the alarm: C{connection.unblocked} to every connection.
        """
        for _, server, _ in self._links:
            server.send(0, "connection.unblocked")
        self.flush()

    def redeliver(self) -> None:
        """
        Put every delivered, unacked message back in its queue, flagged
        redelivered (as after a consumer's channel failed): consumers get them
        again.
        """
        for _, server, _ in self._links:
            for channel in list(server.channels.values()):
                if channel.unacked:
                    channel.settle(0, True, True, failed=True)
        self.flush()

    def drop(self, connection: Connection | None = None) -> None:
        """
        Cut C{connection}'s link (every link if None), as a network failure
        would: unacked messages go back to their queues, flagged redelivered.
        """
        for conn, _server, pump in list(self._links):
            if connection is None or conn is connection:
                pump.clientIO.disconnecting = True
                pump.serverIO.disconnecting = True
                pump.clientIO.disconnected = True
                pump.serverIO.disconnected = True
                reason = Failure(ConnectionDone("txmsg.testing dropped the link"))
                pump.clientIO.protocol.connectionLost(reason)
                pump.serverIO.protocol.connectionLost(reason)
        self.flush()


__all__ = ["MEMORY_URL", "MemoryBroker"]
