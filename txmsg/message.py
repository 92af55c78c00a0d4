"""
The message model: one L{Message} type for what is published and what is delivered.

A message is its body (bytes), the fourteen basic properties under Pythonic names,
and, for a delivered message, the delivery facts.  Its L{Message.payload} is the
body decoded by content type: JSON for C{application/json} (the default encoding
for dicts and lists), text for C{text/*}, raw bytes otherwise.  Pickle is never
decoded unless the consumer opted in.
"""

from __future__ import annotations

import datetime as _dt
import json
import pickle
import sys
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from txmsg._properties import PROPERTY_NAMES, timestamp_to_datetime
from txmsg.errors import TxmsgError, UndecodableMessage

JSON = "application/json"
TEXT = "text/plain"
BINARY = "application/octet-stream"
PICKLE_TYPES = frozenset({"application/python-pickle", "application/x-python-pickle"})

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


if TYPE_CHECKING or sys.version_info >= (3, 12):
    from functools import cached_property
else:

    class cached_property:
        """
        C{functools.cached_property} without the lock Python 3.11's takes on
        every first access (3.12 dropped it): a delivered message's payload
        is read once per message.
        """

        def __init__(self, func: Any) -> None:
            self.func = func
            self.name = func.__name__
            self.__doc__ = func.__doc__

        def __set_name__(self, owner: type, name: str) -> None:
            self.name = name

        def __get__(self, instance: Any, owner: type | None = None) -> Any:
            if instance is None:
                return self
            value = instance.__dict__[self.name] = self.func(instance)
            return value


def media_type(content_type: str | None) -> tuple[str, str | None]:
    """
    Split C{"text/plain; charset=latin-1"} into its media type and charset.
    """
    if not content_type:
        return "", None
    main, _, rest = content_type.partition(";")
    charset = None
    for param in rest.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset" and value:
            charset = value.strip().strip('"')
    return main.strip().lower(), charset


def is_json(media: str) -> bool:
    return media == JSON or (media.startswith("application/") and media.endswith("+json"))


def encode_payload(payload: Any, content_type: str | None = None) -> tuple[bytes, str | None]:
    """
    Encode C{payload} as a body; return the body and the content type to send.

    Bytes go as they are; C{str} as UTF-8 text; dicts, lists, numbers, booleans
    and None as JSON.  An explicit C{content_type} chooses the encoding: a JSON
    type encodes JSON, C{text/*} encodes text in its charset, and a pickle type
    pickles (only when asked for by name).
    """
    media, charset = media_type(content_type)
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload), content_type
    if media:
        if is_json(media):
            return json.dumps(payload, separators=(",", ":")).encode("utf-8"), content_type
        if media.startswith("text/"):
            if not isinstance(payload, str):
                raise TypeError(f"a {media} payload must be str, not {type(payload).__name__}")
            return payload.encode(charset or "utf-8"), content_type
        if media in PICKLE_TYPES:
            return pickle.dumps(payload), content_type
        raise TypeError(f"cannot encode a {type(payload).__name__} as {content_type}: pass bytes")
    if isinstance(payload, str):
        return payload.encode("utf-8"), TEXT
    if payload is None or isinstance(payload, (dict, list, tuple, int, float, bool)):
        try:
            return json.dumps(payload, separators=(",", ":")).encode("utf-8"), JSON
        except (TypeError, ValueError) as e:
            raise TypeError(f"payload is not JSON-serialisable: {e}") from None
    raise TypeError(f"cannot encode a {type(payload).__name__} payload: pass bytes, str, or JSON-able data")


def encode_message(
    payload: Any,
    *,
    content_type: str | None = None,
    persistent: bool | None = None,
    expiration: int | float | str | None = None,
    timestamp: _dt.datetime | int | float | None = None,
    **properties: Any,
) -> tuple[bytes, dict[str, Any]]:
    """
    Encode a payload and properties straight to a body and wire properties (the
    form L{Message.properties} returns), without building a L{Message}: the
    producer's fast path.  Arguments as for L{Message.create}.
    """
    body, ctype = encode_payload(payload, content_type)
    props: dict[str, Any] = {}
    if properties:
        unknown = properties.keys() - _PROPERTY_FIELDS
        if unknown:
            raise TypeError(f"unknown message properties: {', '.join(sorted(unknown))}")
        for name, value in properties.items():
            if value is not None:
                props[name] = dict(value) if name == "headers" else value
    if ctype is not None:
        props["content_type"] = ctype
    if persistent is not None:
        props["delivery_mode"] = 2 if persistent else 1
    if expiration is not None:
        if isinstance(expiration, (int, float)):
            if expiration < 0:
                raise ValueError("expiration must not be negative")
            expiration = str(int(expiration))
        props["expiration"] = expiration
    if timestamp is not None:
        if isinstance(timestamp, _dt.datetime):
            if timestamp.tzinfo is None:
                timestamp = timestamp.replace(tzinfo=_dt.timezone.utc)
            props["timestamp"] = int((timestamp - _EPOCH).total_seconds())
        else:
            props["timestamp"] = int(timestamp)
    return body, props


@dataclass(frozen=True, eq=False)
class Message:
    """
    A message, as published or as delivered.

    Create one to publish with L{Message.create}; delivered messages carry the
    delivery facts (C{exchange}, C{routing_key}, C{redelivered}, C{delivery_tag}).
    """

    body: bytes = b""
    content_type: str | None = None
    content_encoding: str | None = None
    headers: Mapping[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    #: a datetime; a raw int when a peer sent a value datetime cannot hold
    timestamp: _dt.datetime | int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None
    # delivery facts
    exchange: str = ""
    routing_key: str = ""
    redelivered: bool = False
    delivery_tag: int | None = None
    consumer_tag: str | None = None
    allow_pickle: bool = field(default=False, repr=False)
    #: how its handler settles it, given by a consumer in C{"manual"} mode
    settlement: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        payload: Any = b"",
        *,
        content_type: str | None = None,
        persistent: bool | None = None,
        expiration: int | float | str | None = None,
        timestamp: _dt.datetime | int | float | None = None,
        **properties: Any,
    ) -> Message:
        """
        A message to publish, with C{payload} encoded by L{encode_payload}.

        @param persistent: True for delivery mode 2 (stored on disk by durable queues).
        @param expiration: per-message TTL in milliseconds.
        @param properties: any other basic property by its Pythonic name.
        """
        body, props = encode_message(
            payload,
            content_type=content_type,
            persistent=persistent,
            expiration=expiration,
            timestamp=timestamp,
            **properties,
        )
        if "timestamp" in props:
            props["timestamp"] = timestamp_to_datetime(props["timestamp"])
        return cls(body=body, **props)

    @classmethod
    def from_delivery(
        cls,
        body: bytes,
        properties: Mapping[str, Any],
        delivery: Mapping[str, Any],
        *,
        allow_pickle: bool = False,
    ) -> Message:
        """
        A delivered message from the wire: properties under txmsg's names (as the
        codec decodes them) and the delivery method's arguments.
        """
        unknown = properties.keys() - _PROPERTY_FIELDS
        if unknown:
            raise TypeError(f"unknown message properties: {', '.join(sorted(unknown))}")
        # Every delivery makes one: its fields are set in one go, not one
        # frozen-dataclass __setattr__ at a time (the same fields, defaults
        # and values as cls(...) would give).
        state = _DEFAULTS.copy()
        state.update(properties)
        ts = state["timestamp"]
        if ts is not None:
            state["timestamp"] = timestamp_to_datetime(ts)
        state["body"] = body
        state["exchange"] = delivery.get("exchange", "")
        state["routing_key"] = delivery.get("routing_key", "")
        state["redelivered"] = delivery.get("redelivered", False)
        state["delivery_tag"] = delivery.get("delivery_tag")
        state["consumer_tag"] = delivery.get("consumer_tag")
        state["allow_pickle"] = allow_pickle
        message = object.__new__(cls)
        object.__setattr__(message, "__dict__", state)
        return message

    @property
    def persistent(self) -> bool:
        """
        Whether the message is persistent (delivery mode 2).
        """
        return self.delivery_mode == 2

    def properties(self) -> dict[str, Any]:
        """
        The basic properties as the wire codec takes them (absent ones left out).
        """
        out: dict[str, Any] = {}
        for name in _PROPERTY_NAMES:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "timestamp" and isinstance(value, _dt.datetime):
                if value.tzinfo is None:
                    value = value.replace(tzinfo=_dt.timezone.utc)
                value = int((value - _EPOCH).total_seconds())
            elif name == "headers":
                value = dict(value)
            out[name] = value
        return out

    @cached_property
    def payload(self) -> Any:
        """
        The body decoded by content type.

        @raise UndecodableMessage: if the body is not what its content type says,
            or is pickle and this consumer did not opt in.
        """
        if self.content_type is None:
            return self.body
        media, charset = media_type(self.content_type)
        if is_json(media):
            try:
                return json.loads(self.body.decode(charset or "utf-8"))
            except (UnicodeDecodeError, ValueError, LookupError) as e:
                raise UndecodableMessage(f"body is not valid JSON: {e}") from None
        if media.startswith("text/"):
            return self.text
        if media in PICKLE_TYPES:
            if not self.allow_pickle:
                raise UndecodableMessage(
                    "refusing to unpickle a message: this consumer did not opt in to pickle"
                )
            try:
                return pickle.loads(self.body)  # noqa: S301 - the consumer opted in
            except Exception as e:  # noqa: BLE001 - unpickling raises anything
                raise UndecodableMessage(f"body is not a valid pickle: {e}") from None
        return self.body

    @cached_property
    def text(self) -> str:
        """
        The body as text (its charset, else UTF-8).

        @raise UndecodableMessage: if it does not decode.
        """
        _, charset = media_type(self.content_type)
        try:
            return self.body.decode(charset or "utf-8")
        except (UnicodeDecodeError, LookupError) as e:
            raise UndecodableMessage(f"body is not valid {charset or 'utf-8'} text: {e}") from None

    def ack(self) -> None:
        """
        Ack this message (a consumer in C{acks="manual"} mode; see L{txmsg.consumer.Consumer}).

        @raise txmsg.consumer.AlreadySettled: it was settled before.
        @raise txmsg.consumer.StaleDelivery: its channel closed (the broker requeued it).
        """
        self._settlement().ack()

    def nack(self, requeue: bool = True) -> None:
        """
        Give this message back (C{requeue}), or dead-letter it (manual mode).
        """
        self._settlement().nack(requeue)

    def reject(self, requeue: bool = False) -> None:
        """
        Reject this message: dead-letter it, or with C{requeue} give it back (manual mode).
        """
        self._settlement().reject(requeue)

    def _settlement(self) -> Any:
        if self.settlement is None:
            raise TxmsgError(
                "this message is settled by its consumer: ack(), nack() and reject() need "
                "Consumer(..., acks='manual')"
            )
        return self.settlement

    def replace(self, **changes: Any) -> Message:
        """
        A copy with some fields changed.
        """
        return replace(self, **changes)

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 64 else self.body[:61] + b"..."
        props = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in _PROPERTY_NAMES if getattr(self, name) is not None
        )
        where = f" from {self.exchange!r}/{self.routing_key!r}" if self.delivery_tag is not None else ""
        return f"<Message{where} body={body!r}{', ' + props if props else ''}>"


_PROPERTY_NAMES = PROPERTY_NAMES
_PROPERTY_FIELDS = frozenset(_PROPERTY_NAMES)
assert _PROPERTY_FIELDS <= {f.name for f in fields(Message)}
#: every field's default: what L{Message.from_delivery} starts from
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Message)}
assert MISSING not in _DEFAULTS.values()
