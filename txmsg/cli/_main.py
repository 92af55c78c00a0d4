"""
The driver of the C{txmsg} command: run the command the command line
names on the reactor, and turn how it ended into one line and an exit code.
"""

from __future__ import annotations

import signal
import traceback
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.python.failure import Failure

from txmsg._render import one_line
from txmsg.cli._args import parse_args
from txmsg.cli._errors import CommandFailed, Interrupted, UsageError, _exit_code
from txmsg.cli._io import Io, _signals
from txmsg.cli.call import call
from txmsg.cli.dlq import dlq
from txmsg.cli.listen import listen
from txmsg.cli.publish import publish
from txmsg.errors import TxmsgError
from txmsg.exits import EXIT_OK, EXIT_SOFTWARE, EXIT_USAGE

_COMMANDS: Mapping[str, Callable[[Any, Any, Io], Coroutine[Any, Any, int]]] = {
    "publish": publish,
    "listen": listen,
    "call": call,
    "dlq": dlq,
}


def _report(failure: Failure, io: Io) -> int:
    """
    Print why a command failed (one line), and return its exit code.
    """
    error = failure.value
    if isinstance(error, Interrupted):
        return _exit_code(error)
    if isinstance(error, CancelledError) and io.signum is not None:
        return 128 + io.signum
    if isinstance(error, UsageError):
        io.stderr.write(f"{one_line(str(error))}\n")
        return EXIT_USAGE
    if isinstance(error, (TxmsgError, CommandFailed)):
        io.error(one_line(str(error)) or type(error).__name__)
        return _exit_code(error)
    # a bug: say so, with what is needed to report it
    io.error(f"internal error: {type(error).__name__}: {one_line(str(error))}")
    io.stderr.write("".join(traceback.format_exception(error)))
    return EXIT_SOFTWARE


def run(reactor: Any, args: Any, io: Io) -> int:
    """
    Run the command that C{args} names on C{reactor} until it finishes.

    @param reactor: a reactor that has not run yet; it is stopped afterwards.
    @param args: from L{parse_args}.
    @return: the exit code.
    """
    codes: list[int] = []

    def start() -> None:
        d: Deferred[Any] = ensureDeferred(_COMMANDS[args.command](reactor, args, io))
        d.addErrback(_report, io)
        d.addCallback(codes.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    with _signals(reactor, io):
        reactor.run(installSignalHandlers=False)
    if codes:
        return codes[0]
    return 128 + (io.signum or signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    """
    The C{txmsg} console script.

    @param argv: the arguments after the program name; C{None} for C{sys.argv}.
    @return: the exit code (see L{txmsg.exits.TABLE}).
    """
    io = Io()
    try:
        args = parse_args(argv)
    except UsageError as e:
        io.stderr.write(f"{one_line(str(e))}\n")
        return EXIT_USAGE
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else EXIT_OK
    from twisted.internet import reactor

    return run(reactor, args, io)
