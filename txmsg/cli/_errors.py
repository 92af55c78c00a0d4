"""
How a C{txmsg} command fails: the exceptions that end it and the exit code
each one gives.
"""

from __future__ import annotations

from txmsg.exits import EXIT_FAILED, EXIT_USAGE, exit_code_for


class UsageError(Exception):
    """
    The command line is wrong; the message is one line naming the problem.
    """


class CommandFailed(Exception):
    """
    A command ends with this exit code and one line on standard error.

    @ivar code: the exit code.
    """

    def __init__(self, code: int, message: str) -> None:
        """
        @param code: the exit code.
        @param message: what went wrong, one line (without the C{txmsg:} prefix).
        """
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """
    A signal (Ctrl-C, SIGTERM) asked the command to stop.

    @ivar signum: the signal number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


def _exit_code(error: BaseException) -> int:
    """
    The exit code for a command that failed with C{error}.
    """
    if isinstance(error, CommandFailed):
        return error.code
    code = exit_code_for(error)
    if code is not None:
        return code
    if isinstance(error, (TypeError, ValueError)):
        return EXIT_USAGE
    if isinstance(error, Interrupted):
        return 128 + error.signum
    return EXIT_FAILED
