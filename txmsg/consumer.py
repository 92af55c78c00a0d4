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
from txmsg._outcome import Reject, Requeue, delivery_count, run_handler
from txmsg.connection import Channel, ChannelOpener, Connection
from txmsg.errors import (
    ChannelError,
    DeprecatedFeature,
    PreconditionFailed,
    UndecodableMessage,
)
from txmsg.message import Message
from txmsg.retry import Retrier, RetryPolicy, attempts
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


class Consumer(Service):
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
    ) -> None:
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

    @property
    def owns_queue(self) -> bool:
        """
        Whether this consumer declares its queue (and declares it again if deleted).
        """
        queue = self.queue
        return isinstance(queue, Queue) and not queue.passive and queue not in self.connection.topology

    def startService(self) -> None:
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
            d.addCallback(lambda name: channel.basic_consume(name))

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

        # A consumer that cannot start must not keep the connection from being ready.
        return opener().addCallback(opened).addErrback(failed)

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

    # ------------------------------------------------------------------
    # deliveries

    def _deliver(self, channel: Channel, args: dict[str, Any], props: dict[str, Any], body: bytes) -> None:
        if not self.running:
            return  # stopping: left unacked, it goes back to the queue with the channel
        limit = self.concurrency
        if limit is not None and len(self._in_flight) >= limit:
            self._backlog.append((channel, args, props, body))
            return
        self._handle(channel, args, props, body)

    def _handle(self, channel: Channel, args: dict[str, Any], props: dict[str, Any], body: bytes) -> None:
        acks = self._acks
        if acks is None or acks.channel is not channel:
            return  # a delivery from a channel already given up
        tag = args["delivery_tag"]
        if self.max_body is not None and len(body) > self.max_body:
            self._log.error(
                "rejecting message {tag} from {queue}: its body of {size} bytes is over the maximum of {max}",
                tag=tag,
                queue=self.queue,
                size=len(body),
                max=self.max_body,
            )
            self._reject(acks, tag, False)
            return
        try:
            message = Message.from_delivery(body, props, args, allow_pickle=self.allow_pickle)
            message.payload  # noqa: B018 - decode before the handler sees it
        except UndecodableMessage as e:
            self._log.error(
                "rejecting undecodable message {tag} from {queue}: {error}",
                tag=tag,
                queue=self.queue,
                error=e,
            )
            self._reject(acks, tag, False)
            return
        except Exception:  # noqa: BLE001 - a message that cannot be read must not stop the consumer
            self._log.failure("rejecting unreadable message {tag} from {queue}", tag=tag, queue=self.queue)
            self._reject(acks, tag, False)
            return
        if self.dedupe_window and message.message_id is not None and message.message_id in self._seen:
            self.deduplicated += 1
            self.consumed += 1
            acks.ack(tag)
            return
        count = delivery_count(message)
        if count is not None and count > self.max_redeliveries:
            # e.g. a message whose handling kills the process, over and over
            self._log.error(
                "dead-lettering message {tag} from {queue}: delivered {count} times before",
                tag=tag,
                queue=self.queue,
                count=count,
            )
            self._reject(acks, tag, False)
            return
        if self._retrier is not None and attempts(message):
            self.retried += 1
        # A synchronous handler is settled at once; only an asynchronous result
        # (a Deferred or an awaitable) pays for Deferred machinery.
        result = run_handler(self.handler, message)
        if isinstance(result, Failure):
            self._settle(acks, message, result)
        elif isinstance(result, Deferred):
            d = result
            acks.begin(tag)
            self._in_flight[d] = acks.channel

            def done(outcome: Any) -> Any:
                self._in_flight.pop(d, None)
                if self._acks is not acks:
                    # its channel closed meanwhile: the broker put the message back
                    self._log.info("a handler finished after its channel closed; its message was requeued")
                    return None
                self._settle(acks, message, outcome)
                self._next()
                return None

            d.addBoth(done)
        else:
            if self.dedupe_window:
                self._remember(message)
            self.consumed += 1
            acks.ack(tag)

    def _next(self) -> None:
        backlog = self._backlog
        limit = self.concurrency
        while backlog and self.running and (limit is None or len(self._in_flight) < limit):
            self._handle(*backlog.popleft())

    def _reject(self, acks: Acks, tag: int, requeue: bool) -> None:
        self.consumed += 1
        if requeue:
            self.requeued += 1
        else:
            self.rejected += 1
        acks.reject(tag, requeue)

    def _remember(self, message: Message) -> None:
        seen = self._seen
        if message.message_id is not None:
            seen[message.message_id] = None
            if len(seen) > self.dedupe_window:
                seen.popitem(last=False)

    def _settle(self, acks: Acks, message: Message, outcome: Any) -> None:
        tag = cast(int, message.delivery_tag)
        if not isinstance(outcome, Failure):
            if self.dedupe_window:
                self._remember(message)
            self.consumed += 1
            acks.ack(tag)
        elif self._retrier is not None and not outcome.check(Requeue):  # Retry, Reject, any error
            self._retry_later(acks, message, outcome)
        elif outcome.check(Requeue):
            count = delivery_count(message)
            spent = message.redelivered if count is None else count >= self.max_redeliveries
            if spent:
                self._log.error(
                    "dead-lettering message {tag} from {queue} instead of requeueing it: "
                    "it was delivered before{times}",
                    tag=tag,
                    queue=self.queue,
                    times="" if count is None else f" {count} times",
                )
            self._reject(acks, tag, not spent)
        elif outcome.check(Reject):
            self._reject(acks, tag, False)
        else:
            self._log.failure(
                "handler failed on message {tag} from {queue}; rejected", outcome, tag=tag, queue=self.queue
            )
            self._reject(acks, tag, False)

    def _retry_later(self, acks: Acks, message: Message, failure: Failure) -> None:
        """
        Publish the failed message to its delay queue (or its dead letters)
        and ack it once the broker confirmed that; if the publish fails, give
        it back to the queue (a little later, so that it does not spin).
        """
        assert self._retrier is not None
        tag = cast(int, message.delivery_tag)
        acks.begin(tag)
        delay, d = self._retrier.fail(message, failure, rejected=bool(failure.check(Reject)))
        self._in_flight[d] = acks.channel
        if delay is not None:
            self._log.warn(
                "message {tag} from {queue} failed ({error}); "
                "retrying in {delay:g} s (attempt {n} of {total})",
                tag=tag,
                queue=self.queue,
                error=failure.getErrorMessage(),
                delay=delay,
                n=attempts(message) + 2,
                total=self._retrier.policy.retries + 1,
            )

        def published(result: Any) -> None:
            self._in_flight.pop(d, None)
            if self._acks is not acks:
                return  # its channel closed: the broker put it back (a duplicate at worst)
            if isinstance(result, Failure):
                self._log.error(
                    "cannot send message {tag} from {queue} to be retried or dead-lettered: {error}; "
                    "it goes back to the queue",
                    tag=tag,
                    queue=self.queue,
                    error=result.getErrorMessage(),
                )
                self.requeued += 1
                self.connection.reactor.callLater(RESUME_DELAY, acks.reject, tag, True)
            else:
                if delay is None:
                    self.dead_lettered += 1
                    self._log.error(
                        "dead-lettered message {tag} from {queue} after {n} attempts: {error}",
                        tag=tag,
                        queue=self.queue,
                        n=attempts(message) + 1,
                        error=failure.getErrorMessage(),
                    )
                else:
                    self.retries_scheduled += 1
                self.consumed += 1
                acks.ack(tag)
            self._next()

        d.addBoth(published)
