"""
Declaring a connection's topology again on a fresh connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from txmsg.errors import ChannelError, NotFound

#: passes at most over the topology when the broker answers 404 to part of it
REPLAYS = 3


@inlineCallbacks
def replay(
    topology: list[Any], names: dict[Any, str], declare: Callable[[Any], Deferred[Any]], log: Logger
) -> Any:
    """
    Declare each item of C{topology} with C{declare}.  A declaration the
    broker refuses is logged and skipped, except a 404: the broker may remove
    an auto-delete exchange or queue declared a moment earlier in this pass,
    when the lost connection's exclusive queues (its last bindings) go after
    the new connection is up.  Then the topology is declared once more (at
    most L{REPLAYS} passes), but for the server-named queues already in
    C{names}: they are this connection's own.
    """
    items = topology
    for attempt in range(1, REPLAYS + 1):
        missing: list[tuple[Any, ChannelError]] = []
        for item in items:
            try:
                yield declare(item)
            except NotFound as e:
                missing.append((item, e))
            except ChannelError as e:
                log.error("replaying {item} failed: {error}", item=item, error=e)
        if not missing:
            return
        if attempt == REPLAYS:
            for item, error in missing:
                log.error("replaying {item} failed: {error}", item=item, error=error)
            return
        log.info(
            "replaying {item} failed ({error}): declaring the topology again",
            item=missing[0][0],
            error=missing[0][1],
        )
        items = [i for i in topology if not (getattr(i, "server_named", False) and i in names)]
