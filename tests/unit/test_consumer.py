"""
Consumer over a StringTransport "broker" and a Clock: the frames it sends to
register, how acks are batched (never acking a message still being handled),
the concurrency limit, the redelivery cap, broker cancels, and a graceful stop.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from txmsg import Connection, Consumer, Queue
from txmsg._amqp import codec as _codec
from txmsg.consumer import Reject, Requeue

from .test_connection import handshake, lose, make_connection
from .test_protocol import method, parse_frames


class Broker:
    """
    The broker side of one consumer on channel 1.
    """

    def __init__(self, handler: Any, queue: Any = "jobs", **kwargs: Any) -> None:
        self.clock = Clock()
        self.conn, self.endpoint = make_connection(self.clock)
        self.consumer = Consumer(self.conn, queue, handler, **kwargs)
        self.consumer.startService()
        self.proto = self.endpoint.protocols[-1]
        handshake(self.proto)
        self.proto.transport.clear()
        self.registered: list[tuple[str, dict[str, Any]]] = []
        self.register()

    def register(self, channel: int = 1) -> None:
        self.feed(method(channel, "channel.open-ok"))
        if isinstance(self.consumer.queue, Queue):
            self.registered += self.methods()
            self.feed(method(channel, "queue.declare-ok", queue="jobs", message_count=0, consumer_count=0))
        self.registered += self.methods()
        self.feed(method(channel, "basic.qos-ok"))
        self.registered += self.methods()
        self.feed(method(channel, "basic.consume-ok", consumer_tag="ctag"))
        assert self.consumer.consumer_tag == "ctag"

    def feed(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def deliver(self, tag: int, body: bytes = b"x", channel: int = 1, **props: Any) -> bytes:
        return method(
            channel,
            "basic.deliver",
            consumer_tag="ctag",
            delivery_tag=tag,
            redelivered=props.pop("redelivered", False),
            exchange="",
            routing_key="jobs",
        ) + b"".join(_codec.content_frames(channel, props, body, 131072))

    def methods(self) -> list[tuple[str, dict[str, Any]]]:
        frames = parse_frames(self.proto.transport.value())
        self.proto.transport.clear()
        return [payload for ftype, _, payload in frames if ftype == 1]

    def settlements(self) -> list[tuple[str, int, bool]]:
        """
        The acks, nacks and rejects written since the last call: (method, tag,
        multiple-or-requeue).
        """
        out = []
        for name, args in self.methods():
            if name == "basic.ack":
                out.append(("ack", args["delivery_tag"], args["multiple"]))
            elif name == "basic.reject":
                out.append(("reject", args["delivery_tag"], args["requeue"]))
            elif name == "basic.nack":
                assert not args["multiple"]
                out.append(("nack", args["delivery_tag"], args["requeue"]))
        return out


def test_registers_with_bounded_prefetch_and_declares_an_owned_queue() -> None:
    """
    A consumer given a Queue declares it, then sets basic.qos to its prefetch
    (10 by default: bounded, so consumers joining later get their share), then
    consumes; given a name, it declares nothing.
    """
    b = Broker(lambda m: None, Queue("jobs", durable=True))
    names = [name for name, _ in b.registered]
    assert names == ["queue.declare", "basic.qos", "basic.consume"]
    assert b.registered[0][1]["durable"] is True
    assert b.registered[1][1]["prefetch_count"] == 10
    b2 = Broker(lambda m: None, "jobs", prefetch=3)
    assert [name for name, _ in b2.registered] == ["basic.qos", "basic.consume"]
    assert b2.registered[0][1]["prefetch_count"] == 3


def test_acks_of_synchronous_handlers_go_as_one_multiple_ack_per_read() -> None:
    """
    Five messages handled synchronously in one read are acked by a single
    basic.ack with multiple set, written as soon as the read is handled (no
    timer: nothing is left for the reactor turn).
    """
    seen: list[bytes] = []
    b = Broker(lambda m: seen.append(m.body))
    b.feed(b"".join(b.deliver(t, b"m%d" % t) for t in range(1, 6)))
    assert seen == [b"m1", b"m2", b"m3", b"m4", b"m5"]
    assert b.settlements() == [("ack", 5, True)]
    assert [c for c in b.clock.getDelayedCalls() if c.getTime() == b.clock.seconds()] == []
    assert b.consumer.consumed == 5


def test_acks_settled_outside_a_read_go_after_the_reactor_turn() -> None:
    """
    Handlers whose Deferreds fire later (from a timer, not a read) are acked
    together once the reactor turn ends: one multiple ack for both.
    """
    pending: list[Deferred[None]] = []

    def handler(m: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        pending.append(d)
        return d

    b = Broker(handler)
    b.feed(b.deliver(1) + b.deliver(2))
    assert b.settlements() == []
    for d in pending:
        d.callback(None)
    assert b.settlements() == []
    b.clock.advance(0)
    assert b.settlements() == [("ack", 2, True)]


def test_a_multiple_ack_never_covers_a_message_still_being_handled() -> None:
    """
    With message 2 still in its handler, 1 is acked (multiple up to 1) and 3 is
    acked on its own; once 2 finishes, it is acked too.
    """
    pending: dict[bytes, Deferred[None]] = {}

    def handler(m: Any) -> Any:
        if m.body == b"slow":
            pending[m.body] = Deferred()
            return pending[m.body]
        return None

    b = Broker(handler)
    b.feed(b.deliver(1) + b.deliver(2, b"slow") + b.deliver(3))
    b.clock.advance(0)
    assert b.settlements() == [("ack", 1, True), ("ack", 3, False)]
    pending[b"slow"].callback(None)
    b.clock.advance(0)
    assert b.settlements() == [("ack", 2, True)]


def test_failures_reject_at_once_and_requeue_only_when_asked() -> None:
    """
    An exception rejects without requeue; Reject likewise; Requeue nacks with
    requeue (a "not now" that RabbitMQ 4 does not count against a quorum
    queue's delivery limit, as it would a reject); each goes out at once, the
    acks around them once the read is handled (one multiple ack: the rejected
    ones are settled already).
    """

    def handler(m: Any) -> None:
        if m.body == b"boom":
            raise RuntimeError("bug")
        if m.body == b"again":
            raise Requeue()
        if m.body == b"no":
            raise Reject()

    b = Broker(handler)
    b.feed(b.deliver(1) + b.deliver(2, b"boom") + b.deliver(3, b"again") + b.deliver(4, b"no") + b.deliver(5))
    assert b.settlements() == [
        ("reject", 2, False),
        ("nack", 3, True),
        ("reject", 4, False),
        ("ack", 5, True),
    ]


def test_requeue_of_a_redelivered_message_dead_letters_it() -> None:
    """
    Where the queue does not count deliveries, a Requeue of a message flagged
    redelivered rejects it without requeue: it cannot spin.
    """

    def handler(m: Any) -> None:
        raise Requeue()

    b = Broker(handler)
    b.feed(b.deliver(1) + b.deliver(2, redelivered=True))
    assert b.settlements() == [("nack", 1, True), ("reject", 2, False)]


def test_delivery_count_caps_requeues_and_skips_poison_messages() -> None:
    """
    On a quorum queue (x-delivery-count), Requeue works until the count
    reaches max_redeliveries; a message counted beyond it is dead-lettered
    without calling the handler at all.
    """
    calls: list[int] = []

    def handler(m: Any) -> None:
        calls.append(m.delivery_tag)
        raise Requeue()

    b = Broker(handler, max_redeliveries=3)
    b.feed(
        b.deliver(1, headers={"x-delivery-count": 2})
        + b.deliver(2, headers={"x-delivery-count": 3})
        + b.deliver(3, headers={"x-delivery-count": 4}, redelivered=True)
    )
    assert calls == [1, 2]
    assert b.settlements() == [("nack", 1, True), ("reject", 2, False), ("reject", 3, False)]


def test_requeues_on_a_rabbitmq_4_quorum_queue_do_not_use_up_the_delivery_cap() -> None:
    """
    RabbitMQ 4 counts a quorum queue's nacked returns in x-acquired-count
    only: a message given back with Requeue (a nack) many times, never failed,
    is redelivered flagged, without x-delivery-count, and is requeued again
    (not dead-lettered as a redelivered message elsewhere would be); one whose
    failed deliveries (x-delivery-count) pass the cap is dead-lettered before
    the handler.
    """
    calls: list[int] = []

    def handler(m: Any) -> None:
        calls.append(m.delivery_tag)
        raise Requeue()

    b = Broker(handler, max_redeliveries=3)
    b.feed(
        b.deliver(1, headers={"x-acquired-count": 9}, redelivered=True)
        + b.deliver(2, headers={"x-acquired-count": 12, "x-delivery-count": 2}, redelivered=True)
        + b.deliver(3, headers={"x-acquired-count": 12, "x-delivery-count": 4}, redelivered=True)
    )
    assert calls == [1, 2]
    assert b.settlements() == [("nack", 1, True), ("nack", 2, True), ("reject", 3, False)]


def test_concurrency_limits_running_handlers() -> None:
    """
    With concurrency 2, the third message waits until one of the first two
    handlers finishes.
    """
    running: list[Deferred[None]] = []

    def handler(m: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        running.append(d)
        return d

    b = Broker(handler, prefetch=5, concurrency=2)
    b.feed(b.deliver(1) + b.deliver(2) + b.deliver(3))
    assert len(running) == 2
    running[1].callback(None)
    assert len(running) == 3
    b.clock.advance(0)
    assert b.settlements() == [("ack", 2, False)]
    running[0].callback(None)
    running[2].callback(None)
    b.clock.advance(0)
    assert b.settlements() == [("ack", 3, True)]


def test_coroutine_handlers_are_awaited_before_the_ack() -> None:
    """
    A coroutine handler's message is acked only when the coroutine finishes.
    """
    gate: Deferred[None] = Deferred()

    async def handler(m: Any) -> None:
        await gate

    b = Broker(handler)
    b.feed(b.deliver(1))
    b.clock.advance(0)
    assert b.settlements() == []
    gate.callback(None)
    b.clock.advance(0)
    assert b.settlements() == [("ack", 1, True)]


def test_graceful_stop_cancels_finishes_running_handlers_acks_then_closes() -> None:
    """
    Stopping sends basic.cancel; after cancel-ok it waits for the running
    handler, acks it, and only then closes the channel.  A message waiting
    for a concurrency slot is never handled (the broker requeues it).
    """
    running: list[Deferred[None]] = []
    handled: list[int] = []

    def handler(m: Any) -> Deferred[None]:
        handled.append(m.delivery_tag)
        d: Deferred[None] = Deferred()
        running.append(d)
        return d

    b = Broker(handler, concurrency=1)
    b.feed(b.deliver(1) + b.deliver(2))
    stopped: list[Any] = []
    b.consumer.stopService().addCallback(stopped.append)
    assert [name for name, _ in b.methods()] == ["basic.cancel"]
    b.feed(method(1, "basic.cancel-ok", consumer_tag="ctag"))
    assert b.methods() == [] and not stopped
    running[0].callback(None)
    names = [name for name, _ in b.methods()]
    assert names == ["basic.ack", "channel.close"]
    b.feed(method(1, "channel.close-ok"))
    assert stopped and handled == [1]


def test_stop_gives_up_on_a_stuck_handler_after_the_timeout() -> None:
    """
    A handler that never finishes delays the stop by stop_timeout, no more;
    its message is left unacked (the broker redelivers it).
    """
    b = Broker(lambda m: Deferred(), stop_timeout=5)
    b.feed(b.deliver(1))
    stopped: list[Any] = []
    b.consumer.stopService().addCallback(stopped.append)
    b.feed(method(1, "basic.cancel-ok", consumer_tag="ctag"))
    b.methods()
    b.clock.advance(4.9)
    assert b.methods() == []
    b.clock.advance(0.2)
    assert [name for name, _ in b.methods()] == ["channel.close"]
    b.feed(method(1, "channel.close-ok"))
    assert stopped


def test_broker_cancel_of_an_owned_queue_declares_it_again() -> None:
    """
    When the broker cancels the consumer (its queue was deleted), a consumer
    that owns the queue closes the channel, declares the queue again and
    consumes once more.
    """
    b = Broker(lambda m: None, Queue("jobs"))
    b.feed(method(1, "basic.cancel", consumer_tag="ctag", nowait=True))
    assert [name for name, _ in b.methods()] == ["channel.close"]
    b.feed(method(1, "channel.close-ok"))
    b.clock.advance(1)
    b.register(channel=2)
    assert [name for name, _ in b.registered][-3:] == ["queue.declare", "basic.qos", "basic.consume"]


def test_broker_cancel_of_a_foreign_queue_is_reported() -> None:
    """
    A consumer of a queue it does not own reports the cancel to on_cancel.
    """
    reported: list[Any] = []
    b = Broker(lambda m: None, "jobs", on_cancel=reported.append)
    b.feed(method(1, "basic.cancel", consumer_tag="ctag", nowait=True))
    assert reported == [b.consumer]


@pytest.mark.parametrize(
    "kwargs", [{"prefetch": -1}, {"prefetch": 70000}, {"concurrency": 0}, {"max_redeliveries": -1}]
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Consumer(Connection("amqp://h/", reactor=Clock()), "q", lambda m: None, **kwargs)


def test_no_handler_starts_once_stopping_has_begun() -> None:
    """
    A message delivered between basic.cancel and cancel-ok is not handled
    (it is left unacked, so the broker gives it to another consumer).
    """
    handled: list[int] = []
    b = Broker(lambda m: handled.append(m.delivery_tag))
    b.feed(b.deliver(1))
    b.consumer.stopService()
    b.feed(b.deliver(2))
    b.feed(method(1, "basic.cancel-ok", consumer_tag="ctag"))
    assert handled == [1]
    assert [(n, a.get("delivery_tag")) for n, a in b.methods()] == [
        ("basic.ack", 1),
        ("basic.cancel", None),
        ("channel.close", None),
    ]


def test_stop_does_not_wait_for_handlers_whose_channel_closed() -> None:
    """
    When the channel closes under a running handler (the broker requeued its
    message), stopping does not wait stop_timeout for it, and the handler that
    finishes later settles nothing.
    """
    stuck: Deferred[Any] = Deferred()
    b = Broker(lambda m: stuck, stop_timeout=30)
    b.feed(b.deliver(1))
    b.methods()
    b.feed(
        method(1, "channel.close", reply_code=406, reply_text="PRECONDITION_FAILED", class_id=0, method_id=0)
    )
    b.methods()
    stopped: list[Any] = []
    b.consumer.stopService().addCallback(stopped.append)
    assert stopped  # at once, not after 30 s
    stuck.callback(None)
    assert b.settlements() == []
    assert b.consumer.consumed == 0


def test_dedupe_window_skips_recent_message_ids() -> None:
    """
    With dedupe_window a message whose id was handled lately is acked without
    calling the handler; ids that fell out of the window are handled again,
    and messages without an id are never skipped.
    """
    seen: list[bytes] = []
    b = Broker(lambda m: seen.append(m.body), dedupe_window=2)
    for tag, (mid, body) in enumerate([("a", b"1"), ("a", b"2"), ("b", b"3"), ("c", b"4"), ("a", b"5")], 1):
        b.feed(b.deliver(tag, body, message_id=mid))
    b.feed(b.deliver(6, b"6"))
    b.feed(b.deliver(7, b"7"))
    b.clock.advance(0)
    assert seen == [b"1", b"3", b"4", b"5", b"6", b"7"]
    assert b.consumer.deduplicated == 1
    # one read each: each is acked (the skipped one too) once its read is handled
    assert b.settlements() == [("ack", tag, True) for tag in range(1, 8)]


def test_the_old_spellings_of_when_ready_still_work_and_warn() -> None:
    """
    C{Consumer.wait_consuming()} and C{RpcServer.wait_ready()} are deprecated
    spellings of C{when_ready()}: they warn and wait for the same thing.
    """
    from txmsg import RpcServer

    conn = Connection("amqp://guest:guest@localhost/", reactor=Clock())
    consumer = Consumer(conn, "q", lambda m: None)
    with pytest.warns(DeprecationWarning, match="when_ready"):
        d = consumer.wait_consuming()
    assert not d.called
    server = RpcServer(conn, "rpc", lambda m: None)
    with pytest.warns(DeprecationWarning, match="when_ready"):
        server.wait_ready().addErrback(lambda _: None)


def test_when_ready_waits_through_a_connection_the_broker_closes_while_the_consumer_starts() -> None:
    """
    RabbitMQ 3.10 may close the connection with 541 INTERNAL_ERROR when two
    clients declare one quorum queue at once: C{when_ready()} does not fail
    for that, it fires once the consumer registered on the next connection.
    """
    clock = Clock()
    conn, endpoint = make_connection(clock)
    consumer = Consumer(conn, Queue.quorum("jobs"), lambda m: None)
    consumer.startService()
    first = endpoint.protocols[-1]
    handshake(first)
    ready: list[Any] = []
    consumer.when_ready().addBoth(ready.append)
    first.dataReceived(method(1, "channel.open-ok"))
    first.dataReceived(
        method(0, "connection.close", reply_code=541, reply_text="INTERNAL_ERROR", class_id=50, method_id=10)
    )
    lose(first)
    assert ready == []
    clock.advance(5)
    second = endpoint.protocols[-1]
    assert second is not first
    handshake(second)
    second.dataReceived(method(1, "channel.open-ok"))
    second.dataReceived(method(1, "queue.declare-ok", queue="jobs", message_count=0, consumer_count=0))
    second.dataReceived(method(1, "basic.qos-ok"))
    assert ready == []
    second.dataReceived(method(1, "basic.consume-ok", consumer_tag="ctag"))
    assert ready == [consumer]


def test_when_ready_fails_once_the_connection_stops_for_good() -> None:
    """
    A consumer still waiting to register when its connection stops fails its
    C{when_ready()} waiters: no connection will come to start it.
    """
    clock = Clock()
    conn, _endpoint = make_connection(clock)
    consumer = Consumer(conn, "jobs", lambda m: None)
    consumer.startService()
    ready: list[Any] = []
    consumer.when_ready().addBoth(ready.append)
    conn.stopService()
    assert len(ready) == 1 and isinstance(ready[0], Failure)
