"""
A fault-injecting TCP proxy written with Twisted, for the fault-injection tests.

    proxy = FaultProxy(reactor, broker.HOST, broker.PORT)   # tests.broker
    port = await proxy.start()          # clients connect to 127.0.0.1:port
    proxy.cut_all()                     # abort every proxied connection, both legs
    proxy.refuse = True                 # close new connections at once
    proxy.cut_after(10_000)             # cut each connection after it carried N more bytes
    proxy.delay = 0.2                   # forward bytes this much later
    proxy.blackhole = True              # keep sockets open, drop every byte (no EOF either side)

Each leg pauses the other when its write buffer fills (Twisted's
producer/consumer), so a slow side slows the proxy rather than growing it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.python.failure import Failure


class _Leg(protocol.Protocol):
    """
    One side of a proxied connection; C{peer} is the other side.
    """

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.peer: _Leg | None = None
        self.pending: list[bytes] = []
        self.connected_ = False

    def connectionMade(self) -> None:
        self.connected_ = True

    def dataReceived(self, data: bytes) -> None:
        proxy = self.proxy
        if proxy.blackhole:
            return
        proxy.count(self, len(data))
        if self.peer is None or not self.peer.connected_:
            self.pending.append(data)
            return
        if proxy.delay > 0:
            proxy.reactor.callLater(proxy.delay, self.peer.write, data)
        else:
            self.peer.write(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None and self.connected_:
            self.transport.write(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.connected_ = False
        self.proxy.legs.discard(self)
        peer = self.peer
        if peer is not None and peer.connected_ and not self.proxy.blackhole:
            peer.transport.loseConnection()

    def abort(self) -> None:
        if self.transport is not None and self.connected_:
            self.transport.abortConnection()


class _ServerLeg(_Leg):
    """
    The client's side: on connect, dial the target and pipe the two together.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        proxy = self.proxy
        if proxy.refuse:
            proxy.refused += 1
            self.transport.abortConnection()
            return
        proxy.legs.add(self)
        proxy.accepted += 1
        self.transport.pauseProducing()
        upstream = _Leg(proxy)
        upstream.peer = self
        self.peer = upstream
        endpoint = TCP4ClientEndpoint(proxy.reactor, proxy.host, proxy.port)
        d = endpoint.connect(_OneProtocol(upstream))

        def connected(leg: _Leg) -> None:
            proxy.legs.add(leg)
            # each side's write buffer throttles the other side's reads
            leg.transport.registerProducer(self.transport, True)
            self.transport.registerProducer(leg.transport, True)
            for chunk in self.pending:
                leg.write(chunk)
            self.pending.clear()
            self.transport.resumeProducing()

        def failed(_: Failure) -> None:
            self.transport.abortConnection()

        d.addCallbacks(connected, failed)


class _OneProtocol(protocol.Factory):
    def __init__(self, leg: _Leg) -> None:
        self.leg = leg

    def buildProtocol(self, addr: Any) -> _Leg:
        return self.leg


class FaultProxy(protocol.Factory):
    def __init__(self, reactor: Any, host: str, port: int) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.legs: set[_Leg] = set()
        self.refuse = False
        self.blackhole = False
        self.delay = 0.0
        self.accepted = 0
        self.refused = 0
        self.cuts = 0
        self._cut_after: int | None = None
        self._carried: dict[_Leg, int] = {}
        self._listening: Any = None

    def buildProtocol(self, addr: Any) -> _ServerLeg:
        return _ServerLeg(self)

    def start(self) -> Deferred[int]:
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")

        def listening(port: Any) -> int:
            self._listening = port
            return int(port.getHost().port)

        return endpoint.listen(self).addCallback(listening)

    def stop(self) -> Any:
        self.cut_all()
        if self._listening is not None:
            return self._listening.stopListening()
        return None

    @property
    def url_port(self) -> int:
        return int(self._listening.getHost().port)

    def cut_all(self) -> int:
        """
        Abort every proxied connection, both legs, as a network failure would.
        """
        legs = list(self.legs)
        for leg in legs:
            leg.abort()
            if leg.peer is not None:
                leg.peer.abort()
        if legs:
            self.cuts += 1
        return len(legs)

    def cut_after(self, nbytes: int | None) -> None:
        """
        Cut each connection once it has carried C{nbytes} more bytes (None: never).
        """
        self._cut_after = nbytes
        self._carried.clear()

    def count(self, leg: _Leg, n: int) -> None:
        if self._cut_after is None:
            return
        key = leg if isinstance(leg, _ServerLeg) else (leg.peer or leg)
        carried = self._carried.get(key, 0) + n
        self._carried[key] = carried
        if carried >= self._cut_after:
            self._carried.pop(key, None)
            leg.abort()
            if leg.peer is not None:
                leg.peer.abort()
            self.cuts += 1
