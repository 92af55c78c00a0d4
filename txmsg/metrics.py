"""
Metrics in the Prometheus text exposition format (version 0.0.4), with no
third-party dependency.

A L{Metrics} registry holds counters and gauges, each a name, a help text, a
set of labels and a zero-argument callable that is read at scrape time: the
objects being measured keep their plain attributes (C{producer.confirmed},
C{consumer.consumed}, ...) and pay nothing on their hot paths::

    metrics = Metrics()
    watch_connection(metrics, connection)
    watch_producer(metrics, producer)
    watch_consumer(metrics, consumer)
    metrics.render()  # bytes for GET /metrics

L{txmsg.web.MonitorResource} serves L{Metrics.render} at C{/metrics}.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

__all__ = [
    "CONTENT_TYPE",
    "Metrics",
    "watch_connection",
    "watch_consumer",
    "watch_producer",
]

#: the Content-Type of L{Metrics.render}'s output
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Reader = Callable[[], "int | float"]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: Any) -> str:
    """
    A sample value as the text format writes it; TypeError if not a number.
    """
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    raise TypeError(f"a metric reads a number, not {type(value).__name__}")


class _Sample:
    __slots__ = ("key", "read", "text")

    def __init__(self, text: str, labels: tuple[tuple[str, str], ...], read: Reader) -> None:
        #: the series as rendered: C{name{label="value",...}}
        self.text = text
        self.key = frozenset(labels)
        self.read = read


@dataclass
class _Family:
    name: str
    type: str
    help: str
    samples: list[_Sample] = field(default_factory=list)


class Metrics:
    """
    A registry of counters and gauges read at scrape time.

    Several registrations may share a name, each with its own label set (one
    series each); they are rendered under one C{# HELP} and C{# TYPE} line.
    Registering a name again with another type, or a label set a name already
    has, is a C{ValueError}.
    """

    _log = Logger()

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def counter(self, name: str, help: str, read: Reader, labels: Mapping[str, object] | None = None) -> None:
        """
        Register a counter: a number that only goes up (it starts again from
        zero when the process restarts).

        @param name: the metric name; C{_total} is appended unless it ends so,
            as Prometheus names counters.
        @param help: one line saying what it counts.
        @param read: called with no argument at each scrape; returns the count.
        @param labels: label names and values of this series (values are
            made C{str}).
        """
        if not name.endswith("_total"):
            name += "_total"
        self._register("counter", name, help, read, labels)

    def gauge(self, name: str, help: str, read: Reader, labels: Mapping[str, object] | None = None) -> None:
        """
        Register a gauge: a number that goes up and down.

        @param name: the metric name.
        @param help: one line saying what it measures.
        @param read: called with no argument at each scrape; returns the value.
        @param labels: label names and values of this series.
        """
        self._register("gauge", name, help, read, labels)

    def _register(
        self, type_: str, name: str, help: str, read: Reader, labels: Mapping[str, object] | None
    ) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        if not callable(read):
            raise TypeError(f"read must be a callable, not {type(read).__name__}")
        pairs = tuple((str(k), str(v)) for k, v in (labels or {}).items())
        for label, _ in pairs:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for metric {name!r}")
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = _Family(name, type_, help)
        elif family.type != type_:
            raise ValueError(f"metric {name!r} is already registered as a {family.type}")
        key = frozenset(pairs)
        if any(s.key == key for s in family.samples):
            raise ValueError(f"metric {name!r} already has a series with labels {dict(pairs)!r}")
        text = name
        if pairs:
            text += "{" + ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in pairs) + "}"
        family.samples.append(_Sample(text, pairs, read))

    def render(self) -> bytes:
        """
        Read every registered metric and return the Prometheus text format
        (version 0.0.4; its Content-Type is L{CONTENT_TYPE}).  A reader that
        raises, or returns something other than a number, is logged and its
        sample left out; the rest of the scrape is unaffected.
        """
        lines: list[str] = []
        for family in self._families.values():
            lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
            lines.append(f"# TYPE {family.name} {family.type}")
            for sample in family.samples:
                try:
                    value = _format_value(sample.read())
                except Exception:  # noqa: BLE001 - one broken reader must not break the scrape
                    self._log.failure("reading metric {metric} failed; sample skipped", metric=sample.text)
                    continue
                lines.append(f"{sample.text} {value}")
        return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def watch_connection(metrics: Metrics, connection: Any, labels: Mapping[str, object] | None = None) -> None:
    """
    Register C{txmsg_connection_up}: 1 while C{connection} (a
    L{txmsg.connection.Connection}) is connected to a broker, else 0.
    """
    metrics.gauge(
        "txmsg_connection_up",
        "1 while the connection to the broker is up, else 0.",
        lambda: 1 if connection.is_connected else 0,
        labels,
    )


def watch_producer(metrics: Metrics, producer: Any, labels: Mapping[str, object] | None = None) -> None:
    """
    Register the counters and gauges of a L{txmsg.producer.Producer}:
    C{txmsg_producer_confirmed_total}, C{txmsg_producer_failed_total},
    C{txmsg_producer_unconfirmed} and C{txmsg_producer_waiting}.
    """
    metrics.counter(
        "txmsg_producer_confirmed_total",
        "Messages published and confirmed by the broker.",
        lambda: producer.confirmed,
        labels,
    )
    metrics.counter(
        "txmsg_producer_failed_total",
        "Publishes that failed: nacked, returned unroutable, timed out or lost with a stopped connection.",
        lambda: producer.failed,
        labels,
    )
    metrics.gauge(
        "txmsg_producer_unconfirmed",
        "Messages written to the broker and awaiting their confirm.",
        lambda: producer.unconfirmed,
        labels,
    )
    metrics.gauge(
        "txmsg_producer_waiting",
        "Published messages waiting to be written (backpressure or no connection).",
        lambda: producer.waiting,
        labels,
    )


def queue_label(queue: Any) -> str:
    """
    The C{queue} label of a consumer's queue (a L{txmsg.topology.Queue} or a
    name).  A server-named queue gets a new name on every connection, so it is
    labelled C{(server-named XXXXXXXX)}, after the token that tells it apart.
    """
    if isinstance(queue, str):
        return queue
    name = getattr(queue, "name", None)
    if name:
        return str(name)
    token = getattr(queue, "token", "") or ""
    return f"(server-named {token[:8]})" if token else "(server-named)"


def watch_consumer(metrics: Metrics, consumer: Any, labels: Mapping[str, object] | None = None) -> None:
    """
    Register the counters of a L{txmsg.consumer.Consumer}, labelled with its
    queue (see L{queue_label}) and C{labels}:
    C{txmsg_consumer_consumed_total} (messages settled: acked, rejected or
    requeued), C{txmsg_consumer_rejected_total} and
    C{txmsg_consumer_requeued_total}; with a retry policy also
    C{txmsg_consumer_retries_scheduled_total}, C{txmsg_consumer_retried_total}
    and C{txmsg_consumer_dead_lettered_total}.
    """
    series = {"queue": queue_label(consumer.queue), **(labels or {})}
    metrics.counter(
        "txmsg_consumer_consumed_total",
        "Messages settled by the consumer (acked, rejected or requeued).",
        lambda: consumer.consumed,
        series,
    )
    metrics.counter(
        "txmsg_consumer_rejected_total",
        "Messages rejected without requeue (dead-lettered).",
        lambda: consumer.rejected,
        series,
    )
    metrics.counter(
        "txmsg_consumer_requeued_total",
        "Messages given back to the queue.",
        lambda: consumer.requeued,
        series,
    )
    if getattr(consumer, "retry", None) is not None:
        metrics.counter(
            "txmsg_consumer_retries_scheduled_total",
            "Failed messages sent to a delay queue to be tried again later.",
            lambda: consumer.retries_scheduled,
            series,
        )
        metrics.counter(
            "txmsg_consumer_retried_total",
            "Deliveries that were a retry of a message that failed before.",
            lambda: consumer.retried,
            series,
        )
        metrics.counter(
            "txmsg_consumer_dead_lettered_total",
            "Messages sent to the dead letters with the reason (attempts spent, or rejected).",
            lambda: consumer.dead_lettered,
            series,
        )
