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


def exit_code_for(error: BaseException) -> int | None:
    """
    The status for a process ended by C{error} from the broker or the
    connection, or L{None} if it is none of those this table names.
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
    "EXIT_NOINPUT",
    "EXIT_NOPERM",
    "EXIT_OK",
    "EXIT_PROTOCOL",
    "EXIT_SOFTWARE",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "exit_code_for",
]
