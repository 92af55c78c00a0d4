"""
L{RpcClient}: calls (one reply) and gathers (replies from many servers until
a deadline), many in flight on one connection, told apart by
C{correlation_id} (see L{txmsg.rpc} for the conventions).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmsg._rpc_wire import (
    DEFAULT_TIMEOUT,
    DIRECT_REPLY_TO,
    ERROR_HEADER,
    NoServer,
    RemoteError,
    Reply,
    RpcTimeout,
)
from txmsg.connection import Channel, Connection
from txmsg.errors import ChannelError, NotFound, TxmsgError, names_exchange
from txmsg.message import Message
from txmsg.producer import Producer, Unroutable
from txmsg.topology import Queue


class _Call:
    __slots__ = (
        "deadline",
        "deferred",
        "exchange",
        "expect",
        "gather",
        "on_reply",
        "payload",
        "properties",
        "published",
        "routing_key",
        "timer",
    )

    def __init__(
        self,
        deferred: Deferred[Any],
        exchange: str,
        routing_key: str,
        payload: Any,
        properties: dict[str, Any],
        deadline: float,
        gather: list[Reply] | None,
        expect: int | None,
        on_reply: Callable[[Reply], None] | None,
    ) -> None:
        self.deferred = deferred
        self.exchange = exchange
        self.routing_key = routing_key
        self.payload = payload
        self.properties = properties
        self.deadline = deadline
        self.gather = gather
        self.expect = expect
        self.on_reply = on_reply
        self.timer: Any = None
        #: the request's publish, until it is written
        self.published: Deferred[None] | None = None

    @property
    def written(self) -> bool:
        """
        The request went out on the current (or a lost) publishing channel.
        """
        return self.published is None


class RpcClient:
    """
    Call RPC servers.  Many calls may be in flight at once on one connection,
    told apart by C{correlation_id}.

    @param reply_queue: replies come on RabbitMQ's direct reply-to by default;
        C{True} gives this client a queue of its own instead, named
        C{txmsg.reply.<random>} by the client (so that requests sent again
        after a reconnect still reach it), exclusive and auto-delete (it goes
        with the client's connection), declared again on every connection.
    @param mandatory: publish requests C{mandatory} (the default): with no
        queue bound to the key the broker returns the request and the call
        fails at once with L{NoServer}; C{False}: such a call times out.
    @param expire: give each request an C{expiration} of the time its call
        has left (the default), so that a server does not start on a request
        whose caller already gave up; C{False}: requests wait in their queue
        however long it takes.
    """

    _log = Logger()

    def __init__(
        self,
        connection: Connection,
        *,
        reply_queue: bool = False,
        mandatory: bool = True,
        expire: bool = True,
    ) -> None:
        self.connection = connection
        self.mandatory = mandatory
        self.expire = expire
        self._calls: dict[str, _Call] = {}
        self._reply_queue: Queue | None = None
        if reply_queue:
            # a fixed name, so requests sent again after a reconnect still reach us
            self._reply_queue = Queue(f"txmsg.reply.{uuid.uuid4().hex}", exclusive=True, auto_delete=True)
        self.reply_to = self._reply_queue.name if self._reply_queue else DIRECT_REPLY_TO
        # correlation ids: unique to this client, which is all its replies need
        self._prefix = uuid.uuid4().hex[:12]
        self._sequence = 0
        # No confirms (see the module's docstring): a return is matched to its
        # call by correlation id.
        self.producer = Producer(connection, confirm=False, on_channel=self._listen, on_return=self._returned)

    def when_ready(self) -> Deferred[RpcClient]:
        """
        Fire with this client once it listens for replies and can send
        requests at once.  A call made before is not lost: it waits.
        """
        return self.producer.when_ready().addCallback(lambda _: self)

    def _listen(self, channel: Channel) -> Deferred[Any]:
        # Direct reply-to replies only reach the channel that published the
        # request, and consuming must start before publishing: the producer
        # runs this on each of its channels first.
        channel.when_closed(self._channel_closed)
        d: Deferred[Any] = succeed(None)
        queue = self.reply_to
        if self._reply_queue is not None:
            d = self._reply_queue.declare(channel, self.connection.names)
        d.addCallback(lambda _: channel.basic_consume(queue, no_ack=True))

        def consuming(result: dict[str, Any]) -> None:
            channel.consumers[result["consumer_tag"]] = self._received
            self._send_again()

        return d.addCallback(consuming)

    def _send_again(self) -> None:
        """
        Calls whose request went out on a channel that is gone: their replies
        cannot come, so their requests go again (gathers keep what came).
        """
        now = self.connection.reactor.seconds()
        again = [
            (cid, call)
            for cid, call in self._calls.items()
            if call.written and call.gather is None and call.deadline > now
        ]
        if again:
            self._log.info("sending {n} calls in flight again after a reconnect", n=len(again))
        for cid, call in again:
            self._send(cid, call, call.deadline - now)

    def call(
        self,
        routing_key: str,
        payload: Any = b"",
        *,
        exchange: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        **properties: Any,
    ) -> Deferred[Any]:
        """
        Send one request; fire with the reply's payload.

        @raise NoServer: no queue took the request.
        @raise RpcTimeout: no reply within C{timeout} seconds.
        @raise RemoteError: the server's handler raised.
        Cancelling the Deferred forgets the call; a late reply is dropped.
        """
        return self._start(routing_key, payload, exchange, timeout, properties, None, None)

    def gather(
        self,
        routing_key: str,
        payload: Any = b"",
        *,
        exchange: str = "",
        timeout: float = 5.0,
        expect: int | None = None,
        on_reply: Callable[[Reply], None] | None = None,
        **properties: Any,
    ) -> Deferred[list[Reply]]:
        """
        Publish one request and collect every reply until C{expect} replies came
        or C{timeout} passed: a partial result at the deadline is a result.
        Error replies are included (their payload is a L{RemoteError}).
        C{on_reply} is called with each reply as it arrives.

        @raise NoServer: no queue took the request.
        """
        return self._start(routing_key, payload, exchange, timeout, properties, expect, on_reply, gather=True)

    def _start(
        self,
        routing_key: str,
        payload: Any,
        exchange: str,
        timeout: float,
        properties: dict[str, Any],
        expect: int | None,
        on_reply: Callable[[Reply], None] | None,
        gather: bool = False,
    ) -> Deferred[Any]:
        if timeout <= 0:
            return fail(ValueError("timeout must be positive"))
        self._sequence += 1
        cid = f"{self._prefix}.{self._sequence}"

        def cancelled(_: Deferred[Any]) -> None:
            self._forget(cid)

        d: Deferred[Any] = Deferred(cancelled)
        reactor = self.connection.reactor
        call = _Call(
            d,
            exchange,
            routing_key,
            payload,
            properties,
            reactor.seconds() + timeout,
            [] if gather else None,
            expect,
            on_reply,
        )
        self._calls[cid] = call
        call.timer = reactor.callLater(timeout, self._timed_out, cid, routing_key, timeout)
        self._send(cid, call, timeout)
        return d

    def _send(self, cid: str, call: _Call, left: float) -> None:
        properties = call.properties
        if self.expire and "expiration" not in properties:
            properties = {**properties, "expiration": max(1, int(left * 1000))}
        published = self.producer.publish(
            call.exchange,
            call.routing_key,
            call.payload,
            mandatory=self.mandatory,
            correlation_id=cid,
            reply_to=self.reply_to,
            **properties,
        )
        call.published = published  # until written, at once in the usual case
        published.addCallbacks(
            self._was_written, self._publish_failed, callbackArgs=(call,), errbackArgs=(cid,)
        )

    @staticmethod
    def _was_written(_: None, call: _Call) -> None:
        call.published = None

    def _publish_failed(self, reason: Failure, cid: str) -> None:
        # the request could not be encoded, or the connection stopped for good
        # (a request dropped because its call ended fails with no call left)
        call = self._forget(cid)
        if call is not None and not call.deferred.called:
            call.deferred.errback(reason)

    def _returned(self, returned: Unroutable, props: dict[str, Any]) -> None:
        call = self._forget(props.get("correlation_id") or "")
        if call is not None and not call.deferred.called:
            call.deferred.errback(
                NoServer(returned.reply_code, returned.reply_text, returned.exchange, returned.routing_key)
            )

    def _channel_closed(self, reason: Failure) -> None:
        # A request to an exchange that does not exist closes the channel with
        # a 404 naming it: nobody can be listening there.
        if not reason.check(NotFound):
            return
        error = reason.value
        assert isinstance(error, ChannelError)
        text = error.reply_text
        for cid, call in list(self._calls.items()):
            if call.written and names_exchange(text, call.exchange):
                self._forget(cid)
                if not call.deferred.called:
                    call.deferred.errback(NoServer(404, text, call.exchange, call.routing_key))

    def _forget(self, cid: str) -> _Call | None:
        call = self._calls.pop(cid, None)
        if call is not None:
            if call.timer is not None and call.timer.active():
                call.timer.cancel()
            call.timer = None
            published, call.published = call.published, None
            if published is not None and not published.called:
                published.cancel()  # the producer drops a request not yet written
        return call

    def _timed_out(self, cid: str, routing_key: str, timeout: float) -> None:
        call = self._calls.get(cid)
        if call is None:
            return
        call.timer = None
        self._forget(cid)
        if call.deferred.called:
            return
        if call.gather is not None:
            call.deferred.callback(call.gather)
        else:
            call.deferred.errback(RpcTimeout(f"no reply to the call to {routing_key!r} within {timeout:g} s"))

    def _received(self, args: dict[str, Any], props: dict[str, Any], body: bytes) -> None:
        cid = props.get("correlation_id") or ""
        call = self._calls.get(cid)
        if call is None:
            self._log.debug("dropping a reply to no call in flight ({id})", id=cid)
            return
        message = Message.from_delivery(body, props, args)
        server = message.app_id
        error = (message.headers or {}).get(ERROR_HEADER)
        outcome: Any
        if error is not None:
            outcome = RemoteError(str(error), message.body.decode("utf-8", "replace"), server)
        else:
            try:
                outcome = message.payload
            except TxmsgError as e:
                outcome = e
        if call.gather is None:
            self._forget(cid)
            if isinstance(outcome, Exception):
                call.deferred.errback(outcome)
            else:
                call.deferred.callback(outcome)
            return
        reply = Reply(server, outcome, message)
        call.gather.append(reply)
        if call.on_reply is not None:
            try:
                call.on_reply(reply)
            except Exception:  # noqa: BLE001 - a failing callback must not lose the gather
                self._log.failure("on_reply callback failed")
        if call.expect is not None and len(call.gather) >= call.expect:
            self._forget(cid)
            call.deferred.callback(call.gather)
