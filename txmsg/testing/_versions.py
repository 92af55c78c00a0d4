"""
What the in-memory broker does differently for each RabbitMQ version it
imitates: the limits and texts of RabbitMQ 3.x and 4.x, in one place.
"""

from __future__ import annotations

#: RabbitMQ 4's answer to a transient non-exclusive queue where that deprecated
#: feature is denied (as upstream 4.3 ships), word for word: a connection error
TRANSIENT_QUEUE_REFUSED = (
    "INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated.\n"
    "Its use is not permitted per the configuration (overriding the default, which is permitted):\n"
    '    "deprecated_features.permit.transient_nonexcl_queues = false"\n'
    "Its use will not be permit..."
)
#: the default max_message_size: 16 MiB since RabbitMQ 4.0, 128 MiB before
MAX_MESSAGE_SIZE = {3: 128 << 20, 4: 16 << 20}
#: a quorum queue's delivery limit when the queue sets none: 20 since RabbitMQ 4.0
DEFAULT_DELIVERY_LIMIT = 20


def parse_version(version: str) -> tuple[int, int]:
    """
    C{"4.3"} -> C{(4, 3)}; only RabbitMQ 3.x and 4.x are known.
    """
    try:
        major, minor = (int(n) for n in version.split(".")[:2])
    except ValueError:
        raise ValueError(f"a RabbitMQ version such as '4.3' or '3.10', not {version!r}") from None
    if major not in MAX_MESSAGE_SIZE:
        raise ValueError(f"txmsg.testing imitates RabbitMQ 3.x and 4.x, not {version!r}")
    return major, minor
