"""
Connection life cycle without a broker: cluster failover order, backoff across
failed handshakes, fatal errors that stop retrying, and topology plus ready
hooks replayed on every new connection.  Endpoints hand the protocol a
StringTransport; a Clock drives ClientService's retries.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from txmsg import AuthenticationError, Connection, Queue
from txmsg.connection import ClusterEndpoint, NoBrokerAvailable
from txmsg.errors import ConnectionLost, NotFound

from .test_protocol import method


class FakeParams:
    def __init__(self, name: str, refuse: bool = False) -> None:
        self.name = name
        self.refuse = refuse
        self.safe_url = f"amqp://guest:***@{name}:5672/"
        self.attempts = 0

    def endpoint(self, reactor: Any) -> Any:
        params = self

        class Endpoint:
            def connect(self, factory: Any) -> Any:
                params.attempts += 1
                if params.refuse:
                    return fail(ConnectionRefusedError(params.name))
                return succeed(params.name)

        return Endpoint()


def test_cluster_endpoint_tries_urls_in_order() -> None:
    """
    The first URL that accepts a connection is used; refused ones are skipped.
    """
    a, b, c = FakeParams("a", refuse=True), FakeParams("b"), FakeParams("c")
    ep = ClusterEndpoint([a, b, c], Clock())  # type: ignore[list-item]
    assert ep.connect(None).result == "b"
    assert (a.attempts, b.attempts, c.attempts) == (1, 1, 0)
    assert ep.current is b
    assert "***" in repr(ep)


def test_cluster_endpoint_fails_when_none_answers() -> None:
    """
    When every URL refuses, the attempt fails with NoBrokerAvailable naming each.
    """
    ep = ClusterEndpoint([FakeParams("a", True), FakeParams("b", True)], Clock())  # type: ignore[list-item]
    failure = []
    ep.connect(None).addErrback(failure.append)
    assert failure[0].check(NoBrokerAvailable)
    assert "a:5672" in str(failure[0].value) and "b:5672" in str(failure[0].value)


class TransportEndpoint:
    """
    Connects each attempt to a new StringTransport, like a broker accepting TCP.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.current = connection.params[0]
        self.protocols: list[Any] = []

    def connect(self, factory: Any) -> Any:
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        self.protocols.append(proto)
        return succeed(proto)


def start(proto: Any) -> None:
    """
    The broker's connection.start: the client answers with its login.
    """
    proto.dataReceived(
        method(
            0,
            "connection.start",
            version_major=0,
            version_minor=9,
            server_properties={},
            mechanisms=b"PLAIN",
            locales=b"en_US",
        )
    )


def handshake(proto: Any) -> None:
    start(proto)
    proto.dataReceived(method(0, "connection.tune", channel_max=0, frame_max=131072, heartbeat=0))
    proto.dataReceived(method(0, "connection.open-ok"))


def lose(proto: Any) -> None:
    """
    The transport goes away, as the reactor would report it (through
    txmsg's guard around ClientService's protocol proxy).
    """
    from txmsg._guard import LostGuard

    proto.transport.loseConnection()
    LostGuard(proto._txmsg_proxy).connectionLost(Failure(ConnectionLost()))


def make_connection(clock: Clock) -> tuple[Connection, TransportEndpoint]:
    conn = Connection(
        "amqp://guest:guest@h1/,amqp://guest:guest@h2/",
        reactor=clock,
        retry_policy=lambda attempt: float(attempt),
    )
    ep = TransportEndpoint(conn)
    conn.endpoint = ep  # type: ignore[assignment]
    original = conn._prepare

    def prepare(proxy: Any) -> Any:
        proxy._protocol._txmsg_proxy = proxy
        return original(proxy)

    conn._prepare = prepare  # type: ignore[method-assign]
    return conn, ep


def test_fatal_error_stops_retrying_and_fails_waiters() -> None:
    """
    A refused login fails when_ready() with AuthenticationError and the service
    stops: no further connection attempt is made, however long we wait.
    """
    clock = Clock()
    conn, ep = make_connection(clock)
    waiter = conn.when_ready()
    failures: list[Any] = []
    waiter.addErrback(failures.append)
    [proto] = ep.protocols
    start(proto)
    proto.dataReceived(
        method(0, "connection.close", reply_code=403, reply_text="ACCESS_REFUSED", class_id=0, method_id=0)
    )
    lose(proto)
    assert failures[0].check(AuthenticationError)
    clock.advance(0)
    assert not conn.running
    clock.advance(3600)
    assert len(ep.protocols) == 1
    later: list[Any] = []
    conn.when_ready().addErrback(later.append)
    assert later[0].check(AuthenticationError)


def test_backoff_grows_across_failed_handshakes() -> None:
    """
    Connections that drop before the handshake completes count as failures, so
    the retry delay grows (1 s, 2 s, 3 s with this policy) instead of resetting.
    """
    clock = Clock()
    conn, ep = make_connection(clock)
    conn.startService()
    for expected_delay in (1.0, 2.0, 3.0):
        lose(ep.protocols[-1])
        count = len(ep.protocols)
        clock.advance(expected_delay - 0.01)
        assert len(ep.protocols) == count, f"retried before {expected_delay} s"
        clock.advance(0.02)
        assert len(ep.protocols) == count + 1


class RecordingQueue:
    """
    A declarable that records each declaration (standing in for topology).
    """

    def __init__(self) -> None:
        self.declared = 0

    def declare(self, channel: Any, names: dict[Any, str]) -> Any:
        self.declared += 1
        return succeed(None)


def test_topology_and_hooks_replayed_on_every_connection() -> None:
    """
    Declared topology and ready hooks run again, in that order, on each new
    connection; the ready waiters fire only once the replay is done.
    """
    clock = Clock()
    conn, ep = make_connection(clock)
    item = RecordingQueue()
    conn.topology.append(item)  # type: ignore[arg-type]
    order: list[str] = []
    conn.add_ready_hook(lambda p: order.append(f"hook{item.declared}"))
    ready: list[Any] = []
    conn.when_ready().addCallback(ready.append)
    proto = ep.protocols[0]
    handshake(proto)
    # declare needs a channel: answer channel.open
    proto.dataReceived(method(1, "channel.open-ok"))
    assert item.declared == 1 and order == ["hook1"] and ready == [conn]
    lose(proto)
    assert not conn.is_connected
    clock.advance(1.5)
    proto2 = ep.protocols[1]
    handshake(proto2)
    proto2.dataReceived(method(1, "channel.open-ok"))
    assert item.declared == 2 and order == ["hook1", "hook2"]
    assert conn.protocol is proto2._protocol


class Declares:
    """
    A declarable that records each declaration and fails the first C{fails}
    of them with C{error} (a broker's answer to part of a replayed topology).
    """

    def __init__(self, server_named: bool = False, fails: int = 0, error: Exception | None = None) -> None:
        self.server_named = server_named
        self.fails = fails
        self.error = error or NotFound(404, "NOT_FOUND - no exchange 'news' in vhost '/'")
        self.declared = 0

    def declare(self, channel: Any, names: dict[Any, str]) -> Any:
        self.declared += 1
        if self.server_named:
            names[self] = f"amq.gen-{self.declared}"
        if self.declared <= self.fails:
            return fail(self.error)
        return succeed(None)


def replay_topology(*items: Declares) -> list[Any]:
    """
    Start a connection with C{items} as its topology, answer its handshake
    and channel.open, and return its ready waiters' results.
    """
    conn, ep = make_connection(Clock())
    conn.topology.extend(items)  # type: ignore[arg-type]
    ready: list[Any] = []
    conn.when_ready().addBoth(ready.append)
    handshake(ep.protocols[0])
    ep.protocols[0].dataReceived(method(1, "channel.open-ok"))
    return ready


def test_a_404_while_replaying_the_topology_replays_it_again_keeping_server_named_queues() -> None:
    """
    When part of a replayed topology is refused with 404 (an auto-delete
    exchange the broker removed a moment after it was declared again, as the
    lost connection's exclusive queues went), the topology is declared once
    more, all but the server-named queues this connection already has, and
    the connection is ready after it.
    """
    exchange, queue, binding = Declares(), Declares(server_named=True), Declares(fails=1)
    ready = replay_topology(exchange, queue, binding)
    assert (exchange.declared, queue.declared, binding.declared) == (2, 1, 2)
    assert len(ready) == 1 and isinstance(ready[0], Connection)


def test_a_lasting_404_or_another_refusal_while_replaying_is_skipped_after_a_few_passes() -> None:
    """
    A binding to an exchange nobody declares is refused on every pass: the
    replay stops after REPLAYS passes and the connection is ready; a refusal
    other than 404 (406, which another pass would not change) starts no
    other pass.
    """
    from txmsg._replay import REPLAYS
    from txmsg.errors import PreconditionFailed

    refused = Declares(fails=99, error=PreconditionFailed(406, "PRECONDITION_FAILED - inequivalent arg"))
    ready = replay_topology(refused)
    assert refused.declared == 1
    assert len(ready) == 1 and isinstance(ready[0], Connection)
    missing = Declares(fails=99)
    ready = replay_topology(missing)
    assert missing.declared == REPLAYS == 3
    assert len(ready) == 1 and isinstance(ready[0], Connection)


def test_stop_closes_politely() -> None:
    """
    stopService sends connection.close and finishes when the broker answers
    close-ok and the transport closes.
    """
    clock = Clock()
    conn, ep = make_connection(clock)
    conn.startService()
    proto = ep.protocols[0]
    handshake(proto)
    proto.transport.clear()
    stopped: list[Any] = []
    conn.stopService().addCallback(stopped.append)
    assert b"\x00\x0a\x00\x32" in proto.transport.value()  # connection.close (10, 50)
    assert not stopped
    proto.dataReceived(method(0, "connection.close-ok"))
    lose(proto)
    assert stopped


def test_undeclared_server_named_queue_has_no_name() -> None:
    """
    Queue names resolve per connection; an undeclared server-named queue has none.
    """
    with pytest.raises(LookupError):
        Queue(exclusive=True).resolve({})


def test_cluster_endpoint_falls_through_unresolvable_hosts() -> None:
    """
    A host that does not resolve (DNSLookupError) is skipped like a refused one.
    """
    from twisted.internet.error import DNSLookupError

    class Unresolvable(FakeParams):
        def endpoint(self, reactor: Any) -> Any:
            class Endpoint:
                def connect(self, factory: Any) -> Any:
                    return fail(DNSLookupError("no such host"))

            return Endpoint()

    ep = ClusterEndpoint([Unresolvable("nowhere"), FakeParams("b")], Clock())  # type: ignore[list-item]
    assert ep.connect(None).result == "b"


def test_a_failing_ready_hook_does_not_keep_the_connection_from_ready() -> None:
    """
    A hook that raises is logged; later hooks still run and the connection
    becomes ready.
    """
    clock = Clock()
    conn, ep = make_connection(clock)
    ran: list[str] = []

    def broken(protocol: Any) -> None:
        raise RuntimeError("hook bug")

    conn.add_ready_hook(broken)
    conn.add_ready_hook(lambda p: ran.append("second"))
    ready: list[Any] = []
    conn.when_ready().addCallback(ready.append)
    handshake(ep.protocols[0])
    assert ran == ["second"] and ready
    assert len(ep.protocols) == 1  # not torn down and retried


def test_a_hook_added_while_hooks_run_runs_on_this_connection() -> None:
    """
    A ready hook that adds another (a consumer making a producer) gets the new
    one run during the same preparation, before the connection is ready.
    """
    clock = Clock()
    conn, ep = make_connection(clock)
    order: list[str] = []

    def first(protocol: Any) -> None:
        order.append("first")
        conn.add_ready_hook(lambda p: order.append("added"))

    conn.add_ready_hook(first)
    ready: list[Any] = []
    conn.when_ready().addCallback(lambda p: ready.append(list(order)))
    handshake(ep.protocols[0])
    assert ready == [["first", "added"]]
    assert order == ["first", "added"]  # and only once


def test_stop_waits_for_what_holds_the_connection_open() -> None:
    """
    A stopping consumer holds the connection open (hold_open): stopService
    sends connection.close only once that hold fires, so running handlers can
    still ack; publishers are not failed before then.
    """
    clock = Clock()
    conn, ep = make_connection(clock)
    conn.startService()
    proto = ep.protocols[0]
    handshake(proto)
    told: list[Any] = []
    conn.add_stop_listener(told.append)
    hold: Deferred[None] = Deferred()
    conn.hold_open(hold)
    proto.transport.clear()
    stopped: list[Any] = []
    conn.stopService().addCallback(stopped.append)
    assert proto.transport.value() == b""
    assert conn.is_connected and not told
    hold.callback(None)
    assert b"\x00\x0a\x00\x32" in proto.transport.value()  # connection.close (10, 50)
    assert told and not conn.is_connected
    proto.dataReceived(method(0, "connection.close-ok"))
    lose(proto)
    assert stopped


def test_last_failure_says_why_the_last_attempt_failed_and_clears_once_connected() -> None:
    """
    A refused TCP connection (on each URL of a cluster) and a handshake the
    broker refuses both leave C{last_failure} naming the URL (password
    masked) and the error; it is L{None} again once connected.
    """
    from txmsg.connection import FailedAttempt

    a, b = FakeParams("a", refuse=True), FakeParams("b", refuse=True)
    seen: list[FailedAttempt] = []
    ep = ClusterEndpoint([a, b], Clock(), seen.append)  # type: ignore[list-item]
    ep.connect(None).addErrback(lambda _: None)
    assert [f.url for f in seen] == [a.safe_url, b.safe_url]
    assert isinstance(seen[-1].error, ConnectionRefusedError) and "***" in str(seen[-1])

    clock = Clock()
    conn, endpoint = make_connection(clock)
    conn.startService()
    proto = endpoint.protocols[-1]
    start(proto)
    proto.dataReceived(method(0, "connection.tune", channel_max=0, frame_max=131072, heartbeat=0))
    proto.dataReceived(
        method(
            0, "connection.close", reply_code=530, reply_text="NOT_ALLOWED - vhost", class_id=0, method_id=0
        )
    )
    lose(proto)
    failure = conn.last_failure
    assert failure is not None and "guest:***@" in failure.url and "vhost" in str(failure.error)
    assert "guest:guest" not in str(failure)


def test_ready_hooks_get_a_channel_opener_not_the_protocol() -> None:
    """
    A ready hook is given a L{ChannelOpener}: calling it opens a channel on
    the connection that was just made ready.
    """
    from txmsg.connection import ChannelOpener

    clock = Clock()
    conn, endpoint = make_connection(clock)
    given: list[Any] = []
    conn.add_ready_hook(given.append)
    conn.startService()
    handshake(endpoint.protocols[-1])
    assert len(given) == 1 and isinstance(given[0], ChannelOpener) and given[0].is_open
    opened: list[Any] = []
    given[0]().addCallback(opened.append)
    endpoint.protocols[-1].dataReceived(method(1, "channel.open-ok"))
    assert opened and opened[0].is_open


def test_a_connection_lost_after_a_while_is_replaced_at_once_a_fresh_one_waits_the_backoff() -> None:
    """
    A connection that had been ready for a few seconds and is lost is
    replaced at once (no backoff); one lost within a quarter second of being
    ready waits the retry policy, so a broker that drops every connection is not
    hammered.
    """
    clock = Clock()
    conn, endpoint = make_connection(clock)
    conn.startService()
    handshake(endpoint.protocols[-1])
    clock.advance(5)
    lose(endpoint.protocols[-1])
    clock.advance(0)
    assert len(endpoint.protocols) == 2  # a new attempt without waiting
    handshake(endpoint.protocols[-1])
    clock.advance(0.1)
    lose(endpoint.protocols[-1])
    clock.advance(0.01)
    assert len(endpoint.protocols) == 2  # lost right after ready: the backoff
    clock.advance(60)
    assert len(endpoint.protocols) == 3


def test_replacing_a_lost_connection_at_once_tries_only_its_own_broker() -> None:
    """
    The immediate attempt after a cut goes to the broker of the lost
    connection only (a cluster's other nodes may still be electing a
    queue's leader); the attempts after it go through the list again.
    """
    a, b = FakeParams("a", refuse=True), FakeParams("b", refuse=True)
    ep = ClusterEndpoint([a, b], Clock())  # type: ignore[list-item]
    ep.current = b  # type: ignore[assignment]
    ep.current_only = True
    ep.connect(None).addErrback(lambda _: None)
    assert (a.attempts, b.attempts) == (0, 1)
    ep.connect(None).addErrback(lambda _: None)
    assert (a.attempts, b.attempts) == (1, 2)
