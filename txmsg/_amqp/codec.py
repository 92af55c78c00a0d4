"""
AMQP 0-9-1 wire codec: field values and tables, methods, content headers, frames.

Method layouts come from the spec (compiled in L{txmsg._amqp.methods}); the
hot methods (publish, ack, deliver) are encoded here by hand.  Bodies are bytes
throughout.

Field tables support every type RabbitMQ uses (C{t b B s u I i l f d D S A T F V x}).
"""

from __future__ import annotations

import datetime as _dt
import struct
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from txmsg._amqp import spec as _spec
from txmsg._properties import EPOCH, PROPERTY_NAMES, timestamp_to_datetime
from txmsg.errors import ProtocolError

#: what the decoders read: a frame payload, or the receive buffer itself
Buf = bytes | bytearray

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"
FRAME_HEADER_SIZE = 7
#: bytes a frame adds around its payload: type, channel, size, frame-end
FRAME_OVERHEAD = 8
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

_B = struct.Struct("!B")
_b = struct.Struct("!b")
_H = struct.Struct("!H")
_h = struct.Struct("!h")
_L = struct.Struct("!L")
_l = struct.Struct("!l")
_Q = struct.Struct("!Q")
_q = struct.Struct("!q")
_f = struct.Struct("!f")
_d = struct.Struct("!d")
_HH = struct.Struct("!HH")
_BHL = struct.Struct("!BHL")
_HHQ = struct.Struct("!HHQ")
_FRAME_HEAD = struct.Struct("!BHL")


# --------------------------------------------------------------------------
# field values and tables


def _decode_str(raw: Buf) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(raw)


def decode_value(buf: Buf, off: int) -> tuple[Any, int]:
    """
    Decode one typed field value at C{off}; return it and the offset after it.
    """
    kind = buf[off]
    off += 1
    if kind == 0x53:  # S long string
        (n,) = _L.unpack_from(buf, off)
        off += 4
        return _decode_str(buf[off : off + n]), off + n
    if kind == 0x49:  # I signed 32
        return _l.unpack_from(buf, off)[0], off + 4
    if kind == 0x74:  # t boolean
        return buf[off] != 0, off + 1
    if kind == 0x46:  # F table
        return decode_table(buf, off)
    if kind == 0x6C:  # l signed 64
        return _q.unpack_from(buf, off)[0], off + 8
    if kind == 0x41:  # A array
        (n,) = _L.unpack_from(buf, off)
        off += 4
        end = off + n
        items = []
        while off < end:
            v, off = decode_value(buf, off)
            items.append(v)
        if off != end:
            raise ProtocolError("field array overruns its declared size")
        return items, off
    if kind == 0x54:  # T timestamp, seconds
        (secs,) = _Q.unpack_from(buf, off)
        return timestamp_to_datetime(secs), off + 8
    if kind == 0x64:  # d double
        return _d.unpack_from(buf, off)[0], off + 8
    if kind == 0x66:  # f float
        return _f.unpack_from(buf, off)[0], off + 4
    if kind == 0x62:  # b signed 8
        return _b.unpack_from(buf, off)[0], off + 1
    if kind == 0x42:  # B unsigned 8
        return buf[off], off + 1
    if kind == 0x73 or kind == 0x55:  # s (RabbitMQ) or U (pika): signed 16
        return _h.unpack_from(buf, off)[0], off + 2
    if kind == 0x4C:  # L: signed 64, as RabbitMQ reads it
        return _q.unpack_from(buf, off)[0], off + 8
    if kind == 0x75:  # u unsigned 16
        return _H.unpack_from(buf, off)[0], off + 2
    if kind == 0x69:  # i unsigned 32
        return _L.unpack_from(buf, off)[0], off + 4
    if kind == 0x44:  # D decimal: scale octet, signed 32 value
        scale = buf[off]
        (value,) = _l.unpack_from(buf, off + 1)
        return Decimal(value).scaleb(-scale), off + 5
    if kind == 0x56:  # V void
        return None, off
    if kind == 0x78:  # x byte array
        (n,) = _L.unpack_from(buf, off)
        off += 4
        return bytes(buf[off : off + n]), off + n
    raise ProtocolError(f"unknown field value type {chr(kind)!r}")


def decode_table(buf: Buf, off: int) -> tuple[dict[str, Any], int]:
    """
    Decode a field table (its 32-bit size first) at C{off}.
    """
    (n,) = _L.unpack_from(buf, off)
    off += 4
    end = off + n
    if end > len(buf):
        raise ProtocolError("field table overruns its frame")
    result: dict[str, Any] = {}
    while off < end:
        klen = buf[off]
        key = buf[off + 1 : off + 1 + klen].decode("utf-8", "replace")
        off += 1 + klen
        result[key], off = decode_value(buf, off)
    if off != end:
        raise ProtocolError("field table overruns its declared size")
    return result, off


def _encode_decimal(value: Decimal, out: list[bytes]) -> None:
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):
        raise ValueError(f"cannot encode {value!r} in a field table")
    scale = max(0, -exponent)
    unscaled = int(value.scaleb(scale))
    if scale > 255 or not -(2**31) <= unscaled < 2**31:
        raise ValueError(f"decimal {value} does not fit AMQP's decimal (scale octet, 32-bit value)")
    out.append(b"D" + _B.pack(scale) + _l.pack(unscaled))


def encode_value(value: Any, out: list[bytes]) -> None:
    """
    Append the typed encoding of C{value} to C{out}.
    """
    if isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(b"S" + _L.pack(len(raw)))
        out.append(raw)
    elif value is True or value is False:
        out.append(b"t\x01" if value else b"t\x00")
    elif isinstance(value, int):
        if -(2**31) <= value < 2**31:
            out.append(b"I" + _l.pack(value))
        elif -(2**63) <= value < 2**63:
            out.append(b"l" + _q.pack(value))
        else:
            raise ValueError(f"integer {value} does not fit a 64-bit field")
    elif isinstance(value, dict):
        out.append(b"F")
        out.append(encode_table(value))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        out.append(b"x" + _L.pack(len(raw)))
        out.append(raw)
    elif isinstance(value, float):
        out.append(b"d" + _d.pack(value))
    elif value is None:
        out.append(b"V")
    elif isinstance(value, (list, tuple)):
        parts: list[bytes] = []
        for item in value:
            encode_value(item, parts)
        raw = b"".join(parts)
        out.append(b"A" + _L.pack(len(raw)))
        out.append(raw)
    elif isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        out.append(b"T" + _Q.pack(int((value - EPOCH).total_seconds())))
    elif isinstance(value, Decimal):
        _encode_decimal(value, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} in a field table")


def encode_table(table: dict[str, Any] | None) -> bytes:
    """
    Encode a field table, its 32-bit size first.
    """
    if not table:
        return b"\x00\x00\x00\x00"
    parts: list[bytes] = []
    for key, value in table.items():
        raw = key.encode("utf-8")
        if len(raw) > 128:
            raise ValueError(f"field table key too long: {key[:40]!r}...")
        parts.append(_B.pack(len(raw)) + raw)
        encode_value(value, parts)
    body = b"".join(parts)
    return _L.pack(len(body)) + body


def encode_shortstr(value: str | bytes) -> bytes:
    if isinstance(value, str):
        raw = value.encode("utf-8")
    elif isinstance(value, bytes):
        raw = value
    else:
        raise TypeError(f"expected a string, got {type(value).__name__} {value!r}")
    if len(raw) > 255:
        raise ValueError(f"short string longer than 255 bytes: {raw[:40]!r}...")
    return _B.pack(len(raw)) + raw


def encode_longstr(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return _L.pack(len(raw)) + raw


# --------------------------------------------------------------------------
# frames


def method_frame(channel: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


# The hot methods, encoded without the generic machinery.
_BASIC_PUBLISH = _HH.pack(60, 40) + b"\x00\x00"
_BASIC_ACK = _HH.pack(60, 80)
_BASIC_DELIVER = (60, 60)


#: basic.publish frames already encoded, by (channel, exchange, routing key,
#: mandatory): a publisher sends to a few destinations over and over
_PUBLISH_FRAMES: dict[tuple[int, str, str, bool], bytes] = {}
_PUBLISH_FRAMES_MAX = 1024


def basic_publish_frame(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    key = (channel, exchange, routing_key, mandatory)
    frame = _PUBLISH_FRAMES.get(key)
    if frame is not None:
        return frame
    payload = b"".join(
        (
            _BASIC_PUBLISH,
            encode_shortstr(exchange),
            encode_shortstr(routing_key),
            b"\x01" if mandatory else b"\x00",
        )
    )
    frame = _FRAME_HEAD.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE
    if len(_PUBLISH_FRAMES) >= _PUBLISH_FRAMES_MAX:
        _PUBLISH_FRAMES.clear()  # many destinations: start again rather than grow
    _PUBLISH_FRAMES[key] = frame
    return frame


def basic_ack_frame(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    return (
        b"\x01"
        + _H.pack(channel)
        + b"\x00\x00\x00\x0d"
        + _BASIC_ACK
        + _Q.pack(delivery_tag)
        + (b"\x01" if multiple else b"\x00")
        + FRAME_END_BYTE
    )


def decode_basic_deliver(buf: Buf, off: int) -> dict[str, Any]:
    """
    Fast path for basic.deliver's arguments.
    """
    n = buf[off]
    consumer_tag = buf[off + 1 : off + 1 + n].decode("utf-8", "surrogateescape")
    off += 1 + n
    (delivery_tag,) = _Q.unpack_from(buf, off)
    redelivered = bool(buf[off + 8] & 1)
    off += 9
    n = buf[off]
    exchange = buf[off + 1 : off + 1 + n].decode("utf-8", "surrogateescape")
    off += 1 + n
    n = buf[off]
    routing_key = buf[off + 1 : off + 1 + n].decode("utf-8", "surrogateescape")
    return {
        "consumer_tag": consumer_tag,
        "delivery_tag": delivery_tag,
        "redelivered": redelivered,
        "exchange": exchange,
        "routing_key": routing_key,
    }


# --------------------------------------------------------------------------
# content headers (basic class properties)

#: the wire types of L{PROPERTY_NAMES}, checked against the spec
_PROPERTY_TYPES: tuple[str, ...] = (
    "shortstr",
    "shortstr",
    "table",
    "octet",
    "octet",
    "shortstr",
    "shortstr",
    "shortstr",
    "shortstr",
    "timestamp",
    "shortstr",
    "shortstr",
    "shortstr",
    "shortstr",
)
_PROPERTY_FLAGS = tuple(1 << (15 - i) for i in range(len(PROPERTY_NAMES)))
_PROPS = tuple(zip(PROPERTY_NAMES, _PROPERTY_TYPES, _PROPERTY_FLAGS, strict=True))
#: name -> (position, type, flag bit), for encoding only the properties given
_PROP_SPECS = {name: (i, kind, flag) for i, (name, kind, flag) in enumerate(_PROPS)}


def check_property_order() -> None:
    fields = _spec.load_spec().classes.byname["basic"].fields
    types = tuple(f.type for f in fields)
    if types != _PROPERTY_TYPES:  # pragma: no cover - guards the spec file
        raise RuntimeError(f"basic properties in the spec changed: {types}")


def encode_properties(props: dict[str, Any]) -> bytes:
    """
    Encode basic properties (txmsg names, wire values; None means absent).
    """
    if not props:
        return b"\x00\x00"
    # a message has a few of the fourteen: visit those, in the spec's order
    present = []
    for name, value in props.items():
        spec = _PROP_SPECS.get(name)
        if spec is not None and value is not None:
            present.append((spec, name, value))
    if len(present) > 1:
        present.sort()  # by position, which is unique: values are never compared
    flags = 0
    out: list[bytes] = []
    for (_, kind, flag), name, value in present:
        flags |= flag
        try:
            if kind == "shortstr":
                out.append(encode_shortstr(value))
            elif kind == "octet":
                out.append(_B.pack(value))
            elif kind == "table":
                out.append(encode_table(value))
            else:
                out.append(_Q.pack(value))
        except (TypeError, ValueError, struct.error) as e:
            raise ValueError(f"message property {name}={value!r} cannot be sent: {e}") from None
    return _H.pack(flags) + b"".join(out)


def content_header_frame(channel: int, body_size: int, props: dict[str, Any]) -> bytes:
    payload = _HHQ.pack(60, 0, body_size) + encode_properties(props)
    return _FRAME_HEAD.pack(FRAME_HEADER, channel, len(payload)) + payload + FRAME_END_BYTE


def decode_content_header(buf: Buf, off: int) -> tuple[int, dict[str, Any]]:
    """
    Decode a content header payload; return the body size and the properties.
    """
    _class_id, _weight, size = _HHQ.unpack_from(buf, off)
    off += 12
    (flags,) = _H.unpack_from(buf, off)
    off += 2
    props: dict[str, Any] = {}
    if not flags:
        return size, props
    more = flags
    while more & 1:  # continuation flag words (the basic class needs none): skip them
        (more,) = _H.unpack_from(buf, off)
        off += 2
    for name, kind, flag in _PROPS:
        if not flags & flag:
            continue
        if kind == "shortstr":
            n = buf[off]
            props[name] = buf[off + 1 : off + 1 + n].decode("utf-8", "surrogateescape")
            off += 1 + n
        elif kind == "octet":
            props[name] = buf[off]
            off += 1
        elif kind == "table":
            props[name], off = decode_table(buf, off)
        else:
            props[name] = _Q.unpack_from(buf, off)[0]
            off += 8
    return size, props


def body_frames(channel: int, body: bytes, frame_max: int) -> Iterable[bytes | memoryview]:
    """
    Split C{body} into body frames no larger than C{frame_max} bytes each.
    """
    chunk = frame_max - FRAME_OVERHEAD
    view = memoryview(body)  # each frame's payload is a view of the body, not a copy
    for start in range(0, len(body), chunk):
        piece = view[start : start + chunk]
        yield _FRAME_HEAD.pack(FRAME_BODY, channel, len(piece))
        yield piece
        yield FRAME_END_BYTE


def publish_frames(
    channel: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    props: dict[str, Any],
    body: bytes,
    frame_max: int,
) -> bytes | list[bytes | memoryview]:
    """
    basic.publish with its content: one buffer when the body fits one frame
    (one transport write), a list of frames otherwise (no copy of a big body).
    """
    method = basic_publish_frame(channel, exchange, routing_key, mandatory)
    header = _HHQ.pack(60, 0, len(body)) + encode_properties(props)
    if len(header) + FRAME_OVERHEAD > frame_max:
        raise ValueError(
            f"message properties take {len(header)} bytes, more than one frame holds "
            f"(frame_max {frame_max}): send less in the headers"
        )
    parts: list[bytes | memoryview] = [
        method,
        _FRAME_HEAD.pack(FRAME_HEADER, channel, len(header)),
        header,
        FRAME_END_BYTE,
    ]
    if len(body) <= frame_max - FRAME_OVERHEAD:
        if body:
            parts += (_FRAME_HEAD.pack(FRAME_BODY, channel, len(body)), body, FRAME_END_BYTE)
        return b"".join(parts)
    parts.extend(body_frames(channel, body, frame_max))
    return parts


def content_frames(
    channel: int, props: dict[str, Any], body: bytes, frame_max: int
) -> list[bytes | memoryview]:
    """
    The header frame then the body frames of one message, as a list of byte strings.
    """
    parts: list[bytes | memoryview] = [content_header_frame(channel, len(body), props)]
    if body:
        if len(body) <= frame_max - FRAME_OVERHEAD:
            parts.append(_FRAME_HEAD.pack(FRAME_BODY, channel, len(body)))
            parts.append(body)
            parts.append(FRAME_END_BYTE)
        else:
            parts.extend(body_frames(channel, body, frame_max))
    return parts
