"""
What a handler's call comes to: the one place a user's handler is called
and what it gives is made an outcome, and what a handler may raise to say
what becomes of its message (L{Requeue}, L{Retry}, L{Reject}).

A handler may return a value, a Deferred or a coroutine (any awaitable), or
raise; L{run_handler} turns each into what its caller acts on, without paying
for Deferred machinery when the handler was synchronous.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

from txmsg.errors import TxmsgError
from txmsg.message import Message


def run_handler(handler: Callable[[Any], Any], message: Any) -> Any:
    """
    Call C{handler(message)}; return a C{Failure} if it raised (or returned
    one), a C{Deferred} of its outcome if it returned a Deferred or an
    awaitable, else the value it returned: a synchronous handler is done now.
    """
    try:
        result = handler(message)
    except Exception:  # noqa: BLE001 - the handler's failure is the outcome
        return Failure()
    if result is None:
        return None  # the usual synchronous handler: nothing more to ask
    if isinstance(result, Deferred):
        return result
    if inspect.isawaitable(result):
        return ensureDeferred(cast(Any, result))
    return result


class Requeue(TxmsgError):
    """
    Raise from a handler to put the message back on its queue for another
    consumer ("not now").  It goes back with C{basic.nack}, which RabbitMQ 4
    does not count as a failed delivery: on a quorum queue it uses up neither
    the broker's delivery limit nor the consumer's C{max_redeliveries}.
    Elsewhere the cap still applies: RabbitMQ 3's quorum queues count every
    return, and on other queues a L{Requeue} of a message the broker flags as
    redelivered dead-letters it.
    """


class Reject(TxmsgError):
    """
    Raise from a handler to reject the message without requeue: "this will
    never work, dead-letter it now" (with a retry policy, to its dead
    letters with the reason, at once).
    """


class Retry(TxmsgError):
    """
    Raise from a handler to try the message again later, after the retry
    policy's next delay (it counts as a failed attempt).  Without a retry
    policy it is a failure like any other: the message is rejected.
    """


def delivery_count(message: Message) -> int | None:
    """
    How many times the broker delivered this message before and it failed,
    where the queue counts it (RabbitMQ quorum queues' C{x-delivery-count});
    else C{None}.

    RabbitMQ 4 counts in C{x-delivery-count} the deliveries that failed (a
    reject, or a consumer lost with the message unacked) and in
    C{x-acquired-count} every delivery, a C{nack} with requeue included; a
    message that was only ever given back with a nack carries only the
    latter, so its failed deliveries are 0.  RabbitMQ 3 counts every return
    in C{x-delivery-count}.
    """
    headers = message.headers
    if headers:
        count = headers.get("x-delivery-count")
        if isinstance(count, int) and not isinstance(count, bool):
            return count
        if "x-acquired-count" in headers:
            return 0
    return None
