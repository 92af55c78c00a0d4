"""
The one place txmsg reaches into Twisted's private write path.

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

#: the private attributes of C{tcp.Client} this module relies on
PRIVATE_NAMES = ("dataBuffer", "_tempDataBuffer", "writeSomeData")


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
