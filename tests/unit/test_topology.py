"""
Topology values: immutable, comparable, and declared with exactly the flags given.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import succeed

from txmsg import Binding, Exchange, ExchangeBinding, Queue
from txmsg.connection import Channel


class RecordingChannel(Channel):
    """
    A channel with no connection: its typed methods record the calls they
    make and answer like a broker would.
    """

    def __init__(self) -> None:  # no connection: only call() is used
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.counter = 0

    def call(self, name: str, **kwargs: Any) -> Any:  # type: ignore[override]
        self.calls.append((name, kwargs))
        if name == "queue.declare":
            self.counter += 1
            queue = kwargs["queue"] or f"amq.gen-{self.counter}"
            return succeed({"queue": queue, "message_count": 0, "consumer_count": 0})
        return succeed({})


def test_values_are_immutable_and_hashable() -> None:
    """
    Topology values are frozen and usable as dict keys; equal values are equal.
    """
    q = Queue("jobs", durable=True, arguments={"x-queue-type": "quorum"})
    with pytest.raises(AttributeError):
        q.name = "other"  # type: ignore[misc]
    assert q == Queue("jobs", durable=True, arguments={"x-queue-type": "quorum"})
    assert {q: 1}[Queue("jobs", durable=True, arguments={"x-queue-type": "quorum"})] == 1


def test_server_named_queues_are_distinct() -> None:
    """
    Two server-named queues are two queues, each with its own name.
    """
    a, b = Queue(exclusive=True), Queue(exclusive=True)
    assert a != b and a.server_named
    names: dict[Any, str] = {}
    ch = RecordingChannel()
    a.declare(ch, names)  # type: ignore[arg-type]
    b.declare(ch, names)  # type: ignore[arg-type]
    assert names[a] != names[b]


def test_declare_sends_exactly_the_flags_given() -> None:
    """
    exchange.declare and queue.declare carry the value's flags and arguments.
    """
    ch = RecordingChannel()
    Exchange("logs", "fanout", durable=True, internal=True).declare(ch, {})  # type: ignore[arg-type]
    Queue.quorum("work", x_delivery_limit=5).declare(ch, {})  # type: ignore[arg-type]
    (xname, xargs), (qname, qargs) = ch.calls
    assert xname == "exchange.declare"
    assert (xargs["type"], xargs["durable"], xargs["internal"], xargs["auto_delete"]) == (
        "fanout",
        True,
        True,
        False,
    )
    assert qname == "queue.declare"
    assert qargs["durable"] and qargs["arguments"] == {"x-queue-type": "quorum", "x-delivery-limit": 5}


def test_binding_follows_a_server_named_queue() -> None:
    """
    A binding to a server-named queue uses the name the broker gave on this
    connection, and the new one after the queue is declared again.
    """
    ch = RecordingChannel()
    names: dict[Any, str] = {}
    q = Queue(exclusive=True)
    x = Exchange("events", "topic")
    q.declare(ch, names)  # type: ignore[arg-type]
    Binding(q, x, "a.*").declare(ch, names)  # type: ignore[arg-type]
    q.declare(ch, names)  # type: ignore[arg-type]  # a reconnect: new name
    Binding(q, x, "a.*").declare(ch, names)  # type: ignore[arg-type]
    binds = [kw for name, kw in ch.calls if name == "queue.bind"]
    assert [b["queue"] for b in binds] == ["amq.gen-1", "amq.gen-2"]
    assert binds[0]["exchange"] == "events" and binds[0]["routing_key"] == "a.*"


def test_headers_binding_and_exchange_binding() -> None:
    """
    Headers bindings carry x-match; exchange bindings use exchange.bind.
    """
    ch = RecordingChannel()
    Binding.headers("q", "hx", match="any", format="pdf", type="report").declare(ch, {})  # type: ignore[arg-type]
    ExchangeBinding("dst", Exchange("src", "fanout"), "k").declare(ch, {})  # type: ignore[arg-type]
    assert ch.calls[0][1]["arguments"] == {"x-match": "any", "format": "pdf", "type": "report"}
    assert ch.calls[1] == (
        "exchange.bind",
        {"destination": "dst", "source": "src", "routing_key": "k", "arguments": {}},
    )
    with pytest.raises(ValueError):
        Binding.headers("q", "hx", match="some")


def test_broker_reserved_exchanges_cannot_be_declared() -> None:
    """
    Declaring the default exchange or an amq.* exchange is refused up front.
    """
    with pytest.raises(ValueError):
        Exchange("amq.topic", "topic")
    assert Exchange("amq.topic", "topic", passive=True).passive
