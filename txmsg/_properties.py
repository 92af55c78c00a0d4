"""
The basic class's message properties as txmsg names them, and AMQP
timestamps: shared by the engine (which encodes them) and L{txmsg.message}
(which shows them to users), so that neither imports the other.
"""

from __future__ import annotations

import datetime as _dt

#: txmsg's names for the basic class's properties, in the spec's order (the
#: engine checks the order against C{amqp0-9-1.xml} when it loads)
PROPERTY_NAMES: tuple[str, ...] = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)

#: the AMQP timestamp epoch
EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def timestamp_to_datetime(secs: int) -> _dt.datetime | int:
    """
    An AMQP timestamp (seconds since the epoch) as an aware datetime; a value
    beyond what datetime holds (e.g. one a peer wrote in milliseconds) stays an int.
    """
    try:
        return EPOCH + _dt.timedelta(seconds=secs)
    except (OverflowError, ValueError):
        return secs
