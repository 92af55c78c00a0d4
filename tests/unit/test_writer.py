"""
The fence around Twisted's private write path (L{txmsg._amqp.writer}): if
the installed Twisted renames or drops what it relies on, these fail loudly,
instead of big messages silently going the slower, copying way.

They need a real C{tcp.Client} (a loopback socket of the reactor; no broker).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest_twisted
from twisted.internet import protocol, reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol

from txmsg._amqp import writer


class _Sink(protocol.Protocol):
    def __init__(self, got: bytearray, done: Deferred[None], size: int) -> None:
        self.got = got
        self.done = done
        self.size = size

    def dataReceived(self, data: bytes) -> None:
        self.got.extend(data)
        if len(self.got) >= self.size and not self.done.called:
            self.done.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_connected_tcp_client_has_every_private_name_and_takes_the_direct_path() -> None:
    """
    A connected C{tcp.Client} has each of L{writer.PRIVATE_NAMES}, counts as
    idle, and L{writer.drain} hands a big body to its socket through
    C{writeSomeData} (not the buffered C{writeSequence}), whole and in order.
    """
    size = 4 << 20
    body = bytes(range(256)) * (size // 256)
    got = bytearray()
    done: Deferred[None] = Deferred()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(lambda: _Sink(got, done, size))
    )
    client = protocol.Protocol()
    try:
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        transport: Any = client.transport
        assert type(transport) is tcp.Client
        missing = [name for name in writer.PRIVATE_NAMES if not hasattr(transport, name)]
        assert not missing, f"Twisted {tcp.__name__} lost {missing}: txmsg's direct write path is gone"
        assert writer.idle_tcp(transport), "an idle plain TCP client no longer counts as idle"
        direct: list[int] = []
        real = transport.writeSomeData

        def counting(data: Any) -> Any:
            n = real(data)
            direct.append(n if isinstance(n, int) else 0)
            return n

        transport.writeSomeData = counting
        pending: deque[bytes | memoryview] = deque(
            [memoryview(body)[i : i + 131072] for i in range(0, size, 131072)]
        )
        writer.drain(pending, transport, lambda: True)
        assert direct and sum(direct) > 0, "drain did not write to the socket directly"
        await done
        assert bytes(got) == body
    finally:
        if client.transport is not None:
            client.transport.loseConnection()
        await port.stopListening()


def test_a_transport_that_is_not_plain_tcp_is_not_written_directly() -> None:
    """
    Anything but a C{tcp.Client} (TLS, a test transport) goes through the
    transport's own buffered writes.
    """
    from twisted.internet.testing import StringTransport

    transport = StringTransport()
    assert not writer.idle_tcp(transport)
    pending: deque[bytes | memoryview] = deque([b"a" * 10, memoryview(b"b" * 10)])
    writer.drain(pending, transport, lambda: True)
    assert transport.value() == b"a" * 10 + b"b" * 10 and not pending
