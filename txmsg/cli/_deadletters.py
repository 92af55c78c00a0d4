"""
Reading a dead-letter queue without consuming it for good, and what a dead
letter says of itself: why it died, where it came from, when.

The facts come from txmsg's own failure headers (L{txmsg.retry}) where a
retry policy wrote them, else from RabbitMQ's C{x-death} and
C{x-first-death-*} headers, else from the delivery itself.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from txmsg.connection import Channel
from txmsg.message import Message
from txmsg.retry import (
    ATTEMPTS_HEADER,
    EXCHANGE_HEADER,
    FAILURE_HEADER,
    FAILURE_TYPE_HEADER,
    FIRST_FAILURE_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    ROUTING_KEY_HEADER,
)


@dataclass(frozen=True)
class Death:
    """
    What a dead letter says of itself.

    @ivar reason: why it died: the exception type txmsg recorded, else the
        broker's reason (C{rejected}, C{expired}, C{maxlen}, C{delivery_limit}).
    @ivar detail: the failure's text and txmsg's verdict, if known.
    @ivar queue: the queue it died in (before the dead-letter queue).
    @ivar exchange: where it was first published: exchange and routing key
        (C{None}: unknown, so it cannot be replayed to where it first went).
    @ivar attempts: the attempts txmsg counted, if it did.
    @ivar when: when it first failed or died, if known.
    """

    reason: str
    detail: str
    queue: str | None
    exchange: str | None
    routing_key: str | None
    attempts: int | None
    when: _dt.datetime | None


def _first_death(headers: dict[str, Any]) -> dict[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[-1], dict):
        return deaths[-1]  # the oldest record is last
    return {}


def death_of(message: Message) -> Death:
    """
    The L{Death} of a dead letter, from txmsg's headers or the broker's.
    """
    headers = dict(message.headers or {})
    first = _first_death(headers)
    keys = first.get("routing-keys")
    broker_key = keys[0] if isinstance(keys, list) and keys else None
    if FAILURE_TYPE_HEADER in headers:
        verdict = headers.get(REASON_HEADER)
        text = str(headers.get(FAILURE_HEADER, ""))
        detail = f"{text} ({verdict})" if verdict else text
        when = headers.get(FIRST_FAILURE_HEADER)
        attempts = headers.get(ATTEMPTS_HEADER)
        return Death(
            reason=str(headers[FAILURE_TYPE_HEADER]),
            detail=detail,
            queue=_text(headers.get(QUEUE_HEADER)),
            exchange=_text(headers.get(EXCHANGE_HEADER)),
            routing_key=_text(headers.get(ROUTING_KEY_HEADER)),
            attempts=attempts if isinstance(attempts, int) else None,
            when=when if isinstance(when, _dt.datetime) else None,
        )
    reason = _text(headers.get("x-first-death-reason")) or _text(first.get("reason")) or "unknown"
    exchange = _text(headers.get("x-first-death-exchange"))
    if exchange is None:
        exchange = _text(first.get("exchange"))
    when = first.get("time")
    return Death(
        reason=reason,
        detail="",
        queue=_text(headers.get("x-first-death-queue")) or _text(first.get("queue")),
        exchange=exchange,
        routing_key=_text(broker_key),
        attempts=None,
        when=when if isinstance(when, _dt.datetime) else _stamp(message.timestamp),
    )


def _stamp(value: Any) -> _dt.datetime | None:
    return value if isinstance(value, _dt.datetime) else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


async def take(channel: Channel, queue: str) -> tuple[int, Message] | None:
    """
    The next message of C{queue} (C{basic.get}, unacked: it goes back to the
    queue, in its place, when the channel closes unless it is acked), with
    its delivery tag; C{None} once the queue has no more for this channel.
    """
    got = await channel.basic_get(queue)
    if isinstance(got, dict):  # basic.get-empty
        return None
    args, props, body = got
    return args["delivery_tag"], Message.from_delivery(body, props, args)
