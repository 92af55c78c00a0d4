"""
The exit statuses of the C{txmsg} command and of C{twistd txmsg}, one table
for both, after sysexits.h where it has a name for the case.

A fatal error (the broker refused the login or the vhost, TLS verification
failed, the peer does not speak AMQP) ends the process at once with one line
and its status; an unreachable broker is retried, by the command until its
C{--timeout} and by a twistd service until C{--connect-timeout} if given.
"""

from __future__ import annotations

from typing import Final

from txmsg.errors import (
    AccessRefused,
    AuthenticationError,
    DeprecatedFeature,
    FatalConnectionError,
    NotFound,
    ProtocolError,
    TLSError,
    VhostNotFound,
)

EXIT_OK: Final = 0
#: a message was not confirmed (or over the broker's max_message_size), a role
#: could not declare its queue, the broker refuses a deprecated feature, ...
EXIT_FAILED: Final = 1
#: a bad option, URL, header, property or JSON message
EXIT_USAGE: Final = 2
#: sysexits.h EX_NOINPUT: the queue or exchange does not exist
EXIT_NOINPUT: Final = 66
#: sysexits.h EX_UNAVAILABLE: no broker answered in time
EXIT_UNAVAILABLE: Final = 69
#: sysexits.h EX_SOFTWARE: a bug in txmsg
EXIT_SOFTWARE: Final = 70
#: sysexits.h EX_PROTOCOL: TLS verification failed or the peer is not an AMQP 0-9-1 broker
EXIT_PROTOCOL: Final = 76
#: sysexits.h EX_NOPERM: credentials, vhost or permissions refused
EXIT_NOPERM: Final = 77
#: txmsg call: no reply within --timeout
EXIT_TIMEOUT: Final = 3
#: txmsg call: no queue is bound to the routing key (the request came back)
EXIT_NO_SERVER: Final = 4
#: txmsg call: the server's handler failed
EXIT_REMOTE_ERROR: Final = 5
#: interrupted by SIGINT (Ctrl-C); 128 + the signal's number, as shells do
EXIT_INTERRUPTED: Final = 130

#: every status, what it means, in one table: the help texts are made from it
TABLE: Final[tuple[tuple[int, str], ...]] = (
    (EXIT_OK, "done (txmsg listen also when stopped by --count, a signal or a closed output)"),
    (EXIT_FAILED, "a message was nacked, returned, not confirmed or over max_message_size, "
                  "or a twistd role could not start"),
    (EXIT_USAGE, "usage: a bad option, URL, header, property or JSON message"),
    (EXIT_TIMEOUT, "call: no reply within --timeout"),
    (EXIT_NO_SERVER, "call: no queue is bound to the routing key"),
    (EXIT_REMOTE_ERROR, "call: the server's handler failed"),
    (EXIT_NOINPUT, "the queue or exchange does not exist"),
    (EXIT_UNAVAILABLE, "no broker reachable in time"),
    (EXIT_SOFTWARE, "a bug in txmsg (its traceback on stderr)"),
    (EXIT_PROTOCOL, "TLS verification failed, or the peer does not speak AMQP 0-9-1"),
    (EXIT_NOPERM, "login, vhost or permission refused"),
    (EXIT_INTERRUPTED, "interrupted by Ctrl-C (143: SIGTERM)"),
)  # fmt: skip


#: the statuses a C{twistd txmsg} process ends with
TWISTD: Final = (
    EXIT_OK, EXIT_FAILED, EXIT_NOINPUT, EXIT_UNAVAILABLE, EXIT_SOFTWARE, EXIT_PROTOCOL, EXIT_NOPERM
)  # fmt: skip


def help_text(codes: tuple[int, ...] | None = None, compact: bool = False) -> str:
    """
    The exit statuses (those of C{codes}, by default all) as a help text,
    from L{TABLE}: one line each, or (C{compact}) one sentence for help that
    is wrapped as prose (twistd's).
    """
    rows = [(code, meaning) for code, meaning in TABLE if codes is None or code in codes]
    if compact:
        return "Exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in rows) + "."
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in rows)


def exit_code_for(error: BaseException) -> int | None:
    """
    The status for a process ended by C{error} from the broker or the
    connection, or C{None} if it is none of those this table names.
    """
    if isinstance(error, (AuthenticationError, VhostNotFound, AccessRefused)):
        return EXIT_NOPERM
    if isinstance(error, NotFound):
        return EXIT_NOINPUT
    if isinstance(error, (TLSError, ProtocolError)):
        return EXIT_PROTOCOL
    if isinstance(error, FatalConnectionError):
        return EXIT_UNAVAILABLE
    if isinstance(error, DeprecatedFeature):
        return EXIT_FAILED  # the request must change: not retried, not "unavailable"
    return None


__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOINPUT",
    "EXIT_NOPERM",
    "EXIT_NO_SERVER",
    "EXIT_OK",
    "EXIT_PROTOCOL",
    "EXIT_REMOTE_ERROR",
    "EXIT_SOFTWARE",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "TABLE",
    "TWISTD",
    "exit_code_for",
    "help_text",
]
