"""
The C{txmsg} command: publish, listen and call from a shell.

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

import argparse
import base64
import datetime as _dt
import json
import math
import os
import signal
import stat
import sys
import traceback
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, Any, NoReturn

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred, succeed
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from txmsg.connection import Connection
from txmsg.consumer import Consumer
from txmsg.errors import (
    MessageTooLarge,
    NotFound,
    TxmsgError,
    UndecodableMessage,
)
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
    exit_code_for,
    help_text,
)
from txmsg.message import JSON, TEXT, Message
from txmsg.producer import Nacked, Producer, Unroutable
from txmsg.rpc import NoServer, RemoteError, Reply, RpcClient, RpcTimeout
from txmsg.topology import Binding, Queue
from txmsg.url import InvalidURL, default_urls, parse_urls

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


#: seconds to wait for a broker, a confirm or a reply, unless --timeout says
DEFAULT_TIMEOUT = 10.0
#: the most published messages awaiting their confirm at once
PUBLISH_WINDOW = 1000
#: publishing from standard input goes on once this few await their confirm
PUBLISH_RESUME = PUBLISH_WINDOW // 2
#: listen's prefetch: bounded by --count so that no more are taken than printed
LISTEN_PREFETCH = 100

#: --property names and how their values are read
PROPERTIES: Mapping[str, str] = {
    "content_type": "str",
    "content_encoding": "str",
    "correlation_id": "str",
    "reply_to": "str",
    "expiration": "milliseconds",
    "message_id": "str",
    "type": "str",
    "app_id": "str",
    "user_id": "str",
    "priority": "octet",
    "timestamp": "seconds",
}

_CONTENT_TYPES: Mapping[str, str | None] = {"text": TEXT, "json": JSON, "bytes": None}
_INT64 = 2**63


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


# ----------------------------------------------------------------------
# the command line


class _Parser(argparse.ArgumentParser):
    """
    An argument parser whose errors are one line, raised as L{UsageError}
    instead of printing usage and exiting.
    """

    def error(self, message: str) -> NoReturn:
        """
        Raise L{UsageError} naming the problem and where to read more.
        """
        raise UsageError(f"{self.prog}: {_one_line(message)} (see '{self.prog} --help')")


def _positive(text: str) -> float:
    """
    An argparse type: a number of seconds greater than 0.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number greater than 0, not {text!r}")
    return value


def _count(text: str) -> int:
    """
    An argparse type: an integer of at least 1.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text!r}")
    return value


def _add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="URL",
        help="broker URL; repeat it for the nodes of a cluster "
        "(default: $TXMSG_URL, else amqp://guest:guest@localhost:5672/%%2F)",
    )


def _add_timeout(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for a broker{what} (default {DEFAULT_TIMEOUT:g}); "
        "no broker within that time exits 69",
    )


def _add_format(parser: argparse.ArgumentParser, *, with_bytes: bool) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--text",
        dest="format",
        action="store_const",
        const="text",
        help="send UTF-8 text as text/plain (the default)",
    )
    group.add_argument(
        "--json", dest="format", action="store_const", const="json", help="send JSON as application/json"
    )
    if with_bytes:
        group.add_argument(
            "--bytes",
            dest="format",
            action="store_const",
            const="bytes",
            help="send the bytes as they are, with no content type",
        )
    parser.set_defaults(format="text")


_EXIT_CODES = help_text()


def build_parser() -> argparse.ArgumentParser:
    """
    The parser of the C{txmsg} command line (it does not check values that
    need more than argparse: see L{parse_args}).
    """
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="txmsg",
        description="Publish, listen and call over RabbitMQ with txmsg.",
        epilog=_EXIT_CODES,
        formatter_class=formatter,
    )
    from txmsg._version import __version__

    parser.add_argument("--version", action="version", version=f"txmsg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    pub = sub.add_parser(
        "publish",
        help="publish messages, each confirmed by the broker",
        description="Publish each MESSAGE, or each line of standard input when none is given, "
        "and wait for the broker to confirm every one.",
        epilog='HEADER is K=V (a string) or K:=JSON (a typed value: n:=3, ok:=true, tags:=["a"]).\n'
        f"Properties: {', '.join(PROPERTIES)} (priority and timestamp are integers;\n"
        "expiration is in milliseconds).\n" + _EXIT_CODES,
        formatter_class=formatter,
    )
    _add_url(pub)
    pub.add_argument("-e", "--exchange", default="", help="exchange (default: the default exchange)")
    pub.add_argument("-k", "--routing-key", default="", metavar="KEY", help="routing key (default: empty)")
    _add_format(pub, with_bytes=True)
    pub.add_argument(
        "--persistent", action="store_true", help="delivery mode 2 (kept on disk by durable queues)"
    )
    pub.add_argument(
        "--mandatory", action="store_true", help="fail (exit 1) for a message that no queue takes"
    )
    pub.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="K=V",
        help="add a header: K=V for a string, K:=JSON for a typed value (repeatable)",
    )
    pub.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a basic property, e.g. message_id=42 or priority=5 (repeatable)",
    )
    _add_timeout(pub, " and for each confirm")
    pub.add_argument(
        "messages", nargs="*", metavar="MESSAGE", help="message bodies (default: one per line of stdin)"
    )

    listen = sub.add_parser(
        "listen",
        help="print messages as they arrive",
        description="Print messages from a queue, or from an exchange through a new exclusive queue, "
        "as they arrive; ack exactly those printed.",
        epilog=_EXIT_CODES,
        formatter_class=formatter,
    )
    _add_url(listen)
    source = listen.add_mutually_exclusive_group(required=True)
    source.add_argument("-q", "--queue", help="read this existing queue")
    source.add_argument("-e", "--exchange", help="bind a new exclusive queue to this exchange")
    listen.add_argument(
        "-k",
        "--routing-key",
        dest="keys",
        action="append",
        default=[],
        metavar="KEY",
        help="with -e: bind with this key (repeatable; default '#', for fanout and topic exchanges)",
    )
    listen.add_argument("-n", "--count", type=_count, metavar="N", help="stop after N messages")
    listen.add_argument("--json", action="store_true", help="print one JSON object per message")
    _add_timeout(listen, "")

    call = sub.add_parser(
        "call",
        help="make an RPC call and print the reply",
        description="Send PAYLOAD as an RPC request and print the reply: JSON pretty-printed, "
        "text as it is, bytes raw.",
        epilog=_EXIT_CODES,
        formatter_class=formatter,
    )
    _add_url(call)
    call.add_argument("-e", "--exchange", default="", help="exchange (default: the default exchange)")
    call.add_argument("-k", "--routing-key", required=True, metavar="KEY", help="routing key of the server")
    _add_format(call, with_bytes=False)
    call.add_argument(
        "--gather",
        action="store_true",
        help="broadcast, and print each reply as a JSON line as it arrives",
    )
    call.add_argument("--expect", type=_count, metavar="N", help="with --gather: stop after N replies")
    _add_timeout(call, " and for the reply")
    call.add_argument(
        "payload", nargs="?", metavar="PAYLOAD", help="the request ('-' reads standard input; default empty)"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Any:
    """
    Parse and check a command line.

    Besides what argparse checks, the broker URLs are parsed, C{--header} and
    C{--property} become C{args.headers} and C{args.properties}, and messages
    given as arguments are checked and encoded into C{args.bodies}.

    @param argv: the arguments after the program name; L{None} for C{sys.argv}.
    @param environ: where C{TXMSG_URL} is read; L{None} for C{os.environ}.
    @return: the parsed arguments (an C{argparse.Namespace}).
    @raise UsageError: the command line is wrong.
    @raise SystemExit: for C{--help} and C{--version}, after printing them.
    """
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    args.urls = list(args.url) or default_urls(env)
    try:
        args.params = parse_urls(args.urls)
    except InvalidURL as e:
        raise UsageError(f"txmsg: {e}") from None
    if args.command == "publish":
        args.headers = _parse_headers(args.header)
        args.properties = _parse_properties(args.property)
        args.bodies = [_argument_body(args.format, i, text) for i, text in enumerate(args.messages, 1)]
    elif args.command == "listen":
        if args.exchange is not None:
            if not args.exchange:
                raise UsageError("txmsg listen: -e needs an exchange name; use --queue for a queue")
            args.keys = args.keys or ["#"]
        elif args.keys:
            raise UsageError("txmsg listen: -k goes with -e EXCHANGE, not with --queue")
    elif args.command == "call":
        if args.expect is not None and not args.gather:
            raise UsageError("txmsg call: --expect goes with --gather")
        args.request = _call_payload(args.format, args.payload)
    return args


def _parse_headers(items: Sequence[str]) -> dict[str, Any]:
    """
    The headers of C{--header K=V} and C{--header K:=JSON} options.
    """
    headers: dict[str, Any] = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key or key == ":":
            raise UsageError(f"txmsg: bad --header {item!r}: expected K=V or K:=JSON")
        typed: Any = value
        if key.endswith(":"):
            key = key[:-1]
            try:
                typed = _loads(value)
            except ValueError as e:
                raise UsageError(f"txmsg: bad --header {item!r}: invalid JSON: {e}") from None
        if len(key.encode("utf-8", "surrogateescape")) > 255:
            raise UsageError(f"txmsg: bad --header {item[:40]!r}...: the name is over 255 bytes")
        problem = _header_problem(typed)
        if problem:
            raise UsageError(f"txmsg: bad --header {item!r}: {problem}")
        headers[key] = typed
    return headers


def _header_problem(value: Any) -> str | None:
    """
    Why C{value} (from JSON) cannot be a header value, or L{None}.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "not valid UTF-8"
    elif isinstance(value, int) and not isinstance(value, bool):
        if not -_INT64 <= value < _INT64:
            return f"integer {value} does not fit in 64 bits"
    elif isinstance(value, dict):
        for k, v in value.items():
            if len(k.encode("utf-8", "surrogateescape")) > 255:
                return "a table key is over 255 bytes"
            problem = _header_problem(v)
            if problem:
                return problem
    elif isinstance(value, list):
        for v in value:
            problem = _header_problem(v)
            if problem:
                return problem
    return None


def _parse_properties(items: Sequence[str]) -> dict[str, Any]:
    """
    The basic properties of C{--property NAME=VALUE} options, by txmsg's names.
    """
    properties: dict[str, Any] = {}
    for item in items:
        name, equals, value = item.partition("=")
        kind = PROPERTIES.get(name)
        if not equals or kind is None:
            known = ", ".join(PROPERTIES)
            what = f"unknown property {name!r}" if equals else "expected NAME=VALUE"
            raise UsageError(f"txmsg: bad --property {item!r}: {what} (properties: {known})")
        if kind == "str":
            if len(value.encode("utf-8", "surrogateescape")) > 255:
                raise UsageError(f"txmsg: bad --property {name}: longer than 255 bytes")
            properties[name] = value
        elif kind == "milliseconds":
            if not value.isascii() or not value.isdigit():
                raise UsageError(f"txmsg: bad --property {item!r}: expiration is whole milliseconds")
            properties[name] = value
        else:
            limit = 256 if kind == "octet" else 2**64
            try:
                number = int(value)
            except ValueError:
                number = -1
            if not 0 <= number < limit:
                raise UsageError(f"txmsg: bad --property {item!r}: expected an integer 0-{limit - 1}")
            properties[name] = number
    return properties


def _loads(text: str | bytes) -> Any:
    """
    Parse strict JSON (no NaN or Infinity).

    @raise ValueError: it is not JSON.
    """

    def constant(name: str) -> NoReturn:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=constant)


def _argument_body(format: str, index: int, text: str) -> bytes:
    """
    The body of the C{index}th MESSAGE argument in C{format}.
    """
    if format == "bytes":
        return os.fsencode(text)
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"txmsg: message {index} is not valid UTF-8; use --bytes") from None
    if format == "json":
        try:
            _loads(text)
        except ValueError as e:
            raise UsageError(f"txmsg: message {index} is not valid JSON: {e}") from None
    return body


def _call_payload(format: str, text: str | None) -> Any:
    """
    The request payload of C{call}, or C{_STDIN} to read it from standard input.
    """
    if text == "-":
        return _STDIN
    if text is None:
        return None if format == "json" else ""
    if format == "json":
        try:
            return _loads(text)
        except ValueError as e:
            raise UsageError(f"txmsg: PAYLOAD is not valid JSON: {e}") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("txmsg: PAYLOAD is not valid UTF-8") from None
    return text


_STDIN: Any = object()


# ----------------------------------------------------------------------
# showing messages


def jsonable(value: Any) -> Any:
    """
    C{value} made serialisable as JSON: bytes become text when they are
    UTF-8, else C{{"base64": "..."}}; datetimes become ISO 8601 text;
    decimals become text; NaN and infinities become text; tables and arrays
    are converted item by item.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def _payload(message: Message) -> Any:
    """
    The message's payload; its raw body when it does not decode.
    """
    try:
        return message.payload
    except UndecodableMessage:
        return message.body


def message_to_json(message: Message) -> dict[str, Any]:
    """
    A delivered message as a JSON-serialisable dict: C{exchange},
    C{routing_key}, C{redelivered}, C{properties} (those set, headers
    included, by txmsg's names) and C{payload} (decoded by content type; see
    L{jsonable} for bytes).
    """
    properties = {name: jsonable(value) for name, value in message.properties().items()}
    if isinstance(message.timestamp, _dt.datetime):
        properties["timestamp"] = message.timestamp.isoformat()
    return {
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "redelivered": message.redelivered,
        "properties": properties,
        "payload": jsonable(_payload(message)),
    }


def _one_line(text: str) -> str:
    """
    C{text} with line breaks and other unprintable characters escaped.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def readable_line(message: Message) -> str:
    """
    A delivered message as one readable line: C{exchange/routing_key: payload},
    text as it is, JSON compact, bytes as text with escapes.
    """
    payload = _payload(message)
    if isinstance(payload, str):
        shown = payload
    elif isinstance(payload, bytes):
        shown = payload.decode("utf-8", "backslashreplace")
    else:
        shown = json.dumps(jsonable(payload), ensure_ascii=False)
    return f"{message.exchange or '(default)'}/{message.routing_key}: {_one_line(shown)}"


def _reply_bytes(payload: Any) -> bytes:
    """
    A reply as printed by C{call}: JSON pretty-printed, text as it is (with a
    final newline), bytes raw.
    """
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, str):
        return (payload if payload.endswith("\n") else payload + "\n").encode("utf-8", "surrogateescape")
    return (json.dumps(jsonable(payload), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# ----------------------------------------------------------------------
# running


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


@implementer(ILogObserver)
class _ConnectErrors:
    """
    Remembers the last reason a connection attempt failed, from txmsg's log
    events, to say why no broker could be reached.
    """

    def __init__(self) -> None:
        #: the URL (password masked) and the error of the last failed attempt
        self.last: tuple[str | None, str] | None = None

    def __call__(self, event: Mapping[str, Any]) -> None:
        if str(event.get("log_namespace", "")).startswith("txmsg.connection") and "error" in event:
            url = event.get("url")
            self.last = (None if url is None else str(url), _one_line(str(event["error"])))

    @contextmanager
    def watching(self) -> Iterator[_ConnectErrors]:
        globalLogPublisher.addObserver(self)
        try:
            yield self
        finally:
            globalLogPublisher.removeObserver(self)


async def _connect(reactor: Any, connection: Connection, timeout: float, io: Io) -> None:
    """
    Wait until C{connection} is ready.

    @raise CommandFailed: no broker within C{timeout} seconds (69).
    @raise FatalConnectionError: the broker refused us (e.g.
        L{AuthenticationError}).
    @raise Interrupted: a signal came first.
    """
    with _ConnectErrors().watching() as errors:
        ready = connection.when_ready()
        ready.addTimeout(timeout, reactor)
        try:
            await io.interruptible(ready)
        except TimeoutError:
            why = ""
            if errors.last is not None:
                url, error = errors.last
                # the URL is worth repeating only when there are several
                why = (
                    f" (last error: {url}: {error})" if url and len(connection.params) > 1 else f" ({error})"
                )
            raise CommandFailed(
                EXIT_UNAVAILABLE, f"no broker reachable within {timeout:g} s at {connection.safe_urls}{why}"
            ) from None


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


async def _stop(connection: Connection) -> None:
    """
    Close C{connection}; a failure to close politely is not the command's.
    """
    try:
        await connection.stopService()
    except Exception:  # noqa: BLE001, S110 - the broker went away first: nothing left to close
        pass


# ----------------------------------------------------------------------
# publish


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


class _BadInput(Exception):
    """
    A line of standard input is not what C{--json} or C{--text} needs.
    """


def _line_body(format: str, line: bytes) -> bytes | None:
    """
    The body for one line of standard input, or L{None} to skip it.

    @raise _BadInput: the line is not valid in C{format}.
    """
    if format == "bytes":
        return line
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadInput("not valid UTF-8 (use --bytes to send bytes)") from None
    if format == "json":
        if not text.strip():
            return None
        try:
            _loads(text)
        except ValueError as e:
            raise _BadInput(f"not valid JSON: {e}") from None
    return line


class _Tally:
    """
    The outcome of the publishes of one C{txmsg publish}, with a bounded
    number awaiting their confirm.

    @ivar fatal: a failure after which publishing more is pointless (a
        missing exchange, a refused permission, a lost broker).
    """

    def __init__(self) -> None:
        self.published = 0
        self.confirmed = 0
        self.failures: Counter[str] = Counter()
        self.codes: set[int] = set()
        self.fatal: BaseException | None = None
        self.outstanding = 0
        self._wake: Deferred[None] | None = None
        self._wake_at = 0

    def track(self, d: Deferred[None]) -> None:
        self.published += 1
        self.outstanding += 1
        d.addCallbacks(self._confirmed, self._failed)

    def room(self) -> Deferred[None]:
        """
        Fire once there is room to publish more: at once below the window,
        else when only L{PUBLISH_RESUME} await their confirm.
        """
        if self.outstanding < PUBLISH_WINDOW:
            return succeed(None)
        return self._wait(PUBLISH_RESUME)

    def all_settled(self) -> Deferred[None]:
        """
        Fire once every publish is confirmed or failed.
        """
        return succeed(None) if not self.outstanding else self._wait(0)

    def _wait(self, level: int) -> Deferred[None]:
        self._wake = Deferred()
        self._wake_at = level
        return self._wake

    def _settled(self) -> None:
        self.outstanding -= 1
        wake = self._wake
        if wake is not None and self.outstanding <= self._wake_at:
            self._wake = None
            wake.callback(None)

    def _confirmed(self, _: object) -> None:
        self.confirmed += 1
        self._settled()

    def _failed(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, Nacked):
            self.failures[f"nacked: {error}"] += 1
            self.codes.add(EXIT_FAILED)
        elif isinstance(error, Unroutable):
            self.failures[f"returned: {error}"] += 1
            self.codes.add(EXIT_FAILED)
        elif isinstance(error, MessageTooLarge):
            # that message alone: the others go on
            self.failures[f"refused: {error}"] += 1
            self.codes.add(EXIT_FAILED)
        else:
            self.failures[f"failed: {_one_line(str(error)) or type(error).__name__}"] += 1
            self.codes.add(_exit_code(error))
            if self.fatal is None:
                self.fatal = error
        self._settled()


async def publish(reactor: Any, args: Any, io: Io) -> int:
    """
    C{txmsg publish}: publish the messages of the arguments, or of standard
    input, and wait for every confirm.

    @return: the exit code.
    """
    connection = Connection(args.urls, reactor=reactor, name="txmsg publish")
    tally = _Tally()
    reader: _LineReader | None = None
    bad_input: str | None = None
    interrupted: Interrupted | None = None
    try:
        await _connect(reactor, connection, args.timeout, io)
        producer = Producer(connection, window=PUBLISH_WINDOW)
        properties = dict(args.properties)
        content_type = properties.pop("content_type", _CONTENT_TYPES[args.format])

        def send(body: bytes) -> None:
            tally.track(
                producer.publish(
                    args.exchange,
                    args.routing_key,
                    body,
                    mandatory=args.mandatory,
                    timeout=args.timeout,
                    content_type=content_type,
                    persistent=True if args.persistent else None,
                    headers=args.headers or None,
                    **properties,
                )
            )

        def stop_reading(signum: int) -> None:
            nonlocal interrupted
            interrupted = Interrupted(signum)
            if reader is not None:
                reader.stop()

        io.on_interrupt(stop_reading)
        if args.bodies:
            for body in args.bodies:
                if tally.fatal is not None or interrupted is not None:
                    break
                send(body)
                await tally.room()
        else:
            reader = _LineReader(reactor, io.stdin)
            number = 0
            while tally.fatal is None and interrupted is None and bad_input is None:
                lines = await reader.read_lines()
                if not lines:
                    break
                for line in lines:
                    number += 1
                    try:
                        body = _line_body(args.format, line)
                    except _BadInput as e:
                        bad_input = f"line {number} of standard input is {e}"
                        break
                    if body is not None:
                        send(body)
                    if tally.outstanding >= PUBLISH_WINDOW:
                        await tally.room()
                        if tally.fatal is not None or interrupted is not None:
                            break
            reader.stop()
        # a first Ctrl-C stops the reading, not the wait for what was sent
        await tally.all_settled()
    finally:
        await _stop(connection)
    for reason, count in sorted(tally.failures.items()):
        io.error(f"{count} message{'s' if count != 1 else ''} {reason}")
    if bad_input is not None:
        io.error(bad_input)
    summary = f"published {tally.published}, confirmed {tally.confirmed}"
    failed = tally.published - tally.confirmed
    io.stderr.write(summary + (f", failed {failed}" if failed else "") + "\n")
    io.stderr.flush()
    if interrupted is not None:
        return 128 + interrupted.signum
    if bad_input is not None:
        return EXIT_USAGE
    if tally.codes:
        # the most specific reason wins over "some failed"
        return max(tally.codes - {EXIT_FAILED}, default=EXIT_FAILED)
    return EXIT_OK


# ----------------------------------------------------------------------
# listen


async def listen(reactor: Any, args: Any, io: Io) -> int:
    """
    C{txmsg listen}: print messages as they arrive until C{--count} of them,
    a signal, or a closed standard output; ack exactly those printed.

    @return: the exit code.
    """
    connection = Connection(args.urls, reactor=reactor, name="txmsg listen")
    try:
        await _connect(reactor, connection, args.timeout, io)
        queue: Queue | str
        if args.queue is not None:
            try:
                await io.interruptible(connection.declare(Queue(args.queue, passive=True)))
            except NotFound as e:
                raise CommandFailed(EXIT_NOINPUT, f"queue {args.queue!r} not found: {e}") from None
            queue = args.queue
        else:
            queue = Queue("", exclusive=True, auto_delete=True)
            bindings = [Binding(queue, args.exchange, key) for key in args.keys]
            try:
                await io.interruptible(connection.declare(queue, *bindings))
            except NotFound as e:
                raise CommandFailed(EXIT_NOINPUT, f"exchange {args.exchange!r} not found: {e}") from None
        return await _print_messages(reactor, connection, queue, args, io)
    finally:
        await _stop(connection)


async def _print_messages(reactor: Any, connection: Connection, queue: Queue | str, args: Any, io: Io) -> int:
    """
    Consume C{queue}, printing each message, until done; the body of L{listen}.
    """
    count: int | None = args.count

    def render(message: Message) -> str:
        if args.json:
            return json.dumps(message_to_json(message), ensure_ascii=False)
        return readable_line(message)

    printed = 0
    done: Deferred[None] = Deferred()
    stopped: list[Deferred[None]] = []

    def finish(_: object = None) -> None:
        # Stopping the consumer at once (from inside the handler) means no
        # delivery after this one reaches the handler: they stay unacked and
        # go back to the queue when the channel closes.
        if not stopped:
            stopped.append(consumer.stopService())
        if not done.called:
            done.callback(None)

    def hung_up() -> None:
        if watcher is not None:
            watcher.stop()
        _silence_stdout(io)
        finish()

    def handle(message: Message) -> Deferred[None] | None:
        nonlocal printed
        line = render(message)
        try:
            io.stdout.write(line.encode("utf-8", "surrogateescape") + b"\n")
            io.stdout.flush()
        except (BrokenPipeError, ValueError):  # ValueError: closed
            hung_up()
            # never settled: the message was not printed, so it goes back to
            # the queue when the stopping consumer gives up on it
            return Deferred()
        printed += 1
        if count is not None and printed >= count:
            finish()
        return None

    def stopped_for_good(reason: Failure) -> None:
        if not done.called:
            done.errback(reason)

    prefetch = min(count, LISTEN_PREFETCH) if count is not None else LISTEN_PREFETCH
    consumer = Consumer(connection, queue, handle, prefetch=prefetch, stop_timeout=0)
    connection.add_stop_listener(stopped_for_good)
    forget = io.on_interrupt(finish)
    watcher = _HangupWatcher.watch(reactor, io.stdout, hung_up)
    consumer.startService()
    try:
        try:
            await io.interruptible(consumer.wait_consuming())
        except Interrupted:
            return EXIT_OK
        except NotFound as e:
            raise CommandFailed(
                EXIT_NOINPUT, f"cannot consume {_queue_name(connection, queue)!r}: {e}"
            ) from None
        await done
    finally:
        forget()
        if watcher is not None:
            watcher.stop()
        if not stopped:
            stopped.append(consumer.stopService())
        await stopped[0]
    return EXIT_OK


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
        Watch C{stream} if it is a pipe; else L{None}.
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


def _queue_name(connection: Connection, queue: Queue | str) -> str:
    return queue if isinstance(queue, str) else queue.resolve(connection.names)


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


# ----------------------------------------------------------------------
# call


async def call(reactor: Any, args: Any, io: Io) -> int:
    """
    C{txmsg call}: one RPC call (or, with C{--gather}, a broadcast), its
    reply printed on standard output.

    @return: the exit code.
    """
    request = args.request
    if request is _STDIN:
        reader = _LineReader(reactor, io.stdin)
        chunks = []
        while lines := await io.interruptible(reader.read_lines()):
            chunks.extend(lines)
        request = _call_payload(args.format, b"\n".join(chunks).decode("utf-8", "surrogateescape"))
    content_type = _CONTENT_TYPES[args.format]
    connection = Connection(args.urls, reactor=reactor, name="txmsg call")
    try:
        await _connect(reactor, connection, args.timeout, io)
        client = RpcClient(connection)
        if args.gather:
            errors: list[str] = []

            def show(reply: Reply) -> None:
                shown: dict[str, Any] = {"server": reply.server}
                if isinstance(reply.payload, Exception):
                    error = reply.payload
                    kind = error.remote_type if isinstance(error, RemoteError) else type(error).__name__
                    text = error.remote_message if isinstance(error, RemoteError) else str(error)
                    shown["error"] = {"type": kind, "message": text}
                    errors.append(f"remote error from {reply.server}: {kind}: {_one_line(text)}")
                else:
                    shown["payload"] = jsonable(reply.payload)
                _write(io, json.dumps(shown, ensure_ascii=False).encode("utf-8", "surrogateescape") + b"\n")

            replies = await io.interruptible(
                client.gather(
                    args.routing_key,
                    request,
                    exchange=args.exchange,
                    timeout=args.timeout,
                    expect=args.expect,
                    on_reply=show,
                    content_type=content_type,
                )
            )
            for line in errors:
                io.error(line)
            if errors:
                return EXIT_REMOTE_ERROR
            if not replies:
                raise RpcTimeout("no reply")
        else:
            reply = await io.interruptible(
                client.call(
                    args.routing_key,
                    request,
                    exchange=args.exchange,
                    timeout=args.timeout,
                    content_type=content_type,
                )
            )
            _write(io, _reply_bytes(reply))
    except RpcTimeout:
        raise CommandFailed(
            EXIT_TIMEOUT, f"no reply to {args.routing_key!r} within {args.timeout:g} s"
        ) from None
    except NoServer:
        where = f"exchange {args.exchange!r}" if args.exchange else "the default exchange"
        raise CommandFailed(
            EXIT_NO_SERVER, f"no server: no queue is bound to {args.routing_key!r} on {where}"
        ) from None
    except RemoteError as e:
        raise CommandFailed(
            EXIT_REMOTE_ERROR, f"remote error: {e.remote_type}: {_one_line(e.remote_message)}"
        ) from None
    finally:
        await _stop(connection)
    return EXIT_OK


def _write(io: Io, data: bytes) -> None:
    """
    Write C{data} on standard output; a closed output is silenced.
    """
    try:
        io.stdout.write(data)
        io.stdout.flush()
    except (BrokenPipeError, ValueError):
        _silence_stdout(io)


# ----------------------------------------------------------------------
# the driver

_COMMANDS: Mapping[str, Callable[[Any, Any, Io], Coroutine[Any, Any, int]]] = {
    "publish": publish,
    "listen": listen,
    "call": call,
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
        io.stderr.write(f"{_one_line(str(error))}\n")
        return EXIT_USAGE
    if isinstance(error, (TxmsgError, CommandFailed)):
        io.error(_one_line(str(error)) or type(error).__name__)
        return _exit_code(error)
    # a bug: say so, with what is needed to report it
    io.error(f"internal error: {type(error).__name__}: {_one_line(str(error))}")
    io.stderr.write("".join(traceback.format_exception(error)))
    return EXIT_SOFTWARE


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

    @param argv: the arguments after the program name; L{None} for C{sys.argv}.
    @return: the exit code (see the module docstring).
    """
    io = Io()
    try:
        args = parse_args(argv)
    except UsageError as e:
        io.stderr.write(f"{_one_line(str(e))}\n")
        return EXIT_USAGE
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else EXIT_OK
    from twisted.internet import reactor

    return run(reactor, args, io)


if __name__ == "__main__":
    sys.exit(main())
