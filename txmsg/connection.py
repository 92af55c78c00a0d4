"""
A connection to RabbitMQ that recovers: Twisted's C{ClientService} with a jittered
backoff, failover across the URLs of a cluster, fatal errors surfaced instead of
retried, and everything a fresh connection needs (topology first, then the hooks
of producers and consumers) replayed on every reconnect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredLock,
    fail,
    inlineCallbacks,
    succeed,
)
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmsg._amqp import AMQPProtocol, Channel
from txmsg._cluster import ClusterEndpoint, FailedAttempt, NoBrokerAvailable, safe_urls
from txmsg._guard import real_protocol
from txmsg._replay import replay
from txmsg.errors import (
    ConnectionLost,
    DeprecatedFeature,
    FatalConnectionError,
    PreconditionFailed,
    TxmsgError,
)
from txmsg.url import parse_urls


class QueueInfo(NamedTuple):
    """
    What queue.declare answered.
    """

    name: str
    message_count: int
    consumer_count: int


class Declarable(Protocol):
    """
    A piece of topology: something that declares itself on a channel.

    C{names} maps queues to the names the broker gave them on this connection, so
    that bindings follow a server-named queue to its new name after a reconnect.

    It may also have C{if_inequivalent()}, which returns what to declare
    instead when the broker answers 406 (it exists with other properties), or
    None; and C{describe()}, which names it in error messages.
    """

    def declare(self, channel: Channel, names: dict[Any, str]) -> Deferred[Any]:
        """
        Declare on C{channel}; fires when the broker has.
        """


class Deletable(Protocol):
    """
    Something that can be deleted on the broker (a queue or an exchange).
    """

    def delete(self, channel: Channel) -> Deferred[Any]:
        """
        Delete on C{channel}; fires when the broker has.
        """


def _describe(item: Any) -> str:
    describe = getattr(item, "describe", None)
    return describe() if callable(describe) else repr(item)


#: a connection lost after it had been ready for this many seconds is replaced
#: at once, by one to the same broker (a healthy broker, a cut); if that fails,
#: and for a connection lost sooner (a broker that drops each connection as it
#: opens), the retry policy's backoff and the cluster's other nodes follow
QUICK_RETRY_AFTER = 0.25


class ChannelOpener:
    """
    What a ready hook is given: it opens channels on the connection that was
    just made ready (and fails once that connection is gone).
    """

    __slots__ = ("_protocol",)

    def __init__(self, protocol: AMQPProtocol) -> None:
        self._protocol = protocol

    def __call__(self) -> Deferred[Channel]:
        """
        Open a new channel on this connection.
        """
        return self._protocol.open_channel()

    @property
    def is_open(self) -> bool:
        """
        Whether the connection is still open.
        """
        return self._protocol.is_open

    @property
    def frame_max(self) -> int:
        """
        The largest frame the connection takes.
        """
        return self._protocol.frame_max


#: run with a L{ChannelOpener} on every connection once its topology is declared
ReadyHook = Callable[[ChannelOpener], "Deferred[Any] | None"]


class _Factory(Factory):
    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def buildProtocol(self, addr: Any) -> AMQPProtocol:
        conn = self.connection
        protocol = AMQPProtocol(conn.endpoint.current, conn.reactor, conn.name)
        protocol.factory = self
        return protocol


class Connection(Service):
    """
    A recovering connection to a RabbitMQ broker or cluster; an C{IService}.

    @param urls: one URL, several (a cluster: the first that answers is used and
        the others take over on loss), or None for C{$TXMSG_URL} or the local default.
    @param reactor: the reactor (also the clock); the global one if not given.
    @param name: the connection name shown in the management UI.
    @param retry_policy: attempt number -> seconds to wait; a jittered exponential
        backoff by default.
    """

    _log = Logger()

    def __init__(
        self,
        urls: str | Iterable[str] | None = None,
        *,
        reactor: Any = None,
        name: str | None = None,
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.params = parse_urls(urls)
        self.name = name  # type: ignore[assignment]  # Service declares it None
        self.endpoint = ClusterEndpoint(self.params, reactor, self._attempt_failed)
        #: why the last attempt to connect failed (a L{FailedAttempt}), or
        #: C{None} once connected: what to tell a user who waited in vain
        self.last_failure: FailedAttempt | None = None
        self._policy = retry_policy or backoffPolicy(initialDelay=0.5, maxDelay=30.0)
        self._failures = 0
        #: when the live connection became ready, and whether its loss is
        #: retried at once (see L{QUICK_RETRY_AFTER})
        self._ready_at = 0.0
        self._retry_now = False
        #: attempts made at once since the last ready connection (not counted by the backoff)
        self._quick = 0
        self.protocol: AMQPProtocol | None = None
        #: opens channels on the live connection (what ready hooks get)
        self.opener: ChannelOpener | None = None
        self.topology: list[Declarable] = []
        self.names: dict[Any, str] = {}
        self._hooks: list[ReadyHook] = []
        self._waiters: list[Deferred[AMQPProtocol]] = []
        self._fatal: Failure | None = None
        self._service: ClientService | None = None
        #: the channel declarations go on, and the connection it is on
        self._control: tuple[AMQPProtocol, Channel] | None = None
        self._declare_lock = DeferredLock()
        self._stop_listeners: list[Callable[[Failure], None]] = []
        self._stopped = False
        self._holds: list[Deferred[Any]] = []

    def __repr__(self) -> str:
        return f"<Connection {self.safe_urls}>"

    @property
    def safe_urls(self) -> str:
        """
        The broker URLs, comma-separated, with their passwords masked.
        """
        return safe_urls(self.params)

    # ------------------------------------------------------------------
    # IService

    def startService(self) -> None:
        """
        Start connecting (and reconnecting); see L{when_ready}.
        """
        if self.running:
            return
        Service.startService(self)
        self._stopped = False
        self._fatal = None
        self._failures = 0
        self._retry_now = False
        self._service = ClientService(
            self.endpoint,
            _Factory(self),
            retryPolicy=self._retry_delay,
            clock=self.reactor,
            prepareConnection=self._prepare,
        )
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        """
        Close the AMQP connection politely and stop reconnecting, once what
        holds it open (see L{hold_open}) is done.
        """
        Service.stopService(self)
        holds = [d for d in self._holds if not d.called]
        self._holds.clear()
        if holds:
            return DeferredList(holds, consumeErrors=True).addCallback(lambda _: self._close())
        return self._close()

    def hold_open(self, done: Deferred[Any]) -> None:
        """
        Keep the connection open, if it is being stopped, until C{done} fires:
        a consumer that is stopping calls this so that its running handlers
        can finish, publish and ack before the connection closes, whatever
        order a C{MultiService} stops its children in.
        """
        if not done.called:
            self._holds.append(done)

    def _close(self) -> Deferred[None]:
        self._stopped = True
        service, self._service = self._service, None
        protocol, self.protocol = self.protocol, None
        self.opener = None
        stopped = Failure(ConnectionLost("the connection was stopped"))
        self._fail_waiters(stopped)
        self._tell_stopped(stopped)
        closing = protocol.close() if protocol is not None else succeed(None)
        if service is None:
            return closing
        closing.addBoth(lambda _: service.stopService())
        return closing

    # ------------------------------------------------------------------
    # using the connection

    @property
    def is_connected(self) -> bool:
        """
        Whether a connection to the broker is open now.
        """
        return self.protocol is not None and self.protocol.is_open

    def when_ready(self) -> Deferred[Connection]:
        """
        Fire with this connection once it is connected, with topology
        declared and every ready-hook run (starting it if needed); fail with
        a L{FatalConnectionError} if the broker refuses us in a way that
        retrying cannot fix, or with L{ConnectionLost} once it was stopped.
        """
        return self._live().addCallback(lambda _: self)

    def _live(self) -> Deferred[AMQPProtocol]:
        """
        The live protocol, once there is one (see L{when_ready}).
        """
        if self._fatal is not None:
            return fail(self._fatal)
        if self.protocol is not None and self.protocol.is_open:
            return succeed(self.protocol)
        if self._stopped:
            return fail(ConnectionLost("the connection was stopped"))
        if not self.running:
            self.startService()
        d: Deferred[AMQPProtocol] = Deferred()
        self._waiters.append(d)
        return d

    def connect(self) -> Deferred[Connection]:
        """
        Start the service if needed; fire with this connection once it is
        ready (the same as L{when_ready}).
        """
        return self.when_ready()

    @inlineCallbacks
    def channel(self) -> Any:
        """
        Open a new channel on the live connection (waiting for one if needed).
        """
        protocol = yield self._live()
        channel = yield protocol.open_channel()
        return channel

    @inlineCallbacks
    def queue_info(self, name: str) -> Any:
        """
        Ask the broker about queue C{name} once (a passive C{queue.declare} on
        a channel of its own): fire with a L{QueueInfo} (its ready messages
        and consumers), or fail with L{NotFound}.  Unlike declaring
        C{Queue(name, passive=True)}, this adds nothing to the topology
        replayed on reconnect.
        """
        ok = yield self._ask(lambda channel: channel.queue_declare(name, passive=True))
        return QueueInfo(ok["queue"], ok["message_count"], ok["consumer_count"])

    @inlineCallbacks
    def check_exchange(self, name: str) -> Any:
        """
        Ask the broker once whether exchange C{name} exists (as L{queue_info}
        does for a queue): fire with C{None}, or fail with L{NotFound}.
        """
        if not name:
            return None
        yield self._ask(lambda channel: channel.exchange_declare(name, passive=True))
        return None

    @inlineCallbacks
    def _ask(self, question: Callable[[Channel], Deferred[Any]]) -> Any:
        """C{question(channel)} on a channel of its own, closed after the answer."""
        protocol = yield self._live()
        channel = yield protocol.open_channel()
        try:
            answer = yield question(channel)
        finally:
            if channel.is_open:
                channel.close()
        return answer

    def add_ready_hook(self, hook: ReadyHook) -> None:
        """
        Run C{hook(opener)} on every connection once topology is declared
        (C{opener()} opens a channel on that connection: a L{ChannelOpener});
        if connected now, run it at once too.  Producers and consumers use
        this to open their channels again after a reconnect.
        """
        self._hooks.append(hook)
        opener = self.opener
        if opener is not None and opener.is_open:
            d = hook(opener)
            if isinstance(d, Deferred):
                d.addErrback(lambda f: self._log.failure("ready hook {hook} failed", f, hook=hook))

    def add_stop_listener(self, listener: Callable[[Failure], None]) -> None:
        """
        Call C{listener} with the reason when this connection stops for good:
        L{stopService}, or a fatal error such as L{AuthenticationError}.
        """
        self._stop_listeners.append(listener)

    def _tell_stopped(self, reason: Failure) -> None:
        for listener in list(self._stop_listeners):
            listener(reason)

    def remove_ready_hook(self, hook: ReadyHook) -> None:
        """
        Stop running C{hook} on new connections.
        """
        if hook in self._hooks:
            self._hooks.remove(hook)

    @inlineCallbacks
    def declare(self, *items: Declarable) -> Any:
        """
        Declare topology now and on every reconnect.  A declaration the broker
        refuses fails with its L{ChannelError} and is not kept for replay.
        """
        protocol = yield self._live()
        results = []
        for item in items:
            # one declaration at a time on the control channel: a refused one
            # closes that channel and must not fail another caller's declaration
            result = yield self._declare_lock.run(self._declare_one, protocol, item)
            if item not in self.topology:
                self.topology.append(item)
            results.append(result)
        return results[0] if len(results) == 1 else results

    @inlineCallbacks
    def delete(self, *items: Deletable) -> Any:
        """
        Stop replaying these declarations, and delete them on the broker now if
        connected (one at a time on the control channel, like L{declare}).
        A delete the broker refuses fails with its L{ChannelError}.
        """
        self.forget(*items)
        protocol = self.protocol
        if protocol is None or not protocol.is_open:
            return None
        for item in items:
            yield self._declare_lock.run(self._delete_one, protocol, item)
        return None

    @inlineCallbacks
    def _delete_one(self, protocol: AMQPProtocol, item: Deletable) -> Any:
        channel = yield self._control_channel(protocol)
        result = yield item.delete(channel)
        return result

    def forget(self, *items: Declarable | Deletable) -> None:
        """
        Stop replaying these declarations on reconnect.
        """
        for item in items:
            if item in self.topology:
                self.topology.remove(item)

    @inlineCallbacks
    def _declare_one(self, protocol: AMQPProtocol, item: Declarable) -> Any:
        """
        Declare C{item} on the control channel; a queue that adopts an
        existing one falls back to a passive check when the broker says it
        exists otherwise (406), and a refused deprecated feature says which
        item asked for it.
        """
        channel = yield self._control_channel(protocol)
        try:
            result = yield item.declare(channel, self.names)
        except PreconditionFailed:
            instead = getattr(item, "if_inequivalent", lambda: None)()
            if instead is None:
                raise
            self._log.info("{item} exists with other properties: using it as it is", item=_describe(item))
            channel = yield self._control_channel(protocol)
            result = yield instead.declare(channel, self.names)
        except DeprecatedFeature as e:
            raise e.about(_describe(item)) from None
        return result

    @inlineCallbacks
    def _control_channel(self, protocol: AMQPProtocol) -> Any:
        control = self._control
        if control is not None and control[0] is protocol and control[1].is_open:
            return control[1]
        channel = yield protocol.open_channel()
        self._control = (protocol, channel)
        return channel

    # ------------------------------------------------------------------
    # connection life cycle

    def _retry_delay(self, attempt: int) -> float:
        if self._retry_now:
            # a connection that had been up a while was lost: replace it at once
            # (a broker that is really gone gets the backoff from the next
            # attempt, starting where it would have without this one)
            self._retry_now = False
            self._quick = 1
            return 0.0
        # ClientService counts a connection that reached prepareConnection as a
        # success; txmsg counts only a ready connection as one, so the backoff
        # grows across handshake failures too.
        return self._policy(max(attempt - self._quick, self._failures, 1))

    def _prepare(self, proxy: IProtocol) -> Deferred[None]:
        """
        ClientService's prepareConnection.  The returned Deferred never fails: it
        fires once the connection is ready or once it is gone, because
        ClientService cannot take a connection lost while preparing it as a
        failure.  A failed preparation aborts the connection and waits for the loss.
        """
        protocol = cast(AMQPProtocol, real_protocol(proxy))
        # ClientService cancels this when stopped mid-way: drop the connection then.
        done: Deferred[None] = Deferred(lambda _: protocol.transport.abortConnection())

        def finish(_: object = None) -> None:
            if not done.called:
                done.callback(None)

        protocol.when_lost(self._lost)
        protocol.when_lost(finish)
        opener = ChannelOpener(protocol)
        d = self._setup(protocol, opener)

        def ready(_: object) -> None:
            self._failures = 0
            self._quick = 0
            self._ready_at = self.reactor.seconds()
            self.last_failure = None
            self.protocol = protocol
            self.opener = opener
            self._log.info("connected to {url}", url=protocol.params.safe_url)
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.callback(protocol)
            finish()

        def failed(reason: Failure) -> None:
            self._failures += 1
            self._attempt_failed(FailedAttempt(protocol.params.safe_url, reason.value))
            # a refused deprecated feature in the topology replayed on connect
            # is refused again on every connection: as fatal as a bad password
            if reason.check(FatalConnectionError, DeprecatedFeature):
                self._log.error("{url}: {error}", url=protocol.params.safe_url, error=reason.value)
                self._fatal = reason
                self._fail_waiters(reason)
                self._tell_stopped(reason)
                # stop before the connection is dropped: ClientService would
                # otherwise schedule (and log) a retry that never comes
                self._stop_after_fatal()
            else:
                self._log.info(
                    "connection to {url} failed: {error}",
                    url=protocol.params.safe_url,
                    error=reason.getErrorMessage(),
                )
            if not protocol.lost:
                protocol.transport.abortConnection()

        d.addCallbacks(ready, failed)
        return done

    @inlineCallbacks
    def _setup(self, protocol: AMQPProtocol, opener: ChannelOpener) -> Any:
        yield protocol.handshake
        self._control = None
        self.names.clear()
        yield replay(
            list(self.topology), self.names, lambda item: self._declare_one(protocol, item), self._log
        )
        # by index: a hook may add hooks (a consumer making a producer), run them too
        index = 0
        while index < len(self._hooks):
            hook = self._hooks[index]
            index += 1
            try:
                yield hook(opener)
            except Exception:  # noqa: BLE001 - one failing hook must not keep the others from running
                self._log.failure("ready hook {hook} failed", hook=hook)
        if protocol.lost:
            raise ConnectionLost("the connection was lost while it was being prepared")

    def _attempt_failed(self, attempt: FailedAttempt) -> None:
        self.last_failure = attempt

    def _lost(self, reason: Failure) -> None:
        if self.protocol is not None and self.protocol.lost:
            self.last_failure = FailedAttempt(self.protocol.params.safe_url, reason.value)
            self._log.warn(
                "connection to {url} lost: {error}",
                url=self.protocol.params.safe_url,
                error=reason.getErrorMessage(),
            )
            self.protocol = None
            self.opener = None
            self._control = None
            self._retry_now = self.reactor.seconds() - self._ready_at >= QUICK_RETRY_AFTER
            self.endpoint.current_only = self._retry_now

    def _stop_after_fatal(self) -> None:
        if self.running:
            Service.stopService(self)
            service, self._service = self._service, None
            if service is not None:
                service.stopService()

    def _fail_waiters(self, reason: Failure) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.errback(reason)


__all__ = [
    "Channel",
    "ChannelOpener",
    "ClusterEndpoint",
    "Connection",
    "Declarable",
    "Deletable",
    "FailedAttempt",
    "NoBrokerAvailable",
    "QueueInfo",
    "ReadyHook",
    "TxmsgError",
]
