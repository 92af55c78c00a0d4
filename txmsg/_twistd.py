"""
What the C{txmsg} twistd plugin hands twistd: the options of L{txmsg.tap}
as twistd parses them, and its service maker.

twistd before Twisted 26.10 printed a usage error and exited 0; these
options print the usage and one error line and exit 1 on every Twisted
that C{setup.cfg} admits, so a mistake on the command line is never a
success.  (L{txmsg.tap.Options} itself raises C{UsageError}, for tests and
for applications that parse options themselves.)
"""

from __future__ import annotations

import sys

from twisted.python import usage

from txmsg.tap import Options as _RoleOptions
from txmsg.tap import makeService


class Options(_RoleOptions):
    """
    L{txmsg.tap.Options}, exiting 1 with the usage and one line on a usage error.
    """

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            print(self)
            print(f"twistd txmsg: {e}")
            sys.stdout.flush()
            raise SystemExit(1) from None


__all__ = ["Options", "makeService"]
