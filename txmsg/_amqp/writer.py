"""
The one place txmsg reaches into Twisted's private write path.

What a read of the connection makes txmsg write (replies, acks, the next
request) goes to the socket at once, in one write, when nothing else waits
in the transport (L{send}): a round trip then costs no extra reactor turn.

A big message is written a frame at a time as the transport drains.  On a
plain TCP connection with nothing buffered the frames go straight to the
socket through C{tcp.Client.writeSomeData}, a view of the body with no copy;
whether the transport is such a one is read from its private buffers
(C{dataBuffer}, C{_tempDataBuffer}).  These are Twisted's internals, not its
API: L{PRIVATE_NAMES} lists what is used, and the test suite
(C{tests/unit/test_writer.py}) fails loudly if the installed Twisted lacks
any of them or stops taking the direct path, rather than letting txmsg fall
back, silently slower, to copying every big body into the transport.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: the private attributes of C{tcp.Client} this module relies on
PRIVATE_NAMES = ("dataBuffer", "_tempDataBuffer", "writeSomeData")


def corkable(transport: Any) -> bool:
    """
    A plain TCP transport: frames written to it between reads may wait for
    the start of the reactor's next turn and go as one (L{send}).
    """
    return type(transport) is tcp.Client and not getattr(transport, "TLS", True)


def idle_tcp(transport: Any) -> bool:
    """
    A plain TCP transport (whose socket a big message may be written to
    directly), connected, with nothing waiting in its buffer.
    """
    return bool(
        type(transport) is tcp.Client
        and transport.connected
        and not transport.disconnecting
        and not getattr(transport, "TLS", True)
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    )


def drain(pending: deque[bytes | memoryview], transport: Any, writable: Callable[[], bool]) -> None:
    """
    Hand C{pending} frames to C{transport} while it takes them (while
    C{writable()}).  On an idle plain TCP connection (L{idle_tcp}) they go
    straight to the socket, not copied.  What the socket does not take goes
    to the transport a little more than its buffer size at a time: that
    pauses its producer, which it resumes once it has sent it, so a big
    message is never copied whole into the transport's buffer.
    """
    direct = idle_tcp(transport)
    limit = getattr(transport, "bufferSize", 65536)
    while pending and writable():
        if direct:
            view = memoryview(pending[0])
            n = transport.writeSomeData(view)
            if isinstance(n, int) and n > 0:
                if n < len(view):
                    pending[0] = view[n:]
                else:
                    pending.popleft()
                continue
            # the socket is full, or failed: the transport takes it from here
        chunk: list[bytes] = []
        size = 0
        while pending and size <= limit:
            part = pending.popleft()
            chunk.append(part if isinstance(part, bytes) else bytes(part))
            size += len(part)
        transport.writeSequence(chunk)
        direct = False


def send(parts: list[bytes], transport: Any) -> None:
    """
    Write C{parts} (frames, in order) as one: on an idle plain TCP connection
    (L{idle_tcp}) straight to the socket, with whatever it does not take left
    to the transport; else to the transport, which sends them on the
    reactor's next turn.
    """
    if not idle_tcp(transport):
        transport.writeSequence(parts)
        return
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    n = transport.writeSomeData(data)
    if isinstance(n, int) and n >= 0:
        if n >= len(data):
            return
        data = data[n:]
    # the socket is full, or failed: the transport takes it from here
    transport.write(data)


#: frames written during a read, or between reads, wait up to this many bytes
CORK_LIMIT = 65536


class Outgoing:
    """
    What one connection writes, in order, on its way to the transport.

      - Frames written while a read is handled (replies, acks, the next
        request) wait for the read's end (L{flush}), then go as one write,
        straight to the socket when it is idle (L{send}): a round trip costs
        no extra reactor turn.
      - On a plain TCP connection (L{corkable}) so do frames written between
        reads, at the start of the reactor's next turn: one write for the
        many publishes of a loop, not one transport write each.
      - Either waits for at most L{CORK_LIMIT} bytes; past that the
        transport takes them at once, and pauses the producers if its buffer
        is full.
      - The frames of a big message (L{write_sequence}) go as the transport
        drains (L{drain}); what is written after them waits behind them.

    @ivar pending: frames not yet handed to the transport: the rest of a big
        message the socket did not take, and whatever was written after it.
    """

    def __init__(self, clock: IReactorTime, writable: Callable[[], bool]) -> None:
        self.clock = clock
        self.transport: Any = None
        self.pending: deque[bytes | memoryview] = deque()
        self._writable = writable
        self._corked: list[bytes] | None = None
        self._size = 0
        self._turns = False
        self._turn: IDelayedCall | None = None

    def attach(self, transport: Any) -> None:
        self.transport = transport
        self._turns = corkable(transport)

    def read_started(self) -> None:
        if self._corked is None:
            self._corked = []

    def flush(self) -> None:
        """
        Send what waits (the end of a read, or the start of a reactor turn).
        """
        turn, self._turn = self._turn, None
        if turn is not None and turn.active():
            turn.cancel()
        corked, self._corked, self._size = self._corked, None, 0
        if corked:
            send(corked, self.transport)

    def write(self, data: bytes) -> None:
        if self.pending:
            self.pending.append(data)
        elif self._corked is not None:
            self._corked.append(data)
            self._size += len(data)
            if self._size >= CORK_LIMIT:
                corked, self._corked, self._size = self._corked, [], 0
                self.transport.writeSequence(corked)
        elif self._turns:
            self._corked, self._size = [data], len(data)
            self._turn = self.clock.callLater(0, self.flush)
        else:
            self.transport.write(data)

    def write_sequence(self, parts: list[bytes | memoryview]) -> None:
        """
        The frames of a message too big for one frame: views of its body,
        handed to the transport as it takes them.
        """
        if self._corked:
            # what was written before goes first
            corked, self._corked, self._size = self._corked, [], 0
            self.transport.writeSequence(corked)
        waiting = bool(self.pending)
        self.pending.extend(parts)
        if not waiting and self._writable():
            self.drain()

    def drain(self) -> None:
        drain(self.pending, self.transport, self._writable)

    def discard(self) -> None:
        """
        The connection is gone: nothing more is sent.
        """
        if self._turn is not None and self._turn.active():
            self._turn.cancel()
        self._turn = None
        self._corked, self._size = None, 0
        self.pending.clear()
