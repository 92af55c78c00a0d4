"""
AMQPProtocol over a StringTransport with a Clock: the handshake, heartbeats,
framing of incoming bytes, channels and their errors, with no broker and no
real time.  The "broker" here is frames this test writes by hand.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from txmsg._amqp import AMQPProtocol
from txmsg._amqp import codec as _codec
from txmsg._amqp import methods as _methods
from txmsg.errors import (
    AuthenticationError,
    ConnectionClosed,
    ConnectionLost,
    NotFound,
    PreconditionFailed,
    VhostNotFound,
)
from txmsg.url import parse_url


def method(channel: int, name: str, **args: Any) -> bytes:
    return _codec.method_frame(channel, _methods.methods()[name].encode(args))


def parse_frames(data: bytes) -> list[tuple[int, int, Any]]:
    """
    Split what the client wrote into (type, channel, decoded) frames.
    """
    frames = []
    pos = 0
    while pos < len(data):
        ftype, ch, size = struct.unpack_from("!BHI", data, pos)
        payload = data[pos + 7 : pos + 7 + size]
        assert data[pos + 7 + size] == 0xCE
        if ftype == 1:
            ms = _methods.methods().by_key[struct.unpack_from("!HH", payload)]
            frames.append((ftype, ch, (ms.name, ms.decode(payload, 4))))
        else:
            frames.append((ftype, ch, payload))
        pos += 8 + size
    return frames


class Broker:
    """
    Drives one AMQPProtocol through a StringTransport like a broker would.
    """

    def __init__(self, url: str = "amqp://alice:s3cret@broker:5672/%2Fprod?heartbeat=10") -> None:
        self.clock = Clock()
        self.transport = StringTransport()
        self.protocol = AMQPProtocol(parse_url(url), self.clock, "unit")
        self.protocol.makeConnection(self.transport)
        self.ready: list[Any] = []
        self.failed: list[Any] = []
        self.protocol.handshake.addCallbacks(self.ready.append, self.failed.append)

    def sent(self) -> list[tuple[int, int, Any]]:
        data = self.transport.value()
        self.transport.clear()
        if data.startswith(b"AMQP"):
            assert data[:8] == _codec.PROTOCOL_HEADER
            data = data[8:]
        return parse_frames(data)

    def feed(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def lose(self) -> None:
        """
        The transport closes, as the reactor would after loseConnection or abort.
        """
        assert self.transport.disconnecting or self.protocol._close_error is not None
        self.protocol.connectionLost(Failure(ConnectionLost()))

    def start(self, mechanisms: bytes = b"PLAIN AMQPLAIN") -> None:
        self.feed(
            method(
                0,
                "connection.start",
                version_major=0,
                version_minor=9,
                server_properties={"product": "RabbitMQ"},
                mechanisms=mechanisms,
                locales=b"en_US",
            )
        )

    def handshake(self, heartbeat: int = 60, frame_max: int = 131072) -> None:
        self.start()
        self.feed(method(0, "connection.tune", channel_max=2047, frame_max=frame_max, heartbeat=heartbeat))
        self.feed(method(0, "connection.open-ok"))
        self.transport.clear()


def test_handshake_sends_credentials_capabilities_and_vhost() -> None:
    """
    The client sends the protocol header, answers connection.start with PLAIN
    credentials and client_properties naming the product and RabbitMQ
    capabilities, negotiates tune values, opens the percent-decoded vhost, and
    fires its handshake Deferred on open-ok.
    """
    b = Broker()
    assert b.transport.value() == _codec.PROTOCOL_HEADER
    b.start()
    [(_, ch, (name, args))] = b.sent()
    assert (ch, name) == (0, "connection.start-ok")
    assert args["mechanism"] == "PLAIN"
    assert args["response"] == b"\x00alice\x00s3cret"
    props = args["client_properties"]
    assert props["product"] == "txmsg" and props["connection_name"] == "unit"
    for cap in (
        "publisher_confirms",
        "consumer_cancel_notify",
        "basic.nack",
        "connection.blocked",
        "exchange_exchange_bindings",
        "authentication_failure_close",
    ):
        assert props["capabilities"][cap] is True
    assert "Python" in props["platform"]
    b.feed(method(0, "connection.tune", channel_max=0, frame_max=131072, heartbeat=60))
    [(_, _, (tune_ok, tune)), (_, _, (open_, opened))] = b.sent()
    assert tune_ok == "connection.tune-ok"
    assert (tune["channel_max"], tune["frame_max"], tune["heartbeat"]) == (65535, 131072, 10)
    assert (open_, opened["virtual_host"]) == ("connection.open", "/prod")
    assert not b.ready
    b.feed(method(0, "connection.open-ok"))
    assert b.ready == [b.protocol] and b.protocol.is_open


def test_password_never_appears_in_reprs_or_errors() -> None:
    """
    The password is sent to the broker but appears in no repr and no error.
    """
    b = Broker()
    b.start()
    b.feed(
        method(
            0,
            "connection.close",
            reply_code=403,
            reply_text="ACCESS_REFUSED - Login was refused",
            class_id=0,
            method_id=0,
        )
    )
    b.lose()
    [failure] = b.failed
    assert failure.check(AuthenticationError)
    assert "s3cret" not in str(failure.value)
    assert "s3cret" not in repr(b.protocol.params)
    assert "alice" in str(failure.value)


def test_refused_login_is_authentication_error() -> None:
    """
    connection.close 403 during the handshake becomes AuthenticationError and
    the client answers close-ok.
    """
    b = Broker()
    b.start()
    b.sent()
    b.feed(
        method(0, "connection.close", reply_code=403, reply_text="ACCESS_REFUSED", class_id=10, method_id=11)
    )
    assert [name for _, _, (name, _) in b.sent()] == ["connection.close-ok"]
    assert b.transport.disconnecting
    b.lose()
    assert b.failed[0].check(AuthenticationError)


def test_unknown_vhost_is_vhost_not_found() -> None:
    """
    connection.close 530 in reply to connection.open becomes VhostNotFound.
    """
    b = Broker()
    b.start()
    b.feed(method(0, "connection.tune", channel_max=0, frame_max=131072, heartbeat=60))
    b.feed(
        method(
            0,
            "connection.close",
            reply_code=530,
            reply_text="NOT_ALLOWED - vhost /prod not found",
            class_id=10,
            method_id=40,
        )
    )
    b.lose()
    assert b.failed[0].check(VhostNotFound)
    assert "/prod" in str(b.failed[0].value)


def test_no_plain_mechanism_is_authentication_error() -> None:
    """
    A broker that offers no PLAIN mechanism is refused with a clear error.
    """
    b = Broker()
    b.start(mechanisms=b"EXTERNAL")
    b.lose()
    assert b.failed[0].check(AuthenticationError)


def test_handshake_timeout_aborts() -> None:
    """
    A peer that accepts TCP but never completes the handshake is abandoned
    after connection_timeout seconds.
    """
    b = Broker("amqp://guest:guest@h/?connection_timeout=3")
    b.clock.advance(2.9)
    assert not b.transport.disconnecting
    b.clock.advance(0.2)
    b.lose()
    assert b.failed[0].check(ConnectionLost)
    assert "within 3 s" in str(b.failed[0].value)


def test_heartbeats_sent_when_idle_and_silent_peer_detected_within_two_intervals() -> None:
    """
    With a 10 s heartbeat the client sends heartbeat frames when it has written
    nothing, and aborts the connection once the broker was silent for more
    than 1.5 and at most 2 intervals.
    """
    b = Broker()
    b.handshake(heartbeat=10)
    assert b.protocol.heartbeat == 10
    b.clock.advance(5)
    assert b.transport.value() == b""  # the handshake just wrote, so no heartbeat yet
    b.clock.advance(5)
    assert b.transport.value() == _codec.HEARTBEAT_FRAME
    b.transport.clear()
    b.feed(_codec.HEARTBEAT_FRAME)  # broker alive at t=10
    b.clock.advance(5)  # t=15: saw data
    b.clock.advance(5)  # t=20: silent tick 1
    b.clock.advance(5)  # t=25: silent tick 2
    assert b.protocol._close_error is None
    b.clock.advance(5)  # t=30: silent tick 3: 20 s after the last data at most
    assert b.protocol._close_error is not None
    assert "heartbeat" in str(b.protocol._close_error)


def test_heartbeat_not_sent_while_writing() -> None:
    """
    A client that keeps writing sends no heartbeat frames; a broker that keeps
    sending is never declared dead.
    """
    b = Broker()
    b.handshake(heartbeat=10)
    channel_d = b.protocol.open_channel()
    b.feed(method(1, "channel.open-ok"))
    channel = channel_d.result
    for _ in range(20):
        channel.ack(1)
        b.feed(_codec.HEARTBEAT_FRAME)
        b.clock.advance(5)
    assert _codec.HEARTBEAT_FRAME not in b.transport.value()
    assert b.protocol._close_error is None


def test_frames_parse_when_fed_one_byte_at_a_time() -> None:
    """
    A delivery whose frames arrive one byte at a time is assembled exactly as
    when it arrives at once: non-ASCII bytes stay bytes and are counted as bytes.
    """
    b = Broker()
    b.handshake(frame_max=4096)
    channel_d = b.protocol.open_channel()
    b.feed(method(1, "channel.open-ok"))
    channel = channel_d.result
    got: list[tuple[Any, Any, bytes]] = []
    channel.consumers["ctag"] = lambda args, props, body: got.append((args, props, body))
    body = ("é" * 5000).encode()  # 10,000 bytes: three body frames at frame_max 4096
    data = method(
        1,
        "basic.deliver",
        consumer_tag="ctag",
        delivery_tag=7,
        redelivered=True,
        exchange="ex",
        routing_key="rk",
    )
    data += b"".join(_codec.content_frames(1, {"content_type": "text/plain"}, body, 4096))
    for i in range(len(data)):
        b.feed(data[i : i + 1])
    [(args, props, got_body)] = got
    assert got_body == body
    assert args["delivery_tag"] == 7 and args["redelivered"] is True
    assert props == {"content_type": "text/plain"}
    assert len(b.protocol._buf) == 0


def test_bad_frame_end_is_a_protocol_error() -> None:
    """
    A frame that does not end with 0xCE aborts the connection as a protocol error.
    """
    b = Broker()
    b.handshake()
    b.feed(b"\x08\x00\x00\x00\x00\x00\x00\x00")
    assert "frame-end" in str(b.protocol._close_error)


def test_oversized_frame_is_a_protocol_error() -> None:
    """
    A frame header announcing more than frame_max bytes aborts at once instead
    of buffering without bound.
    """
    b = Broker()
    b.handshake(frame_max=4096)
    b.feed(struct.pack("!BHI", 3, 1, 10_000_000))
    assert "exceeds frame_max" in str(b.protocol._close_error)


def test_channel_errors_fail_the_operation_and_spare_other_channels() -> None:
    """
    A channel.close from the broker fails the pending call with the typed error
    (reply code, text and the offending method), is answered with close-ok,
    and leaves the other channel and the connection open.
    """
    b = Broker()
    b.handshake()
    d1 = b.protocol.open_channel()
    d2 = b.protocol.open_channel()
    b.feed(method(1, "channel.open-ok") + method(2, "channel.open-ok"))
    ch1, ch2 = d1.result, d2.result
    assert (ch1.id, ch2.id) == (1, 2)
    b.transport.clear()
    failures: list[Any] = []
    ch1.call("queue.declare", queue="q", passive=True).addErrback(failures.append)
    b.feed(
        method(
            1,
            "channel.close",
            reply_code=404,
            reply_text="NOT_FOUND - no queue 'q'",
            class_id=50,
            method_id=10,
        )
    )
    [failure] = failures
    assert failure.check(NotFound)
    assert failure.value.reply_code == 404 and failure.value.method == "queue.declare"
    sent = [(ch, name) for _, ch, (name, _) in b.sent()]
    assert sent == [(1, "queue.declare"), (1, "channel.close-ok")]
    assert not ch1.is_open and ch2.is_open and b.protocol.is_open
    assert 1 not in b.protocol.channels
    results: list[Any] = []
    ch2.call("queue.declare", queue="q2").addCallback(results.append)
    b.feed(method(2, "queue.declare-ok", queue="q2", message_count=3, consumer_count=0))
    assert results[0]["message_count"] == 3
    d3 = b.protocol.open_channel()
    b.feed(method(3, "channel.open-ok"))
    assert d3.result.id == 3


def test_pipelined_calls_resolve_in_order() -> None:
    """
    Several synchronous calls in flight on one channel resolve with their own
    replies, in order; a 406 fails the pending ones.
    """
    b = Broker()
    b.handshake()
    d = b.protocol.open_channel()
    b.feed(method(1, "channel.open-ok"))
    ch = d.result
    results: list[Any] = []
    ch.call("queue.declare", queue="a").addBoth(results.append)
    ch.call("queue.declare", queue="b").addBoth(results.append)
    ch.call("queue.declare", queue="c").addBoth(results.append)
    b.feed(method(1, "queue.declare-ok", queue="a", message_count=1, consumer_count=0))
    b.feed(
        method(
            1, "channel.close", reply_code=406, reply_text="PRECONDITION_FAILED", class_id=50, method_id=10
        )
    )
    assert results[0]["queue"] == "a"
    assert results[1].check(PreconditionFailed) and results[2].check(PreconditionFailed)


def test_connection_blocked_and_unblocked_are_tracked() -> None:
    """
    connection.blocked sets the blocked reason (a channel cannot send);
    unblocked clears it and tells each channel that it may write again.
    """
    b = Broker()
    b.handshake()
    d = b.protocol.open_channel()
    b.feed(method(1, "channel.open-ok"))
    channel = d.result
    calls: list[int] = []
    channel.on_writable = lambda: calls.append(1)
    b.feed(method(0, "connection.blocked", reason="low on memory"))
    assert b.protocol.blocked == "low on memory" and channel.blocked == "low on memory"
    assert not channel.can_send
    b.feed(method(0, "connection.unblocked"))
    assert b.protocol.blocked is None and calls == [1] and channel.can_send


def test_forced_close_fails_channels_with_connection_closed() -> None:
    """
    A connection.close from the broker after the handshake (e.g. rabbitmqctl
    close_connection) fails open channels with ConnectionClosed and its code.
    """
    b = Broker()
    b.handshake()
    d = b.protocol.open_channel()
    b.feed(method(1, "channel.open-ok"))
    ch = d.result
    pending: list[Any] = []
    ch.call("queue.declare", queue="x").addErrback(pending.append)
    b.feed(
        method(0, "connection.close", reply_code=320, reply_text="CONNECTION_FORCED", class_id=0, method_id=0)
    )
    b.lose()
    assert pending[0].check(ConnectionClosed)
    assert pending[0].value.reply_code == 320
    assert not ch.is_open


def test_publish_frames_split_to_negotiated_frame_max() -> None:
    """
    channel.publish writes the method, header and body frames, the body split
    to the negotiated frame_max.
    """
    b = Broker()
    b.handshake(frame_max=4096)
    d = b.protocol.open_channel()
    b.feed(method(1, "channel.open-ok"))
    b.transport.clear()
    body = b"x" * 10000
    d.result.publish("ex", "rk", body, {"delivery_mode": 2}, mandatory=True)
    frames = parse_frames(b.transport.value())
    assert frames[0][2][0] == "basic.publish" and frames[0][2][1]["mandatory"] is True
    assert frames[1][0] == 2
    bodies = [payload for ftype, _, payload in frames if ftype == 3]
    assert b"".join(bodies) == body
    assert all(len(p) + 8 <= 4096 for p in bodies)


@pytest.mark.parametrize("client, server, expected", [(60, 30, 30), (0, 30, 0), (10, 0, 10), (5, 60, 5)])
def test_heartbeat_negotiation(client: int, server: int, expected: int) -> None:
    """
    The heartbeat is the smaller of both sides' non-zero values; a client
    asking for 0 disables heartbeats.
    """
    b = Broker(f"amqp://guest:guest@h/?heartbeat={client}")
    b.start()
    b.feed(method(0, "connection.tune", channel_max=0, frame_max=131072, heartbeat=server))
    assert b.protocol.heartbeat == expected


def test_truncated_method_frame_is_a_protocol_error() -> None:
    """
    A well-framed method whose arguments are cut short is a ProtocolError
    naming the problem, not an exception escaping dataReceived.
    """
    b = Broker()
    b.handshake()
    payload = struct.pack("!HH", 60, 60) + b"\x03abc"  # basic.deliver without the rest
    b.feed(struct.pack("!BHI", 1, 1, len(payload)) + payload + b"\xce")
    assert b.transport.disconnecting
    assert "ProtocolError" in type(b.protocol._close_error).__name__


def test_call_with_an_unknown_argument_fails_without_writing() -> None:
    """
    Channel.call refuses an argument the method does not have (a typo) with a
    TypeError, and writes nothing, so later replies stay matched.
    """
    b = Broker()
    b.handshake()
    opened: list[Any] = []
    b.protocol.open_channel().addCallback(opened.append)
    b.feed(method(1, "channel.open-ok"))
    b.transport.clear()
    failures: list[Any] = []
    opened[0].call("queue.declare", queue="q", durabel=True).addErrback(failures.append)
    assert failures[0].check(TypeError) and "durabel" in str(failures[0].value)
    assert b.transport.value() == b""


def test_a_tls_record_where_amqp_was_expected_says_use_amqps() -> None:
    """
    Plain AMQP sent to a TLS port gets a TLS alert back: a ProtocolError that
    says to use amqps://, not a complaint about a frame's size.
    """
    from txmsg.errors import ProtocolError

    b = Broker()
    b.feed(b"\x15\x03\x03\x00\x02\x02\x46")  # TLS 1.2 alert: protocol_version
    b.lose()
    [failure] = b.failed
    assert failure.check(ProtocolError)
    assert "broker:5672 answered with TLS, not AMQP: use an amqps:// URL" in str(failure.value)


def test_certificate_for_another_name_is_a_tls_error() -> None:
    """
    service_identity's VerificationError (the certificate does not name the
    host) fails the handshake with TLSError naming the host, which is fatal.
    """
    pytest.importorskip("service_identity")
    from service_identity import VerificationError
    from service_identity.hazmat import DNS_ID, DNSMismatch

    from txmsg.errors import TLSError

    b = Broker()
    b.protocol.connectionLost(
        Failure(VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("broker"))]))
    )
    [failure] = b.failed
    assert failure.check(TLSError)
    assert str(failure.value) == "TLS handshake with broker failed: its certificate is not valid for broker"


def test_close_ok_ends_the_transport_at_once() -> None:
    """
    Once the broker answers connection.close with close-ok nothing is left to
    say: the transport is aborted rather than closed politely (a TLS transport
    would wait for a close_notify that RabbitMQ does not send).
    """

    class Transport(StringTransport):
        aborted = False

        def abortConnection(self) -> None:
            self.aborted = True
            super().loseConnection()

    b = Broker()
    b.transport = Transport()
    b.protocol.makeConnection(b.transport)
    b.handshake()
    closed = b.protocol.close()
    assert [name for _, _, (name, _) in b.sent()] == ["connection.close"]
    b.feed(method(0, "connection.close-ok"))
    assert b.transport.aborted
    b.lose()
    assert closed.called


def _two_big_deliveries(body: bytes, frame_max: int) -> bytes:
    data = b""
    for tag in (1, 2):
        data += method(
            1,
            "basic.deliver",
            consumer_tag="ctag",
            delivery_tag=tag,
            redelivered=False,
            exchange="",
            routing_key="q",
        )
        data += b"".join(_codec.content_frames(1, {}, body, frame_max))
    return data


@pytest.mark.parametrize("chunk", [1, 4096, 65536, 100_000, 131_079])
def test_big_body_frames_stream_to_the_channel_without_filling_the_buffer(chunk: int) -> None:
    """
    A body frame larger than what has arrived goes to its channel piece by
    piece as reads come (the frame buffer never holds it whole), in reads of
    any size, with the frame-end octet alone in a read or followed by the next
    frames; both messages arrive whole.
    """
    b = Broker()
    b.handshake(frame_max=131072)
    channel_d = b.protocol.open_channel()
    b.feed(method(1, "channel.open-ok"))
    channel = channel_d.result
    got: list[bytes] = []
    channel.consumers["ctag"] = lambda args, props, body: got.append(body)
    body = bytes(range(256)) * 1200  # 307,200 bytes: three body frames
    data = _two_big_deliveries(body, 131072)
    most = 0
    for i in range(0, len(data), chunk):
        b.feed(data[i : i + chunk])
        most = max(most, len(b.protocol._buf))
    assert got == [body, body]
    assert most < max(chunk, 16384) + 100
    assert len(b.protocol._buf) == 0 and b.protocol._close_error is None


def test_a_streamed_body_frame_must_end_with_the_frame_end_octet() -> None:
    """
    A streamed body frame followed by anything but 0xCE is a protocol error.
    """
    b = Broker()
    b.handshake(frame_max=131072)
    channel_d = b.protocol.open_channel()
    b.feed(method(1, "channel.open-ok"))
    channel_d.result.consumers["ctag"] = lambda args, props, body: None
    data = _two_big_deliveries(b"x" * 100_000, 131072)
    end = data.index(b"\xce", data.index(b"x" * 100_000) + 100_000 - 1)
    broken = data[:end] + b"\x00" + data[end + 1 :]
    b.feed(broken[:20_000])
    b.feed(broken[20_000:])
    assert "frame-end" in str(b.protocol._close_error)


class PausingTransport(StringTransport):
    """
    A transport whose buffer holds C{bufferSize} bytes before it pauses its
    producer, as Twisted's TCP transport does; L{send} empties it and resumes
    the producer, as the reactor does once the socket took everything.
    """

    bufferSize = 65536

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.most = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.most = max(self.most, len(self.io.getvalue()))
        if len(self.io.getvalue()) > self.bufferSize and not self.paused:
            self.paused = True
            self.producer.pauseProducing()

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def send(self) -> bytes:
        data = self.value()
        self.clear()
        if self.paused:
            self.paused = False
            self.producer.resumeProducing()
        return data


def test_a_big_message_goes_to_the_transport_as_it_drains_with_later_writes_behind_it() -> None:
    """
    The frames of a big message are handed to the transport a little more
    than its buffer at a time, each time it has sent what it had: it never
    holds the message whole.  An ack and a heartbeat written meanwhile come
    out after the message's last frame, never inside it; the connection is
    not writable (and wakes no waiting producer) until the last frame is
    handed over.
    """
    transport = PausingTransport()
    clock = Clock()
    protocol = AMQPProtocol(parse_url("amqp://guest:guest@broker/%2F?heartbeat=10"), clock, "unit")
    protocol.makeConnection(transport)
    b = Broker.__new__(Broker)
    b.clock, b.transport, b.protocol = clock, transport, protocol
    b.handshake(heartbeat=10, frame_max=131072)
    channel_d = protocol.open_channel()
    b.feed(method(1, "channel.open-ok"))
    channel = channel_d.result
    transport.send()
    out = b""
    woken: list[bool] = []
    channel.on_writable = lambda: woken.append(protocol.writable)

    body = bytes(range(256)) * (4 * 1024 * 1024 // 256)  # 4 MiB: 33 frames
    channel.publish("", "q", body, {})
    assert not protocol.writable
    channel.ack(7)  # written behind the message
    clock.advance(10)  # a heartbeat falls due while it goes out
    clock.advance(5)
    sends = 0
    while transport.paused:
        out += transport.send()
        sends += 1
    out += transport.send()
    assert sends > 30  # handed over in pieces, as the transport drained
    assert transport.most < transport.bufferSize + 131072 + 100
    assert protocol.writable and woken == [True]
    frames = parse_frames(out)
    names = [payload[0] if ftype == 1 else ftype for ftype, _, payload in frames]
    assert names[0] == "basic.publish" and names[1] == 2
    bodies = [payload for ftype, _, payload in frames if ftype == 3]
    assert b"".join(bodies) == body
    last_body = max(i for i, (ftype, _, _) in enumerate(frames) if ftype == 3)
    assert names[last_body + 1 :] == ["basic.ack", 8]  # the ack, then the heartbeat
    assert all(ftype == 3 for ftype, _, _ in frames[2 : last_body + 1])


def test_writes_while_the_transport_is_paused_wait_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A big message written while the transport is paused (its buffer full of
    small writes) waits whole in the protocol, not in the transport, and goes
    out once the transport resumes.
    """
    transport = PausingTransport()
    clock = Clock()
    protocol = AMQPProtocol(parse_url("amqp://guest:guest@broker/%2F"), clock, "unit")
    protocol.makeConnection(transport)
    b = Broker.__new__(Broker)
    b.clock, b.transport, b.protocol = clock, transport, protocol
    b.handshake(frame_max=131072)
    channel_d = protocol.open_channel()
    b.feed(method(1, "channel.open-ok"))
    channel = channel_d.result
    transport.send()
    for i in range(800):
        channel.publish("", "q", b"x" * 100, {"message_id": str(i)})
    assert transport.paused and not protocol.writable
    held = len(transport.value())
    body = b"y" * 1_000_000
    channel.publish("", "q", body, {})
    assert len(transport.value()) == held  # nothing more handed to the full transport
    out = b""
    while transport.paused:
        out += transport.send()
    out += transport.send()
    bodies = [payload for ftype, _, payload in parse_frames(out) if ftype == 3]
    assert bodies[-8:] == [body[i : i + 131064] for i in range(0, len(body), 131064)][-8:]
    assert b"".join(bodies[800:]) == body


def test_big_bodies_are_assembled_in_a_kept_buffer_and_delivered_as_their_own_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Bodies of KEEP_BUFFER bytes and more are assembled in one buffer the
    channel keeps for the next such body; each delivered body is its own
    bytes (the next message does not change it), and the buffer is freed
    once no big body came for KEEP_FOR seconds, or when the channel closes.
    """
    from txmsg._amqp import channel as _channel

    monkeypatch.setattr(_channel, "KEEP_BUFFER", 200_000)
    b = Broker()
    b.handshake(frame_max=131072)
    channel_d = b.protocol.open_channel()
    b.feed(method(1, "channel.open-ok"))
    channel = channel_d.result
    got: list[bytes] = []
    channel.consumers["ctag"] = lambda args, props, body: got.append(body)

    def deliver(tag: int, body: bytes) -> None:
        data = method(
            1,
            "basic.deliver",
            consumer_tag="ctag",
            delivery_tag=tag,
            redelivered=False,
            exchange="",
            routing_key="q",
        )
        data += b"".join(_codec.content_frames(1, {}, body, 131072))
        for i in range(0, len(data), 65536):
            b.feed(data[i : i + 65536])

    first, second, small = b"a" * 300_000, bytes(range(256)) * 1000, b"s" * 1000
    deliver(1, first)
    kept = channel._big
    assert kept is not None and len(kept) >= len(first)
    deliver(2, second)
    deliver(3, small)
    assert channel._big is kept  # the same buffer served both
    assert got == [first, second, small]
    assert all(type(body) is bytes for body in got)
    b.clock.advance(_channel.KEEP_FOR - 0.1)
    assert channel._big is kept
    b.clock.advance(0.2)
    assert channel._big is None
    deliver(4, first)
    assert channel._big is not None and got[-1] == first
    b.feed(method(1, "channel.close", reply_code=406, reply_text="x", class_id=0, method_id=0))
    assert channel._big is None
    assert [c.func.__name__ for c in b.clock.getDelayedCalls()] == ["_heartbeat_tick"]
