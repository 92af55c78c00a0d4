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
from twisted.internet.task import deferLater

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
    port, transport, direct = await _connected(got, done, size)
    try:
        assert type(transport) is tcp.Client
        missing = [name for name in writer.PRIVATE_NAMES if not hasattr(transport, name)]
        assert not missing, f"Twisted {tcp.__name__} lost {missing}: txmsg's direct write path is gone"
        assert writer.idle_tcp(transport), "an idle plain TCP client no longer counts as idle"
        pending: deque[bytes | memoryview] = deque(
            [memoryview(body)[i : i + 131072] for i in range(0, size, 131072)]
        )
        writer.drain(pending, transport, lambda: True)
        assert direct and sum(direct) > 0, "drain did not write to the socket directly"
        await done
        assert bytes(got) == body
    finally:
        transport.loseConnection()
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


async def _connected(got: bytearray, done: Deferred[None], size: int) -> tuple[Any, Any, list[int]]:
    """
    A loopback C{tcp.Client} to a sink, and the list of what each of its
    direct socket writes (C{writeSomeData}) took.
    """
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(lambda: _Sink(got, done, size))
    )
    client = protocol.Protocol()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
    transport: Any = client.transport
    direct: list[int] = []
    real = transport.writeSomeData

    def counting(data: Any) -> Any:
        n = real(data)
        direct.append(n if isinstance(n, int) else 0)
        return n

    transport.writeSomeData = counting
    return port, transport, direct


@pytest_twisted.ensureDeferred
async def test_frames_written_between_reads_leave_in_one_socket_write_on_the_next_turn() -> None:
    """
    On a plain TCP connection, 100 frames written between reads (a publish
    loop) wait for the reactor's next turn and then go to the socket in one
    direct write, whole and in order; nothing reaches Twisted's buffer.
    """
    frames = [b"%05d" % i * 20 for i in range(100)]
    size = sum(map(len, frames))
    got = bytearray()
    done: Deferred[None] = Deferred()
    port, transport, direct = await _connected(got, done, size)
    try:
        out = writer.Outgoing(reactor, lambda: True)
        out.attach(transport)
        for frame in frames:
            out.write(frame)
        assert direct == [] and not transport.dataBuffer and not transport._tempDataBuffer
        await deferLater(reactor, 0, lambda: None)
        assert direct == [size]
        await done
        assert bytes(got) == b"".join(frames)
    finally:
        transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_frames_written_during_a_read_go_to_the_socket_as_the_read_ends() -> None:
    """
    Frames written while a read is handled (a reply and its ack) go to the
    socket in one direct write when the read ends, without waiting for the
    reactor: an RPC round trip costs no extra turn.
    """
    got = bytearray()
    done: Deferred[None] = Deferred()
    port, transport, direct = await _connected(got, done, 8)
    try:
        out = writer.Outgoing(reactor, lambda: True)
        out.attach(transport)
        out.read_started()
        out.write(b"reply")
        out.write(b"ack")
        assert direct == []
        out.flush()
        assert direct == [8]
        await done
        assert bytes(got) == b"replyack"
    finally:
        transport.loseConnection()
        await port.stopListening()


def test_a_test_transport_gets_writes_between_reads_at_once_and_a_reads_at_its_end() -> None:
    """
    A transport that is not plain TCP (TLS, C{StringTransport}) gets frames
    written between reads at once; frames written during a read at its end,
    or as soon as they pass L{writer.CORK_LIMIT}.
    """
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    transport = StringTransport()
    out = writer.Outgoing(Clock(), lambda: True)
    out.attach(transport)
    out.write(b"now")
    assert transport.value() == b"now"
    out.read_started()
    out.write(b"later")
    assert transport.value() == b"now"
    out.flush()
    assert transport.value() == b"nowlater"
    out.read_started()
    out.write(b"x" * writer.CORK_LIMIT)
    assert transport.value() == b"nowlater" + b"x" * writer.CORK_LIMIT


def test_a_big_message_goes_after_what_was_written_before_it() -> None:
    """
    The frames of a big message written during a read go after the frames
    written before them in that read, and later frames after them.
    """
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    transport = StringTransport()
    out = writer.Outgoing(Clock(), lambda: True)
    out.attach(transport)
    out.read_started()
    out.write(b"first")
    out.write_sequence([b"big1", memoryview(b"big2")])
    out.write(b"last")
    out.flush()
    assert transport.value() == b"firstbig1big2last"
