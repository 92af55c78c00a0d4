"""
What every C{txmsg} command runs with: its standard streams and signals
(L{Io}), waits that a signal interrupts, and connecting to and leaving the
broker.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.python.failure import Failure

from txmsg._render import one_line
from txmsg.cli._errors import CommandFailed, Interrupted
from txmsg.connection import Connection
from txmsg.exits import EXIT_UNAVAILABLE


@dataclass
class Io:
    """
    What a command reads, writes and is interrupted by.

    @ivar stdin: the file descriptor of standard input.
    @ivar stdout: standard output, written in bytes.
    @ivar stderr: standard error.
    @ivar signum: the signal that interrupted the command, if one did.
    """

    stdin: int = 0
    stdout: IO[bytes] = field(default_factory=lambda: sys.stdout.buffer)
    stderr: IO[str] = field(default_factory=lambda: sys.stderr)
    signum: int | None = None
    _listeners: list[Callable[[int], None]] = field(default_factory=list)

    def error(self, message: str) -> None:
        """
        Print C{txmsg: message} on standard error.
        """
        self.stderr.write(f"txmsg: {message}\n")
        self.stderr.flush()

    def interrupt(self, signum: int) -> None:
        """
        A signal asks the command to stop: tell those listening.
        """
        self.signum = signum
        for listener in list(self._listeners):
            listener(signum)

    def on_interrupt(self, listener: Callable[[int], None]) -> Callable[[], None]:
        """
        Call C{listener(signum)} on an interrupt (at once if one came already).

        @return: a function that stops listening.
        """
        if self.signum is not None:
            listener(self.signum)
            return lambda: None
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def interruptible(self, d: Deferred[Any]) -> Deferred[Any]:
        """
        C{d}'s result, unless a signal comes first: then C{d} is cancelled
        and this fails with L{Interrupted}.
        """
        result: Deferred[Any] = Deferred()

        def interrupted(signum: int) -> None:
            if not result.called:
                result.errback(Failure(Interrupted(signum)))
                d.cancel()

        forget = self.on_interrupt(interrupted)

        def done(outcome: Any) -> None:
            forget()
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)

        d.addBoth(done)
        return result


async def _connect(reactor: Any, connection: Connection, timeout: float, io: Io) -> None:
    """
    Wait until C{connection} is ready.

    @raise CommandFailed: no broker within C{timeout} seconds (69), naming
        why the last attempt failed (L{Connection.last_failure}).
    @raise FatalConnectionError: the broker refused us (e.g.
        L{AuthenticationError}).
    @raise Interrupted: a signal came first.
    """
    ready = connection.when_ready()
    ready.addTimeout(timeout, reactor)
    try:
        await io.interruptible(ready)
    except TimeoutError:
        why = ""
        last = connection.last_failure
        if last is not None:
            error = one_line(str(last.error))
            # the URL is worth repeating only when there are several
            why = f" (last error: {last.url}: {error})" if len(connection.params) > 1 else f" ({error})"
        raise CommandFailed(
            EXIT_UNAVAILABLE, f"no broker reachable within {timeout:g} s at {connection.safe_urls}{why}"
        ) from None


async def _stop(connection: Connection) -> None:
    """
    Close C{connection}; a failure to close politely is not the command's.
    """
    try:
        await connection.stopService()
    except Exception:  # noqa: BLE001, S110 - the broker went away first: nothing left to close
        pass


def _silence_stdout(io: Io) -> None:
    """
    Standard output is closed (e.g. C{| head -1}): send further output,
    Python's own final flush included, to /dev/null.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, io.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file: nothing to flush at exit
        pass


@contextmanager
def _signals(reactor: Any, io: Io) -> Iterator[None]:
    """
    While running, SIGINT and SIGTERM interrupt the command (see
    L{Io.interrupt}); a second one stops the reactor at once.
    """
    count = 0

    def arrived(signum: int) -> None:
        nonlocal count
        count += 1
        if count == 1:
            io.interrupt(signum)
        elif reactor.running:
            reactor.stop()

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(arrived, signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
