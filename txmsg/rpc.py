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

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmsg._declaring_service import DeclaringService
from txmsg._outcome import run_handler
from txmsg._rpc_client import RpcClient
from txmsg._rpc_wire import (
    DEFAULT_TIMEOUT,
    DIRECT_REPLY_TO,
    ERROR_HEADER,
    NoServer,
    RemoteError,
    Reply,
    RpcError,
    RpcTimeout,
    default_server_id,
)
from txmsg.connection import Connection
from txmsg.consumer import (
    DEFAULT_MAX_REDELIVERIES,
    DEFAULT_PREFETCH,
    Consumer,
    Handler,
    Reject,
    Requeue,
)
from txmsg.message import JSON, Message, encode_payload, is_json, media_type
from txmsg.producer import Producer
from txmsg.retry import RetryPolicy, attempts
from txmsg.topology import Binding, Exchange, Queue

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
    @param retry: a L{RetryPolicy} for requests of a named queue: a handler
        that fails (or raises L{Retry}) has its request tried again later,
        held by the broker, and only its last attempt is answered with the
        error (L{Reject} dead-letters the request at once, unanswered).
    @param auto_ack: consume requests without acks (C{no_ack}): the broker
        forgets a request as it sends it, which saves it and the server an
        ack per call; a request in flight when the server dies is lost (its
        caller times out), and prefetch does not apply.
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
        retry: RetryPolicy | None = None,
        auto_ack: bool = False,
    ) -> None:
        if auto_ack and retry is not None:
            raise ValueError("auto_ack takes no retry policy: a request is gone once it is delivered")
        super().__init__(connection)
        self.retry = retry
        self.auto_ack = auto_ack
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
                # a server-named queue gets a new name on each connection: no retries come back to it
                retry=retry if not (isinstance(q, Queue) and not q.name) else None,
                acks="none" if auto_ack else "auto",
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
            if self._retries_left(request, reason):
                return reason  # the consumer sends it to be tried again later
            self._log.failure(
                "RPC handler failed on {routing_key!r} request {id}",
                reason,
                routing_key=request.routing_key,
                id=request.correlation_id,
            )
            return self._reply(request, None, reason)

        return d.addCallbacks(replied, failed)

    def _retries_left(self, request: Message, reason: Failure) -> bool:
        """
        Whether a failed request is to be tried again later rather than answered.
        """
        return self.retry is not None and not self._final(reason) and attempts(request) < self.retry.retries

    def _final(self, reason: Failure) -> bool:
        """
        Whether a handler's failure is final whatever the retry policy (a subclass's say).
        """
        return False

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


__all__ = [
    "DEFAULT_TIMEOUT",
    "DIRECT_REPLY_TO",
    "ERROR_HEADER",
    "NoServer",
    "RemoteError",
    "Reply",
    "RpcClient",
    "RpcError",
    "RpcServer",
    "RpcTimeout",
    "encode_reply",
]
