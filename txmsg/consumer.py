"""
Consuming with manual acks and fair dispatch.

A L{Consumer} sets a bounded prefetch (C{basic.qos}) and consumes a queue; each
message goes to the handler, which may return a value, a Deferred or a coroutine.
The message is acked when the handler succeeds.  A handler's exception is logged
and the message is rejected without requeue (a dead-letter exchange catches it),
unless the handler raises L{Requeue}.  A body that does not decode as its content
type says is rejected without reaching the handler.  After a reconnect the
consumer resumes by itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmsg._channel import Channel
from txmsg._protocol import AMQPProtocol
from txmsg.connection import Connection
from txmsg.errors import ChannelError, TxmsgError, UndecodableMessage
from txmsg.message import Message
from txmsg.topology import Queue

Handler = Callable[[Message], Any | Deferred[Any] | Awaitable[Any]]

DEFAULT_PREFETCH = 50
#: first and longest wait before consuming again after the broker closed or
#: cancelled this consumer, or refused to start it
RESUME_DELAY = 0.5
MAX_RESUME_DELAY = 30.0


class Requeue(TxmsgError):
    """
    Raise from a handler to put the message back on its queue for another consumer.
    """


class Reject(TxmsgError):
    """
    Raise from a handler to reject the message without requeue (dead-letter it).
    """


class Consumer(Service):
    """
    Consume C{queue} with C{handler}; an C{IService}: start it to consume, stop it
    to cancel (messages being handled finish first).

    @param prefetch: how many unacked messages the broker may send this consumer;
        bounded by default so that consumers joining later get their share.
    @param allow_pickle: decode C{application/python-pickle} bodies (off by default).
    """

    _log = Logger()

    def __init__(
        self,
        connection: Connection,
        queue: Queue | str,
        handler: Handler,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        allow_pickle: bool = False,
    ) -> None:
        if prefetch < 0 or prefetch > 65535:
            raise ValueError("prefetch must be between 0 and 65535")
        self.connection = connection
        self.queue = queue
        self.handler = handler
        self.prefetch = prefetch
        self.allow_pickle = allow_pickle
        self.channel: Channel | None = None
        self.consumer_tag: str | None = None
        self.consumed = 0
        self._in_flight: set[Deferred[Any]] = set()
        self._consuming_waiters: list[Deferred[Consumer]] = []
        self._resume: Any = None
        self._retry_delay = RESUME_DELAY

    def startService(self) -> None:
        if self.running:
            return
        Service.startService(self)
        self._retry_delay = RESUME_DELAY
        self.connection.add_ready_hook(self._on_ready)
        if not self.connection.running:
            self.connection.startService()

    def stopService(self) -> Deferred[None]:
        if not self.running:
            return succeed(None)
        Service.stopService(self)
        self.connection.remove_ready_hook(self._on_ready)
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        channel, self.channel = self.channel, None
        d: Deferred[Any] = succeed(None)
        if channel is not None and channel.is_open and self.consumer_tag:
            d = channel.call("basic.cancel", consumer_tag=self.consumer_tag)
            d.addErrback(lambda _: None)

        def drained(_: object) -> Deferred[Any]:
            # taken after cancel-ok: deliveries that arrived until then finish too
            return DeferredList(list(self._in_flight), consumeErrors=True)

        d.addCallback(drained)
        d.addCallback(lambda _: channel.close() if channel is not None and channel.is_open else None)
        d.addErrback(lambda _: None)
        return d

    def wait_consuming(self) -> Deferred[Consumer]:
        """
        Fire once this consumer is registered with the broker; fail with the
        broker's error if registering failed (e.g. L{NotFound} for a missing
        queue).  The consumer keeps retrying in the background either way.
        """
        if self.channel is not None and self.channel.is_open and self.consumer_tag:
            return succeed(self)
        d: Deferred[Consumer] = Deferred()
        self._consuming_waiters.append(d)
        return d

    def _on_ready(self, protocol: AMQPProtocol) -> Deferred[Any]:
        def opened(channel: Channel) -> Deferred[Any]:
            self.channel = channel
            channel.on_cancel = lambda tag: self._cancelled(channel, tag)
            channel.when_closed(lambda reason: self._channel_closed(channel, reason))
            d = channel.call("basic.qos", prefetch_size=0, prefetch_count=self.prefetch, global_=False)
            queue = self.queue
            d.addCallback(lambda _: self._queue_name())
            d.addCallback(lambda name: channel.call("basic.consume", queue=name, consumer_tag=""))

            def consuming(result: dict[str, Any]) -> None:
                self.consumer_tag = result["consumer_tag"]
                self._retry_delay = RESUME_DELAY
                channel.consumers[self.consumer_tag] = lambda a, p, b: self._deliver(channel, a, p, b)
                self._log.info("consuming {queue} (prefetch {prefetch})", queue=queue, prefetch=self.prefetch)
                waiters, self._consuming_waiters = self._consuming_waiters, []
                for w in waiters:
                    w.callback(self)

            return d.addCallback(consuming)

        def failed(reason: Failure) -> None:
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
        return protocol.open_channel().addCallback(opened).addErrback(failed)

    def _queue_name(self) -> str:
        queue = self.queue
        return queue.resolve(self.connection.names) if isinstance(queue, Queue) else queue

    def _channel_closed(self, channel: Channel, reason: Failure) -> None:
        if self.channel is channel:
            self.channel = None
        if self.running and reason.check(ChannelError) and channel.protocol.is_open:
            # e.g. 406 from a consumer timeout: the connection lives, so start again
            self._log.warn(
                "consumer channel on {queue} closed: {error}", queue=self.queue, error=reason.value
            )
            self._schedule_resume()

    def _cancelled(self, channel: Channel, tag: str) -> None:
        self._log.warn(
            "the broker cancelled consumer {tag} on {queue} (queue deleted?); resuming",
            tag=tag,
            queue=self.queue,
        )
        if self.channel is channel:
            self.channel = None
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
        protocol = self.connection.protocol
        if not self.running or protocol is None or not protocol.is_open:
            return  # the next connection's ready hook starts it
        d: Deferred[Any] = succeed(None)
        if isinstance(self.queue, Queue) and self.queue in self.connection.topology:
            # a deleted queue that is part of the topology is declared again
            d = self.connection.declare(self.queue)
        d.addCallback(lambda _: self._on_ready(protocol))
        d.addErrback(lambda f: self._on_ready_failed(f))

    def _on_ready_failed(self, reason: Failure) -> None:
        self._log.error("cannot consume {queue}: {error}", queue=self.queue, error=reason.getErrorMessage())
        self._schedule_resume()

    def _deliver(self, channel: Channel, args: dict[str, Any], props: dict[str, Any], body: bytes) -> None:
        tag = args["delivery_tag"]
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
            channel.reject(tag, requeue=False)
            return
        except Exception:  # noqa: BLE001 - a message that cannot be read must not stop the consumer
            self._log.failure("rejecting unreadable message {tag} from {queue}", tag=tag, queue=self.queue)
            channel.reject(tag, requeue=False)
            return
        # A synchronous handler is settled at once; only an asynchronous result
        # (a Deferred or an awaitable) pays for Deferred machinery.
        try:
            result = self.handler(message)
        except Exception:  # noqa: BLE001 - any handler error is the message's outcome
            self._settle(channel, tag, Failure())
            return
        if isinstance(result, Deferred) or inspect.isawaitable(result):
            d = ensureDeferred(cast(Any, result)) if not isinstance(result, Deferred) else result
            self._in_flight.add(d)

            def done(outcome: Any) -> None:
                self._in_flight.discard(d)
                self._settle(channel, tag, outcome)

            d.addBoth(done)
        else:
            self.consumed += 1
            channel.ack(tag)

    def _settle(self, channel: Channel, tag: int, outcome: Any) -> None:
        self.consumed += 1
        if not isinstance(outcome, Failure):
            channel.ack(tag)
        elif outcome.check(Requeue):
            channel.reject(tag, requeue=True)
        elif outcome.check(Reject):
            channel.reject(tag, requeue=False)
        else:
            self._log.failure(
                "handler failed on message {tag} from {queue}; rejected",
                outcome,
                tag=tag,
                queue=self.queue,
            )
            channel.reject(tag, requeue=False)
