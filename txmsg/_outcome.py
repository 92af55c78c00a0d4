"""
The one place a user's handler is called and what it gives is made an outcome.

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


def run_handler(handler: Callable[[Any], Any], message: Any) -> Any:
    """
    Call C{handler(message)}; return a L{Failure} if it raised (or returned
    one), a L{Deferred} of its outcome if it returned a Deferred or an
    awaitable, else the value it returned: a synchronous handler is done now.
    """
    try:
        result = handler(message)
    except Exception:  # noqa: BLE001 - the handler's failure is the outcome
        return Failure()
    if isinstance(result, Deferred):
        return result
    if inspect.isawaitable(result):
        return ensureDeferred(cast(Any, result))
    return result
