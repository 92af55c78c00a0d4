"""
The fence around the private parts of Twisted's C{ClientService} that
L{txmsg._guard} relies on: if Twisted changes them these fail loudly.
"""

from __future__ import annotations

from typing import Any

import pytest
from automat import NoTransition
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from txmsg._guard import GuardedFactory, LostGuard, real_protocol


class _Endpoint:
    def __init__(self) -> None:
        self.built: list[Any] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        self.built.append(proto)
        return succeed(proto)


def test_client_service_gives_prepare_connection_a_proxy_of_the_real_protocol() -> None:
    """
    C{prepareConnection} gets C{ClientService}'s proxy; L{real_protocol}
    finds the protocol behind it (its private C{_protocol}).
    """
    seen: list[Any] = []

    class P(Protocol):
        pass

    endpoint = _Endpoint()
    service = ClientService(
        endpoint,  # type: ignore[arg-type]
        Factory.forProtocol(P),
        clock=MemoryReactorClock(),
        prepareConnection=lambda proxy: seen.append(proxy),
    )
    service.startService()
    assert seen, "prepareConnection was not called"
    proxy = seen[0]
    assert not isinstance(proxy, P), "ClientService no longer proxies: real_protocol is not needed"
    assert isinstance(real_protocol(proxy), P), "ClientService's proxy no longer has _protocol"
    service.stopService()


def test_a_loss_client_service_cannot_take_is_swallowed_by_the_guard() -> None:
    """
    A connection lost after its service stopped raises automat's
    C{NoTransition} from C{ClientService}'s proxy; L{LostGuard} swallows
    exactly that (and would let anything else through).
    """

    class Wrapped:
        def connectionLost(self, reason: Failure) -> None:
            raise NoTransition("stopped", "_connectionLost")

    LostGuard(Wrapped()).connectionLost(Failure(Exception("gone")))

    class Broken:
        def connectionLost(self, reason: Failure) -> None:
            raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError):
        LostGuard(Broken()).connectionLost(Failure(Exception("gone")))


def test_the_guarded_factory_wraps_what_it_builds() -> None:
    """
    Every protocol the factory builds talks to the transport through the guard.
    """
    built = GuardedFactory(Factory.forProtocol(Protocol)).buildProtocol(None)
    assert isinstance(built, LostGuard)
