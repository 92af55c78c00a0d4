"""
Delayed retries with backoff on the in-memory broker and a Clock: a failing
message comes back after each step's delay (held by the broker's delay
queues, not the client), a bounded number of times, and then rests in the
dead-letter queue with the reason; L{Reject} dead-letters at once; the
policy's parsing and its topology.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from txmsg import Consumer, Message, Producer, Queue, Reject, Retry, RetryPolicy
from txmsg.retry import (
    ATTEMPTS_HEADER,
    EXHAUSTED,
    FAILURE_HEADER,
    FAILURE_TYPE_HEADER,
    FIRST_FAILURE_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    REJECTED,
    ROUTING_KEY_HEADER,
    parse_duration,
    retry_topology,
)
from txmsg.testing import MemoryBroker


def test_durations_and_ranges_parse_as_a_user_writes_them() -> None:
    """
    C{--retry-delay 5s} is a constant delay; C{1s..5m} doubles from 1 s up to 5 minutes.
    """
    assert parse_duration("500ms") == 0.5 and parse_duration("2") == 2.0 and parse_duration("5m") == 300
    assert RetryPolicy.from_text(3, "5s").delays() == (5.0, 5.0, 5.0)
    assert RetryPolicy.from_text(5, "1s..10s").delays() == (1.0, 2.0, 4.0, 8.0, 10.0)
    for bad in ("", "soon", "-1s", "0s", "1x"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        RetryPolicy.from_text(2, "5m..1s")
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)


def test_the_topology_is_one_delay_queue_per_distinct_delay_and_a_dead_letter_queue() -> None:
    """
    Each delay queue holds messages for its step (x-message-ttl) and dead-letters
    them through the default exchange back to the queue; QUEUE.dlq takes the last attempts.
    """
    queues = retry_topology("jobs", RetryPolicy.from_text(4, "1s..2s"))
    assert [q.name for q in queues] == ["jobs.retry.1000ms", "jobs.retry.2000ms", "jobs.dlq"]
    first = queues[0]
    assert first.durable and dict(first.arguments) == {
        "x-message-ttl": 1000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "jobs",
    }
    named = retry_topology("jobs", RetryPolicy(retries=1, dead_letter="dead"))
    assert [q.name for q in named] == ["jobs.retry.1000ms"]


def _run(
    policy: RetryPolicy, handler: Any, broker: MemoryBroker | None = None
) -> tuple[MemoryBroker, Consumer]:
    broker = broker or MemoryBroker()
    conn = broker.connection()
    consumer = Consumer(conn, Queue("jobs"), handler, retry=policy)
    consumer.startService()
    broker.flush()
    Producer(conn).publish("", "jobs", {"id": 7}, persistent=True, message_id="m7")
    broker.flush()
    return broker, consumer


def test_a_failing_message_comes_back_after_each_delay_then_rests_in_the_dlq_with_the_reason() -> None:
    """
    Three retries with backoff 1 s, 2 s, 4 s: the handler sees the message at
    t=0, 1, 3 and 7 (never sooner), then it is in jobs.dlq, acked everywhere
    else, with its attempts, the failure and where it came from in its headers.
    """
    seen: list[float] = []
    broker = MemoryBroker()

    def handler(message: Message) -> None:
        seen.append(broker.clock.seconds())
        raise ValueError("the database is down")

    broker, consumer = _run(RetryPolicy.from_text(3, "1s..4s"), handler, broker)
    for _ in range(90):
        broker.flush(0.1)
    assert seen == pytest.approx([0.0, 1.0, 3.0, 7.0], abs=0.25)
    assert all(b - a >= d - 0.01 for (a, b), d in zip(itertools.pairwise(seen), (1, 2, 4), strict=False))
    assert broker.depth("jobs") == 0 and broker.depth("jobs.dlq") == 1
    assert all(broker.depth(f"jobs.retry.{ms}ms") == 0 for ms in (1000, 2000, 4000))
    assert (consumer.retries_scheduled, consumer.retried, consumer.dead_lettered) == (3, 3, 1)
    dead = broker.state.queues["jobs.dlq"].messages[0]
    headers = dead.properties["headers"]
    assert headers[ATTEMPTS_HEADER] == 4 and headers[REASON_HEADER] == EXHAUSTED
    assert headers[FAILURE_TYPE_HEADER] == "ValueError" and headers[FAILURE_HEADER] == "the database is down"
    assert headers[QUEUE_HEADER] == "jobs" and headers[ROUTING_KEY_HEADER] == "jobs"
    assert FIRST_FAILURE_HEADER in headers
    assert dead.properties.get("message_id") == "m7" and dead.properties.get("delivery_mode") == 2


def test_a_message_that_succeeds_on_a_retry_is_acked_and_nothing_is_dead_lettered() -> None:
    """
    A handler that fails once (explicitly asking for a retry) and then works:
    the message is handled twice, a second apart, and no queue holds it.
    """
    seen: list[float] = []
    broker = MemoryBroker()

    def handler(message: Message) -> None:
        seen.append(broker.clock.seconds())
        if len(seen) == 1:
            raise Retry("not yet")

    broker, consumer = _run(RetryPolicy(retries=2, delay=1.0), handler, broker)
    for _ in range(30):
        broker.flush(0.1)
    assert seen == pytest.approx([0.0, 1.0], abs=0.25)
    assert broker.depth("jobs") == broker.depth("jobs.dlq") == broker.depth("jobs.retry.1000ms") == 0
    assert consumer.dead_lettered == 0 and consumer.retries_scheduled == 1


def test_reject_dead_letters_at_once_with_the_reason() -> None:
    """
    A handler that knows the message will never work raises Reject: no retry,
    straight to the dead-letter queue, marked rejected.
    """
    broker, consumer = _run(RetryPolicy(retries=5), lambda m: (_ for _ in ()).throw(Reject("bad order")))
    broker.flush(10)
    assert broker.depth("jobs.dlq") == 1 and consumer.retries_scheduled == 0
    headers = broker.state.queues["jobs.dlq"].messages[0].properties["headers"]
    assert headers[REASON_HEADER] == REJECTED and headers[ATTEMPTS_HEADER] == 1


def test_retries_wait_in_the_broker_while_no_consumer_runs() -> None:
    """
    The consumer stops while a retry waits: the message sits in the delay
    queue, comes back to the queue on time, and a consumer started later gets it.
    """
    calls: list[float] = []
    broker = MemoryBroker()

    def failing_once(message: Message) -> None:
        calls.append(broker.clock.seconds())
        if len(calls) == 1:
            raise RuntimeError("first try fails")

    broker, consumer = _run(RetryPolicy(retries=1, delay=5.0), failing_once, broker)
    assert broker.depth("jobs.retry.5000ms") == 1
    consumer.stopService()
    broker.flush(6)
    assert broker.depth("jobs") == 1 and broker.depth("jobs.retry.5000ms") == 0
    later = Consumer(
        consumer.connection, Queue("jobs"), failing_once, retry=RetryPolicy(retries=1, delay=5.0)
    )
    later.startService()
    broker.flush()
    assert len(calls) == 2 and broker.depth("jobs") == 0


def test_a_retry_policy_needs_a_named_queue() -> None:
    """
    Retries come back to their queue by name: a server-named queue is refused.
    """
    broker = MemoryBroker()
    with pytest.raises(ValueError, match="named queue"):
        Consumer(broker.connection(), Queue(), lambda m: None, retry=RetryPolicy())


def test_an_rpc_server_with_a_retry_policy_answers_once_a_retry_works_or_with_the_last_error() -> None:
    """
    A request whose handler fails once is tried again a second later and
    the caller gets the answer; one that always fails is answered with the
    error of its last attempt (a RemoteError), after every retry.
    """
    from txmsg import RemoteError, RpcClient, RpcServer

    broker = MemoryBroker()
    conn = broker.connection()
    tries: dict[str, int] = {}

    def flaky(message: Message) -> str:
        tries[message.payload] = tries.get(message.payload, 0) + 1
        if message.payload == "never" or tries[message.payload] == 1:
            raise RuntimeError(f"try {tries[message.payload]} failed")
        return f"done {message.payload}"

    server = RpcServer(conn, "svc", flaky, retry=RetryPolicy(retries=2, delay=1.0))
    server.startService()
    client = RpcClient(broker.connection(), reply_queue=True)
    broker.flush()
    answers: list[Any] = []
    client.call("svc", "once", timeout=30).addBoth(answers.append)
    client.call("svc", "never", timeout=30).addBoth(answers.append)
    broker.flush()
    assert answers == []
    for _ in range(40):
        broker.flush(0.1)
    assert answers[0] == "done once" and tries == {"once": 2, "never": 3}
    assert answers[1].check(RemoteError) and "try 3 failed" in str(answers[1].value)
    assert broker.depth("svc.dlq") == 0 and broker.depth("svc") == 0
