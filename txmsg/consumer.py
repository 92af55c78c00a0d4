"""
Consuming with manual acks and fair dispatch.

A L{Consumer} sets a bounded prefetch (C{basic.qos}) and consumes a queue; each
message goes to the handler, which may return a value, a Deferred or a coroutine.
The message is acked when the handler succeeds (acks are batched into one
C{multiple} ack where every earlier delivery is settled too).  A handler's
exception is logged and the message is rejected without requeue (a dead-letter
exchange catches it), unless the handler raises L{Requeue}.  Redeliveries are
capped so that a failing message cannot spin.  A body that does not decode as its
content type says is rejected without reaching the handler.  After a reconnect,
a channel error or a broker-side cancel the consumer resumes by itself.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmsg._acks import Acks
from txmsg._deliveries import ACK_MODES, AUTO, MANUAL, NONE, AlreadySettled, Deliveries, StaleDelivery
from txmsg._outcome import Reject, Requeue, Retry, delivery_count
from txmsg.connection import Channel, ChannelOpener, Connection
from txmsg.errors import (
    ChannelClosed,
    ChannelError,
    ConnectionClosed,
    ConnectionLost,
    DeprecatedFeature,
    PreconditionFailed,
)
from txmsg.message import Message
from txmsg.retry import Retrier, RetryPolicy
from txmsg.topology import Queue

Handler = Callable[[Message], Any | Deferred[Any] | Awaitable[Any]]

#: small enough that a consumer joining later gets its share of a backlog
DEFAULT_PREFETCH = 10
#: a message is dead-lettered rather than requeued once it was delivered this
#: many times before (quorum queues count in C{x-delivery-count})
DEFAULT_MAX_REDELIVERIES = 5
#: how long stopping waits for running handlers
DEFAULT_STOP_TIMEOUT = 30.0
#: first and longest wait before consuming again after the broker closed or
#: cancelled this consumer, or refused to start it
RESUME_DELAY = 0.5
MAX_RESUME_DELAY = 30.0


class Consumer(Deliveries, Service):
    """
    Consume C{queue} with C{handler}; an C{IService}: start it to consume, stop it
    to cancel (running handlers finish and are acked first).

    @param queue: a L{Queue}, which this consumer declares on every connection
        (it owns it: when the queue is deleted it is declared again), or the
        name of a queue someone else declares.
    @param prefetch: how many unacked messages the broker may send this consumer;
        bounded by default so that consumers joining later get their share.
    @param concurrency: how many asynchronous handlers may run at once (by
        default as many as C{prefetch} lets in); further messages wait, unacked.
    @param max_redeliveries: where the queue counts deliveries (quorum queues),
        a message delivered this many times before is dead-lettered instead of
        requeued or handled again.  Elsewhere the broker only flags a message as
        redelivered: a L{Requeue} of a redelivered message dead-letters it.
    @param stop_timeout: how long L{stopService} waits for running handlers;
        those still running then are left unacked for the broker to redeliver.
    @param on_cancel: called with this consumer when the broker cancels it and
        it does not own the queue (it keeps retrying in the background).
    @param allow_pickle: decode C{application/python-pickle} bodies (off by default).
    @param max_body: reject (dead-letter) a message whose body is longer than
        this many bytes, with a logged reason, before the handler sees it.
    @param dedupe_window: skip (ack without handling) a message whose
        C{message_id} was among the last this many handled successfully: an
        opt-in guard against the duplicates at-least-once delivery allows.
    @param acks: how messages are settled: C{"auto"} (acked when the handler
        succeeds), C{"manual"} (the handler calls C{message.ack()},
        C{nack()} or C{reject()}, now or later; an unsettled message counts
        against C{prefetch}; settling twice raises L{AlreadySettled}, after a
        reconnect L{StaleDelivery}), or C{"none"} (no acks: the broker
        forgets each message as it sends it; fast, and lost if the handler
        or the process fails).
    @param batch_size: hand the handler a list of up to this many messages
        (with C{batch_wait}: or what came within that many seconds of the
        first), acked together once it succeeds; each is settled as a
        failure if it fails.  C{prefetch} must let a whole batch in.
    @param retry: a L{RetryPolicy}: a handler's failure (or L{Retry}) sends
        the message back later, held by the broker in a delay queue, and
        after the last attempt (or at once for L{Reject}) to its dead
        letters with the reason (see L{txmsg.retry}).  Needs a named queue.
    """

    _log = Logger()

    def __init__(
        self,
        connection: Connection,
        queue: Queue | str,
        handler: Handler,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        concurrency: int | None = None,
        max_redeliveries: int = DEFAULT_MAX_REDELIVERIES,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        on_cancel: Callable[[Consumer], None] | None = None,
        allow_pickle: bool = False,
        dedupe_window: int = 0,
        max_body: int | None = None,
        retry: RetryPolicy | None = None,
        acks: str = AUTO,
        batch_size: int | None = None,
        batch_wait: float = 1.0,
    ) -> None:
        if acks not in ACK_MODES:
            raise ValueError(f"acks must be one of {', '.join(ACK_MODES)}, not {acks!r}")
        if batch_size is not None:
            if batch_size < 1 or not batch_wait > 0:
                raise ValueError("batch_size must be at least 1 and batch_wait positive")
            if acks == NONE:
                raise ValueError("a batch is acked together: it needs acks='auto' or 'manual'")
            if prefetch and prefetch < batch_size:
                raise ValueError(f"prefetch {prefetch} cannot let a batch of {batch_size} in")
            acks = MANUAL
        if retry is not None and isinstance(queue, Queue) and not queue.name:
            raise ValueError("a retry policy needs a named queue (retries come back to it by name)")
        if prefetch < 0 or prefetch > 65535:
            raise ValueError("prefetch must be between 0 and 65535")
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_redeliveries < 0:
            raise ValueError("max_redeliveries must not be negative")
        self.connection = connection
        self.queue = queue
        self.handler = handler
        self.prefetch = prefetch
        self.concurrency = concurrency
        self.max_redeliveries = max_redeliveries
        self.stop_timeout = stop_timeout
        self.on_cancel = on_cancel
        self.allow_pickle = allow_pickle
        if dedupe_window < 0:
            raise ValueError("dedupe_window must not be negative")
        if max_body is not None and max_body < 0:
            raise ValueError("max_body must not be negative")
        self.max_body = max_body
        self.dedupe_window = dedupe_window
        #: message ids handled lately, oldest first (only with a dedupe window)
        self._seen: OrderedDict[str, None] = OrderedDict()
        #: duplicates skipped thanks to the window
        self.deduplicated = 0
        self.channel: Channel | None = None
        self.consumer_tag: str | None = None
        #: messages settled (acked, rejected or dead-lettered) so far
        self.consumed = 0
        #: of those, rejected without requeue (dead-lettered) and given back
        self.rejected = 0
        self.requeued = 0
        #: with a retry policy: retries sent to a delay queue, deliveries that
        #: were such a retry, and messages sent to the dead letters with a reason
        self.retries_scheduled = 0
        self.retried = 0
        self.dead_lettered = 0
        self.retry = retry
        self.acks = acks
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self._batch: list[tuple[Acks, Message]] = []
        self._batch_timer: Any = None
        self._retrier = None if retry is None else Retrier(connection, retry, self._queue_name)
        self._acks: Acks | None = None
        #: running asynchronous handlers -> the channel their message came on
        self._in_flight: dict[Deferred[Any], Channel] = {}
        self._backlog: deque[tuple[Channel, dict[str, Any], dict[str, Any], bytes]] = deque()
        self._consuming_waiters: list[Deferred[Consumer]] = []
        self._resume: Any = None
        self._retry_delay = RESUME_DELAY
        #: what this consumer declares of its own queue: the queue, or (an
        #: adopting queue that exists otherwise) a passive check of it
        self._declare_as: Queue | None = queue if isinstance(queue, Queue) else None
        #: the broker refused the queue for good (a deprecated feature)
        self._refused: Failure | None = None
        connection.add_stop_listener(self._connection_stopped)

    @property
    def owns_queue(self) -> bool:
        """
        Whether this consumer declares its queue (and declares it again if deleted).
        """
        queue = self.queue
        return isinstance(queue, Queue) and not queue.passive and queue not in self.connection.topology

    def startService(self) -> None:
        """
        Start consuming, now if the connection is up and after every reconnect.
        """
        if self.running:
            return
        Service.startService(self)
        self._retry_delay = RESUME_DELAY
        self.connection.add_ready_hook(self._on_ready)
        if not self.connection.running:
            self.connection.startService()

    def stopService(self) -> Deferred[None]:
        """
        Cancel consumption, let running handlers finish (up to C{stop_timeout})
        and ack them, then close the channel.  Messages that were delivered but
        not yet handed to the handler go back to the queue, unprocessed.
        """
        if not self.running:
            return succeed(None)
        Service.stopService(self)
        self.connection.remove_ready_hook(self._on_ready)
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        self._backlog.clear()
        channel, self.channel = self.channel, None
        acks = self._acks
        d: Deferred[Any] = succeed(None)
        if channel is not None and channel.is_open and self.consumer_tag:
            d = channel.basic_cancel(self.consumer_tag)
            d.addErrback(lambda _: None)

        def drained(_: object) -> Deferred[Any]:
            # taken after cancel-ok: no delivery starts a handler after that
            if self._batch:
                self._flush_batch()  # what was collected is handled, not left waiting
            running = list(self._in_flight)
            if not running:
                return succeed(None)
            self._log.info("waiting for {n} running handlers", n=len(running))
            # the handlers' own Deferreds are never cancelled: one that finishes
            # after the timeout settles nothing (its channel is closed by then)
            finished: Deferred[None] = Deferred()

            def done(_: object) -> None:
                if not finished.called:
                    finished.callback(None)

            def timed_out() -> None:
                self._log.warn(
                    "{n} handlers still running after {t:g} s; their messages go back to the queue",
                    n=len(self._in_flight),
                    t=self.stop_timeout,
                )
                done(None)

            timer = self.connection.reactor.callLater(self.stop_timeout, timed_out)
            DeferredList(running, consumeErrors=True).addBoth(done)
            if channel is not None:
                # a channel that closes meanwhile ends the wait: nothing can be acked on it
                channel.when_closed(done)
            return finished.addBoth(lambda _: timer.cancel() if timer.active() else None)

        def close(_: object) -> Any:
            if channel is None or not channel.is_open:
                return None
            if acks is not None:
                acks.flush()
            return channel.close()

        d.addCallback(drained)
        d.addCallback(close)
        d.addErrback(lambda f: self._log.failure("stopping the consumer on {queue}", f, queue=self.queue))
        self.connection.hold_open(d)
        return d

    def when_ready(self) -> Deferred[Consumer]:
        """
        Fire with this consumer once it is registered with the broker
        (consuming); fail with the broker's error if registering failed (e.g.
        L{NotFound} for a missing queue).  The consumer keeps retrying in the
        background either way.
        """
        if self.channel is not None and self.channel.is_open and self.consumer_tag:
            return succeed(self)
        if self._refused is not None:
            return fail(self._refused)
        d: Deferred[Consumer] = Deferred()
        self._consuming_waiters.append(d)
        return d

    def wait_consuming(self) -> Deferred[Consumer]:
        """
        Deprecated spelling of L{when_ready}.
        """
        warnings.warn(
            "Consumer.wait_consuming() is deprecated: use when_ready()", DeprecationWarning, stacklevel=2
        )
        return self.when_ready()

    # ------------------------------------------------------------------
    # registering with the broker

    def _on_ready(self, opener: ChannelOpener) -> Deferred[Any]:
        if self._refused is not None:
            return succeed(None)  # refused for good: said once, not asked again
        owns = self.owns_queue

        def opened(channel: Channel) -> Deferred[Any]:
            self.channel = channel
            self._acks = Acks(channel, self.connection.reactor)
            channel.on_cancel = lambda tag: self._cancelled(channel, tag)
            channel.when_closed(lambda reason: self._channel_closed(channel, reason))
            d: Deferred[Any] = succeed(None)
            if owns:
                assert self._declare_as is not None
                d = self._declare_as.declare(channel, self.connection.names)
            retrier = self._retrier
            if retrier is not None:
                d.addCallback(lambda _: retrier.declare(channel, self.connection.names))
            d.addCallback(lambda _: channel.basic_qos(self.prefetch))
            d.addCallback(lambda _: self._queue_name())
            d.addCallback(lambda name: channel.basic_consume(name, no_ack=self.acks == NONE))

            def consuming(result: dict[str, Any]) -> None:
                self.consumer_tag = result["consumer_tag"]
                self._retry_delay = RESUME_DELAY
                channel.consumers[self.consumer_tag] = lambda a, p, b: self._deliver(channel, a, p, b)
                self._log.info(
                    "consuming {queue} (prefetch {prefetch})",
                    queue=self._queue_name(),
                    prefetch=self.prefetch,
                )
                waiters, self._consuming_waiters = self._consuming_waiters, []
                for w in waiters:
                    w.callback(self)

            return d.addCallback(consuming)

        def failed(reason: Failure) -> None:
            queue = self.queue
            if owns and isinstance(queue, Queue):
                instead = queue.if_inequivalent()
                if reason.check(PreconditionFailed) and instead is not None and self._declare_as is queue:
                    self._log.info(
                        "{queue} exists with other properties: using it as it is", queue=queue.describe()
                    )
                    self._declare_as = instead
                    self._schedule_resume()
                    return
                if reason.check(DeprecatedFeature):
                    error = cast(DeprecatedFeature, reason.value)
                    self._refused = Failure(error.about(queue.describe()))
                    self._log.error("cannot consume: {error}", error=self._refused.value)
                    waiters, self._consuming_waiters = self._consuming_waiters, []
                    for w in waiters:
                        w.errback(self._refused)
                    return
            if (
                reason.check(ConnectionClosed, ConnectionLost, ChannelClosed)
                and not reason.check(DeprecatedFeature)
                and not connection_open()
            ):
                # the connection went (e.g. RabbitMQ's 541 when two clients declare
                # one quorum queue at once): the next one's ready hook starts this
                # consumer again, and its waiters wait for that
                self._log.info(
                    "the connection closed while the consumer on {queue} started: {error}",
                    queue=self.queue,
                    error=reason.getErrorMessage(),
                )
                return
            self._log.error(
                "cannot consume {queue}: {error}; retrying in {delay:g} s",
                queue=self.queue,
                error=reason.getErrorMessage(),
                delay=self._retry_delay,
            )
            waiters, self._consuming_waiters = self._consuming_waiters, []
            for w in waiters:
                w.errback(reason)
            self._schedule_resume()

        def connection_open() -> bool:
            opener_now = self.connection.opener
            return opener_now is opener and opener.is_open

        # A consumer that cannot start must not keep the connection from being ready.
        return opener().addCallback(opened).addErrback(failed)

    def _connection_stopped(self, reason: Failure) -> None:
        # no connection will come that could start this consumer
        waiters, self._consuming_waiters = self._consuming_waiters, []
        for w in waiters:
            w.errback(reason)

    def _queue_name(self) -> str:
        queue = self.queue
        return queue.resolve(self.connection.names) if isinstance(queue, Queue) else queue

    def _channel_closed(self, channel: Channel, reason: Failure) -> None:
        # handlers of this channel's messages can no longer settle them
        for d in [d for d, ch in self._in_flight.items() if ch is channel]:
            del self._in_flight[d]
        if self.channel is channel:
            self.channel = None
            self._backlog.clear()  # the broker requeued them with the channel
            if self._acks is not None:
                self._acks.discard()
            self._acks = None
        if self.running and reason.check(ChannelError) and channel.connection_open:
            # e.g. 406 from a consumer timeout: the connection lives, so start again
            self._log.warn(
                "consumer channel on {queue} closed: {error}", queue=self.queue, error=reason.value
            )
            self._schedule_resume()

    def _cancelled(self, channel: Channel, tag: str) -> None:
        if self.owns_queue:
            self._log.warn(
                "the broker cancelled consumer {tag} on {queue} (queue deleted, or a quorum queue's "
                "consumer_timeout on RabbitMQ 4?); declaring it again and resuming",
                tag=tag,
                queue=self.queue,
            )
        else:
            self._log.error(
                "the broker cancelled consumer {tag} on {queue}, a queue this consumer does not own "
                "(deleted, or a quorum queue's consumer_timeout on RabbitMQ 4?); retrying in the background",
                tag=tag,
                queue=self.queue,
            )
            if self.on_cancel is not None:
                try:
                    self.on_cancel(self)
                except Exception:  # noqa: BLE001 - the application's callback must not stop the consumer
                    self._log.failure("on_cancel callback failed")
        if self.channel is channel:
            self.channel = None
        if self._acks is not None:
            self._acks.flush()
        channel.close().addErrback(lambda _: None)
        self._schedule_resume()

    def _schedule_resume(self) -> None:
        if not self.running or (self._resume is not None and self._resume.active()):
            return
        delay = self._retry_delay
        self._retry_delay = min(delay * 2, MAX_RESUME_DELAY)
        self._resume = self.connection.reactor.callLater(delay, self._try_resume)

    def _try_resume(self) -> None:
        self._resume = None
        opener = self.connection.opener
        if not self.running or opener is None or not opener.is_open:
            return  # the next connection's ready hook starts it
        d: Deferred[Any] = succeed(None)
        if isinstance(self.queue, Queue) and self.queue in self.connection.topology:
            # a deleted queue that is part of the connection's topology is declared again
            d = self.connection.declare(self.queue)
        d.addCallback(lambda _: self._on_ready(opener))
        d.addErrback(self._on_ready_failed)

    def _on_ready_failed(self, reason: Failure) -> None:
        self._log.error("cannot consume {queue}: {error}", queue=self.queue, error=reason.getErrorMessage())
        self._schedule_resume()


__all__ = [
    "ACK_MODES",
    "DEFAULT_MAX_REDELIVERIES",
    "DEFAULT_PREFETCH",
    "DEFAULT_STOP_TIMEOUT",
    "AlreadySettled",
    "Consumer",
    "Handler",
    "Reject",
    "Requeue",
    "Retry",
    "StaleDelivery",
    "delivery_count",
]
