"""
The one place txmsg relies on private parts of Twisted's C{ClientService}.

C{ClientService} hands its C{prepareConnection} a proxy whose C{_protocol} is
the real protocol, and raises automat's C{NoTransition} from
C{connectionLost} for a connection lost while it is still connecting or after
it stopped.  L{LostGuard} reads the one and swallows the other;
C{tests/unit/test_guard.py} fails loudly if the installed Twisted changes
either, instead of letting a traceback or a slower path through.
"""

from __future__ import annotations

from typing import Any

from automat import NoTransition
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.python.failure import Failure
from zope.interface import implementer


def real_protocol(proxy: Any) -> Any:
    """
    The protocol behind C{ClientService}'s proxy (the proxy itself if it is none).
    """
    return getattr(proxy, "_protocol", proxy)


@implementer(IProtocol)
class LostGuard:
    """
    Wraps ClientService's protocol proxy.  ClientService has no state transition
    for a connection lost while it is still connecting or after it stopped (it
    raises automat's C{NoTransition} from C{connectionLost}, logged as an
    unhandled error).  txmsg orders its own work so the state is consistent,
    and this guard keeps that case from surfacing as a traceback.
    """

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def makeConnection(self, transport: Any) -> None:
        self._wrapped.makeConnection(transport)
        # the hot path skips the proxies: bytes go straight to the AMQP protocol
        self.dataReceived = real_protocol(self._wrapped).dataReceived  # type: ignore[method-assign]

    def connectionMade(self) -> None:  # pragma: no cover - makeConnection calls it
        pass

    def dataReceived(self, data: bytes) -> None:
        self._wrapped.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        try:
            self._wrapped.connectionLost(reason)
        except NoTransition:
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


@implementer(IProtocolFactory)
class GuardedFactory:
    def __init__(self, factory: Any) -> None:
        self._factory = factory

    def buildProtocol(self, addr: Any) -> Any:
        built = self._factory.buildProtocol(addr)
        return None if built is None else LostGuard(built)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory, name)
