"""
The wire codec: field tables checked against pika's encoder as the reference,
methods, content headers and body framing.
"""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal

import pika.data
import pika.spec
import pytest

from txmsg import _properties
from txmsg._amqp import codec as _codec
from txmsg._amqp import methods as _methods
from txmsg.errors import ProtocolError


def pika_encode(table: dict) -> bytes:
    pieces: list[bytes] = []
    pika.data.encode_table(pieces, table)
    return b"".join(pieces)


def pika_decode(raw: bytes) -> dict:
    value, _ = pika.data.decode_table(raw, 0)
    return value


# Values both encoders handle (pika cannot encode floats).
COMMON = {
    "str": "héllo wörld",
    "true": True,
    "false": False,
    "small": 7,
    "negative": -42,
    "int32max": 2**31 - 1,
    "int64": 2**40,
    "neg64": -(2**50),
    "none": None,
    "list": [1, "two", [3, {"four": 4}], None, True],
    "nested": {"a": {"b": {"c": "d"}}},
    "decimal": Decimal("3.14"),
}


def test_table_encoding_matches_pika_byte_for_byte() -> None:
    """
    txmsg encodes str, bool, 32- and 64-bit int, None, list, nested dict and
    Decimal exactly as pika does.
    """
    assert _codec.encode_table(COMMON) == pika_encode(COMMON)


def test_pika_decodes_what_txmsg_encodes() -> None:
    """
    pika reads back every value txmsg writes, including datetime as a timestamp.
    """
    table = dict(COMMON, when=dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc))
    decoded = pika_decode(_codec.encode_table(table))
    assert decoded["str"] == "héllo wörld"
    assert decoded["int64"] == 2**40 and decoded["neg64"] == -(2**50)
    assert decoded["list"] == [1, "two", [3, {"four": 4}], None, True]
    assert decoded["decimal"] == Decimal("3.14")
    assert decoded["when"].replace(tzinfo=dt.timezone.utc) == table["when"]


def test_txmsg_decodes_what_pika_encodes() -> None:
    """
    Everything pika writes (including 'l' 64-bit ints and 'T' timestamps) decodes.
    """
    table = dict(COMMON, when=dt.datetime(2020, 1, 2, 3, 4, 5))
    decoded, end = _codec.decode_table(pika_encode(table), 0)
    assert end == len(pika_encode(table))
    assert decoded["when"] == dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    del decoded["when"]
    assert decoded == COMMON


@pytest.mark.parametrize(
    "kind, raw, expected",
    [
        (b"t", b"\x01", True),
        (b"b", struct.pack("!b", -5), -5),
        (b"B", struct.pack("!B", 250), 250),
        (b"s", struct.pack("!h", -300), -300),
        (b"u", struct.pack("!H", 60000), 60000),
        (b"I", struct.pack("!i", -70000), -70000),
        (b"i", struct.pack("!I", 4000000000), 4000000000),
        (b"l", struct.pack("!q", -(2**60)), -(2**60)),
        (b"f", struct.pack("!f", 1.5), 1.5),
        (b"d", struct.pack("!d", -2.25), -2.25),
        (b"D", b"\x02" + struct.pack("!i", -12345), Decimal("-123.45")),
        (b"S", struct.pack("!I", 3) + b"abc", "abc"),
        (b"S", struct.pack("!I", 2) + b"\xff\xfe", b"\xff\xfe"),
        (b"x", struct.pack("!I", 3) + b"\x00\x01\x02", b"\x00\x01\x02"),
        (b"T", struct.pack("!Q", 86400), dt.datetime(1970, 1, 2, tzinfo=dt.timezone.utc)),
        (b"V", b"", None),
        (b"A", struct.pack("!I", 7) + b"t\x01" + b"I" + struct.pack("!i", 9), [True, 9]),
        (b"F", struct.pack("!I", 6) + b"\x01k" + b"t\x00" + b"V", {"k": False}),
    ],
)
def test_every_rabbitmq_field_type_decodes(kind: bytes, raw: bytes, expected: object) -> None:
    """
    Each of RabbitMQ's field value types decodes to the matching Python value;
    a long string that is not UTF-8 comes back as bytes rather than failing.
    """
    if kind == b"F" and raw.endswith(b"V"):
        raw = raw[:-1]
        raw = struct.pack("!I", 4) + b"\x01kt\x00"
    value, end = _codec.decode_value(kind + raw, 0)
    assert value == expected
    assert end == 1 + len(raw)


def test_python_types_encode_to_their_field_types() -> None:
    """
    bool, int, float, str, bytes, None, list, dict, datetime and Decimal each
    encode to the documented type tag and round-trip.
    """
    cases = {
        True: b"t",
        5: b"I",
        2**33: b"l",
        1.25: b"d",
        "s": b"S",
        b"\x00\xff": b"x",
        None: b"V",
        (1, 2): b"A",
        Decimal("1.5"): b"D",
        dt.datetime(2001, 1, 1, tzinfo=dt.timezone.utc): b"T",
    }
    for value, tag in cases.items():
        out: list[bytes] = []
        _codec.encode_value(value, out)
        raw = b"".join(out)
        assert raw[:1] == tag, value
        back, _ = _codec.decode_value(raw, 0)
        assert back == (list(value) if isinstance(value, tuple) else value)
    out = []
    _codec.encode_value({"k": [1]}, out)
    assert b"".join(out)[:1] == b"F"


def test_unencodable_values_are_refused() -> None:
    """
    Values with no AMQP field type, and ints beyond 64 bits, are refused clearly.
    """
    with pytest.raises(TypeError, match="set"):
        _codec.encode_table({"a": {1, 2}})
    with pytest.raises(ValueError, match="64-bit"):
        _codec.encode_table({"a": 2**70})


def test_unknown_field_type_is_a_protocol_error() -> None:
    """
    A field type tag that RabbitMQ never sends is a ProtocolError, not garbage.
    """
    with pytest.raises(ProtocolError):
        _codec.decode_value(b"Z\x00", 0)


def test_method_round_trip_with_packed_bits() -> None:
    """
    exchange.declare's five consecutive bits (passive, durable, auto-delete,
    internal, no-wait) pack into one octet and decode back.
    """
    ms = _methods.methods()["exchange.declare"]
    payload = ms.encode(
        {
            "exchange": "x",
            "type": "topic",
            "durable": True,
            "internal": True,
            "arguments": {"alternate-exchange": "ae"},
        }
    )
    args = ms.decode(payload, 4)
    assert args["exchange"] == "x" and args["type"] == "topic"
    assert (args["passive"], args["durable"], args["auto_delete"], args["internal"], args["no_wait"]) == (
        False,
        True,
        False,
        True,
        False,
    )
    assert args["arguments"] == {"alternate-exchange": "ae"}


def test_publish_frame_matches_pika() -> None:
    """
    The hand-written basic.publish fast path encodes what pika encodes.
    """
    ours = _codec.basic_publish_frame(3, "ex", "rk", True)
    theirs = pika.spec.Basic.Publish(exchange="ex", routing_key="rk", mandatory=True).encode()
    assert ours[7:-1] == struct.pack("!HH", 60, 40) + b"".join(theirs)


def test_deliver_fast_path_matches_generic_decoder() -> None:
    """
    The basic.deliver fast path decodes exactly what the generic decoder does.
    """
    ms = _methods.methods()["basic.deliver"]
    payload = ms.encode(
        {
            "consumer_tag": "ctag",
            "delivery_tag": 2**40 + 3,
            "redelivered": True,
            "exchange": "ex",
            "routing_key": "r.k",
        }
    )
    assert _codec.decode_basic_deliver(payload, 4) == ms.decode(payload, 4)


def test_properties_round_trip_and_match_pika() -> None:
    """
    All fourteen basic properties encode as pika encodes them and decode back.
    """
    props = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "headers": {"a": 1, "b": [True, None]},
        "delivery_mode": 2,
        "priority": 5,
        "correlation_id": "c1",
        "reply_to": "amq.rabbitmq.reply-to",
        "expiration": "60000",
        "message_id": "m1",
        "timestamp": 1700000000,
        "type": "t",
        "user_id": "guest",
        "app_id": "app",
        "cluster_id": "cl",
    }
    raw = _codec.encode_properties(props)
    theirs = pika.spec.BasicProperties(**props).encode()
    assert raw == b"".join(theirs)
    header = struct.pack("!HHQ", 60, 0, 10) + raw
    size, back = _codec.decode_content_header(header, 0)
    assert size == 10 and back == props


def test_body_split_to_frame_max() -> None:
    """
    A body larger than one frame is split into frames of at most frame_max bytes.
    """
    body = bytes(range(256)) * 100  # 25,600 bytes
    parts = _codec.content_frames(1, {}, body, 4096)
    frames = b"".join(parts)
    pos = 0
    sizes = []
    pieces = []
    while pos < len(frames):
        ftype, _ch, size = struct.unpack_from("!BHI", frames, pos)
        assert frames[pos + 7 + size] == 0xCE
        if ftype == 3:
            sizes.append(size + 8)
            pieces.append(frames[pos + 7 : pos + 7 + size])
        pos += 8 + size
    assert max(sizes) <= 4096
    assert b"".join(pieces) == body


def test_content_header_with_continuation_flag_keeps_the_first_flag_words_properties() -> None:
    """
    A property-flags word with the continuation bit (0x0001) set is followed by
    another flags word; the properties of the first word still decode.
    """
    shortstr = b"\x10application/json"
    payload = struct.pack("!HHQ", 60, 0, 5) + struct.pack("!H", 0x8001) + struct.pack("!H", 0) + shortstr
    size, props = _codec.decode_content_header(payload, 0)
    assert size == 5
    assert props == {"content_type": "application/json"}


def test_timestamp_beyond_datetime_stays_an_int() -> None:
    """
    A timestamp written in milliseconds (as some peers do) is out of datetime's
    range: it decodes as the raw integer instead of failing the delivery.
    """
    millis = 1_700_000_000_000_000
    assert _properties.timestamp_to_datetime(millis) == millis
    assert _properties.timestamp_to_datetime(0) == dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    raw = b"T" + struct.pack("!Q", 2**63 - 1)
    table = struct.pack("!I", 3 + len(raw)) + b"\x02ts" + raw
    assert _codec.decode_table(table, 0)[0] == {"ts": 2**63 - 1}


def test_message_properties_larger_than_a_frame_are_refused() -> None:
    """
    Headers too big for one content-header frame are a ValueError before any
    byte is written (the broker would close the connection on a split header).
    """
    with pytest.raises(ValueError, match="frame_max"):
        _codec.publish_frames(1, "", "q", False, {"headers": {"h": "x" * 5000}}, b"body", 4096)


def test_publish_frames_are_remembered_per_destination_and_the_memory_is_bounded() -> None:
    """
    basic_publish_frame gives the same bytes from its cache as when it first
    encoded them (decodable as the method sent), and the cache never holds
    more than its maximum however many destinations are used.
    """
    from txmsg._amqp import codec as c

    from .test_protocol import parse_frames

    first = c.basic_publish_frame(3, "ex", "key.1", True)
    [(ftype, channel, (name, args))] = parse_frames(first)
    assert (ftype, channel, name) == (1, 3, "basic.publish")
    assert (args["exchange"], args["routing_key"], args["mandatory"]) == ("ex", "key.1", True)
    again = c.basic_publish_frame(3, "ex", "key.1", True)
    assert again == first
    assert c.basic_publish_frame(3, "ex", "key.1", False) != first
    assert c.basic_publish_frame(4, "ex", "key.1", True)[1:3] == b"\x00\x04"
    for i in range(3 * c._PUBLISH_FRAMES_MAX):
        c.basic_publish_frame(1, "", f"q{i}", False)
    assert len(c._PUBLISH_FRAMES) <= c._PUBLISH_FRAMES_MAX
    assert c.basic_publish_frame(3, "ex", "key.1", True) == first
    with pytest.raises(ValueError):
        c.basic_publish_frame(1, "", "k" * 256, False)
