"""
The ``txmsg`` command run as a process against the broker, checked by what
the broker holds and what a pika peer receives: ``publish`` from arguments
and standard input, ``listen`` on a queue or an exchange, ``call`` against
txmsg RPC servers in this process, and the exit codes of each failure.

The command runs as ``python -m txmsg.cli`` from the repository root, so it
is the working tree's code (the same the rest of the suite imports).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from txmsg import Connection, Message
from txmsg.rpc import RpcServer

from .. import broker
from .support import BROKER_URL, COMMAND, unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, TXMSG_URL=BROKER_URL)


@dataclass
class Ran:
    code: int
    out: bytes
    err: str
    seconds: float

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_cli(*args: str, stdin: bytes = b"", timeout: float = 60) -> Ran:
    """
    Run C{txmsg ARGS...} to its end (C{$TXMSG_URL} names the test broker).
    """
    start = time.monotonic()
    done = subprocess.run(
        [*COMMAND, *args], cwd=ROOT, env=ENV, input=stdin, capture_output=True, timeout=timeout
    )
    return Ran(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"), time.monotonic() - start)


def start_cli(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*COMMAND, *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@contextmanager
def pika_channel() -> Iterator[Any]:
    conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        yield conn.channel()
    finally:
        conn.close()


@contextmanager
def queue_holding(*bodies: bytes) -> Iterator[str]:
    """
    A new queue holding C{bodies}, deleted afterwards.
    """
    name = unique("cli")
    with pika_channel() as ch:
        ch.queue_declare(name, durable=True)
        for body in bodies:
            ch.basic_publish("", name, body)
    try:
        yield name
    finally:
        with pika_channel() as ch:
            ch.queue_delete(name)


@contextmanager
def topic_exchange() -> Iterator[str]:
    name = unique("cli-x")
    with pika_channel() as ch:
        ch.exchange_declare(name, "topic")
    try:
        yield name
    finally:
        with pika_channel() as ch:
            ch.exchange_delete(name)


def depth(queue: str) -> int:
    with pika_channel() as ch:
        return int(ch.queue_declare(queue, passive=True).method.message_count)


def take(queue: str, count: int) -> list[tuple[Any, bytes]]:
    """
    Get (and ack) up to C{count} messages from C{queue}: (properties, body).
    """
    got = []
    with pika_channel() as ch:
        for _ in range(count):
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            got.append((props, body))
    return got


def publish_when_routed(
    exchange: str, key: str, body: bytes, properties: pika.BasicProperties | None = None
) -> None:
    """
    Publish one mandatory message, again and again until a queue takes it:
    a listener's queue and binding exist once this returns.
    """
    deadline = time.monotonic() + 15
    with pika_channel() as ch:
        ch.confirm_delivery()
        while True:
            try:
                ch.basic_publish(exchange, key, body, properties, mandatory=True)
                return
            except pika.exceptions.UnroutableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


# ----------------------------------------------------------------------
# publish


def test_publish_arguments_with_headers_properties_and_persistence() -> None:
    """
    Each MESSAGE argument is one text/plain message, with --header (string
    and typed), --property and --persistent as pika reads them; stderr says
    how many were published and confirmed.
    """
    with queue_holding() as queue:
        ran = run_cli(
            "publish",
            "-k",
            queue,
            "--persistent",
            "--header",
            "tenant=acme",
            "--header",
            "attempt:=3",
            "--property",
            "message_id=m-1",
            "--property",
            "priority=4",
            "--property",
            "app_id=cli-test",
            "first",
            "sécond",
        )
        assert ran.code == 0, ran.err
        assert ran.err_lines == ["published 2, confirmed 2"]
        got = take(queue, 3)
        assert [body for _, body in got] == [b"first", "sécond".encode()]
        props = got[0][0]
        assert props.content_type == "text/plain"
        assert props.delivery_mode == 2
        assert props.headers == {"tenant": "acme", "attempt": 3}
        assert (props.message_id, props.priority, props.app_id) == ("m-1", 4, "cli-test")


@pytest.mark.parametrize(
    "options, stdin, bodies, content_type",
    [
        ([], b"one\ntwo\r\n\nlast", [b"one", b"two", b"", b"last"], "text/plain"),
        (["--json"], b'{"a": 1}\n\n[2, 3]\n', [b'{"a": 1}', b"[2, 3]"], "application/json"),
        (["--bytes"], b"\xff\x00\r\nnext\n", [b"\xff\x00\r", b"next"], None),
    ],
)
def test_publish_one_message_per_line_of_stdin(
    options: list[str], stdin: bytes, bodies: list[bytes], content_type: str | None
) -> None:
    """
    Without MESSAGE arguments each line of stdin is a message: text by
    default (CRLF and a last line without newline handled), JSON with blank
    lines skipped, or raw bytes with no content type.
    """
    with queue_holding() as queue:
        ran = run_cli("publish", "-k", queue, *options, stdin=stdin)
        assert ran.code == 0, ran.err
        assert ran.err_lines == [f"published {len(bodies)}, confirmed {len(bodies)}"]
        got = take(queue, len(bodies) + 1)
        assert [body for _, body in got] == bodies
        assert {props.content_type for props, _ in got} == {content_type}


def test_publish_a_line_over_the_brokers_max_message_size_fails_alone() -> None:
    """
    before, a 20 MiB line and after on stdin.  RabbitMQ 4.3 (16 MiB limit)
    refuses the big one: exit 1, one line naming the limit, "published 3,
    confirmed 2, failed 1", and the queue holds before and after.  RabbitMQ
    3.10 (128 MiB) takes all three.
    """
    big = b"x" * (20 << 20)
    with queue_holding() as queue:
        ran = run_cli("publish", "-k", queue, stdin=b"before\n" + big + b"\nafter\n")
        got = take(queue, 4)
        if broker.at_least(4):
            assert ran.code == 1, ran.err
            assert ran.err_lines == [
                "txmsg: 1 message refused: the message body of 20971520 bytes is over the broker's "
                "max_message_size of 16777216 bytes (16 MiB)",
                "published 3, confirmed 2, failed 1",
            ]
            assert [body for _, body in got] == [b"before", b"after"]
        else:
            assert ran.code == 0, ran.err
            assert ran.err_lines == ["published 3, confirmed 3"]
            assert [len(body) for _, body in got] == [6, len(big), 5]


def test_publish_streams_many_lines_in_order() -> None:
    """
    5,000 lines (several confirm windows) are all published, confirmed and
    held, in order.
    """
    lines = [b"line %d" % i for i in range(5000)]
    with queue_holding() as queue:
        ran = run_cli("publish", "-k", queue, stdin=b"\n".join(lines) + b"\n")
        assert ran.code == 0, ran.err
        assert ran.err_lines == ["published 5000, confirmed 5000"]
        assert depth(queue) == 5000
        assert [body for _, body in take(queue, 3)] == lines[:3]


def test_mandatory_unroutable_exits_1_with_one_line_per_reason() -> None:
    """
    Three mandatory messages to a key no queue is bound to come back: exit 1,
    one line for the three returns, then the counts.
    """
    ran = run_cli("publish", "--mandatory", "-k", unique("nowhere"), "a", "b", "c")
    assert ran.code == 1
    assert len(ran.err_lines) == 2, ran.err
    assert ran.err_lines[0].startswith("txmsg: 3 messages returned: 312 NO_ROUTE")
    assert ran.err_lines[1] == "published 3, confirmed 0, failed 3"


def test_publish_to_a_missing_exchange_exits_66() -> None:
    """
    The broker refuses publishes to an exchange that does not exist: the
    reason is named once and the exit is 66 (EX_NOINPUT).
    """
    exchange = unique("missing-x")
    ran = run_cli("publish", "-e", exchange, "-k", "k", "a", "b")
    assert ran.code == 66, ran.err
    assert f"no exchange '{exchange}'" in ran.err_lines[0]
    assert ran.err_lines[-1].startswith("published ")
    assert "Traceback" not in ran.err


def test_bad_json_argument_publishes_nothing() -> None:
    """
    A bad JSON MESSAGE is exit 2 and one line, before anything is published:
    the valid message before it does not reach the queue either.
    """
    with queue_holding() as queue:
        ran = run_cli("publish", "-k", queue, "--json", '{"ok": 1}', "{bad")
        assert ran.code == 2
        assert len(ran.err_lines) == 1 and "message 2 is not valid JSON" in ran.err_lines[0]
        assert depth(queue) == 0


def test_unreachable_broker_exits_69_within_the_timeout() -> None:
    """
    No broker on the port: exit 69 once --timeout has passed, not before and
    not much later, naming the URL without its password.
    """
    ran = run_cli("publish", "--url", "amqp://guest:pw-secret@127.0.0.1:1/%2F", "--timeout", "2", "x")
    assert ran.code == 69
    assert 2 <= ran.seconds < 6
    assert len(ran.err_lines) == 1, ran.err
    assert "no broker reachable within 2 s at amqp://guest:***@127.0.0.1:1/%2F" in ran.err_lines[0]
    assert "pw-secret" not in ran.err


@pytest.mark.parametrize(
    "url, expected",
    [
        (broker.url_with(password="wrong-pw"), "refused the login of user 'guest'"),
        (broker.url_with(vhost="nope-vhost"), "nope-vhost"),
    ],
)
def test_refused_login_or_vhost_exits_77(url: str, expected: str) -> None:
    """
    A wrong password or an unknown vhost is one line and exit 77 (EX_NOPERM),
    never showing the password.
    """
    ran = run_cli("publish", "--url", url, "x")
    assert ran.code == 77
    assert len(ran.err_lines) == 1, ran.err
    assert expected in ran.err_lines[0]
    assert "wrong-pw" not in ran.err and "Traceback" not in ran.err


# ----------------------------------------------------------------------
# listen


@pytest.mark.parametrize("held, count", [(5, 2), (300, 150)])
def test_listen_count_acks_only_what_it_printed(held: int, count: int) -> None:
    """
    listen --queue Q --count N prints N messages and acks exactly those: the
    rest, prefetched or not, are still on the queue afterwards.
    """
    bodies = [b"m%d" % i for i in range(held)]
    with queue_holding(*bodies) as queue:
        ran = run_cli("listen", "--queue", queue, "--count", str(count))
        assert ran.code == 0, ran.err
        assert ran.out.decode().splitlines() == [f"(default)/{queue}: m{i}" for i in range(count)]
        assert ran.err == ""
        assert depth(queue) == held - count


def test_listen_json_on_an_exchange_gets_a_later_message() -> None:
    """
    listen -e X -k KEY binds its own queue; a message pika publishes after
    it started is printed as one JSON object with exchange, routing key,
    properties (headers included) and payload.
    """
    with topic_exchange() as exchange:
        process = start_cli("listen", "-e", exchange, "-k", "orders.*", "--count", "1", "--json")
        try:
            props = pika.BasicProperties(
                content_type="application/json",
                message_id="p-1",
                headers={"tenant": "acme", "n": 7},
            )
            publish_when_routed(exchange, "orders.created", b'{"id": 42}', props)
            out, err = process.communicate(timeout=15)
        finally:
            stop(process)
        assert process.returncode == 0, err
        lines = out.decode().splitlines()
        assert len(lines) == 1
        shown = json.loads(lines[0])
        assert shown["exchange"] == exchange
        assert shown["routing_key"] == "orders.created"
        assert shown["payload"] == {"id": 42}
        assert shown["properties"]["message_id"] == "p-1"
        assert shown["properties"]["content_type"] == "application/json"
        assert shown["properties"]["headers"] == {"tenant": "acme", "n": 7}


def test_listen_on_a_missing_queue_is_one_line_and_exit_66() -> None:
    """
    --queue reads a queue that exists: a missing one is a clear one-line
    error naming it.
    """
    queue = unique("missing")
    ran = run_cli("listen", "--queue", queue, "--count", "1")
    assert ran.code == 66
    assert len(ran.err_lines) == 1, ran.err
    assert f"queue '{queue}' not found" in ran.err_lines[0]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_listen_runs_until_a_signal_and_exits_0(signum: int) -> None:
    """
    Without --count, listen prints what arrives until Ctrl-C or SIGTERM,
    then stops cleanly: exit 0, nothing on stderr.
    """
    with topic_exchange() as exchange:
        process = start_cli("listen", "-e", exchange)
        try:
            publish_when_routed(exchange, "any.key", b"hello")
            assert process.stdout is not None
            assert process.stdout.readline() == f"{exchange}/any.key: hello\n".encode()
            process.send_signal(signum)
            _, err = process.communicate(timeout=10)
        finally:
            stop(process)
        assert process.returncode == 0
        assert err == b""


@pytest.mark.parametrize("output", ["pipe", "socket"])
def test_listen_into_a_closed_output_stops_quietly_and_keeps_the_message(output: str) -> None:
    """
    When the reader of listen's output goes away (| head -1), listen exits 0
    without a traceback, and the message it could not print stays on the
    queue.  On a pipe the hang-up is noticed at once; on a socket the next
    write fails.
    """
    with queue_holding(b"first") as queue:
        if output == "pipe":
            process = start_cli("listen", "--queue", queue)
            assert process.stdout is not None
            reader: Any = process.stdout
        else:
            ours, theirs = socket.socketpair()
            process = subprocess.Popen(
                [*COMMAND, "listen", "--queue", queue],
                cwd=ROOT,
                env=ENV,
                stdout=theirs,
                stderr=subprocess.PIPE,
            )
            theirs.close()
            reader = ours.makefile("rb")
            ours.close()
        try:
            assert reader.readline() == f"(default)/{queue}: first\n".encode()
            reader.close()
            with pika_channel() as ch:
                ch.basic_publish("", queue, b"second")
            _, err = process.communicate(timeout=10)
        finally:
            stop(process)
        assert process.returncode == 0
        assert err == b""
        assert [body for _, body in take(queue, 2)] == [b"second"]


# ----------------------------------------------------------------------
# call


class Servers:
    """
    RPC servers in this process, answering the command's calls.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.queue = unique("rpc")
        self.exchange = unique("rpc-x")
        self.servers: list[RpcServer] = []
        self.hanging: list[Deferred[Any]] = []

    def handle(self, message: Message) -> Any:
        payload = message.payload
        if payload == "boom":
            raise ValueError("it went boom")
        if payload == "hang":
            d: Deferred[Any] = Deferred()
            self.hanging.append(d)
            return d
        if isinstance(payload, str):
            return payload.upper()
        return {"echo": payload}

    async def start(self, server: RpcServer) -> None:
        self.servers.append(server)
        server.startService()
        for consumer in server.consumers:
            await consumer.when_ready()

    async def stop(self) -> None:
        for d in self.hanging:
            d.callback("too late")
        for server in self.servers:
            await server.stopService()

        def clean_up() -> None:
            with pika_channel() as ch:
                ch.queue_delete(self.queue)
                ch.exchange_delete(self.exchange)

        await deferToThread(clean_up)


@pytest.fixture
def servers(connection: Connection) -> Iterator[Servers]:
    s = Servers(connection)
    yield s
    pytest_twisted.blockon(Deferred.fromCoroutine(s.stop()))


def cli(*args: str, stdin: bytes = b"") -> Deferred[Ran]:
    """
    Run the command in a thread, so that this process's servers answer it.
    """
    return deferToThread(run_cli, *args, stdin=stdin)


@pytest_twisted.ensureDeferred
async def test_call_prints_the_reply(servers: Servers) -> None:
    """
    call prints a text reply as it is and a JSON reply pretty-printed; exit 0.
    """
    await servers.start(RpcServer(servers.connection, servers.queue, servers.handle))
    ran = await cli("call", "-k", servers.queue, "hello")
    assert (ran.code, ran.out, ran.err) == (0, b"HELLO\n", "")
    ran = await cli("call", "-k", servers.queue, "--json", '{"n": [1, 2]}')
    assert ran.code == 0, ran.err
    assert ran.out == b'{\n  "echo": {\n    "n": [\n      1,\n      2\n    ]\n  }\n}\n'


@pytest_twisted.ensureDeferred
async def test_call_remote_error_exits_5(servers: Servers) -> None:
    """
    The server's handler raised: exit 5, its type and message on stderr.
    """
    await servers.start(RpcServer(servers.connection, servers.queue, servers.handle))
    ran = await cli("call", "-k", servers.queue, "boom")
    assert ran.code == 5
    assert ran.err_lines == ["txmsg: remote error: ValueError: it went boom"]
    assert ran.out == b""


@pytest_twisted.ensureDeferred
async def test_call_with_no_server_exits_4_at_once() -> None:
    """
    No queue is bound to the key: the request comes back and call exits 4
    without waiting for its timeout.
    """
    ran = await cli("call", "-k", unique("nobody"), "--timeout", "20", "hello")
    assert ran.code == 4
    assert ran.seconds < 10
    assert len(ran.err_lines) == 1 and "no server" in ran.err_lines[0]


@pytest_twisted.ensureDeferred
async def test_call_without_an_answer_exits_3_after_the_timeout(servers: Servers) -> None:
    """
    A server that takes the request but never answers: exit 3 once
    --timeout has passed.
    """
    await servers.start(RpcServer(servers.connection, servers.queue, servers.handle))
    ran = await cli("call", "-k", servers.queue, "--timeout", "1", "hang")
    assert ran.code == 3
    assert 1 <= ran.seconds < 6
    assert ran.err_lines == [f"txmsg: no reply to '{servers.queue}' within 1 s"]


@pytest_twisted.ensureDeferred
async def test_gather_prints_one_json_line_per_server(servers: Servers) -> None:
    """
    --gather --expect 2 against two servers, each with its own queue bound
    to the exchange: two JSON lines naming each server, and it stops as the
    second arrives rather than at the timeout.
    """
    for name in ("server-1", "server-2"):
        await servers.start(
            RpcServer(
                servers.connection,
                None,
                servers.handle,
                exchange=servers.exchange,
                broadcast=["status"],
                server_id=name,
            )
        )
    ran = await cli(
        "call", "-e", servers.exchange, "-k", "status", "--gather", "--expect", "2", "--timeout", "20", "ping"
    )
    assert ran.code == 0, ran.err
    assert ran.seconds < 10
    replies = [json.loads(line) for line in ran.out.decode().splitlines()]
    assert sorted(replies, key=lambda r: r["server"]) == [
        {"server": "server-1", "payload": "PING"},
        {"server": "server-2", "payload": "PING"},
    ]
