"""
C{python -m txmsg.cli}: the C{txmsg} command.
"""

from __future__ import annotations

import sys

from txmsg.cli._main import main

if __name__ == "__main__":
    sys.exit(main())
