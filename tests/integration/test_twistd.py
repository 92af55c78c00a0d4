"""
Each ``twistd txmsg`` role run as a real ``twistd -n`` process against the
broker, driven from outside by pika peers and HTTP, stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from .. import broker
from .nodes import free_port
from .support import BROKER_URL, ROOT, TWISTD, Twistd, rabbitmqctl, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def twistd(tmp_path: Path) -> Iterator[Callable[..., Twistd]]:
    started: list[Twistd] = []

    def start(*args: str) -> Twistd:
        t = Twistd(tmp_path, *args)
        started.append(t)
        return t

    yield start
    for t in started:
        if t.proc.poll() is None:
            t.proc.kill()
            t.proc.wait()


def channel() -> tuple[Any, Any]:
    conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    return conn, conn.channel()


def depth(queue: str) -> int:
    conn, ch = channel()
    try:
        return int(ch.queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def unacked(queue: str) -> int:
    """
    How many messages of C{queue} are delivered and not yet acked.
    """
    out = rabbitmqctl("list_queues", "name", "messages_unacknowledged", "--no-table-headers", "-q")
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


def delete_queue(name: str) -> None:
    conn, ch = channel()
    try:
        ch.queue_delete(name)
    finally:
        conn.close()


def test_consumer_role_fed_by_a_pika_publisher(twistd: Callable[..., Twistd]) -> None:
    """
    ``--role consumer`` consumes what a pika publisher sends: each message is
    one log line, the queue ends empty, and SIGTERM exits 0.  The queue it
    declared is durable (one RabbitMQ 4.3 accepts), as the broker lists it.
    """
    q = unique("tap-consumer")
    t = twistd("--role", "consumer", "--queue", q)
    try:
        t.wait_for(f"consuming {q}")
        listed = rabbitmqctl("list_queues", "name", "durable", "--no-table-headers", "-q")
        assert f"{q}\ttrue" in listed.splitlines(), listed
        conn, ch = channel()
        for i in range(5):
            ch.basic_publish(
                "", q, json.dumps({"n": i}).encode(), pika.BasicProperties(content_type="application/json")
            )
        conn.close()
        # one readable line per message, as txmsg listen prints it
        assert eventually(lambda: t.text().count(f'(default)/{q}: {{"n": ') == 5), t.text()
        assert depth(q) == 0
        assert t.stop() == 0
        assert "Traceback" not in t.text()
    finally:
        delete_queue(q)


def test_sigterm_lets_running_handlers_finish_and_loses_nothing(twistd: Callable[..., Twistd]) -> None:
    """
    SIGTERM while a slow handler runs: the running handlers finish and are
    acked, the rest stay on the queue; handled + left == published.
    """
    q = unique("tap-term")
    t = twistd(
        "--role",
        "consumer",
        "--queue",
        q,
        "--durable",
        "--prefetch",
        "3",
        "--handler",
        "tests.integration.tap_handlers:slow",
    )
    try:
        t.wait_for(f"consuming {q}")
        conn, ch = channel()
        for i in range(10):
            ch.basic_publish("", q, str(i).encode(), pika.BasicProperties(delivery_mode=2))
        conn.close()
        time.sleep(0.5)  # three handlers are running now
        assert t.stop() == 0
        handled = t.text().count("handled ")
        assert handled == 3, t.text()
        assert depth(q) == 10 - handled
    finally:
        delete_queue(q)


def test_subscriber_queue_bound_to_a_topic_exchange(twistd: Callable[..., Twistd]) -> None:
    """
    ``--exchange X --exchange-type topic --bind KEY`` without --queue consumes a
    server-named exclusive queue: matching messages arrive, others do not.
    """
    x = unique("tap-topic")
    t = twistd("--role", "consumer", "--exchange", x, "--exchange-type", "topic", "--bind", "kern.*")
    conn, ch = channel()
    try:
        t.wait_for("consuming amq.gen-")
        ch.basic_publish(x, "kern.critical", b"disk full")
        ch.basic_publish(x, "auth.info", b"login")
        assert eventually(lambda: "disk full" in t.text()), t.text()
        time.sleep(0.3)
        assert "login" not in t.text()
        assert t.stop() == 0
    finally:
        ch.exchange_delete(x)
        conn.close()


def test_headers_exchange_binding(twistd: Callable[..., Twistd]) -> None:
    """
    ``--exchange-type headers --bind-header K=V --match any`` routes by headers.
    """
    x = unique("tap-headers")
    q = unique("tap-hq")
    t = twistd(
        "--role",
        "consumer",
        "--queue",
        q,
        "--exchange",
        x,
        "--exchange-type",
        "headers",
        "--bind-header",
        "format=pdf",
        "--bind-header",
        "type=report",
        "--match",
        "any",
    )
    conn, ch = channel()
    try:
        t.wait_for(f"consuming {q}")
        ch.basic_publish(x, "", b"a pdf", pika.BasicProperties(headers={"format": "pdf"}))
        ch.basic_publish(x, "", b"a zip", pika.BasicProperties(headers={"format": "zip"}))
        assert eventually(lambda: "a pdf" in t.text()), t.text()
        time.sleep(0.3)
        assert "a zip" not in t.text()
        assert t.stop() == 0
    finally:
        ch.exchange_delete(x)
        ch.queue_delete(q)
        conn.close()


def test_queue_declared_with_other_flags_is_one_error_line(twistd: Callable[..., Twistd]) -> None:
    """
    A queue another program declared as a quorum queue (as RabbitMQ's
    tutorials do), consumed with --durable (a classic queue): the process
    exits 1 with one line naming the differing flag.  Without any queue flag
    the queue that is there is used as it is.
    """
    q = unique("tap-mismatch")
    conn, ch = channel()
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        t = twistd("--role", "consumer", "--queue", q, "--durable")
        code = t.proc.wait(30)
        text = t.text()
        assert code == 1, text
        lines = [line for line in text.splitlines() if "cannot start" in line]
        assert len(lines) == 1 and "--quorum" in lines[0] and "x-queue-type" in lines[0], text
        assert "Traceback" not in text
        # without queue flags, the queue that exists is used as it is
        t2 = twistd("--role", "consumer", "--queue", q)
        t2.wait_for(f"consuming {q}")
        ch.basic_publish("", q, b"to the quorum queue")
        t2.wait_for("to the quorum queue")
        assert t2.stop() == 0
        assert depth(q) == 0
    finally:
        ch.queue_delete(q)
        conn.close()


def test_transient_flag_on_a_broker_that_refuses_transient_queues(twistd: Callable[..., Twistd]) -> None:
    """
    --transient asks for a transient shared queue: RabbitMQ 4.3 as upstream
    ships refuses it, and the process exits 1 at once with one line saying
    what was refused and how to do without it (not a reconnect loop);
    RabbitMQ 3.10 declares it and the role consumes.
    """
    q = unique("tap-transient")
    t = twistd("--role", "consumer", "--queue", q, "--transient")
    if broker.denies_transient_queues():
        code = t.proc.wait(30)
        text = t.text()
        assert code == 1, text
        lines = [line for line in text.splitlines() if "cannot start" in line]
        assert len(lines) == 1, text
        assert "refuses transient non-exclusive queues" in lines[0] and "drop --transient" in lines[0]
        assert "Traceback" not in text and text.count("541") <= 1
        # and the broker holds no such queue
        names = rabbitmqctl("list_queues", "name", "--no-table-headers", "-q").split()
        assert q not in names
    else:
        t.wait_for(f"consuming {q}")
        assert t.stop() == 0
        conn, ch = channel()
        ch.queue_delete(q)
        conn.close()


def test_quorum_queue_with_dead_letter_and_arguments(twistd: Callable[..., Twistd]) -> None:
    """
    ``--quorum --dead-letter X --arg x-max-length=100`` declares exactly that:
    the broker reports a durable quorum queue with those arguments; a failing
    handler's message is dead-lettered to X.
    """
    q = unique("tap-quorum")
    dlx = unique("tap-dlx")
    dlq = unique("tap-dlq")
    conn, ch = channel()
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq, durable=True)
    ch.queue_bind(dlq, dlx)
    t = twistd(
        "--role",
        "consumer",
        "--queue",
        q,
        "--quorum",
        "--dead-letter",
        dlx,
        "--arg",
        "x-max-length=100",
        "--handler",
        "tests.integration.tap_handlers:fail",
    )
    try:
        t.wait_for(f"consuming {q}")
        out = rabbitmqctl("list_queues", "name", "durable", "arguments", "--no-table-headers", "-q")
        line = next(line for line in out.splitlines() if line.startswith(q))
        assert "true" in line and "quorum" in line and dlx in line and "x-max-length" in line, line
        ch.basic_publish("", q, b"poison")
        assert eventually(lambda: depth(dlq) == 1)
        assert "cannot handle b'poison'" in t.text()
        assert t.stop() == 0
    finally:
        ch.queue_delete(q)
        ch.queue_delete(dlq)
        ch.exchange_delete(dlx)
        conn.close()


def pika_rpc_call(queue: str, body: str, timeout: float = 10.0) -> bytes:
    """
    The RabbitMQ tutorial's RPC client: exclusive callback queue, correlation id.
    """
    conn, ch = channel()
    try:
        callback = ch.queue_declare("", exclusive=True).method.queue
        corr = str(uuid.uuid4())
        got: list[bytes] = []

        def on_response(ch: Any, method: Any, props: Any, body: bytes) -> None:
            if props.correlation_id == corr:
                got.append(body)

        ch.basic_consume(callback, on_response, auto_ack=True)
        ch.basic_publish("", queue, body, pika.BasicProperties(reply_to=callback, correlation_id=corr))
        deadline = time.monotonic() + timeout
        while not got and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert got, "no reply"
        return got[0]
    finally:
        conn.close()


def test_rpc_server_role_answers_the_pika_tutorial_client(twistd: Callable[..., Twistd]) -> None:
    """
    ``--role rpc-server --queue rpc_queue --handler ...:fib`` answers the
    tutorial's pika client: "30" in, "832040" out.
    """
    q = unique("rpc_queue")
    t = twistd("--role", "rpc-server", "--queue", q, "--handler", "tests.integration.tap_handlers:fib")
    try:
        t.wait_for(f"consuming {q}")
        assert int(pika_rpc_call(q, "30")) == 832040
        assert int(pika_rpc_call(q, "10")) == 55
        assert t.stop() == 0
    finally:
        delete_queue(q)


def test_rpc_servers_broadcast_and_shared_keys(twistd: Callable[..., Twistd]) -> None:
    """
    Seed 004: two servers share a queue bound with ``create-vm`` and each has
    its own queue for ``list-vms``: one request on list-vms is answered by
    both, one on create-vm by exactly one.
    """
    x = unique("tap-vms")
    q = unique("tap-create")
    servers = [
        twistd(
            "--role",
            "rpc-server",
            "--exchange",
            x,
            "--queue",
            q,
            "--bind",
            "create-vm",
            "--broadcast",
            "list-vms",
            "--server-id",
            f"host-{i}",
        )
        for i in range(2)
    ]
    conn, ch = channel()
    try:
        for s in servers:
            s.wait_for("consuming amq.gen-")
            s.wait_for(f"consuming {q}")
        callback = ch.queue_declare("", exclusive=True).method.queue
        got: list[tuple[str, Any]] = []
        ch.basic_consume(callback, lambda c, m, p, b: got.append((p.app_id, b)), auto_ack=True)
        props = pika.BasicProperties(reply_to=callback, correlation_id="1", content_type="application/json")
        ch.basic_publish(x, "list-vms", b'{"q": 1}', props)
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert sorted(server for server, _ in got) == ["host-0", "host-1"]
        got.clear()
        ch.basic_publish(x, "create-vm", b'{"name": "vm1"}', props)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert len(got) == 1 and json.loads(got[0][1]) == {"name": "vm1"}  # the default handler echoes
        assert all(s.stop() == 0 for s in servers)
    finally:
        ch.queue_delete(q)
        ch.exchange_delete(x)
        conn.close()


def test_fanout_role_peers_hear_a_shout(twistd: Callable[..., Twistd]) -> None:
    """
    Two ``--role fanout`` peers of one group both hear what is shouted into it;
    a --durable peer's queue remains after it stops.
    """
    group = unique("tap-group")
    a = twistd("--role", "fanout", "--group", group, "--peer", "a")
    b = twistd("--role", "fanout", "--group", group, "--peer", "b", "--durable")
    conn, ch = channel()
    try:
        a.wait_for(f"consuming {group}.a")
        b.wait_for(f"consuming {group}.b")
        ch.basic_publish(group, "", b"hello peers")
        assert eventually(lambda: "hello peers" in a.text() and "hello peers" in b.text())
        assert a.stop() == 0 and b.stop() == 0
        queues = rabbitmqctl("list_queues", "name", "--no-table-headers", "-q").split()
        assert f"{group}.b" in queues and f"{group}.a" not in queues
    finally:
        ch.queue_delete(f"{group}.b")
        ch.exchange_delete(group)
        conn.close()


def test_metrics_and_health(twistd: Callable[..., Twistd]) -> None:
    """
    ``--metrics tcp:PORT`` serves /health (connected) and Prometheus /metrics
    whose consumed counter follows the messages handled.
    """
    q = unique("tap-metrics")
    port = free_port()
    t = twistd("--role", "consumer", "--queue", q, "--metrics", f"tcp:{port}:interface=127.0.0.1")
    try:
        t.wait_for(f"consuming {q}")
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())
        assert health["status"] == "ok" and health["broker_connected"] is True
        conn, ch = channel()
        for _ in range(4):
            ch.basic_publish("", q, b"m")
        conn.close()

        def consumed() -> bool:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            return any(
                line.startswith("txmsg_consumer_") and line.endswith(" 4") and "consumed" in line
                for line in text.splitlines()
            )

        assert eventually(consumed), urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read()
        assert t.stop() == 0
    finally:
        delete_queue(q)


def test_producer_role_publishes_http_posts_confirmed(twistd: Callable[..., Twistd]) -> None:
    """
    ``--role producer --listen tcp:PORT``: a POST is answered 200 once the
    broker confirmed it, and the queue holds it; mandatory to nowhere is 404.
    """
    q = unique("tap-http")
    port = free_port()
    conn, ch = channel()
    ch.queue_declare(q, durable=True)
    t = twistd("--role", "producer", "--listen", f"tcp:{port}:interface=127.0.0.1")
    try:
        t.wait_for("connected to")
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/publish/-/{q}?persistent=1",
            data=b'{"a": 1}',
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        _method, props, body = ch.basic_get(q, auto_ack=True)
        assert body == b'{"a": 1}' and props.content_type == "application/json" and props.delivery_mode == 2
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/publish/-/{unique('nowhere')}?mandatory=1", data=b"x", method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 404
        assert t.stop() == 0
    finally:
        ch.queue_delete(q)
        conn.close()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--role", "nope"], "--role must be one of"),
        (["--role", "consumer"], "needs --queue"),
        (
            ["--role", "consumer", "--queue", "q", "--handler", "no.such.module:fn"],
            "--handler no.such.module:fn",
        ),
        (["--role", "consumer", "--queue", "q", "--arg", "novalue"], "--arg takes KEY=VALUE"),
        (["--role", "consumer", "--queue", "q", "--exchange-type", "weird"], "--exchange-type must be"),
        (["--role", "fanout"], "needs --group"),
        (["--role", "producer"], "needs --listen"),
        (["--role", "consumer", "--queue", "q", "--url", "http://x"], "invalid AMQP URL"),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    """
    A mistake on the command line is one readable line and a non-zero exit.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [*TWISTD, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=30,
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert needle in text, text
    assert "Traceback" not in text
    # twistd shows the usage text, then the one line that says what is wrong
    lines = [line for line in text.splitlines() if line.strip()]
    assert needle in lines[-1], text
    assert len([line for line in lines if needle in line]) == 1, text


def txmsg_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "txmsg.cli", *args, "--url", BROKER_URL],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        input=stdin,
    )


def test_txmsg_call_and_gather_against_rpc_server_roles(twistd: Callable[..., Twistd]) -> None:
    """
    ``txmsg call`` gets the reply of a ``--role rpc-server`` process, and
    ``txmsg call --gather --expect 2`` one JSON line from each of two servers
    sharing a broadcast key.
    """
    q = unique("tap-call")
    x = unique("tap-gather")
    server = twistd("--role", "rpc-server", "--queue", q, "--handler", "tests.integration.tap_handlers:fib")
    peers = [
        twistd("--role", "rpc-server", "--exchange", x, "--broadcast", "status", "--server-id", f"s{i}")
        for i in range(2)
    ]
    try:
        server.wait_for(f"consuming {q}")
        for p in peers:
            p.wait_for("consuming amq.gen-")
        out = txmsg_cli("call", "-k", q, "30", "--timeout", "10")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "832040"
        out = txmsg_cli(
            "call",
            "-e",
            x,
            "-k",
            "status",
            "--gather",
            "--expect",
            "2",
            "--json",
            '{"q": 1}',
            "--timeout",
            "10",
        )
        assert out.returncode == 0, out.stderr
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        assert sorted(line["server"] for line in lines) == ["s0", "s1"]
        assert all(line["payload"] == {"q": 1} for line in lines)
        assert server.stop() == 0 and all(p.stop() == 0 for p in peers)
    finally:
        delete_queue(q)
        conn, ch = channel()
        ch.exchange_delete(x)
        conn.close()


def test_sigterm_on_rpc_server_still_answers_running_requests(twistd: Callable[..., Twistd]) -> None:
    """
    SIGTERM while an rpc-server handles a slow request: the request finishes,
    its reply reaches the caller, and the request is acked (the queue is empty).
    """
    q = unique("tap-rpc-term")
    t = twistd(
        "--role", "rpc-server", "--queue", q, "--durable", "--handler", "tests.integration.tap_handlers:slow"
    )
    try:
        t.wait_for(f"consuming {q}")
        call = subprocess.Popen(
            [sys.executable, "-m", "txmsg.cli", "call", "-k", q, "7", "--timeout", "15", "--url", BROKER_URL],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert eventually(lambda: unacked(q) == 1, timeout=10), "the server never took the request"
        assert t.stop() == 0
        out, err = call.communicate(timeout=30)
        assert call.returncode == 0, err + t.text()
        assert out.strip() == "null"  # the slow handler returns None
        assert "handled 7" in t.text()
        assert depth(q) == 0
    finally:
        delete_queue(q)
