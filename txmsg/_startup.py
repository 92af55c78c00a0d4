"""
How a twistd role that cannot start ends the process: one line naming our
flag where the broker names what differs (L{explain}), and a non-zero exit
status (see L{txmsg.exits}), since twistd itself exits 0 whatever happened.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmsg.connection import Connection
from txmsg.errors import ConnectionLost, DeprecatedFeature, FatalConnectionError, PreconditionFailed
from txmsg.exits import EXIT_FAILED, EXIT_UNAVAILABLE, exit_code_for

_log = Logger(namespace="txmsg")

#: which of our flags sets a queue property the broker may call inequivalent
_FLAG_OF_ARG = {
    "durable": "--durable/--transient",
    "x-queue-type": "--quorum",
    "x-dead-letter-exchange": "--dead-letter",
    "exclusive": "(exclusive)",
    "auto_delete": "(auto-delete)",
}


def explain(reason: Failure) -> str:
    """
    One line for why a role could not start, naming our flag where the broker
    names the queue property that differs.
    """
    error = reason.value
    if isinstance(error, DeprecatedFeature):
        if error.feature == "transient_nonexcl_queues":
            # the flag that asked for it, instead of the library's advice
            return (
                f"the broker refuses transient non-exclusive queues ({error.subject}): drop --transient "
                "(queues are durable by default), or permit them on the broker "
                "(deprecated_features.permit.transient_nonexcl_queues = true)"
            )
        return str(error)
    if isinstance(error, PreconditionFailed):
        text = error.reply_text
        for arg, flag in _FLAG_OF_ARG.items():
            if f"'{arg}'" in text:
                return (
                    f"{text} (the queue exists with another {flag}: declare it the same way, or another name)"
                )
        if "inequivalent arg 'x-" in text:
            return f"{text} (the queue exists with another --arg)"
        return text
    return reason.getErrorMessage()


class _ExitStatus:
    """
    twistd exits 0 whatever happened; a role that cannot start stops the
    reactor and sets the process's exit status with this.
    """

    def __init__(self, at_exit: Callable[[Callable[[], None]], object] = atexit.register) -> None:
        self.code: int | None = None
        self._at_exit = at_exit

    def fail(self, reactor: Any, code: int, line: str) -> None:
        if self.code is not None:
            return  # one line for one failure seen from two sides
        _log.critical("{line}", line=line)
        self.code = code
        self._at_exit(self._exit)
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    def _exit(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self.code or 0)


exit_status = _ExitStatus()


def watch_startup(
    reactor: Any,
    connection: Connection,
    declared: Any,
    connect_timeout: float | None = None,
    status: _ExitStatus = exit_status,
) -> None:
    """
    Stop the process with one line and a non-zero status (see L{txmsg.exits})
    if the broker refuses us for good (credentials, vhost, TLS), refuses a
    declaration, or, given C{connect_timeout}, does not answer in time.  A
    process stopped (SIGTERM) before it was connected is not a failure.
    """

    def fatal(reason: Failure) -> None:
        if reason.check(ConnectionLost) and not connection.running:
            return  # stopped while waiting: twistd is shutting down, not failing
        code = exit_code_for(reason.value) or EXIT_FAILED
        status.fail(reactor, code, f"txmsg: cannot start: {explain(reason)}")

    def connection_failed(reason: Failure) -> None:
        if reason.check(FatalConnectionError, DeprecatedFeature):
            fatal(reason)

    ready = connection.when_ready()
    ready.addErrback(connection_failed)
    if declared is not None:
        declared.addErrback(fatal)
    if connect_timeout is not None:

        def too_late() -> None:
            if connection.running and connection.protocol is None:
                status.fail(
                    reactor,
                    EXIT_UNAVAILABLE,
                    f"txmsg: cannot start: no broker reachable within {connect_timeout:g} s at "
                    f"{connection.safe_urls}",
                )

        timer = reactor.callLater(connect_timeout, too_late)

        def disarm(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        ready.addBoth(disarm)


class StartupWatch(Service):
    def __init__(
        self, reactor: Any, connection: Connection, role: Any, connect_timeout: float | None
    ) -> None:
        self.reactor = reactor
        self.connection = connection
        self.role = role
        self.connect_timeout = connect_timeout

    def startService(self) -> None:
        super().startService()
        watch_startup(
            self.reactor, self.connection, getattr(self.role, "declared", None), self.connect_timeout
        )
