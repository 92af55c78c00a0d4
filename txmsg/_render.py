"""
Messages shown to people: one readable line per message (the C{txmsg listen}
command and the twistd roles' default handler print the same line) and one
JSON object per message (C{txmsg listen --json}).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from txmsg.errors import UndecodableMessage
from txmsg.message import Message


def jsonable(value: Any) -> Any:
    """
    C{value} made serialisable as JSON: bytes become text when they are
    UTF-8, else C{{"base64": "..."}}; datetimes become ISO 8601 text;
    decimals become text; NaN and infinities become text; tables and arrays
    are converted item by item.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def _payload(message: Message) -> Any:
    """
    The message's payload; its raw body when it does not decode.
    """
    try:
        return message.payload
    except UndecodableMessage:
        return message.body


def message_to_json(message: Message) -> dict[str, Any]:
    """
    A delivered message as a JSON-serialisable dict: C{exchange},
    C{routing_key}, C{redelivered}, C{properties} (those set, headers
    included, by txmsg's names) and C{payload} (decoded by content type; see
    L{jsonable} for bytes).
    """
    properties = {name: jsonable(value) for name, value in message.properties().items()}
    if isinstance(message.timestamp, _dt.datetime):
        properties["timestamp"] = message.timestamp.isoformat()
    return {
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "redelivered": message.redelivered,
        "properties": properties,
        "payload": jsonable(_payload(message)),
    }


def one_line(text: str) -> str:
    """
    C{text} with line breaks and other unprintable characters escaped.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def readable_line(message: Message) -> str:
    """
    A delivered message as one readable line: C{exchange/routing_key: payload},
    text as it is, JSON compact, bytes as text with escapes.
    """
    payload = _payload(message)
    if isinstance(payload, str):
        shown = payload
    elif isinstance(payload, bytes):
        shown = payload.decode("utf-8", "backslashreplace")
    else:
        shown = json.dumps(jsonable(payload), ensure_ascii=False)
    return f"{message.exchange or '(default)'}/{message.routing_key}: {one_line(shown)}"
