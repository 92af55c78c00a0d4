"""
Remote procedure calls over RabbitMQ: L{RpcServer} answers requests from a
queue, L{RpcClient} calls (one reply) and gathers (replies from many servers
until a deadline).

A request is a message with C{reply_to} and C{correlation_id}; the reply goes
to C{reply_to} through the default exchange with the same C{correlation_id}.
This is the convention of RabbitMQ's RPC tutorial, so a pika client can call a
txmsg server and the other way round.  txmsg's replies name the server that
answered in C{app_id} (for scatter-gather; a property, not a header: RabbitMQ
parses a header table per message, about 6 us of broker CPU per call) and,
when the handler raised, carry the header C{x-txmsg-error} (the exception's
type; the body is its message).

Calls are published C{mandatory}: with no queue bound to the routing key the
broker returns the request and the call fails at once with L{NoServer}.  A
call's request carries an C{expiration} equal to the time it has left, so a
server does not start on a request whose caller already gave up.

Neither side waits for publisher confirms, by design.  A call's outcome is its
reply, which confirms the request end to end, and its timeout covers every way
a request or reply can be lost; a confirm would add a round trip and a wakeup
to each call and tell the caller nothing the reply does not.  A call whose
connection is lost is sent again, within its deadline, once the client is
reconnected (the old connection's replies cannot reach it): a handler may
see a request twice, as with any at-least-once delivery.  A server acks a
request only after writing its reply on the same connection: TCP keeps their
order, so the broker never has the ack without the reply (persistent replies
are confirmed before the ack).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmsg._declaring_service import DeclaringService
from txmsg._outcome import run_handler
from txmsg.connection import Channel, Connection
from txmsg.consumer import (
    DEFAULT_MAX_REDELIVERIES,
    DEFAULT_PREFETCH,
    Consumer,
    Handler,
    Reject,
    Requeue,
)
from txmsg.errors import ChannelError, NotFound, TxmsgError, names_exchange
from txmsg.message import JSON, Message, encode_payload, is_json, media_type
from txmsg.producer import Producer, Unroutable
from txmsg.topology import Binding, Exchange, Queue

#: RabbitMQ's direct reply-to pseudo-queue
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
ERROR_HEADER = "x-txmsg-error"
DEFAULT_TIMEOUT = 30.0


class RpcError(TxmsgError):
    """
    Base class of RPC failures.
    """


class NoServer(Unroutable, RpcError):
    """
    No queue is bound to the call's routing key: the broker returned the request.
    """


class RpcTimeout(RpcError):
    """
    No reply came within the call's timeout.
    """


class RemoteError(RpcError):
    """
    The server's handler raised; C{remote_type} and C{remote_message} say what.
    """

    def __init__(self, remote_type: str, remote_message: str, server: str | None = None) -> None:
        super().__init__(f"{remote_type}: {remote_message}" if remote_message else remote_type)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.server = server


@dataclass(frozen=True)
class Reply:
    """
    One server's reply: C{server} is its id (C{None} for a server that does not
    say), C{payload} the decoded body, C{message} the whole message.
    """

    server: str | None
    payload: Any
    message: Message


def default_server_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------------------
# server


def encode_reply(request: Message, result: Any) -> tuple[Any, str | None]:
    """
    Encode a handler's result the way the request was encoded: JSON for a JSON
    request, otherwise text for C{str}, raw for bytes and JSON for other data.
    """
    media, _ = media_type(request.content_type)
    if is_json(media) and not isinstance(result, (bytes, bytearray, memoryview)):
        return encode_payload(result, JSON)
    return encode_payload(result)


class RpcServer(DeclaringService):
    """
    Answer requests with C{handler(message)}: its return value (or what its
    Deferred or coroutine gives) is the reply.  An exception becomes an error
    reply (L{RemoteError} at the caller); L{Requeue} and L{Reject} act on the
    request as they do for a L{Consumer}.  The request is acked once its reply
    is written to the connection, after it in the same byte stream (persistent
    replies: once the broker confirmed the reply).

    @param queue: the shared queue servers compete on (the tutorial's
        C{rpc_queue}): a name or a L{Queue}; C{None} for none.
    @param exchange: an exchange to bind the queues to (with C{bindings} for the
        shared queue, C{broadcast} for this server's own queue).
    @param broadcast: routing keys bound to a queue of this server's own, so
        every server gets those requests.
    @param server_id: this server's id in replies, their C{app_id} (generated
        by default).
    @param persistent_replies: publish replies persistent (for durable reply
        queues), each confirmed by the broker before its request is acked.
    """

    _log = Logger()

    def __init__(
        self,
        connection: Connection,
        queue: Queue | str | None,
        handler: Handler,
        *,
        exchange: Exchange | str | None = None,
        bindings: Iterable[str] = (),
        broadcast: Iterable[str] = (),
        server_id: str | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        concurrency: int | None = None,
        persistent_replies: bool = False,
        max_redeliveries: int = DEFAULT_MAX_REDELIVERIES,
    ) -> None:
        super().__init__(connection)
        self.handler = handler
        self.server_id = server_id or default_server_id()
        if len(self.server_id.encode("utf-8")) > 255:
            raise ValueError("server_id must fit in 255 bytes (it is the replies' app_id)")
        self.persistent_replies = persistent_replies
        # Transient replies are not confirmed: the request's ack follows its
        # reply on the same connection, so a cut loses both or neither.
        self.producer = Producer(connection, confirm=persistent_replies)
        bindings, broadcast = list(bindings), list(broadcast)
        if isinstance(exchange, str):
            exchange = Exchange(exchange, "direct") if exchange else None
        if (bindings or broadcast) and exchange is None:
            raise ValueError("bindings and broadcast keys need an exchange")
        if queue is None and not broadcast:
            raise ValueError("an RPC server needs a queue or broadcast keys")
        if exchange is not None:
            self.topology.append(exchange)
        queues: list[Queue | str] = []
        if queue is not None:
            if isinstance(queue, str):
                # shared by competing servers: durable if it is missing, used as
                # it is (classic or quorum) if another program declared it
                queue = Queue(queue, adopt=True)
            self.topology.append(queue)
            self.topology.extend(Binding(queue, exchange, key) for key in bindings if exchange)
            queues.append(queue)
        if broadcast:
            own = Queue("", exclusive=True, auto_delete=True)
            self.topology.append(own)
            self.topology.extend(Binding(own, exchange, key) for key in broadcast if exchange)
            queues.append(own)
        self.consumers = [
            Consumer(
                connection,
                q,
                self._answer,
                prefetch=prefetch,
                concurrency=concurrency,
                max_redeliveries=max_redeliveries,
            )
            for q in queues
        ]
        #: requests answered, and those answered with an error
        self.answered = 0
        self.errors = 0

    def _answer(self, request: Message) -> Any:
        result = run_handler(self.handler, request)
        if isinstance(result, Failure):
            if result.check(Requeue, Reject):
                return result  # the consumer settles the request as the handler asked
            d: Deferred[Any] = fail(result)
        elif isinstance(result, Deferred):
            d = result
        else:
            # A synchronous handler whose reply is written at once is done:
            # the consumer acks it without Deferred machinery.
            return _now_or_later(self._reply(request, result, None))

        def replied(result: Any) -> Any:
            return self._reply(request, result, None)

        def failed(reason: Failure) -> Any:
            if reason.check(Requeue, Reject):
                return reason
            self._log.failure(
                "RPC handler failed on {routing_key!r} request {id}",
                reason,
                routing_key=request.routing_key,
                id=request.correlation_id,
            )
            return self._reply(request, None, reason)

        return d.addCallbacks(replied, failed)

    def _reply(self, request: Message, result: Any, error: Failure | None) -> Deferred[Any]:
        headers: dict[str, Any] = {}
        if error is None:
            try:
                body, content_type = encode_reply(request, result)
            except TypeError as e:
                self._log.error(
                    "cannot encode the reply to {id}: {error}", id=request.correlation_id, error=e
                )
                error = Failure(e)
        if error is not None:
            exc = error.value
            headers[ERROR_HEADER] = type(exc).__name__
            body, content_type = str(exc).encode("utf-8"), "text/plain"
            self.errors += 1
        self.answered += 1
        if not request.reply_to:
            self._log.warn(
                "request {id} on {routing_key!r} has no reply_to; its result is dropped",
                id=request.correlation_id,
                routing_key=request.routing_key,
            )
            return succeed(None)
        props: dict[str, Any] = {"app_id": self.server_id}
        if headers:
            props["headers"] = headers
        if self.persistent_replies:
            props["persistent"] = True
        if request.correlation_id is not None:
            props["correlation_id"] = request.correlation_id
        if content_type is not None:
            props["content_type"] = content_type
        # Not mandatory: a caller that has gone has nobody to tell.
        return self.producer.publish("", request.reply_to, body, **props)


def _now_or_later(d: Deferred[Any]) -> Deferred[Any] | None:
    """C{None} if C{d} has already succeeded (it is spent), else a Deferred of its outcome."""
    if not d.called:
        return d
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    if not outcome:  # paused in a chain: its outcome comes later
        return d
    if isinstance(outcome[0], Failure):
        return fail(outcome[0])
    return None


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
    told apart by C{correlation_id}.  Replies come on RabbitMQ's direct
    reply-to by default, or on an exclusive queue of this client's own with
    C{reply_queue=True}.
    """

    _log = Logger()

    def __init__(self, connection: Connection, *, reply_queue: bool = False) -> None:
        self.connection = connection
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
        published = self.producer.publish(
            call.exchange,
            call.routing_key,
            call.payload,
            mandatory=True,
            correlation_id=cid,
            reply_to=self.reply_to,
            expiration=max(1, int(left * 1000)),
            **call.properties,
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


__all__ = [
    "DIRECT_REPLY_TO",
    "NoServer",
    "RemoteError",
    "Reply",
    "RpcClient",
    "RpcError",
    "RpcServer",
    "RpcTimeout",
    "encode_reply",
]
