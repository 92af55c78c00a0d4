"""
The C{txmsg} command without a broker: usage errors are one line and exit 2
(never a traceback), options become headers, properties and bodies, messages
render as JSON-serialisable objects and readable lines, standard input is
read line by line as it arrives, and publishes are tallied by outcome.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txmsg import Message, cli
from txmsg.errors import AuthenticationError, NotFound
from txmsg.producer import Nacked, Unroutable

ROOT = Path(__file__).resolve().parents[2]


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["publish", "--bogus"], "unrecognized arguments: --bogus"),
        (["publish", "--header", "no-equals-sign", "x"], "bad --header 'no-equals-sign'"),
        (["publish", "--header", "=v", "x"], "bad --header '=v'"),
        (["publish", "--header", "n:={oops", "x"], "invalid JSON"),
        (["publish", "--header", f"big:={2**64}", "x"], "does not fit in 64 bits"),
        (["publish", "--property", "colour=red", "x"], "unknown property 'colour'"),
        (["publish", "--property", "priority=high", "x"], "expected an integer 0-255"),
        (["publish", "--property", "priority=256", "x"], "expected an integer 0-255"),
        (["publish", "--property", "expiration=soon", "x"], "expiration is whole milliseconds"),
        (["publish", "--json", '{"ok": 1}', "{bad"], "message 2 is not valid JSON"),
        (["publish", "--json", "NaN"], "message 1 is not valid JSON"),
        (["publish", "--text", "--bytes", "x"], "not allowed with argument"),
        (["publish", "--timeout", "0", "x"], "must be a number greater than 0"),
        (["publish", "--url", "amqp://guest:s3cret@host:99999/", "x"], "port 99999 out of range"),
        (["publish", "--url", "http://localhost/", "x"], "invalid AMQP URL"),
        (["listen"], "one of the arguments -q/--queue -e/--exchange is required"),
        (["listen", "--queue", "q", "-e", "x"], "not allowed with argument"),
        (["listen", "--queue", "q", "-k", "key"], "-k goes with -e EXCHANGE"),
        (["listen", "-e", "", "-k", "key"], "-e needs an exchange name"),
        (["listen", "--queue", "q", "--count", "0"], "must be at least 1"),
        (["call", "x"], "required: -k/--routing-key"),
        (["call", "-k", "rpc", "--expect", "2", "x"], "--expect goes with --gather"),
        (["call", "-k", "rpc", "--json", "{bad"], "PAYLOAD is not valid JSON"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "required: COMMAND"),
        (["dlq"], "required: ACTION"),
        (["dlq", "list"], "required: QUEUE"),
        (["dlq", "purge", "jobs.dlq"], "needs --yes"),
        (["dlq", "replay", "jobs.dlq", "--to", "nowhere"], "--to takes EXCHANGE/KEY"),
        (["dlq", "replay", "jobs.dlq", "--where", "colour=red"], "--where takes FIELD=VALUE"),
        (["dlq", "show", "jobs.dlq", "-n", "0"], "must be at least 1"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    Each user mistake exits 2 with exactly one line on stderr naming it, and
    nothing on stdout; a password in a bad URL is masked.
    """
    assert cli.main(argv) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    lines = stderr_lines(err)
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert out == ""
    assert "s3cret" not in err


def test_invalid_txmsg_url_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    Without --url, a malformed $TXMSG_URL is the usage error (its password
    masked); a valid --url given on the command line wins over it.
    """
    monkeypatch.setenv("TXMSG_URL", "amqp://u:pw-in-env@host:0x10/")
    assert cli.main(["publish", "x"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "invalid AMQP URL" in err and "pw-in-env" not in err
    args = cli.parse_args(["publish", "--url", "amqp://localhost/", "x"])
    assert args.urls == ["amqp://localhost/"]


@pytest.mark.parametrize("command", [[], ["publish"], ["listen"], ["call"]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """
    --help prints the usage of the command (with the exit codes) and exits 0.
    """
    assert cli.main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(['txmsg', *command])}")
    assert "   69  no broker reachable in time" in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["publish", "--header", "oops"], "bad --header 'oops'"),
        (["publish", "--json", "{bad"], "not valid JSON"),
        (["listen", "--queue", "q", "--nope"], "unrecognized arguments: --nope"),
    ],
)
def test_the_real_command_never_shows_a_traceback(argv: list[str], expected: str) -> None:
    """
    Run as a process, a usage error is exit 2 and one stderr line, no traceback.
    """
    result = subprocess.run(
        [sys.executable, "-m", "txmsg.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, TXMSG_URL="amqp://guest:guest@127.0.0.1:1/%2F"),
    )
    assert result.returncode == 2
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_headers_properties_and_bodies_are_parsed() -> None:
    """
    K=V is a string header, K:=JSON a typed one; properties are converted
    by kind; message arguments are encoded per format.
    """
    args = cli.parse_args(
        [
            "publish",
            "--url",
            "amqp://localhost/",
            "--header",
            "tenant=acme=corp",
            "--header",
            "n:=3",
            "--header",
            'tags:=["a", {"deep": null}]',
            "--header",
            'url:="x"',
            "--property",
            "priority=9",
            "--property",
            "timestamp=1700000000",
            "--property",
            "expiration=60000",
            "--property",
            "message_id=m-1",
            "--json",
            '{"id": 1}',
            "[2]",
        ]
    )
    assert args.headers == {"tenant": "acme=corp", "n": 3, "tags": ["a", {"deep": None}], "url": "x"}
    assert args.properties == {
        "priority": 9,
        "timestamp": 1700000000,
        "expiration": "60000",
        "message_id": "m-1",
    }
    assert args.bodies == [b'{"id": 1}', b"[2]"]


def test_call_payload_by_format() -> None:
    """
    call sends text by default, parsed JSON with --json, an empty payload
    without PAYLOAD (null with --json), and '-' means standard input.
    """
    assert cli.parse_args(["call", "-k", "r", "hi"]).request == "hi"
    assert cli.parse_args(["call", "-k", "r", "--json", '{"a": [1]}']).request == {"a": [1]}
    assert cli.parse_args(["call", "-k", "r"]).request == ""
    assert cli.parse_args(["call", "-k", "r", "--json"]).request is None
    assert cli.parse_args(["call", "-k", "r", "-"]).request is cli._STDIN


def test_listen_binds_with_hash_by_default() -> None:
    """
    listen -e without -k binds with '#', which suits fanout and topic exchanges.
    """
    assert cli.parse_args(["listen", "-e", "logs"]).keys == ["#"]
    assert cli.parse_args(["listen", "-e", "logs", "-k", "a", "-k", "b"]).keys == ["a", "b"]


def delivered(body: bytes, properties: dict[str, Any], exchange: str = "ex", key: str = "rk") -> Message:
    return Message.from_delivery(
        body,
        properties,
        {"exchange": exchange, "routing_key": key, "redelivered": True, "delivery_tag": 7},
    )


def test_message_json_makes_every_value_serialisable() -> None:
    """
    listen --json: bytes become text (or base64 when not UTF-8), datetimes
    ISO 8601, decimals text, nested tables and arrays converted; the result
    survives json.dumps and carries the delivery facts.
    """
    message = delivered(
        b'{"order": 1}',
        {
            "content_type": "application/json",
            "delivery_mode": 2,
            "timestamp": 1700000000,
            "message_id": "m-1",
            "headers": {
                "text": b"caf\xc3\xa9",
                "binary": b"\xff\x00",
                "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
                "price": Decimal("1.50"),
                "nested": {"list": [1, b"\xfe", None, True, 2.5]},
            },
        },
    )
    rendered = cli.message_to_json(message)
    assert json.loads(json.dumps(rendered, allow_nan=False)) == rendered
    assert rendered["exchange"] == "ex"
    assert rendered["routing_key"] == "rk"
    assert rendered["redelivered"] is True
    assert rendered["payload"] == {"order": 1}
    props = rendered["properties"]
    assert props["content_type"] == "application/json"
    assert props["delivery_mode"] == 2
    assert props["message_id"] == "m-1"
    assert props["timestamp"] == "2023-11-14T22:13:20+00:00"
    assert props["headers"] == {
        "text": "café",
        "binary": {"base64": "/wA="},
        "when": "2024-01-02T03:04:05+00:00",
        "price": "1.50",
        "nested": {"list": [1, {"base64": "/g=="}, None, True, 2.5]},
    }


@pytest.mark.parametrize(
    "body, properties, payload",
    [
        (b"hello", {"content_type": "text/plain"}, "hello"),
        (b"\x89PNG\x00", {}, {"base64": "iVBORwA="}),
        (b"plain bytes", {}, "plain bytes"),
        (b"[1, 2]", {"content_type": "application/json"}, [1, 2]),
    ],
)
def test_message_json_payload_by_content_type(body: bytes, properties: dict[str, Any], payload: Any) -> None:
    """
    The payload is decoded by content type; bytes that are not UTF-8 are base64.
    """
    assert cli.message_to_json(delivered(body, properties))["payload"] == payload


def test_readable_line_is_one_line() -> None:
    """
    The default listen output: exchange/routing_key: payload, with line
    breaks escaped so that one message is always one line.
    """
    assert cli.readable_line(delivered(b"hi", {"content_type": "text/plain"})) == "ex/rk: hi"
    text = cli.readable_line(delivered(b"two\nlines", {"content_type": "text/plain"}, exchange=""))
    assert text == "(default)/rk: two\\nlines"
    json_line = cli.readable_line(delivered(b'{"a": [1]}', {"content_type": "application/json"}))
    assert json_line == 'ex/rk: {"a": [1]}'
    assert "\n" not in cli.readable_line(delivered(b"\xff\n\x00", {}))


def test_replies_print_json_pretty_text_as_is_bytes_raw() -> None:
    """
    call's output: JSON replies pretty-printed, text with one final newline,
    bytes exactly as received.
    """
    assert cli._reply_bytes({"a": 1}) == b'{\n  "a": 1\n}\n'
    assert cli._reply_bytes("done") == b"done\n"
    assert cli._reply_bytes("done\n") == b"done\n"
    assert cli._reply_bytes(b"\x00raw") == b"\x00raw"


# ----------------------------------------------------------------------
# reading standard input


def _later(seconds: float, f: Any, *a: Any) -> None:
    reactor.callLater(seconds, f, *a)  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_lines_from_a_pipe_arrive_as_they_are_written() -> None:
    """
    A line is handed out as soon as it was written, while the writer is
    still open (stdin is streamed, not read to its end first); a line split
    across writes is joined, and a last line without a newline counts.
    """
    read_end, write_end = os.pipe()
    reader = cli._LineReader(reactor, read_end)
    try:
        os.write(write_end, b"first\nsec")
        assert await reader.read_lines() == [b"first"]
        _later(0.01, os.write, write_end, b"ond\r\nthird\n\nlast")
        assert await reader.read_lines() == [b"second\r", b"third", b""]
        _later(0.01, os.close, write_end)
        assert await reader.read_lines() == [b"last"]
        assert await reader.read_lines() == []
    finally:
        reader.stop()
        os.close(read_end)


@pytest_twisted.ensureDeferred
async def test_lines_from_a_regular_file(tmp_path: Path) -> None:
    """
    A regular file (stdin redirected from a file) is read to its end.
    """
    path = tmp_path / "lines"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(20000)))
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = cli._LineReader(reactor, fd)
        got: list[bytes] = []
        while lines := await reader.read_lines():
            got.extend(lines)
        assert len(got) == 20000 and got[-1] == b"line 19999"
    finally:
        os.close(fd)


@pytest_twisted.ensureDeferred
async def test_stop_ends_a_pending_read() -> None:
    """
    Stopping the reader (Ctrl-C while waiting for input) ends a pending read.
    """
    read_end, write_end = os.pipe()
    reader = cli._LineReader(reactor, read_end)
    try:
        pending = reader.read_lines()
        assert not pending.called
        reader.stop()
        assert await pending == []
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize(
    "format, line, body",
    [
        ("text", b"caf\xc3\xa9\r", b"caf\xc3\xa9"),
        ("bytes", b"\xff\x00\r", b"\xff\x00\r"),
        ("json", b'{"a": 1}', b'{"a": 1}'),
        ("json", b"   ", None),
    ],
)
def test_line_bodies(format: str, line: bytes, body: bytes | None) -> None:
    """
    A CR before the newline goes except with --bytes; --json skips blank lines.
    """
    assert cli._line_body(format, line) == body


@pytest.mark.parametrize("format, line", [("text", b"\xff"), ("json", b"{oops"), ("json", b"Infinity")])
def test_bad_lines_are_refused(format: str, line: bytes) -> None:
    """
    A line that is not UTF-8 text, or not JSON with --json, is bad input.
    """
    with pytest.raises(cli._BadInput):
        cli._line_body(format, line)


# ----------------------------------------------------------------------
# tallying publishes


def test_tally_bounds_the_publishes_awaiting_confirms() -> None:
    """
    At PUBLISH_WINDOW unconfirmed publishes, room() waits until only
    PUBLISH_RESUME are left.
    """
    tally = cli._Tally()
    pending: list[Deferred[None]] = [Deferred() for _ in range(cli.PUBLISH_WINDOW)]
    for d in pending[:-1]:
        tally.track(d)
    assert tally.room().called
    tally.track(pending[-1])
    room = tally.room()
    assert not room.called
    confirm_until = cli.PUBLISH_WINDOW - cli.PUBLISH_RESUME
    for d in pending[: confirm_until - 1]:
        d.callback(None)
    assert not room.called
    pending[confirm_until - 1].callback(None)
    assert room.called
    assert tally.outstanding == cli.PUBLISH_RESUME


def test_tally_counts_failures_by_reason() -> None:
    """
    Nacks and returns are counted per reason and make exit 1 but do not stop
    publishing; a missing exchange is fatal and makes exit 66.
    """
    tally = cli._Tally()
    outcomes = [
        None,
        Failure(Nacked("the broker nacked it")),
        Failure(Unroutable(312, "NO_ROUTE", "", "k")),
        Failure(Unroutable(312, "NO_ROUTE", "", "k")),
    ]
    for outcome in outcomes:
        d: Deferred[None] = Deferred()
        tally.track(d)
        if outcome is None:
            d.callback(None)
        else:
            d.errback(outcome)
    assert (tally.published, tally.confirmed) == (4, 1)
    assert tally.failures == {
        "nacked: the broker nacked it": 1,
        "returned: 312 NO_ROUTE: no queue for routing key 'k' on exchange ''": 2,
    }
    assert tally.fatal is None and tally.codes == {cli.EXIT_FAILED}
    missing: Deferred[None] = Deferred()
    tally.track(missing)
    missing.errback(NotFound(404, "NOT_FOUND - no exchange 'x' in vhost '/'"))
    assert isinstance(tally.fatal, NotFound)
    assert cli.EXIT_NOINPUT in tally.codes
    assert tally.all_settled().called


@pytest.mark.parametrize(
    "error, code",
    [
        (AuthenticationError("refused"), cli.EXIT_NOPERM),
        (NotFound(404, "NOT_FOUND"), cli.EXIT_NOINPUT),
        (cli.CommandFailed(cli.EXIT_UNAVAILABLE, "no broker"), cli.EXIT_UNAVAILABLE),
        (cli.Interrupted(2), 130),
        (cli.Interrupted(15), 143),
    ],
)
def test_exit_codes_by_error(error: BaseException, code: int) -> None:
    """
    Refused credentials are 77, a missing queue or exchange 66, a signal 128+N.
    """
    assert cli._exit_code(error) == code


def test_every_help_text_lists_every_exit_status_of_the_one_table() -> None:
    """
    The exit statuses are one table (txmsg.exits.TABLE): the command's help
    and each subcommand's print every status of it, and the statuses the
    command returns for call failures are in it.
    """
    from txmsg import exits

    codes = {code for code, _ in exits.TABLE}
    assert {exits.EXIT_TIMEOUT, exits.EXIT_NO_SERVER, exits.EXIT_REMOTE_ERROR, 70, 76} <= codes
    parser = cli.build_parser()
    helps = [parser.format_help()]
    helps += [sub.format_help() for sub in parser._subparsers._group_actions[0].choices.values()]  # type: ignore[union-attr]
    for text in helps:
        listed = [line.split()[0] for line in text.split("exit codes:\n", 1)[1].splitlines() if line.strip()]
        assert listed == [str(code) for code, _ in exits.TABLE]


def test_dlq_arguments_are_parsed_for_the_commands() -> None:
    """
    --to splits into exchange and key (/KEY: the default exchange); --where into (field, value).
    """
    args = cli.parse_args(["dlq", "replay", "jobs.dlq", "--to", "/jobs", "--where", "reason=ValueError"])
    assert (args.command, args.action, args.queue) == ("dlq", "replay", "jobs.dlq")
    assert args.to == ("", "jobs") and args.where == [("reason", "ValueError")]
    assert cli.parse_args(["dlq", "show", "q", "--json"]).count == 10


def test_a_dead_letter_says_why_it_died_from_txmsgs_headers_or_the_brokers() -> None:
    """
    txmsg's failure headers win; without them RabbitMQ's x-first-death-* and
    oldest x-death record give the reason, the queue and where it was published.
    """
    from txmsg.cli._deadletters import death_of

    broker_dead = Message(
        b"x",
        headers={
            "x-first-death-reason": "rejected",
            "x-first-death-queue": "orders",
            "x-first-death-exchange": "shop",
            "x-death": [
                {"reason": "expired", "queue": "orders.later", "exchange": "", "routing-keys": ["later"]},
                {"reason": "rejected", "queue": "orders", "exchange": "shop", "routing-keys": ["new"]},
            ],
        },
    )
    death = death_of(broker_dead)
    assert (death.reason, death.queue, death.exchange, death.routing_key) == (
        "rejected",
        "orders",
        "shop",
        "new",
    )
    assert death.attempts is None
    ours = Message(
        b"x",
        headers={
            "x-txmsg-failure-type": "ValueError",
            "x-txmsg-failure": "boom",
            "x-txmsg-dead-lettered": "retries exhausted",
            "x-txmsg-attempts": 3,
            "x-txmsg-queue": "jobs",
            "x-txmsg-exchange": "",
            "x-txmsg-routing-key": "jobs",
        },
    )
    death = death_of(ours)
    assert (death.reason, death.detail, death.attempts) == ("ValueError", "boom (retries exhausted)", 3)
    assert (death.exchange, death.routing_key) == ("", "jobs")
