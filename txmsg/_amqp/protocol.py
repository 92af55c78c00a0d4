"""
txmsg's AMQP 0-9-1 protocol: framing, the connection handshake, heartbeats and
channel allocation, over one transport.

Methods come from txAMQP's spec model of C{amqp0-9-1.xml} (L{txmsg._amqp.methods});
the frame path is txmsg's own: incoming bytes go into one buffer that is parsed in
place (no per-frame queues, no whole-buffer concatenation), bodies stay bytes, and
heartbeats use one timer per half interval rather than one reschedule per frame.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmsg._amqp import codec as _codec
from txmsg._amqp import writer
from txmsg._amqp.channel import Channel
from txmsg._amqp.handshake import client_properties, is_tls_error, negotiate, tls_text
from txmsg._amqp.methods import MethodSpec, methods
from txmsg.errors import (
    AuthenticationError,
    ConnectionClosed,
    ConnectionLost,
    DeprecatedFeature,
    ProtocolError,
    TLSError,
    TxmsgError,
    VhostNotFound,
    deprecated_feature,
)

if TYPE_CHECKING:  # pragma: no cover
    from txmsg.url import ConnectionParameters

_FRAME_HEAD = _codec._FRAME_HEAD
_HH = _codec._HH
_DELIVER = (60, 60)
_CONN_START = (10, 10)
_CONN_SECURE = (10, 20)
_CONN_TUNE = (10, 30)
_CONN_OPEN_OK = (10, 41)
_CONN_CLOSE = (10, 50)
_CONN_CLOSE_OK = (10, 51)
_CONN_BLOCKED = (10, 60)
_CONN_UNBLOCKED = (10, 61)
_CONN_UPDATE_SECRET_OK = (10, 71)

#: ticks of silence (each half a heartbeat interval) after which the peer is dead:
#: three ticks means the silence lasted between 1.5 and 2 intervals.
MISSED_TICKS = 3


#: body frames at least this large stream to their channel as they arrive
_STREAM_BODY = 16384


class AMQPProtocol(Protocol):
    """
    One AMQP connection.

    @ivar handshake: fires with this protocol once connection.open-ok arrived, or
        fails with L{AuthenticationError}, L{VhostNotFound}, L{TLSError},
        L{ConnectionClosed} or L{ConnectionLost}.
    """

    _log = Logger()
    #: a TCP or TLS transport (aborted, paused and resumed as such)
    transport: Any

    def __init__(
        self,
        params: ConnectionParameters,
        clock: IReactorTime,
        connection_name: str | None = None,
    ) -> None:
        self.params = params
        self.clock = clock
        self.connection_name = connection_name
        self._methods = methods()
        self._buf = bytearray()
        self.channels: dict[int, Channel] = {}
        self._next_channel = 1
        self.handshake: Deferred[AMQPProtocol] = Deferred()
        self.is_open = False
        self.lost = False
        self.frame_max = 131072
        self.channel_max = 2047
        self.heartbeat = 0
        self.server_properties: dict[str, Any] = {}
        self.blocked: str | None = None
        self.writable = True
        self._started = False
        self._close_error: TxmsgError | None = None
        self._closing: Deferred[None] | None = None
        self._lost_listeners: list[Callable[[Failure], None]] = []
        self._hb_call: IDelayedCall | None = None
        self._handshake_timeout: IDelayedCall | None = None
        self._received = False
        self._sent = False
        self._missed = 0
        #: a read is being handled; what to call once it is
        self._reading = False
        self._after_read: list[Callable[[], None]] = []
        #: a body frame larger than what has arrived: its payload goes to its
        #: channel as it comes, without passing through the frame buffer
        self._body_left = 0
        self._body_channel: Channel | None = None
        self._body_end_due = False
        #: what this connection writes, on its way to the transport
        self._out = writer.Outgoing(clock, lambda: self.writable)

    # ------------------------------------------------------------------
    # transport events

    def connectionMade(self) -> None:
        # small frames (an RPC request, an ack) go out at once: no Nagle delay
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:  # pragma: no cover - e.g. not a TCP socket
                pass
        self.transport.registerProducer(self, True)
        self._out.attach(self.transport)
        self.transport.write(_codec.PROTOCOL_HEADER)
        timeout = self.params.connection_timeout
        self._handshake_timeout = self.clock.callLater(timeout, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        self._handshake_timeout = None
        if not self.is_open:
            self._close_error = ConnectionLost(
                f"no AMQP handshake from {self.params.host}:{self.params.port} "
                f"within {self.params.connection_timeout:g} s"
            )
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._reading = True
        self._out.read_started()
        try:
            self._frames_received(data)
        finally:
            self._reading = False
            if self._after_read:
                calls, self._after_read = self._after_read, []
                for call in calls:
                    try:
                        call()
                    except Exception:  # noqa: BLE001 - one failing callback must not skip the others
                        self._log.failure("after-read callback failed")
            self._out.flush()

    def call_after_read(self, f: Callable[[], None]) -> bool:
        """
        Call C{f} once the frames of the read being handled are all handled
        (e.g. to send one ack for the deliveries it held); C{False}, and
        nothing done, when no read is being handled.
        """
        if not self._reading:
            return False
        self._after_read.append(f)
        return True

    def _frames_received(self, data: bytes) -> None:
        self._received = True
        more: bytes | memoryview = data
        if self._body_end_due:  # in a streamed body frame, or just before its end octet
            rest = self._stream_body(data)
            if rest is None:
                return
            more = rest
        buf = self._buf
        buf += more
        pos = 0
        n = len(buf)
        channels = self.channels
        by_key = self._methods.by_key
        try:
            if not self._started:
                if n < 7:
                    return
                if buf[0] in (0x15, 0x16) and buf[1] == 0x03:
                    raise ProtocolError(
                        f"{self.params.host}:{self.params.port} answered with TLS, not AMQP: "
                        "use an amqps:// URL for a TLS port"
                    )
                if buf[:4] == b"AMQP":
                    raise ProtocolError(
                        "the broker does not speak AMQP 0-9-1 (it answered with protocol "
                        f"header {bytes(buf[:8])!r})"
                    )
                self._started = True
            limit = self.frame_max + _codec.FRAME_OVERHEAD
            while n - pos >= 7:
                ftype, ch, size = _FRAME_HEAD.unpack_from(buf, pos)
                end = pos + 7 + size
                if end >= n:
                    if size > limit:
                        raise ProtocolError(f"frame of {size} bytes exceeds frame_max")
                    if ftype == 3 and size >= _STREAM_BODY:
                        # the rest of a big body frame streams to its channel
                        channel = channels.get(ch)
                        if channel is not None and n > pos + 7:
                            with memoryview(buf) as view:
                                channel.body_received(bytes(view[pos + 7 : n]))
                        self._body_channel = channel
                        self._body_left = end - n
                        self._body_end_due = True
                        pos = n
                    break
                if buf[end] != 0xCE:
                    raise ProtocolError("frame does not end with the frame-end octet")
                if ftype == 3:
                    channel = channels.get(ch)
                    if channel is not None:
                        with memoryview(buf) as view:
                            chunk = bytes(view[pos + 7 : end])
                        channel.body_received(chunk)
                elif ftype == 1:
                    key = _HH.unpack_from(buf, pos + 7)
                    ms = by_key.get(key)
                    if ms is None:
                        raise ProtocolError(f"unknown method {key}")
                    if key == _DELIVER:
                        args = _codec.decode_basic_deliver(buf, pos + 11)
                    else:
                        args = ms.decode(buf, pos + 11)
                    if ch == 0:
                        self._connection_method(ms, args)
                    else:
                        channel = channels.get(ch)
                        if channel is not None:
                            channel.method_received(ms, args)
                elif ftype == 2:
                    size_, props = _codec.decode_content_header(buf, pos + 7)
                    channel = channels.get(ch)
                    if channel is not None:
                        channel.header_received(size_, props)
                elif ftype != 8:
                    raise ProtocolError(f"unknown frame type {ftype}")
                pos = end + 1
        except ProtocolError as e:
            self._protocol_error(e)
        except (struct.error, IndexError, ValueError, OverflowError, UnicodeDecodeError) as e:
            # a frame shorter than its fields, or a value out of range: never garbage
            self._protocol_error(ProtocolError(f"malformed frame: {e}"))
        finally:
            if pos:
                del buf[:pos]

    def _stream_body(self, data: bytes) -> memoryview | None:
        """
        Hand the payload of the body frame being streamed to its channel (the
        whole read when it is all payload: no copy); return what follows the
        frame, or C{None} when nothing does.
        """
        take = min(self._body_left, len(data))
        channel = self._body_channel
        if take:
            self._body_left -= take
            if channel is not None:
                channel.body_received(data if take == len(data) else bytes(memoryview(data)[:take]))
        if self._body_left:
            return None
        rest = memoryview(data)[take:]
        if not rest:
            return None  # the frame-end octet is still to come
        self._body_end_due = False
        self._body_channel = None
        if rest[0] != 0xCE:
            self._protocol_error(ProtocolError("frame does not end with the frame-end octet"))
            return None
        return rest[1:]

    def _protocol_error(self, error: ProtocolError) -> None:
        self._log.error("protocol error from {host}: {error}", host=self.params.host, error=error)
        self._close_error = error
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionLost())) -> None:  # noqa: B008
        self.lost = True
        self.is_open = False
        for call in (self._hb_call, self._handshake_timeout):
            if call is not None and call.active():
                call.cancel()
        self._hb_call = self._handshake_timeout = None
        error = self._close_error
        if error is None:
            if is_tls_error(reason):
                error = TLSError(f"TLS handshake with {self.params.host} failed: {tls_text(reason)}")
            elif self._closing is not None:
                error = ConnectionLost("connection closed by the client")
            else:
                error = ConnectionLost(
                    f"connection to {self.params.host}:{self.params.port} lost: {reason.getErrorMessage()}"
                )
        failure = Failure(error)
        if not self.handshake.called:
            self.handshake.errback(failure)
        channels = list(self.channels.values())
        for channel in channels:
            channel._closed(failure)
        self.channels.clear()
        self._out.discard()
        if self._closing is not None and not self._closing.called:
            self._closing.callback(None)
        listeners, self._lost_listeners = self._lost_listeners, []
        for listener in listeners:
            listener(failure)

    # IPushProducer: the transport tells us when its write buffer is full.
    def pauseProducing(self) -> None:
        self.writable = False

    def resumeProducing(self) -> None:
        self.writable = True
        if self._out.pending:
            self._out.drain()
        if self.writable:
            self._writable_again()

    def _writable_again(self) -> None:
        """
        Tell each channel that asked (L{Channel.on_writable}) that it may write again.
        """
        for channel in list(self.channels.values()):
            if channel.on_writable is not None:
                channel.on_writable()

    def stopProducing(self) -> None:
        self.writable = False

    # ------------------------------------------------------------------
    # writing

    def write(self, data: bytes) -> None:
        self._sent = True
        self._out.write(data)

    def write_sequence(self, parts: list[bytes | memoryview]) -> None:
        """
        Write the frames of a message too big for one frame (see
        L{writer.Outgoing.write_sequence}); until the transport took them all,
        later writes wait behind them and L{writable} stays false.
        """
        self._sent = True
        self._out.write_sequence(parts)

    def _send_method(self, name: str, **kwargs: Any) -> None:
        self.write(_codec.method_frame(0, self._methods.by_name[name].encode(kwargs)))

    # ------------------------------------------------------------------
    # connection class

    def _connection_method(self, ms: MethodSpec, args: dict[str, Any]) -> None:
        key = ms.key
        if key == _CONN_START:
            self._on_start(args)
        elif key == _CONN_TUNE:
            self._on_tune(args)
        elif key == _CONN_OPEN_OK:
            self._on_open_ok()
        elif key == _CONN_CLOSE:
            self._on_close(args)
        elif key == _CONN_CLOSE_OK:
            # nothing is left to say: a TLS transport's loseConnection would wait
            # for a close_notify that RabbitMQ does not send
            self.transport.abortConnection()
        elif key == _CONN_BLOCKED:
            self.blocked = args.get("reason") or "blocked"
            self._log.warn(
                "broker {host} blocked publishing: {reason}", host=self.params.host, reason=self.blocked
            )
        elif key == _CONN_UNBLOCKED:
            self.blocked = None
            self._log.info("broker {host} unblocked publishing", host=self.params.host)
            self._writable_again()
        elif key == _CONN_SECURE:
            self._close_error = AuthenticationError(
                "the broker asked for a SASL challenge txmsg does not support"
            )
            self.transport.abortConnection()
        elif key == _CONN_UPDATE_SECRET_OK:
            pass
        else:
            self._log.warn("unexpected {method} on channel 0", method=ms.name)

    def _on_start(self, args: dict[str, Any]) -> None:
        self.server_properties = args.get("server_properties") or {}
        mechanisms = args.get("mechanisms", b"").split()
        if b"PLAIN" not in mechanisms:
            self._close_error = AuthenticationError(
                f"the broker offers no PLAIN authentication (it offers {mechanisms!r})"
            )
            self.transport.abortConnection()
            return
        response = b"\x00" + self.params.username.encode() + b"\x00" + self.params.password.encode()
        self._send_method(
            "connection.start-ok",
            client_properties=client_properties(self.connection_name),
            mechanism="PLAIN",
            response=response,
            locale="en_US",
        )

    def _on_tune(self, args: dict[str, Any]) -> None:
        self.channel_max = negotiate(self.params.channel_max, args["channel_max"]) or 65535
        self.frame_max = negotiate(self.params.frame_max, args["frame_max"]) or 131072
        client_hb = self.params.heartbeat
        self.heartbeat = 0 if client_hb == 0 else negotiate(client_hb, args["heartbeat"])
        self._send_method(
            "connection.tune-ok",
            channel_max=self.channel_max,
            frame_max=self.frame_max,
            heartbeat=self.heartbeat,
        )
        self._send_method("connection.open", virtual_host=self.params.vhost)
        if self.heartbeat:
            self._hb_call = self.clock.callLater(self.heartbeat / 2, self._heartbeat_tick)

    def _on_open_ok(self) -> None:
        self.is_open = True
        if self._handshake_timeout is not None and self._handshake_timeout.active():
            self._handshake_timeout.cancel()
        self._handshake_timeout = None
        self.handshake.callback(self)

    def _on_close(self, args: dict[str, Any]) -> None:
        code = args["reply_code"]
        text = args["reply_text"]
        self._send_method("connection.close-ok")
        error: TxmsgError
        if not self.is_open and code == 403:
            error = AuthenticationError(
                f"the broker at {self.params.host}:{self.params.port} refused the login of "
                f"user {self.params.username!r}: {text}"
            )
        elif not self.is_open and code in (530, 402):
            error = VhostNotFound(
                f"cannot open virtual host {self.params.vhost!r} at "
                f"{self.params.host}:{self.params.port}: {text}"
            )
        elif deprecated_feature(text):
            # RabbitMQ 4: a request used a feature the broker does not permit
            error = DeprecatedFeature(code, text)
        else:
            error = ConnectionClosed(code, text)
        self._log.warn(
            "broker {host} closed the connection: {code} {text}",
            host=self.params.host,
            code=code,
            text=text.splitlines()[0] if text else text,
        )
        self._close_error = error
        self.transport.loseConnection()

    # ------------------------------------------------------------------
    # heartbeats

    def _heartbeat_tick(self) -> None:
        if self._received:
            self._received = False
            self._missed = 0
        else:
            self._missed += 1
            if self._missed >= MISSED_TICKS:
                self._log.warn(
                    "no data from {host} for {silence:g} s (heartbeat {hb} s): connection dead",
                    host=self.params.host,
                    silence=self._missed * self.heartbeat / 2,
                    hb=self.heartbeat,
                )
                self._hb_call = None
                self._close_error = ConnectionLost(
                    f"heartbeat timeout: {self.params.host} silent for "
                    f"{self._missed * self.heartbeat / 2:g} s"
                )
                self.transport.abortConnection()
                return
        if not self._sent:
            self.write(_codec.HEARTBEAT_FRAME)
        self._sent = False
        self._hb_call = self.clock.callLater(self.heartbeat / 2, self._heartbeat_tick)

    # ------------------------------------------------------------------
    # channels and closing

    def open_channel(self) -> Deferred[Channel]:
        """
        Open a new channel with the lowest free number.
        """
        if not self.is_open:
            return fail(self._close_error or ConnectionLost("connection is not open"))
        channel_id = self._allocate_id()
        channel = Channel(self, channel_id)
        self.channels[channel_id] = channel
        d = channel.call("channel.open")
        d.addCallback(lambda _: channel)
        return d

    def _allocate_id(self) -> int:
        limit = min(self.channel_max, 65535)
        for _ in range(limit):
            candidate = self._next_channel
            self._next_channel = candidate % limit + 1
            if candidate not in self.channels:
                return candidate
        raise TxmsgError(f"all {limit} channels are in use")

    def channel_closed(self, channel: Channel) -> None:
        if self.channels.get(channel.id) is channel:
            del self.channels[channel.id]

    def when_lost(self, listener: Callable[[Failure], None]) -> None:
        """
        Call C{listener} with the reason once this connection is gone.
        """
        if self.lost:
            listener(Failure(self._close_error or ConnectionLost()))
        else:
            self._lost_listeners.append(listener)

    def close(self, timeout: float = 5.0) -> Deferred[None]:
        """
        Close the connection politely (connection.close, then wait for close-ok);
        abort it if the broker does not answer within C{timeout} seconds.
        """
        if self.lost:
            return succeed(None)
        if self._closing is None:
            self._closing = Deferred()
            if self.is_open or self._started:
                self._send_method(
                    "connection.close", reply_code=200, reply_text="goodbye", class_id=0, method_id=0
                )
                abort = self.clock.callLater(timeout, self.transport.abortConnection)
                self._closing.addBoth(lambda r: abort.cancel() if abort.active() else None)
            else:
                self.transport.loseConnection()
        d: Deferred[None] = Deferred()
        self._closing.addBoth(lambda _: d.callback(None))
        return d

    def update_secret(self, new_secret: str, reason: str = "") -> None:
        self._send_method("connection.update-secret", new_secret=new_secret.encode(), reason=reason)
