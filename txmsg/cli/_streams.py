"""
Standard input and output as the reactor watches them: lines of standard
input read as they come, and the hang-up of the pipe standard output
writes to.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IReadDescriptor)
class _LineReader:
    """
    Lines read from a file descriptor as the reactor finds it readable, so
    the reactor keeps turning (confirms, heartbeats) while input is slow.
    Regular files, which are always readable, are read directly.

    At most one chunk of input is buffered beyond the lines handed out.
    """

    CHUNK = 65536

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._partial = bytearray()
        self._lines: deque[bytes] = deque()
        self._eof = False
        self._waiting: Deferred[list[bytes]] | None = None
        self._reading = False
        try:
            self._regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            self._regular = True  # a closed stdin reads as empty

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "stdin"

    def connectionLost(self, reason: Failure) -> None:
        # the writers hung up: what is left reads without blocking, to the end
        self._reading = False
        while not self._eof:
            self._read_chunk()
        self._end()

    def doRead(self) -> None:
        self._read_chunk()
        if self._lines or self._eof:
            self._pause()
            waiting, self._waiting = self._waiting, None
            if waiting is not None:
                waiting.callback(self._take())

    def read_lines(self) -> Deferred[list[bytes]]:
        """
        The next complete lines (at least one, each without its C{\\n}), or
        an empty list at the end of the input.
        """
        while self._regular and not self._lines and not self._eof:
            self._read_chunk()
        if self._lines or self._eof:
            return succeed(self._take())
        self._waiting = Deferred()
        if not self._reading:
            self._reading = True
            self._reactor.addReader(self)
        return self._waiting

    def stop(self) -> None:
        """
        Read no more: a pending L{read_lines} fires with the lines read so far
        (or none).
        """
        self._lines.clear()
        self._partial.clear()
        self._end()

    def _take(self) -> list[bytes]:
        lines = list(self._lines)
        self._lines.clear()
        return lines

    def _read_chunk(self) -> None:
        try:
            data = os.read(self._fd, self.CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if self._partial:
                self._lines.append(bytes(self._partial))
                self._partial.clear()
            self._eof = True
            return
        end = data.rfind(b"\n")
        if end == -1:
            self._partial += data
            return
        head = bytes(self._partial) + data[:end] if self._partial else data[:end]
        self._partial[:] = data[end + 1 :]
        self._lines.extend(head.split(b"\n"))

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self)

    def _end(self) -> None:
        self._eof = True
        self._pause()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(self._take())


@implementer(IReadDescriptor)
class _HangupWatcher:
    """
    Tells when the reader of the pipe that standard output writes to goes
    away (C{| head -1}), without waiting for the next write to fail.

    The write end of a pipe never reads as readable; the reactor reports
    the reader's hang-up as a lost connection.
    """

    def __init__(self, reactor: Any, fd: int, on_hangup: Callable[[], None]) -> None:
        self._reactor = reactor
        self._fd = fd
        self._on_hangup = on_hangup
        self._watching = True
        reactor.addReader(self)

    @classmethod
    def watch(cls, reactor: Any, stream: IO[bytes], on_hangup: Callable[[], None]) -> _HangupWatcher | None:
        """
        Watch C{stream} if it is a pipe; else C{None}.
        """
        try:
            fd = stream.fileno()
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return None
        except (OSError, ValueError, AttributeError):
            return None
        return cls(reactor, fd, on_hangup)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "stdout"

    def doRead(self) -> None:
        self.stop()  # not a pipe's write end after all: stop watching

    def connectionLost(self, reason: Failure) -> None:
        if self._watching:
            self._watching = False
            self._on_hangup()

    def stop(self) -> None:
        if self._watching:
            self._watching = False
            self._reactor.removeReader(self)
