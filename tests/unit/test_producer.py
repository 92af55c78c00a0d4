"""
Producer over a StringTransport "broker" and a Clock: confirms matched to their
publishes, nacks, returns, timeouts, channel errors, failures on stop, and
backpressure (the confirm window, a full write buffer, connection.blocked).
Every frame the producer writes is decoded and checked.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from txmsg import AuthenticationError, Connection, Producer
from txmsg.errors import NotFound
from txmsg.producer import Nacked, PublishTimeout, Unroutable

from .test_connection import handshake, lose, make_connection, start
from .test_protocol import method, parse_frames


class Broker:
    """
    The broker side of one producer: answers its channel set-up, reads its
    publishes, and sends confirms, returns and channel errors.
    """

    def __init__(self, window: int = 1000, confirm: bool = True) -> None:
        self.clock = Clock()
        self.conn, self.endpoint = make_connection(self.clock)
        self.confirm = confirm
        self.producer = Producer(self.conn, window=window, confirm=confirm)
        self.conn.startService()
        self.connect()

    @property
    def proto(self) -> Any:
        return self.endpoint.protocols[-1]

    @property
    def protocol(self) -> Any:
        return self.proto._protocol

    def connect(self) -> None:
        handshake(self.proto)
        self.proto.transport.clear()
        self.open_channel()

    def open_channel(self, channel: int = 1) -> None:
        self.proto.dataReceived(method(channel, "channel.open-ok"))
        if self.confirm:
            self.proto.dataReceived(method(channel, "confirm.select-ok"))
        assert self.producer._channel is not None
        self.proto.transport.clear()

    def published(self) -> list[tuple[str, str, dict[str, Any], bytes]]:
        """
        The messages written since the last call: (exchange, routing key, properties, body).
        """
        frames = parse_frames(self.proto.transport.value())
        self.proto.transport.clear()
        out: list[Any] = []
        for ftype, _, payload in frames:
            if ftype == 1 and payload[0] == "basic.publish":
                out.append([payload[1]["exchange"], payload[1]["routing_key"], None, b""])
            elif ftype == 2:
                from txmsg._amqp import codec as _codec

                _size, props = _codec.decode_content_header(payload, 0)
                out[-1][2] = props
            elif ftype == 3:
                out[-1][3] += payload
        return [tuple(m) for m in out]

    def methods(self) -> list[tuple[str, dict[str, Any]]]:
        frames = parse_frames(self.proto.transport.value())
        self.proto.transport.clear()
        return [payload for ftype, _, payload in frames if ftype == 1]

    def ack(self, tag: int, multiple: bool = False, channel: int = 1) -> None:
        self.proto.dataReceived(method(channel, "basic.ack", delivery_tag=tag, multiple=multiple))

    def nack(self, tag: int, multiple: bool = False) -> None:
        self.proto.dataReceived(method(1, "basic.nack", delivery_tag=tag, multiple=multiple, requeue=False))

    def send_return(self, message_id: str, routing_key: str = "nowhere") -> None:
        from txmsg._amqp import codec as _codec

        self.proto.dataReceived(
            method(
                1, "basic.return", reply_code=312, reply_text="NO_ROUTE", exchange="", routing_key=routing_key
            )
            + b"".join(_codec.content_frames(1, {"message_id": message_id}, b"x", 131072))
        )


def outcomes(ds: list[Any]) -> list[Any]:
    """
    What each Deferred has settled to: None (confirmed), an exception type, or
    "pending".
    """
    result: list[Any] = []
    for d in ds:
        box: list[Any] = []
        d.addBoth(lambda r, box=box: box.append(r) or r)
        if not box:
            result.append("pending")
        elif box[0] is None:
            result.append(None)
        else:
            result.append(box[0].type)
            d.addErrback(lambda _: None)
    return result


def test_confirms_settle_their_own_publishes() -> None:
    """
    A single ack settles only its tag; a multiple ack settles every earlier
    one; a nack fails its publish with Nacked.
    """
    b = Broker()
    ds = [b.producer.publish("", "q", f"m{i}") for i in range(5)]
    assert [m[3] for m in b.published()] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert outcomes(ds) == ["pending"] * 5
    b.ack(2)
    assert outcomes(ds) == ["pending", None, "pending", "pending", "pending"]
    b.nack(3)
    b.ack(5, multiple=True)
    assert outcomes(ds) == [None, None, Nacked, None, None]
    assert b.producer.unconfirmed == 0


def test_a_publish_that_cannot_be_encoded_takes_no_delivery_tag() -> None:
    """
    A publish refused before it is written (bad property) fails at once and
    leaves the tags of later publishes matched to their confirms.
    """
    b = Broker()
    d1 = b.producer.publish("", "q", "ok1")
    bad = b.producer.publish("", "q", "bad", priority=1000)  # an octet
    huge = b.producer.publish("", "q", "bad", headers={"h": "x" * 200_000})  # header > frame_max
    d2 = b.producer.publish("", "q", "ok2")
    assert outcomes([bad, huge]) == [ValueError, ValueError]
    assert [m[3] for m in b.published()] == [b"ok1", b"ok2"]
    b.nack(2)
    b.ack(1)
    assert outcomes([d1, d2]) == [None, Nacked]


def test_mandatory_return_fails_with_unroutable() -> None:
    """
    A mandatory publish that comes back (basic.return, then its ack) fails
    with Unroutable carrying the reply code and text; its neighbours confirm.
    """
    b = Broker()
    d1 = b.producer.publish("", "q", "a")
    d2 = b.producer.publish("", "nowhere", "b", mandatory=True)
    d3 = b.producer.publish("", "q", "c", mandatory=True)
    failure: list[Any] = []
    d2.addErrback(failure.append)
    sent = b.published()
    message_id = sent[1][2]["message_id"]
    assert message_id and sent[2][2]["message_id"] != message_id
    b.send_return(message_id)
    b.ack(3, multiple=True)
    assert outcomes([d1, d3]) == [None, None]
    assert failure[0].check(Unroutable)
    assert failure[0].value.reply_code == 312 and failure[0].value.reply_text == "NO_ROUTE"


def test_timeout_fails_a_publish_the_broker_does_not_confirm() -> None:
    """
    PublishTimeout fires after the timeout; a late confirm is then ignored and
    does not disturb the next publish's confirm.
    """
    b = Broker()
    d1 = b.producer.publish("", "q", "slow", timeout=2)
    b.clock.advance(1.9)
    assert outcomes([d1]) == ["pending"]
    b.clock.advance(0.2)
    assert outcomes([d1]) == [PublishTimeout]
    d2 = b.producer.publish("", "q", "next")
    b.ack(1)
    assert outcomes([d2]) == ["pending"]
    b.ack(2)
    assert outcomes([d2]) == [None]


def test_channel_error_fails_only_the_publishes_it_names() -> None:
    """
    A 404 naming exchange 'missing' fails the publishes to it; the others are
    published again on a new channel and confirmed there.
    """
    b = Broker()
    good = b.producer.publish("logs", "k", "a")
    bad = b.producer.publish("missing", "k", "b")
    b.published()
    b.proto.dataReceived(
        method(
            1,
            "channel.close",
            reply_code=404,
            reply_text="NOT_FOUND - no exchange 'missing' in vhost '/'",
            class_id=60,
            method_id=40,
        )
    )
    assert outcomes([bad]) == [NotFound]
    assert outcomes([good]) == ["pending"]
    assert ("channel.close-ok", {}) in b.methods()
    # channel numbers rotate: the new channel is 2
    b.proto.dataReceived(method(2, "channel.open-ok"))
    b.proto.transport.clear()
    b.proto.dataReceived(method(2, "confirm.select-ok"))
    assert [m[3] for m in b.published()] == [b"a"]
    b.ack(1, channel=2)
    assert outcomes([good]) == [None]


def test_window_holds_back_publishes_until_confirms_arrive() -> None:
    """
    With a window of 3, the fourth and fifth publishes are not written until
    confirms make room; they are then written in order.
    """
    b = Broker(window=3)
    ds = [b.producer.publish("", "q", f"m{i}") for i in range(5)]
    assert [m[3] for m in b.published()] == [b"m0", b"m1", b"m2"]
    assert (b.producer.unconfirmed, b.producer.waiting) == (3, 2)
    b.ack(1)
    assert [m[3] for m in b.published()] == [b"m3"]
    b.ack(3, multiple=True)
    assert [m[3] for m in b.published()] == [b"m4"]
    b.ack(5, multiple=True)
    assert outcomes(ds) == [None] * 5


def test_full_write_buffer_pauses_publishing() -> None:
    """
    When the transport pauses its producer (write buffer full), publishes wait;
    resumeProducing writes them in order.
    """
    b = Broker()
    b.protocol.pauseProducing()
    ds = [b.producer.publish("", "q", f"m{i}") for i in range(3)]
    assert b.published() == [] and b.producer.waiting == 3
    b.protocol.resumeProducing()
    assert [m[3] for m in b.published()] == [b"m0", b"m1", b"m2"]
    b.ack(3, multiple=True)
    assert outcomes(ds) == [None] * 3


def test_waiting_leaves_out_publishes_that_timed_out_or_were_cancelled_while_they_waited() -> None:
    """
    C{waiting} counts the publishes still to be written: one that timed out
    and one cancelled while they waited drop out of it, the rest are written
    in order once the buffer drains, and it ends at 0.
    """
    b = Broker()
    b.protocol.pauseProducing()
    expiring = b.producer.publish("", "q", "m0", timeout=1)
    cancelled = b.producer.publish("", "q", "m1")
    kept = [b.producer.publish("", "q", f"m{i}") for i in range(2, 5)]
    assert b.producer.waiting == 5
    b.clock.advance(1)
    assert outcomes([expiring]) == [PublishTimeout]
    assert b.producer.waiting == 4
    cancelled.cancel()
    assert b.producer.waiting == 3
    b.protocol.resumeProducing()
    assert [m[3] for m in b.published()] == [b"m2", b"m3", b"m4"]
    assert b.producer.waiting == 0
    b.ack(3, multiple=True)
    assert outcomes(kept) == [None] * 3


def test_connection_blocked_holds_publishes_until_unblocked() -> None:
    """
    After connection.blocked nothing is written; connection.unblocked lets the
    waiting publishes go.
    """
    b = Broker()
    b.proto.dataReceived(method(0, "connection.blocked", reason="low on memory"))
    d = b.producer.publish("", "q", "m")
    assert b.published() == []
    b.proto.dataReceived(method(0, "connection.unblocked"))
    assert [m[3] for m in b.published()] == [b"m"]
    b.ack(1)
    assert outcomes([d]) == [None]


def test_a_publish_timing_out_while_it_waits_is_never_written() -> None:
    """
    A publish held back by backpressure that times out is not written later.
    """
    b = Broker(window=1)
    first = b.producer.publish("", "q", "first")
    late = b.producer.publish("", "q", "late", timeout=1)
    b.published()
    b.clock.advance(1.5)
    assert outcomes([late]) == [PublishTimeout]
    b.ack(1)
    assert b.published() == [] and outcomes([first]) == [None]


def test_unconfirmed_publishes_go_again_after_a_reconnect() -> None:
    """
    Messages written but unconfirmed when the connection dies are written again
    on the next connection, before those published during the outage.
    """
    b = Broker()
    d1 = b.producer.publish("", "q", "a")
    d2 = b.producer.publish("", "q", "b")
    b.published()
    b.ack(1)
    lose(b.proto)
    d3 = b.producer.publish("", "q", "c")
    b.clock.advance(5)
    b.connect()
    # connect() cleared what open_channel wrote; check via the confirms instead
    assert outcomes([d1, d2, d3]) == [None, "pending", "pending"]
    b.ack(2, multiple=True)
    assert outcomes([d2, d3]) == [None, None]


def test_resent_order_is_unconfirmed_first() -> None:
    """
    After a reconnect the resend is written in the original publish order.
    """
    b = Broker()
    b.producer.publish("", "q", "a")
    b.producer.publish("", "q", "b")
    b.published()
    lose(b.proto)
    b.producer.publish("", "q", "c")
    b.clock.advance(5)
    handshake(b.proto)
    b.proto.transport.clear()
    b.proto.dataReceived(method(1, "channel.open-ok"))
    b.proto.transport.clear()
    b.proto.dataReceived(method(1, "confirm.select-ok"))
    assert [m[3] for m in b.published()] == [b"a", b"b", b"c"]


@pytest.mark.parametrize("how", ["stop", "fatal"])
def test_unconfirmed_and_waiting_publishes_fail_when_the_connection_stops(how: str) -> None:
    """
    Stopping the connection (or a fatal error such as a refused login on
    reconnect) fails every publish that was not confirmed: none hangs.
    """
    b = Broker(window=1)
    sent = b.producer.publish("", "q", "a")
    held = b.producer.publish("", "q", "b")
    if how == "stop":
        b.conn.stopService()
        lose(b.proto)
    else:
        lose(b.proto)
        b.clock.advance(5)
        start(b.proto)
        b.proto.dataReceived(
            method(
                0, "connection.close", reply_code=403, reply_text="ACCESS_REFUSED", class_id=0, method_id=0
            )
        )
        lose(b.proto)
    result = outcomes([sent, held])
    assert "pending" not in result
    if how == "fatal":
        assert result == [AuthenticationError, AuthenticationError]
    later = b.producer.publish("", "q", "c")
    b.clock.advance(0)
    assert outcomes([later]) != ["pending"]


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Producer(Connection("amqp://h/", reactor=Clock()), window=0)


def test_without_confirms_a_publish_fires_once_written() -> None:
    """
    Producer(confirm=False) never asks for confirms; each publish fires when
    it is written, and not before: while the write buffer is full it waits.
    """
    b = Broker(confirm=False)
    assert "confirm.select" not in [name for name, _ in b.methods()]
    first = b.producer.publish("", "q", "m0")
    assert outcomes([first]) == [None]
    b.protocol.pauseProducing()
    ds = [b.producer.publish("", "q", f"m{i}") for i in range(1, 4)]
    assert outcomes(ds) == ["pending"] * 3
    b.protocol.resumeProducing()
    assert outcomes(ds) == [None] * 3
    assert [m[3] for m in b.published()] == [b"m0", b"m1", b"m2", b"m3"]
    assert b.producer.unconfirmed == 0 and b.producer.confirmed == 4


def test_without_confirms_mandatory_is_refused_unless_returns_have_a_callback() -> None:
    """
    Without confirms a return cannot fail a publish that already fired, so
    mandatory is refused unless on_return is given; with it, each returned
    message is handed to the callback with its properties (the publish had
    already succeeded), and a callback that raises does not break the channel.
    """
    b = Broker(confirm=False)
    [outcome] = outcomes([b.producer.publish("", "q", "m", mandatory=True)])
    assert outcome is ValueError
    assert b.published() == []

    returned: list[tuple[Any, dict[str, Any]]] = []

    def on_return(error: Any, props: dict[str, Any]) -> None:
        returned.append((error, props))
        if len(returned) == 2:
            raise RuntimeError("a bug in the callback")

    b.producer.on_return = on_return
    ds = [b.producer.publish("", "nowhere", "m", mandatory=True, message_id=f"id{i}") for i in range(3)]
    assert outcomes(ds) == [None, None, None]
    assert [m[1] for m in b.published()] == ["nowhere"] * 3
    for i in range(3):
        b.send_return(f"id{i}")
    assert [props["message_id"] for _, props in returned] == ["id0", "id1", "id2"]
    error = returned[0][0]
    assert isinstance(error, Unroutable) and error.reply_code == 312 and error.routing_key == "nowhere"
    assert b.producer._channel is not None and b.producer._channel.is_open


def test_room_waits_until_fewer_than_limit_are_pending() -> None:
    """
    room(limit) fires at once while fewer than limit publishes are pending
    (unconfirmed or waiting), else once confirms bring the count under it.
    """
    b = Broker(window=2)
    assert outcomes([b.producer.room(3)]) == [None]
    ds = [b.producer.publish("", "q", f"m{i}") for i in range(4)]  # 2 written, 2 waiting
    room3, room1 = b.producer.room(3), b.producer.room(1)
    assert outcomes([room3, room1]) == ["pending", "pending"]
    b.ack(1)  # 3 pending: m1 unconfirmed, m2 written, m3 waiting
    assert outcomes([room3, room1]) == ["pending", "pending"]
    b.ack(2)  # 2 pending
    assert outcomes([room3, room1]) == [None, "pending"]
    b.ack(4, multiple=True)
    assert outcomes([room1]) == [None]
    assert outcomes(ds) == [None] * 4
    with pytest.raises(ValueError):
        b.producer.room(0)


def test_when_ready_fires_once_the_publishing_channel_is_ready_and_a_publish_made_before_is_kept() -> None:
    """
    A Producer made on a connection that is already up opens its channel in
    the background: C{when_ready()} fires with the producer once that
    channel has confirms selected; a publish made before is written then,
    not lost.
    """
    clock = Clock()
    conn, endpoint = make_connection(clock)
    conn.startService()
    proto = endpoint.protocols[-1]
    handshake(proto)
    producer = Producer(conn)
    ready: list[Any] = []
    producer.when_ready().addBoth(ready.append)
    early = producer.publish("", "q", "early")
    assert ready == [] and producer.waiting == 1
    proto.dataReceived(method(1, "channel.open-ok"))
    proto.dataReceived(method(1, "confirm.select-ok"))
    assert ready == [producer] and producer.waiting == 0
    assert producer.when_ready().result is producer
    proto.dataReceived(method(1, "basic.ack", delivery_tag=1, multiple=False))
    assert outcomes([early]) == [None]


def test_when_ready_fails_when_the_connection_stops_first() -> None:
    """
    A producer that never got a channel fails its C{when_ready()} waiters
    when the connection stops for good: nothing waits for ever.
    """
    clock = Clock()
    conn, _endpoint = make_connection(clock)
    conn.startService()
    producer = Producer(conn)
    ready: list[Any] = []
    producer.when_ready().addBoth(ready.append)
    conn.stopService()
    assert len(ready) == 1 and ready[0].check(Exception)
