"""
The C{txmsg} command: publish, listen and call from a shell::

    txmsg publish [--url U]... [-e EXCHANGE] [-k ROUTING_KEY] [--json|--text|--bytes]
                  [--persistent] [--mandatory] [--header K=V]... [--property NAME=VALUE]...
                  [--timeout S] [MESSAGE]...
    txmsg listen  [--url U]... (--queue Q | -e EXCHANGE [-k KEY]...) [--count N] [--json]
    txmsg call    [--url U]... [-e EXCHANGE] -k ROUTING_KEY [--json|--text] [--timeout S]
                  [--gather [--expect N]] [PAYLOAD]

C{publish} sends each MESSAGE, or with none each line of standard input
(streamed: at most L{PUBLISH_WINDOW} messages await their confirm at once),
and waits for every confirm.  C{--text} (the default) sends UTF-8 text as
C{text/plain}, C{--json} checks each message is JSON and sends it as
C{application/json}, C{--bytes} sends the bytes as they are with no content
type.  A line's trailing C{\\n} is removed, and the C{\\r} of a C{\\r\\n}
too except with C{--bytes}; with C{--json} blank lines are skipped.
C{--header K=V} adds a string header, C{--header K:=JSON} a typed one
(C{n:=3}, C{ok:=true}, C{tags:=["a","b"]}).  C{--property NAME=VALUE} sets a
basic property: see L{PROPERTIES}.  C{--timeout} bounds both the wait for a
broker and the wait for each confirm.  It prints C{published N, confirmed M}
on standard error, after one line per distinct failure reason.

C{listen} prints each message as it arrives, as one readable line
(C{exchange/routing_key: payload}) or, with C{--json}, as one JSON object
per line (L{message_to_json}).  C{--queue} reads a queue that exists;
C{-e} binds a new server-named exclusive queue to the exchange with each
C{-k} key (C{#} without one).  It stops after C{--count} messages, or on
Ctrl-C or SIGTERM, or when standard output is closed (C{| head -1}), and
acks exactly the messages it printed; the others go back to the queue.

C{call} makes one RPC call and prints the reply: JSON pretty-printed, text
as it is, bytes raw.  PAYLOAD C{-} reads the payload from standard input; no
PAYLOAD sends an empty one (C{null} with C{--json}).  C{--gather} broadcasts
and prints each reply as one JSON line C{{"server": ..., "payload": ...}}
until C{--expect} replies came or C{--timeout} passed.

C{--url} may be repeated (the nodes of a cluster); by default the URLs come
from C{$TXMSG_URL}, else C{amqp://guest:guest@localhost:5672/%2F}.
Passwords are never printed.

Exit codes: one table for the command and for twistd, L{txmsg.exits.TABLE};
C{txmsg --help} and each subcommand's C{--help} print it.
"""

from __future__ import annotations

from txmsg._render import jsonable, message_to_json, readable_line
from txmsg.cli._args import _STDIN as _STDIN
from txmsg.cli._args import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from txmsg.cli._args import PROPERTIES as PROPERTIES
from txmsg.cli._args import build_parser, parse_args
from txmsg.cli._errors import CommandFailed, UsageError
from txmsg.cli._errors import Interrupted as Interrupted
from txmsg.cli._errors import _exit_code as _exit_code
from txmsg.cli._io import Io
from txmsg.cli._main import main, run
from txmsg.cli._streams import _LineReader as _LineReader
from txmsg.cli.call import _reply_bytes as _reply_bytes
from txmsg.cli.listen import LISTEN_PREFETCH as LISTEN_PREFETCH
from txmsg.cli.publish import PUBLISH_RESUME as PUBLISH_RESUME
from txmsg.cli.publish import PUBLISH_WINDOW as PUBLISH_WINDOW
from txmsg.cli.publish import _BadInput as _BadInput
from txmsg.cli.publish import _line_body as _line_body
from txmsg.cli.publish import _Tally as _Tally
from txmsg.exits import (
    EXIT_FAILED,
    EXIT_NO_SERVER,
    EXIT_NOINPUT,
    EXIT_NOPERM,
    EXIT_OK,
    EXIT_PROTOCOL,
    EXIT_REMOTE_ERROR,
    EXIT_SOFTWARE,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)

__all__ = [
    "EXIT_FAILED",
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
    "CommandFailed",
    "Io",
    "UsageError",
    "build_parser",
    "jsonable",
    "main",
    "message_to_json",
    "parse_args",
    "readable_line",
    "run",
]
