"""
Declaring a pattern's topology before its consumers start, on every connection.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure

from txmsg.connection import Connection, Declarable


def declare_topology(connection: Connection, items: list[Declarable]) -> Deferred[Any]:
    """
    Declare C{items} on every connection: when the connection is running, now
    (or once it is ready); else on its first connect, before its ready hooks,
    so that a consumer of a queue declared here never races the declaration.
    """
    if not items:
        return succeed(None)
    if connection.running:
        return cast("Deferred[Any]", connection.declare(*items))
    for item in items:
        if item not in connection.topology:
            connection.topology.append(item)
    return succeed(None)


def start_after_declaring(
    parent: MultiService, connection: Connection, items: list[Declarable], children: Iterable[Any]
) -> Deferred[Any]:
    """
    Declare C{items} (see L{declare_topology}), then start C{children} as
    services of C{parent}.  The Deferred fails if a declaration was refused
    (e.g. L{PreconditionFailed} for a queue declared with other flags); the
    children start anyway, on whatever the broker holds.
    """
    d = declare_topology(connection, items)

    def start(result: Any) -> Any:
        if parent.running:
            for child in children:
                if child.parent is None:
                    child.setServiceParent(parent)
        return result

    return d.addBoth(start)


def all_ready(declared: Deferred[Any], consumers: Iterable[Any]) -> Deferred[Any]:
    """
    Fire once C{declared} fired and every consumer is registered with the
    broker (which happens after the connection declared its topology).
    """
    forked: Deferred[Any] = Deferred()

    def fork(result: Any) -> Any:
        # pass the result on unchanged: others may wait on `declared` too
        if isinstance(result, Failure):
            forked.errback(result)
        else:
            forked.callback(result)
        return result

    declared.addBoth(fork)
    consumers = list(consumers)

    def consumers_ready(_: object) -> Deferred[Any]:
        return gatherResults([c.when_ready() for c in consumers], consumeErrors=True)

    return forked.addCallback(consumers_ready)


class DeclaringService(MultiService):
    """
    A service that declares its C{topology} (now and on every reconnect) and
    then starts its C{consumers} as children.  C{declared} fails if the broker
    refused a declaration; L{when_ready} fires once everything is declared,
    bound and consuming.
    """

    def __init__(
        self, connection: Connection, topology: Iterable[Declarable] = (), consumers: Iterable[Any] = ()
    ) -> None:
        super().__init__()
        self.connection = connection
        self.topology: list[Declarable] = list(topology)
        self.consumers: list[Any] = list(consumers)
        self.declared: Deferred[Any] = succeed(None)

    def startService(self) -> None:
        super().startService()
        self.declared = start_after_declaring(self, self.connection, self.topology, self.consumers)

    def when_ready(self) -> Deferred[Any]:
        """
        Fire with this service once the topology is declared and bound and
        every consumer is registered with the broker (start the service first).
        """
        return all_ready(self.declared, self.consumers).addCallback(lambda _: self)

    def wait_ready(self) -> Deferred[Any]:
        """
        Deprecated spelling of L{when_ready}.
        """
        warnings.warn(
            f"{type(self).__name__}.wait_ready() is deprecated: use when_ready()",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.when_ready()
