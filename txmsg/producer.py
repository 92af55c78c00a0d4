"""
Publishing with publisher confirms.

L{Producer.publish} returns a Deferred that fires once the broker has confirmed
the message.  Confirms are tracked asynchronously and pipelined: many messages
may be unconfirmed at once, and one C{basic.ack} with C{multiple} settles them all.
Messages published while the connection is down wait for it; messages that were
sent but not confirmed when a connection died are published again after the
reconnect (at-least-once: a consumer may see such a message twice).

Backpressure: a publish is written only while the socket's write buffer has
room (the protocol is the transport's push producer), fewer than C{window}
messages await their confirm, and the broker has not sent C{connection.blocked}.
Otherwise it waits in order, and its Deferred fires later: a publisher that
yields on its Deferreds, or on bounded batches of them, keeps bounded memory.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmsg.connection import Channel, ChannelOpener, Connection
from txmsg.errors import ChannelError, MessageTooLarge, TxmsgError, names_exchange, too_large
from txmsg.message import Message, encode_message


class Nacked(TxmsgError):
    """
    The broker refused the message (C{basic.nack}): it could not take it.
    """


class Unroutable(TxmsgError):
    """
    A mandatory message came back: no queue was bound for its routing key.
    """

    def __init__(self, reply_code: int, reply_text: str, exchange: str, routing_key: str) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.exchange = exchange
        self.routing_key = routing_key
        super().__init__(
            f"{reply_code} {reply_text}: no queue for routing key {routing_key!r} on exchange {exchange!r}"
        )


class PublishTimeout(TxmsgError):
    """
    The broker did not confirm the message within the publish timeout.
    """


#: how many published messages may await their confirm at once
DEFAULT_WINDOW = 1000


class _Pending:
    __slots__ = (
        "body",
        "deferred",
        "exchange",
        "expired",
        "mandatory",
        "owner",
        "props",
        "queued",
        "returned",
        "routing_key",
        "timer",
    )

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: dict[str, Any],
        mandatory: bool,
        owner: Producer | None = None,
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.props = props
        self.mandatory = mandatory
        self.owner = owner
        self.deferred: Deferred[None] = Deferred(None if owner is None else self._cancelled)
        self.timer: Any = None
        self.returned: Unroutable | None = None
        #: in the producer's queue of publishes waiting to be written
        self.queued = False
        #: timed out or cancelled there (counted in the producer's C{_expired})
        self.expired = False

    def _cancelled(self, _: Deferred[None]) -> None:
        # the caller gave up on this publish: skipped if it still waits
        if self.owner is not None:
            self.owner._expire(self)


class Producer:
    """
    Publish messages through C{connection}, each confirmed by the broker.

    @param window: the most messages that may await their confirm at once;
        further publishes wait for confirms (or for the write buffer to drain,
        or for the broker to unblock) before they are written.
    @param confirm: C{False} for publishing without confirms (at most once):
        a publish's Deferred fires as soon as the message is written to the
        connection, so waiting for it is backpressure, not a guarantee; a
        message written just before a connection is lost may be lost with it.
        L{confirmed} counts messages written.  C{mandatory} needs C{on_return}
        then: the publish has already succeeded when the broker returns it.
    @param on_return: called with an L{Unroutable} and the message's
        properties for each mandatory message the broker returns on a
        producer without confirms (with confirms, the publish fails instead).
    @param max_message_size: the broker's C{max_message_size} in bytes, if
        known: a publish whose body is larger fails at once with
        L{MessageTooLarge}.  Unknown (the default), the first such body is
        refused by the broker, which closes the channel: that publish fails
        with L{MessageTooLarge}, the others caught in flight are published
        again on a new channel, and the limit the broker named is kept
        here for the next ones.
    """

    _log = Logger()

    def __init__(
        self,
        connection: Connection,
        *,
        window: int = DEFAULT_WINDOW,
        confirm: bool = True,
        on_channel: Callable[[Channel], Deferred[Any] | None] | None = None,
        on_return: Callable[[Unroutable, dict[str, Any]], None] | None = None,
        max_message_size: int | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        if max_message_size is not None and max_message_size < 0:
            raise ValueError("max_message_size must not be negative")
        #: the largest body the broker takes, once known (see the class docstring)
        self.max_message_size = max_message_size
        self.connection = connection
        self.window = window
        self.confirm = confirm
        #: called with each new publishing channel before anything is published
        #: on it (e.g. to consume replies on that channel); may return a Deferred
        self.on_channel = on_channel
        self.on_return = on_return
        #: publishes confirmed by the broker, and those that failed (nacked,
        #: returned, timed out or lost with a stopped connection)
        self.confirmed = 0
        self.failed = 0
        self._channel: Channel | None = None
        #: opens channels on the live connection (from its ready hook)
        self._opener: ChannelOpener | None = None
        self._next_tag = 1
        #: delivery tag -> pending publish, in publish order
        self._unconfirmed: OrderedDict[int, _Pending] = OrderedDict()
        #: not yet written: waiting for a channel, for room in the window, for
        #: the write buffer to drain or for the broker to unblock
        self._waiting: deque[_Pending] = deque()
        #: how many of those timed out: skipped when their turn comes
        self._expired = 0
        self._by_message_id: dict[str, _Pending] = {}
        self._watching = False
        #: when_ready() callers, fired once a publishing channel is ready
        self._ready_waiters: list[Deferred[Producer]] = []
        #: room() callers: (limit, Deferred), fired when fewer than limit are pending
        self._room_waiters: list[tuple[int, Deferred[None]]] = []
        #: the frame_max of the last connection, for checking publishes made while down
        self._frame_max = 131072
        connection.add_stop_listener(self._stopped)
        connection.add_ready_hook(self._on_ready)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: Any = b"",
        *,
        mandatory: bool = False,
        timeout: float | None = None,
        **properties: Any,
    ) -> Deferred[None]:
        """
        Publish one message; the Deferred fires when the broker confirmed it.

        @param payload: a L{Message}, or bytes / str / JSON-able data to make one
            (with C{properties} such as C{persistent=True} or C{headers={...}}).
        @param mandatory: fail with L{Unroutable} if no queue takes the message.
        @param timeout: fail with L{PublishTimeout} if unconfirmed after this many
            seconds (the message may still have reached the broker).
        """
        try:
            if isinstance(payload, Message):
                message = payload.replace(**properties) if properties else payload
                body, props = message.body, message.properties()
            else:
                body, props = encode_message(payload, **properties)
        except (TypeError, ValueError) as e:
            return fail(e)
        too_big = self._too_big(body)
        if too_big is not None:
            self.failed += 1
            return fail(too_big)
        if mandatory and not self.confirm and self.on_return is None:
            return fail(ValueError("mandatory needs a Producer with confirms or an on_return callback"))
        channel = self._channel
        now = channel is not None and not self._waiting and self._can_write(channel)
        if now and not self.confirm:
            assert channel is not None
            # the fast path of an unconfirmed publish: written now, done now
            try:
                channel.publish(exchange, routing_key, body, props, mandatory)
            except (TypeError, ValueError) as e:
                return fail(e)
            self.confirmed += 1
            return succeed(None)
        if mandatory and self.confirm and "message_id" not in props:
            # returns are matched to their publish by message id
            props["message_id"] = uuid.uuid4().hex
        pending = _Pending(exchange, routing_key, body, props, mandatory, self)
        try:
            if now:
                assert channel is not None
                self._send(channel, pending)
            else:
                # refuse now what could never be sent, rather than after the wait
                Channel.check_publish(exchange, routing_key, props, self._frame_max)
                self._waiting.append(pending)
                pending.queued = True
                if channel is None:
                    self._watch_connection()
        except (TypeError, ValueError) as e:
            return fail(e)
        if timeout is not None and not pending.deferred.called:
            pending.timer = self.connection.reactor.callLater(timeout, self._timed_out, pending)
        return pending.deferred

    def when_ready(self) -> Deferred[Producer]:
        """
        Fire with this producer once it has a channel to publish on (with
        confirms selected): a publish made then is written at once.  Fail if
        the connection stops for good first (e.g. L{AuthenticationError}).
        A publish made before this fires is not lost: it waits, in order.
        """
        channel = self._channel
        if channel is not None and channel.is_open:
            return succeed(self)
        d: Deferred[Producer] = Deferred()
        self._ready_waiters.append(d)
        self._watch_connection()
        return d

    @property
    def unconfirmed(self) -> int:
        """
        How many written messages await their confirm.
        """
        return len(self._unconfirmed)

    @property
    def waiting(self) -> int:
        """
        How many published messages wait to be written (backpressure or outage).
        """
        return len(self._waiting) - self._expired

    def room(self, limit: int | None = None) -> Deferred[None]:
        """
        A Deferred that fires once fewer than C{limit} (default: the window)
        publishes are pending, written or waiting to be written, and not yet
        settled: a loop that publishes a stream waits on it to keep its memory
        bounded however fast it produces::

            for item in stream:
                await producer.room()
                producer.publish("", "jobs", item)
        """
        limit = self.window if limit is None else limit
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if self._pending() < limit:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._room_waiters.append((limit, d))
        return d

    def _too_big(self, body: bytes) -> MessageTooLarge | None:
        """
        The refusal of C{body} if it is over the broker's known C{max_message_size}.
        """
        limit = self.max_message_size
        return MessageTooLarge(len(body), limit) if limit is not None and len(body) > limit else None

    def _pending(self) -> int:
        return len(self._unconfirmed) + len(self._waiting)

    def _wake_room_waiters(self) -> None:
        pending = self._pending()
        ready = [(limit, d) for limit, d in self._room_waiters if pending < limit]
        if ready:
            self._room_waiters = [w for w in self._room_waiters if pending >= w[0]]
            for _, d in ready:
                d.callback(None)

    # ------------------------------------------------------------------

    def _can_write(self, channel: Channel) -> bool:
        return channel.can_send and len(self._unconfirmed) < self.window

    def _drain(self) -> None:
        """
        Write waiting publishes, in order, while there is room.
        """
        channel = self._channel
        waiting = self._waiting
        while waiting and channel is not None and self._can_write(channel):
            pending = waiting.popleft()
            pending.queued = False
            if pending.deferred.called:  # timed out (or was cancelled) while it waited
                if pending.expired:
                    self._expired -= 1
                continue
            too_big = self._too_big(pending.body)
            if too_big is not None:  # the limit was learnt while it waited
                self._settle(pending, Failure(too_big))
                continue
            try:
                self._send(channel, pending)
            except (TypeError, ValueError) as e:  # e.g. a smaller frame_max on this node
                self._settle(pending, Failure(e))

    def _send(self, channel: Channel, pending: _Pending) -> None:
        # Encoding fails before anything is written, so a bad message takes no
        # delivery tag and the broker's confirms stay matched to their publishes.
        channel.publish(
            pending.exchange,
            pending.routing_key,
            pending.body,
            pending.props,
            pending.mandatory,
        )
        if not self.confirm:
            self._settle(pending, None)
            return
        tag = self._next_tag
        self._next_tag = tag + 1
        self._unconfirmed[tag] = pending
        if pending.mandatory:
            self._by_message_id[pending.props["message_id"]] = pending

    def _watch_connection(self) -> None:
        """
        Fail the waiting publishes if the connection stops for good.
        """
        if not self._watching:
            self._watching = True

            def outcome(result: Any) -> None:
                self._watching = False
                if isinstance(result, Failure):
                    self._fail_waiting(result)

            self.connection.when_ready().addBoth(outcome)

    def _stopped(self, reason: Failure) -> None:
        """
        The connection stopped for good: nothing unconfirmed will be confirmed.
        """
        pending = list(self._unconfirmed.values()) + list(self._waiting)
        self._unconfirmed.clear()
        self._by_message_id.clear()
        self._waiting.clear()
        self._expired = 0
        self._channel = None
        for p in pending:
            self._settle(p, reason)
        self._fail_ready_waiters(reason)

    def _on_ready(self, opener: ChannelOpener) -> Deferred[Any]:
        self._opener = opener
        d = opener()

        def opened(channel: Channel) -> Deferred[Any]:
            channel.on_confirm = self._confirmed
            channel.on_return = self._returned
            channel.when_closed(lambda reason: self._channel_closed(channel, reason))
            d = channel.confirm_select() if self.confirm else succeed(None)
            if self.on_channel is not None:
                hook = self.on_channel
                d.addCallback(lambda _: hook(channel))
            return d.addCallback(lambda _: self._use(channel))

        return d.addCallback(opened)

    def _use(self, channel: Channel) -> None:
        # Anything sent on the old channel and not confirmed goes out again,
        # ahead of what waits to be written for the first time.
        resend = [p for p in self._unconfirmed.values() if not p.deferred.called]
        self._unconfirmed.clear()
        self._by_message_id.clear()
        self._waiting.extendleft(reversed(resend))
        for p in resend:
            p.queued = True
        self._channel = channel
        self._frame_max = channel.frame_max
        self._next_tag = 1
        if resend:
            self._log.info("publishing {n} unconfirmed messages again", n=len(resend))
        channel.on_writable = self._drain
        self._drain()
        waiters, self._ready_waiters = self._ready_waiters, []
        for w in waiters:
            w.callback(self)

    def _channel_closed(self, channel: Channel, reason: Failure) -> None:
        if self._channel is channel:
            self._channel = None
        if reason.check(ChannelError):
            # The broker closed the channel because of a publish (e.g. to an
            # exchange that does not exist): the publishes to the exchange it
            # names fail; the others go again on a new channel.  If it names
            # none of them, which publish caused it is unknown: all fail.
            self._log.warn("publishing channel closed: {error}", error=reason.value)
            text = getattr(reason.value, "reply_text", "")
            unconfirmed = list(self._unconfirmed.values())
            culprits = [p for p in unconfirmed if names_exchange(text, p.exchange)]
            oversize = too_large(text)
            if oversize is not None:
                # a body over the broker's max_message_size: the first of that
                # size is the one; remember the limit for the next ones
                size, limit = oversize
                self.max_message_size = limit
                culprits = [p for p in unconfirmed if len(p.body) == size][:1]
                reason = Failure(MessageTooLarge(size, limit, text))
            for pending in culprits or unconfirmed:
                self._settle(pending, reason)
            # again on this connection if it is still the live one (settling
            # the publishes above may have stopped it)
            opener = self._opener
            if opener is not None and opener is self.connection.opener and opener.is_open:
                self._on_ready(opener).addErrback(
                    lambda f: self._log.failure("reopening the publishing channel", f)
                )

    def _confirmed(self, ack: bool, tag: int, multiple: bool) -> None:
        unconfirmed = self._unconfirmed
        settled: list[_Pending] = []
        if multiple:
            # tags are in publish order: settle from the front up to this one
            while unconfirmed:
                first = next(iter(unconfirmed))
                if first > tag:
                    break
                settled.append(unconfirmed.popitem(last=False)[1])
        elif tag in unconfirmed:
            settled.append(unconfirmed.pop(tag))
        for pending in settled:
            if pending.mandatory:
                self._by_message_id.pop(pending.props["message_id"], None)
            if pending.returned is not None:
                self._settle(pending, Failure(pending.returned))
            elif ack:
                self._settle(pending, None)
            else:
                self._settle(
                    pending,
                    Failure(
                        Nacked(
                            f"the broker nacked the message to {pending.exchange!r}/{pending.routing_key!r}"
                        )
                    ),
                )
        if self._waiting:
            self._drain()

    def _returned(self, args: dict[str, Any], props: dict[str, Any], body: bytes) -> None:
        returned = Unroutable(args["reply_code"], args["reply_text"], args["exchange"], args["routing_key"])
        if not self.confirm:
            if self.on_return is not None:
                try:
                    self.on_return(returned, props)
                except Exception:  # noqa: BLE001 - the application's callback must not break the channel
                    self._log.failure("on_return callback failed")
            return
        pending = self._by_message_id.get(props.get("message_id") or "")
        if pending is not None:
            pending.returned = returned

    def _timed_out(self, pending: _Pending) -> None:
        pending.timer = None  # a settled publish is skipped wherever it still waits
        self._expire(pending)
        self._settle(
            pending,
            Failure(
                PublishTimeout(f"no confirm for the message to {pending.exchange!r}/{pending.routing_key!r}")
            ),
        )

    def _expire(self, pending: _Pending) -> None:
        if pending.queued and not pending.expired:
            pending.expired = True
            self._expired += 1

    def _fail_ready_waiters(self, reason: Failure) -> None:
        waiters, self._ready_waiters = self._ready_waiters, []
        for w in waiters:
            w.errback(reason)

    def _fail_waiting(self, reason: Failure) -> None:
        self._fail_ready_waiters(reason)
        waiting, self._waiting, self._expired = list(self._waiting), deque(), 0
        for pending in waiting:
            self._settle(pending, reason)

    def _settle(self, pending: _Pending, failure: Failure | None) -> None:
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.timer = None
        if pending.deferred.called:
            return
        pending.body = b""  # a settled publish may linger in a queue: keep it small
        if failure is None:
            self.confirmed += 1
            pending.deferred.callback(None)
        else:
            self.failed += 1
            pending.deferred.errback(failure)
        if self._room_waiters:
            self._wake_room_waiters()
