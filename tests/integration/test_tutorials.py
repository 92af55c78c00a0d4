"""
The seven RabbitMQ tutorials written with txmsg (``examples/tutorials/``), each
run as a real program against the broker with a pika peer playing the other
side: pika sends and the txmsg program receives, or the other way round.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika
import pytest

from .support import BROKER_URL, unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: how RabbitMQ's tutorials declare hello, task_queue and rpc_queue today (a
#: durable quorum queue; they declared transient classic queues before
#: RabbitMQ 4, which refuses those)
TUTORIAL_QUEUE: dict[str, Any] = {"durable": True, "arguments": {"x-queue-type": "quorum"}}
#: the programs run from the checkout, with its txmsg and the test broker in $TXMSG_URL
ENV = dict(os.environ, PYTHONPATH=str(ROOT), TXMSG_URL=BROKER_URL)


def script(name: str) -> list[str]:
    return [sys.executable, f"examples/tutorials/{name}"]


class Program:
    """
    A tutorial program running in the background; its output goes to a file.
    """

    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        self.path = tmp / f"{name}-{uuid.uuid4().hex[:6]}.out"
        self._out = self.path.open("w")
        self.proc = subprocess.Popen(
            [*script(name), "--url", BROKER_URL, *args],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=ENV,
        )

    def text(self) -> str:
        return self.path.read_text()

    def lines(self, prefix: str = " [x] ") -> list[str]:
        """
        The output lines starting with C{prefix} (one per message), without it.
        """
        return [line[len(prefix) :] for line in self.text().splitlines() if line.startswith(prefix)]

    def wait_for(self, needle: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not in the output:\n{self.text()}")

    def finish(self, timeout: float = 20.0) -> int:
        """
        Wait for the program to exit by itself; its exit status.
        """
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s:\n{self.text()}") from None
        finally:
            self._out.close()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.finish()


@pytest.fixture
def program(tmp_path: Path) -> Iterator[Callable[..., Program]]:
    started: list[Program] = []

    def start(name: str, *args: str) -> Program:
        p = Program(tmp_path, name, *args)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def run(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """
    Run a tutorial program to its end (the URL comes from $TXMSG_URL).
    """
    return subprocess.run(
        [*script(name), *args], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60
    )


@contextmanager
def pika_channel() -> Iterator[Any]:
    conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        yield conn.channel()
    finally:
        if conn.is_open:
            conn.close()


def depth(queue: str) -> int:
    with pika_channel() as ch:
        return int(ch.queue_declare(queue, passive=True).method.message_count)


def delete(queues: tuple[str, ...] = (), exchanges: tuple[str, ...] = ()) -> None:
    with pika_channel() as ch:
        for q in queues:
            ch.queue_delete(q)
        for x in exchanges:
            ch.exchange_delete(x)


def get_all(ch: Any, queue: str) -> list[tuple[Any, bytes]]:
    """
    Take every message the queue holds now: (properties, body) each.
    """
    got: list[tuple[Any, bytes]] = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return got
        got.append((props, body))


# ---------------------------------------------------------------------------
# 1. Hello World


def test_hello_world_pika_sends_txmsg_receiver_prints_and_acks(program: Callable[..., Program]) -> None:
    """
    pika's sender publishes to the queue; ``hello_receive.py --count 1`` prints
    the message, exits 0, and has acked it (the queue is empty).
    """
    q = unique("hello")
    receiver = program("hello_receive.py", "--queue", q, "--count", "1")
    try:
        receiver.wait_for("Waiting for messages")
        with pika_channel() as ch:
            ch.queue_declare(q, **TUTORIAL_QUEUE)  # as the tutorial's sender does: declared alike
            ch.basic_publish("", q, b"Hello World!")
        assert receiver.finish() == 0, receiver.text()
        assert receiver.lines() == ["Received Hello World!"]
        assert depth(q) == 0
    finally:
        delete((q,))


def test_hello_world_txmsg_sends_pika_receives() -> None:
    """
    ``hello_send.py`` (broker from $TXMSG_URL) publishes one message that a
    pika receiver finds on the queue, body intact.
    """
    q = unique("hello")
    with pika_channel() as ch:
        ch.queue_declare(q, **TUTORIAL_QUEUE)
        try:
            out = run("hello_send.py", "--queue", q)
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == "[x] Sent 'Hello World!'"
            assert [body for _, body in get_all(ch, q)] == [b"Hello World!"]
        finally:
            ch.queue_delete(q)


# ---------------------------------------------------------------------------
# 2. Work queues


def test_work_queue_fair_dispatch_with_prefetch_one(program: Callable[..., Program]) -> None:
    """
    Two txmsg workers (prefetch 1) on a durable queue fed persistent tasks by a
    pika ``new_task`` publisher: the worker busy with a long task gets none of
    the quick tasks published after it (plain round-robin would give it every
    other one); all tasks are done and acked, and SIGTERM exits 0.
    """
    q = unique("task-queue")
    workers = [program("worker.py", "--queue", q, "--delay", "0.2") for _ in range(2)]
    try:
        for w in workers:
            w.wait_for("Waiting for tasks")
        with pika_channel() as ch:
            ch.queue_declare(q, **TUTORIAL_QUEUE)  # the tutorial's declaration: equivalent to the workers'
            persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
            ch.basic_publish("", q, b"long......", persistent)  # 1.2 s of work
            for i in range(1, 5):
                ch.basic_publish("", q, f"quick {i}".encode(), persistent)

        def done() -> int:
            return sum(line.startswith("Done quick") for w in workers for line in w.lines())

        deadline = time.monotonic() + 10
        while done() < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        busy, free = sorted(workers, key=lambda w: "Received long......" not in w.lines())
        assert [x for x in busy.lines() if x.startswith("Received")] == ["Received long......"]
        assert [x for x in free.lines() if x.startswith("Received")] == [
            f"Received quick {i}" for i in range(1, 5)
        ]
        busy.wait_for("Done long......")
        assert depth(q) == 0
        assert busy.terminate() == 0 and free.terminate() == 0
        assert "Traceback" not in busy.text() + free.text()
    finally:
        delete((q,))


def test_work_queue_task_of_a_killed_worker_goes_back_to_the_queue(program: Callable[..., Program]) -> None:
    """
    A worker killed (SIGKILL) in the middle of a task never acked it: the
    broker puts it back, flagged redelivered, for another worker.
    """
    q = unique("task-queue")
    worker = program("worker.py", "--queue", q, "--delay", "5")
    try:
        worker.wait_for("Waiting for tasks")
        with pika_channel() as ch:
            ch.basic_publish(
                "", q, b"slow.", pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
            )
        worker.wait_for("Received slow.")
        assert depth(q) == 0  # taken by the worker, unacked
        worker.proc.kill()
        worker.finish()
        assert "Done" not in worker.text()
        with pika_channel() as ch:
            method = None
            deadline = time.monotonic() + 10
            while method is None and time.monotonic() < deadline:
                method, _props, body = ch.basic_get(q, auto_ack=True)
            assert method is not None and body == b"slow." and method.redelivered
    finally:
        delete((q,))


def test_new_task_publishes_persistent_tasks_to_a_durable_queue() -> None:
    """
    ``new_task.py`` declares the queue as the tutorial does, a durable quorum
    queue (pika's declaration of the same queue is accepted), and publishes
    the task persistent.
    """
    q = unique("task-queue")
    try:
        out = run("new_task.py", "--queue", q, "resize", "cat.jpg...")
        assert out.returncode == 0, out.stderr
        with pika_channel() as ch:
            ch.queue_declare(q, **TUTORIAL_QUEUE)  # 406 PRECONDITION_FAILED if it were declared otherwise
            [(props, body)] = get_all(ch, q)
        assert body == b"resize cat.jpg..."
        assert props.delivery_mode == 2
    finally:
        delete((q,))


# ---------------------------------------------------------------------------
# 3. Publish/subscribe


def test_publish_subscribe_txmsg_emits_every_pika_subscriber_gets_it() -> None:
    """
    ``emit_log.py`` publishes to a fanout exchange: both pika subscribers (each
    its own exclusive queue bound to it) receive the line.
    """
    x = unique("logs")
    with pika_channel() as ch:
        ch.exchange_declare(x, "fanout")
        queues = [ch.queue_declare("", exclusive=True).method.queue for _ in range(2)]
        for q in queues:
            ch.queue_bind(q, x)
        try:
            out = run("emit_log.py", "--exchange", x, "info:", "disk", "ok")
            assert out.returncode == 0, out.stderr
            for q in queues:
                assert [body for _, body in get_all(ch, q)] == [b"info: disk ok"]
        finally:
            ch.exchange_delete(x)


def test_publish_subscribe_pika_emits_txmsg_subscriber_prints(program: Callable[..., Program]) -> None:
    """
    ``receive_logs.py`` binds a server-named queue to the fanout exchange and
    prints what a pika emitter broadcasts.
    """
    x = unique("logs")
    receiver = program("receive_logs.py", "--exchange", x, "--count", "2")
    try:
        receiver.wait_for("Waiting for logs")
        with pika_channel() as ch:
            ch.exchange_declare(x, "fanout")
            ch.basic_publish(x, "", b"info: one")
            ch.basic_publish(x, "ignored.by.fanout", b"warning: two")
        assert receiver.finish() == 0, receiver.text()
        assert receiver.lines() == ["info: one", "warning: two"]
    finally:
        delete(exchanges=(x,))


# ---------------------------------------------------------------------------
# 4. Routing


def test_routing_txmsg_receiver_gets_only_its_severities(program: Callable[..., Program]) -> None:
    """
    ``receive_logs_direct.py warning error`` gets the warning and the error a
    pika emitter sends, and not the info and debug lines sent before them.
    """
    x = unique("direct-logs")
    receiver = program("receive_logs_direct.py", "--exchange", x, "--count", "2", "warning", "error")
    try:
        receiver.wait_for("Waiting for logs")
        with pika_channel() as ch:
            ch.exchange_declare(x, "direct")
            for severity, text in [
                ("info", "i"),
                ("debug", "d"),
                ("warning", "w"),
                ("info", "i2"),
                ("error", "e"),
            ]:
                ch.basic_publish(x, severity, text.encode())
        # one queue delivers in order: had info or debug matched, they would be among the two
        assert receiver.finish() == 0, receiver.text()
        assert receiver.lines() == ["warning: w", "error: e"]
    finally:
        delete(exchanges=(x,))


def test_routing_txmsg_emitter_reaches_only_the_matching_binding() -> None:
    """
    ``emit_log_direct.py`` uses the severity as routing key: a pika queue bound
    with ``error`` gets the error line and not the info line.
    """
    x = unique("direct-logs")
    with pika_channel() as ch:
        ch.exchange_declare(x, "direct")
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, x, "error")
        try:
            for severity, text in [("info", "all good"), ("error", "disk full")]:
                out = run("emit_log_direct.py", "--exchange", x, severity, text)
                assert out.returncode == 0, out.stderr
            got = get_all(ch, q)
            assert [(props.content_type, body) for props, body in got] == [("text/plain", b"disk full")]
        finally:
            ch.exchange_delete(x)


# ---------------------------------------------------------------------------
# 5. Topics


def test_topics_txmsg_receiver_star_is_one_word_hash_is_zero_or_more(program: Callable[..., Program]) -> None:
    """
    ``receive_logs_topic.py '*.orange.*' 'lazy.#'``: ``*`` matches exactly one
    word, ``#`` zero or more (``lazy`` alone matches), and a key matching both
    patterns arrives once.  Non-matching keys are published before the last
    matching one, so any of them arriving would show among the lines.
    """
    x = unique("topic-logs")
    receiver = program("receive_logs_topic.py", "--exchange", x, "--count", "4", "*.orange.*", "lazy.#")
    try:
        receiver.wait_for("Waiting for logs")
        keys = [
            "quick.orange.rabbit",  # *.orange.*
            "quick.brown.fox",  # neither
            "lazy.orange.elephant",  # both: once
            "quick.orange.male.rabbit",  # * is one word only
            "orange",
            "quick.orange",
            "lazy",  # lazy.# with zero more words
            "lazy.pink.rabbit.jumps",  # lazy.# with three
        ]
        with pika_channel() as ch:
            ch.exchange_declare(x, "topic")
            for key in keys:
                ch.basic_publish(x, key, b"m")
        assert receiver.finish() == 0, receiver.text()
        assert receiver.lines() == [
            "quick.orange.rabbit: m",
            "lazy.orange.elephant: m",
            "lazy: m",
            "lazy.pink.rabbit.jumps: m",
        ]
    finally:
        delete(exchanges=(x,))


def test_topics_txmsg_emitter_to_a_pika_pattern_binding() -> None:
    """
    ``emit_log_topic.py`` with ``kern.critical`` and ``kern.disk.critical``: a
    pika queue bound with ``*.critical`` gets only the first.
    """
    x = unique("topic-logs")
    with pika_channel() as ch:
        ch.exchange_declare(x, "topic")
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, x, "*.critical")
        try:
            for key in ("kern.critical", "kern.disk.critical"):
                out = run("emit_log_topic.py", "--exchange", x, key, f"from {key}")
                assert out.returncode == 0, out.stderr
            assert [body for _, body in get_all(ch, q)] == [b"from kern.critical"]
        finally:
            ch.exchange_delete(x)


# ---------------------------------------------------------------------------
# 6. RPC


def pika_rpc_call(ch: Any, queue: str, body: str, timeout: float = 10.0) -> bytes:
    """
    A pika RPC client as in the tutorial: an exclusive callback queue and a
    correlation id to match the reply.
    """
    callback = ch.queue_declare("", exclusive=True).method.queue
    corr = uuid.uuid4().hex
    replies: list[bytes] = []

    def on_reply(_ch: Any, _method: Any, props: Any, reply: bytes) -> None:
        if props.correlation_id == corr:
            replies.append(reply)

    tag = ch.basic_consume(callback, on_reply, auto_ack=True)
    ch.basic_publish("", queue, body.encode(), pika.BasicProperties(reply_to=callback, correlation_id=corr))
    deadline = time.monotonic() + timeout
    while not replies and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    assert replies, f"no reply to {body!r} within {timeout} s"
    return replies[0]


def test_rpc_pika_client_calls_txmsg_server(program: Callable[..., Program]) -> None:
    """
    The tutorial's pika RPC client calls ``rpc_server.py``: fib(10) and
    fib(30) come back on its callback queue; the server, told to stop after
    two requests, exits 0 with both requests acked.
    """
    q = unique("rpc-queue")
    server = program("rpc_server.py", "--queue", q, "--count", "2")
    try:
        server.wait_for("Awaiting RPC requests")
        with pika_channel() as ch:
            assert pika_rpc_call(ch, q, "10") == b"55"
            assert pika_rpc_call(ch, q, "30") == b"832040"
        assert server.finish() == 0, server.text()
        assert server.lines(" [.] ") == ["fib(10)", "fib(30)"]
        assert depth(q) == 0
    finally:
        delete((q,))


def test_rpc_txmsg_client_calls_pika_server(program: Callable[..., Program]) -> None:
    """
    ``rpc_client.py 30`` calls a pika RPC server (the tutorial's: prefetch 1,
    reply to ``reply_to`` with the request's ``correlation_id``) and prints
    its answer; the request carried a reply address and a correlation id.
    """
    q = unique("rpc-queue")
    requests: list[Any] = []
    with pika_channel() as ch:
        ch.queue_declare(q, **TUTORIAL_QUEUE)
        ch.basic_qos(prefetch_count=1)

        def on_request(ch: Any, method: Any, props: Any, body: bytes) -> None:
            requests.append(props)
            a, b = 0, 1
            for _ in range(int(body)):
                a, b = b, a + b
            reply = pika.BasicProperties(correlation_id=props.correlation_id)
            ch.basic_publish("", props.reply_to, str(a).encode(), reply)
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(q, on_request)
        try:
            client = program("rpc_client.py", "--queue", q, "30")
            deadline = time.monotonic() + 20
            while client.proc.poll() is None and time.monotonic() < deadline:
                ch.connection.process_data_events(time_limit=0.05)
            assert client.finish() == 0, client.text()
            assert client.lines(" [.] ") == ["Got 832040"]
            [props] = requests
            assert props.reply_to and props.correlation_id
        finally:
            ch.queue_delete(q)


def test_rpc_client_with_no_server_fails_at_once() -> None:
    """
    ``rpc_client.py`` to a key no queue is bound to exits 1 at once with the
    broker's NO_ROUTE, rather than waiting out its timeout.
    """
    start = time.monotonic()
    out = run("rpc_client.py", "--queue", unique("nobody"), "--timeout", "30", "5")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "NO_ROUTE" in out.stdout
    assert time.monotonic() - start < 15


# ---------------------------------------------------------------------------
# 7. Publisher confirms


def test_publisher_confirms_every_confirmed_message_is_in_the_queue() -> None:
    """
    ``publisher_confirms.py --count 200`` publishes 200 persistent messages
    each way (individually, in batches, asynchronously), all confirmed: the
    durable queue then holds all 600.
    """
    q = unique("confirms")
    try:
        out = run("publisher_confirms.py", "--queue", q, "--count", "200")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert [line.split(",")[0] for line in lines] == [
            "published 200 messages individually",
            "published 200 messages in batches of 100",
            "published 200 messages asynchronously",
        ]
        assert depth(q) == 600
        with pika_channel() as ch:
            ch.queue_declare(q, durable=True)  # it is durable (or this fails with 406)
            _method, props, body = ch.basic_get(q, auto_ack=True)
            assert body == b"message 0" and props.delivery_mode == 2
    finally:
        delete((q,))
