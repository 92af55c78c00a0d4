"""
The metrics registry's Prometheus text (types, help, labels, escaping, readers
that fail), and the standard metrics of connections, producers and consumers
driven over a StringTransport broker.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger

from txmsg import Queue
from txmsg.metrics import (
    CONTENT_TYPE,
    Metrics,
    queue_label,
    watch_connection,
    watch_consumer,
    watch_producer,
)

from .test_connection import handshake, lose, make_connection
from .test_consumer import Broker as ConsumerBroker
from .test_producer import Broker as ProducerBroker

# one sample line of the 0.0.4 text format: name, optional labels, value
SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? '
    r"(-?[0-9.e+-]+|NaN|[+-]Inf)$"
)


def samples(text: bytes) -> dict[str, str]:
    """
    The sample lines of an exposition: series -> value; every line must be a
    comment or a well-formed sample.
    """
    out: dict[str, str] = {}
    decoded = text.decode("utf-8")
    assert decoded.endswith("\n")
    for line in decoded.splitlines():
        if line.startswith("#"):
            continue
        assert SAMPLE.match(line), line
        series, _, value = line.rpartition(" ")
        out[series] = value
    return out


def test_counter_and_gauge_render_help_type_and_value_read_at_scrape_time() -> None:
    """
    A counter and a gauge render as HELP, TYPE and one sample each; the value
    is what the reader returns at render time (not at registration); a
    counter's name gets _total.
    """
    state = {"n": 3, "depth": 7}
    m = Metrics()
    m.counter("jobs_done", "Jobs done.", lambda: state["n"])
    m.gauge("queue_depth", "Jobs waiting.", lambda: state["depth"])
    assert m.render() == (
        b"# HELP jobs_done_total Jobs done.\n"
        b"# TYPE jobs_done_total counter\n"
        b"jobs_done_total 3\n"
        b"# HELP queue_depth Jobs waiting.\n"
        b"# TYPE queue_depth gauge\n"
        b"queue_depth 7\n"
    )
    state["n"], state["depth"] = 4, 0
    assert samples(m.render()) == {"jobs_done_total": "4", "queue_depth": "0"}
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_a_name_with_several_label_sets_has_one_help_and_type() -> None:
    """
    Registrations sharing a name with different labels render under a single
    HELP/TYPE pair, one sample per label set, labels in the order given.
    """
    m = Metrics()
    m.counter("msgs_total", "Messages.", lambda: 1, {"queue": "a", "node": "n1"})
    m.counter("msgs_total", "Messages.", lambda: 2, {"queue": "b", "node": "n1"})
    text = m.render().decode()
    assert text.count("# HELP msgs_total") == 1 and text.count("# TYPE msgs_total counter") == 1
    assert samples(m.render()) == {
        'msgs_total{queue="a",node="n1"}': "1",
        'msgs_total{queue="b",node="n1"}': "2",
    }


def test_label_values_and_help_are_escaped() -> None:
    """
    Backslash, double quote and newline in a label value are escaped as the
    format requires; backslash and newline in help text too.
    """
    m = Metrics()
    m.gauge("g", 'line one\nback\\slash "quoted"', lambda: 1, {"path": 'C:\\dir "x"\nnext'})
    lines = m.render().decode().splitlines()
    assert lines[0] == '# HELP g line one\\nback\\\\slash "quoted"'
    assert lines[2] == 'g{path="C:\\\\dir \\"x\\"\\nnext"} 1'
    assert len(lines) == 3
    samples(m.render())  # well-formed


def test_a_failing_reader_is_skipped_and_logged_and_the_rest_rendered() -> None:
    """
    A reader that raises, or returns something that is not a number, loses
    its own sample (logged with the series); the other samples, even of the
    same name, are still rendered.
    """
    events: list[dict[str, Any]] = []
    m = Metrics()
    m._log = Logger(observer=events.append)  # type: ignore[arg-type]

    def broken() -> int:
        raise RuntimeError("boom")

    m.gauge("up", "Up.", lambda: 1, {"part": "ok"})
    m.gauge("up", "Up.", broken, {"part": "broken"})
    m.gauge("up", "Up.", lambda: "nope", {"part": "text"})  # type: ignore[arg-type,return-value]
    m.counter("other_total", "Other.", lambda: 5)
    assert samples(m.render()) == {'up{part="ok"}': "1", "other_total": "5"}
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 2
    assert failures[0]["log_failure"].check(RuntimeError)
    assert failures[0]["metric"] == 'up{part="broken"}'


def test_values_are_formatted_as_the_format_spells_them() -> None:
    """
    Booleans render 1/0, floats in full, and NaN and the infinities as NaN,
    +Inf and -Inf.
    """
    m = Metrics()
    for i, v in enumerate([True, False, 0.25, float("nan"), float("inf"), float("-inf"), 10**12]):
        m.gauge(f"v{i}", "V.", lambda v=v: v)  # type: ignore[misc]
    assert samples(m.render()) == {
        "v0": "1",
        "v1": "0",
        "v2": "0.25",
        "v3": "NaN",
        "v4": "+Inf",
        "v5": "-Inf",
        "v6": "1000000000000",
    }


def test_conflicting_or_invalid_registrations_are_refused() -> None:
    """
    The same name and labels twice, a name registered as another type, and
    invalid metric or label names are ValueErrors; a non-callable reader is a
    TypeError.
    """
    m = Metrics()
    m.counter("c_total", "C.", lambda: 1, {"a": "1"})
    with pytest.raises(ValueError, match="already has a series"):
        m.counter("c_total", "C.", lambda: 1, {"a": "1"})
    with pytest.raises(ValueError, match="already registered as a counter"):
        m.gauge("c_total", "C.", lambda: 1, {"a": "2"})
    with pytest.raises(ValueError, match="invalid metric name"):
        m.gauge("1bad", "B.", lambda: 1)
    with pytest.raises(ValueError, match="invalid label name"):
        m.gauge("g", "G.", lambda: 1, {"bad-label": "x"})
    with pytest.raises(ValueError, match="invalid label name"):
        m.gauge("g", "G.", lambda: 1, {"__reserved": "x"})
    with pytest.raises(TypeError):
        m.gauge("g", "G.", 5)  # type: ignore[arg-type]
    assert samples(m.render()) == {'c_total{a="1"}': "1"}


def test_empty_registry_renders_nothing() -> None:
    """
    A registry with no metrics renders an empty body.
    """
    assert Metrics().render() == b""


def test_connection_up_follows_the_connection() -> None:
    """
    txmsg_connection_up is 0 before the handshake, 1 once connected, and 0
    again after the connection is lost.
    """
    clock = Clock()
    conn, endpoint = make_connection(clock)
    m = Metrics()
    watch_connection(m, conn, {"app": "web"})
    conn.startService()
    assert samples(m.render()) == {'txmsg_connection_up{app="web"}': "0"}
    handshake(endpoint.protocols[-1])
    assert samples(m.render()) == {'txmsg_connection_up{app="web"}': "1"}
    lose(endpoint.protocols[-1])
    assert samples(m.render()) == {'txmsg_connection_up{app="web"}': "0"}


def test_producer_metrics_follow_confirms_and_failures() -> None:
    """
    The producer's confirmed and failed counters and its unconfirmed gauge
    follow publishes, acks and nacks on a real Producer.
    """
    b = ProducerBroker()
    m = Metrics()
    watch_producer(m, b.producer)
    assert samples(m.render()) == {
        "txmsg_producer_confirmed_total": "0",
        "txmsg_producer_failed_total": "0",
        "txmsg_producer_unconfirmed": "0",
        "txmsg_producer_waiting": "0",
    }
    ds = [b.producer.publish("", "q", f"m{i}") for i in range(3)]
    assert samples(m.render())["txmsg_producer_unconfirmed"] == "3"
    b.ack(2, multiple=True)
    b.nack(3)
    ds[2].addErrback(lambda _: None)
    got = samples(m.render())
    assert got["txmsg_producer_confirmed_total"] == "2"
    assert got["txmsg_producer_failed_total"] == "1"
    assert got["txmsg_producer_unconfirmed"] == "0"
    text = m.render().decode()
    assert "# TYPE txmsg_producer_confirmed_total counter" in text
    assert "# TYPE txmsg_producer_waiting gauge" in text


def test_producer_waiting_gauge_counts_publishes_made_while_disconnected() -> None:
    """
    Publishes made before the connection is up wait; the waiting gauge
    counts them.
    """
    clock = Clock()
    conn, _endpoint = make_connection(clock)
    from txmsg import Producer

    producer = Producer(conn)
    m = Metrics()
    watch_producer(m, producer)
    ds = [producer.publish("", "q", b"x") for _ in range(2)]
    assert samples(m.render())["txmsg_producer_waiting"] == "2"
    conn.stopService()
    for d in ds:
        d.addErrback(lambda _: None)
    assert samples(m.render())["txmsg_producer_waiting"] == "0"
    assert samples(m.render())["txmsg_producer_failed_total"] == "2"


def test_consumer_metrics_follow_acks_rejects_and_requeues_labelled_by_queue() -> None:
    """
    A real Consumer's consumed, rejected and requeued counters, labelled with
    its queue's name, follow what its handler did with each delivery.
    """
    from txmsg.consumer import Reject, Requeue

    outcomes = iter([None, Reject(), Requeue(), Reject(), None])

    def handler(message: Any) -> None:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    b = ConsumerBroker(handler, Queue("jobs"))
    m = Metrics()
    watch_consumer(m, b.consumer)
    b.feed(b"".join(b.deliver(t) for t in range(1, 6)))
    b.clock.advance(0)
    assert samples(m.render()) == {
        'txmsg_consumer_consumed_total{queue="jobs"}': "5",
        'txmsg_consumer_rejected_total{queue="jobs"}': "2",
        'txmsg_consumer_requeued_total{queue="jobs"}': "1",
    }


def test_consumers_of_several_queues_are_separate_series() -> None:
    """
    Two consumers (one given a queue name, one a server-named Queue) are
    labelled apart, so both register in one registry; extra labels are added.
    """
    b1 = ConsumerBroker(lambda m: None, "orders")
    b2 = ConsumerBroker(lambda m: None, Queue("", exclusive=True))
    m = Metrics()
    watch_consumer(m, b1.consumer, {"role": "worker"})
    watch_consumer(m, b2.consumer)
    b1.feed(b1.deliver(1))
    got = samples(m.render())
    assert got['txmsg_consumer_consumed_total{queue="orders",role="worker"}'] == "1"
    label = queue_label(b2.consumer.queue)
    assert label.startswith("(server-named ") and label != queue_label(Queue("", exclusive=True))
    assert got[f'txmsg_consumer_consumed_total{{queue="{label}"}}'] == "0"
