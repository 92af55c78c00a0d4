"""
The C{txmsg} command line: the argparse parser, and the checks and
conversions argparse cannot do (broker URLs, C{--header}, C{--property},
messages and payloads given as arguments).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from txmsg._render import one_line
from txmsg.cli._errors import UsageError
from txmsg.exits import help_text
from txmsg.message import JSON, TEXT
from txmsg.url import InvalidURL, default_urls, parse_urls

#: seconds to wait for a broker, a confirm or a reply, unless --timeout says
DEFAULT_TIMEOUT = 10.0

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


class _Parser(argparse.ArgumentParser):
    """
    An argument parser whose errors are one line, raised as L{UsageError}
    instead of printing usage and exiting.
    """

    def error(self, message: str) -> NoReturn:
        """
        Raise L{UsageError} naming the problem and where to read more.
        """
        raise UsageError(f"{self.prog}: {one_line(message)} (see '{self.prog} --help')")


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


def build_parser() -> argparse.ArgumentParser:
    """
    The parser of the C{txmsg} command line (it does not check values that
    need more than argparse: see L{parse_args}).
    """
    formatter = argparse.RawDescriptionHelpFormatter
    exit_codes = help_text()
    parser = _Parser(
        prog="txmsg",
        description="Publish, listen and call over RabbitMQ with txmsg.",
        epilog=exit_codes,
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
        "expiration is in milliseconds).\n" + exit_codes,
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
        epilog=exit_codes,
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
        epilog=exit_codes,
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
    _add_dlq(sub, formatter, exit_codes)
    return parser


def _add_dlq(sub: Any, formatter: Any, exit_codes: str) -> None:
    dlq = sub.add_parser(
        "dlq",
        help="see why messages died in a dead-letter queue, replay or purge them",
        description="Inspect a dead-letter queue (list, show: nothing is consumed for good), send its "
        "messages back to where they first went (replay: each acked only once its republish is "
        "confirmed), or delete them (purge).",
        epilog=exit_codes,
        formatter_class=formatter,
    )
    actions = dlq.add_subparsers(dest="action", metavar="ACTION", required=True)
    helps = {
        "list": "how many messages, grouped by reason and origin, oldest and newest",
        "show": "the messages with their death records (x-death and txmsg's failure headers)",
        "replay": "republish the messages (confirmed) to where they first went, then remove them",
        "purge": "delete the messages (needs --yes)",
    }
    for name, text in helps.items():
        action = actions.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + ".",
            epilog=exit_codes,
            formatter_class=formatter,
        )
        _add_url(action)
        _add_timeout(action, "")
        action.add_argument("queue", metavar="QUEUE", help="the dead-letter queue (e.g. jobs.dlq)")
        if name == "show":
            action.add_argument(
                "-n",
                "--count",
                type=_count,
                default=10,
                metavar="N",
                help="show the first N messages (default 10)",
            )
            action.add_argument("--json", action="store_true", help="one JSON object per message")
        elif name == "replay":
            action.add_argument("-n", "--count", type=_count, metavar="N", help="replay at most N messages")
            action.add_argument(
                "--to",
                metavar="EXCHANGE/KEY",
                help="publish there instead (/KEY: the default exchange, to queue KEY)",
            )
            action.add_argument(
                "--where",
                action="append",
                default=[],
                metavar="FIELD=VALUE",
                help="replay only messages whose reason, queue or key is VALUE (repeatable)",
            )
        elif name == "purge":
            action.add_argument("--yes", action="store_true", help="yes, delete them")


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Any:
    """
    Parse and check a command line.

    Besides what argparse checks, the broker URLs are parsed, C{--header} and
    C{--property} become C{args.headers} and C{args.properties}, and messages
    given as arguments are checked and encoded into C{args.bodies}.

    @param argv: the arguments after the program name; C{None} for C{sys.argv}.
    @param environ: where C{TXMSG_URL} is read; C{None} for C{os.environ}.
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
    elif args.command == "dlq":
        _check_dlq(args)
    return args


#: what txmsg dlq replay --where can match
WHERE_FIELDS = ("reason", "queue", "key")


def _check_dlq(args: Any) -> None:
    if args.action == "purge" and not args.yes:
        raise UsageError(f"txmsg dlq purge: deleting the messages of {args.queue!r} needs --yes")
    if args.action != "replay":
        return
    if args.to is not None:
        exchange, slash, key = args.to.partition("/")
        if not slash:
            raise UsageError(f"txmsg dlq replay: --to takes EXCHANGE/KEY (or /KEY), not {args.to!r}")
        args.to = (exchange, key)
    where = []
    for item in args.where:
        field, equals, value = item.partition("=")
        if not equals or field not in WHERE_FIELDS:
            raise UsageError(
                f"txmsg dlq replay: --where takes FIELD=VALUE with FIELD one of {', '.join(WHERE_FIELDS)}, "
                f"not {item!r}"
            )
        where.append((field, value))
    args.where = where


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
    Why C{value} (from JSON) cannot be a header value, or C{None}.
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
