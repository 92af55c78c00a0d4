"""
Delayed retries with backoff, held by the broker, and dead letters that say why.

A L{Consumer} given a L{RetryPolicy} sends a message whose handler failed (or
raised L{Retry}) back to its queue B{later}: it is published, confirmed, to a
delay queue, and only then is the original delivery acked.  A delay queue
holds messages for one step of the backoff (C{x-message-ttl}) and then
dead-letters them through the default exchange back to the queue they came
from, so the wait is held by the broker: a consumer that stops, crashes or
loses its connection meanwhile loses none of them, and they come back on
time to whichever consumer then runs.  It needs no plugin, only what every
supported RabbitMQ has (per-queue TTL and dead-letter exchanges).

For a queue C{jobs} with delays of 1, 2 and 4 seconds the topology is::

    jobs.retry.1000ms   durable, x-message-ttl 1000, dead-letters to "" / jobs
    jobs.retry.2000ms   durable, x-message-ttl 2000, dead-letters to "" / jobs
    jobs.retry.4000ms   durable, x-message-ttl 4000, dead-letters to "" / jobs
    jobs.dlq            durable: where the last attempt goes (unless the
                        policy names a dead-letter exchange)

declared on every connection before the consumer starts.  Attempts are
counted in a header txmsg owns (L{ATTEMPTS_HEADER}), so the count means the
same on RabbitMQ 3.10 and 4.3 and for classic and quorum queues.  After the
last attempt, or at once for L{Reject}, the message is published to the
dead-letter queue (or exchange) with the reason in its headers: the
exception's type and text, the attempts made and the time of the first
failure, beside where it was first published.  A cut at any moment gives a
duplicate at worst, never a loss; other messages are not held back by one
that waits.
"""

from __future__ import annotations

import datetime as _dt
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.python.failure import Failure

from txmsg._outcome import Retry
from txmsg.connection import Channel, Connection
from txmsg.message import Message
from txmsg.producer import Producer
from txmsg.topology import Queue

#: failed attempts so far (an int): the count txmsg keeps, the same on every broker
ATTEMPTS_HEADER = "x-txmsg-attempts"
#: when the first attempt failed (a timestamp)
FIRST_FAILURE_HEADER = "x-txmsg-first-failure"
#: the last failure's exception type, and its text
FAILURE_TYPE_HEADER = "x-txmsg-failure-type"
FAILURE_HEADER = "x-txmsg-failure"
#: the queue the message failed on
QUEUE_HEADER = "x-txmsg-queue"
#: where the message was first published: exchange and routing key
EXCHANGE_HEADER = "x-txmsg-exchange"
ROUTING_KEY_HEADER = "x-txmsg-routing-key"
#: why it was dead-lettered: L{EXHAUSTED} or L{REJECTED}
REASON_HEADER = "x-txmsg-dead-lettered"
EXHAUSTED = "retries exhausted"
REJECTED = "rejected"
#: every header txmsg's retries write
HEADERS = (
    ATTEMPTS_HEADER,
    FIRST_FAILURE_HEADER,
    FAILURE_TYPE_HEADER,
    FAILURE_HEADER,
    QUEUE_HEADER,
    EXCHANGE_HEADER,
    ROUTING_KEY_HEADER,
    REASON_HEADER,
)
#: the longest failure text kept in a header
MAX_FAILURE_TEXT = 1000

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)?\s*\Z")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """
    Seconds in C{"500ms"}, C{"1s"}, C{"1.5s"}, C{"5m"}, C{"1h"} or C{"2"} (seconds).

    @raise ValueError: anything else, or a duration that is not positive.
    """
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 500ms, 1s, 5m, 1h)")
    seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, not {text!r}")
    return seconds


@dataclass(frozen=True)
class RetryPolicy:
    """
    How a consumer retries a message whose handler failed.

    @ivar retries: how many times to try again after the first attempt.
    @ivar delay: seconds before the first retry.
    @ivar multiplier: each later wait is this many times the one before...
    @ivar max_delay: ... up to this many seconds (by default no longer than
        C{delay}: a constant delay).
    @ivar jitter: a fraction (0 to 1): each wait is shortened by up to this
        much of it, at random, so that retries of a burst spread out.  (A
        message may wait behind one that came earlier into the same delay
        queue by up to that fraction of the step.)
    @ivar dead_letter: the exchange the last attempt goes to (with its
        routing key as delivered); by default the queue C{QUEUE.dlq}, which
        txmsg declares.
    """

    retries: int = 3
    delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float | None = None
    jitter: float = 0.0
    dead_letter: str | None = None

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must not be negative")
        if not self.delay > 0:
            raise ValueError("the retry delay must be positive")
        if self.multiplier < 1:
            raise ValueError("the delay multiplier must be at least 1")
        if self.max_delay is not None and self.max_delay < self.delay:
            raise ValueError("the longest retry delay must not be shorter than the first")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    @classmethod
    def from_text(cls, retries: int, delay: str = "1s", **kwargs: Any) -> RetryPolicy:
        """
        A policy from the command line's C{--retry N --retry-delay D}: C{D}
        is one delay (C{"5s"}: the same every time) or a backoff range
        (C{"1s..5m"}: doubling from the first to at most the second).
        """
        first, sep, last = delay.partition("..")
        if not sep:
            return cls(retries, parse_duration(first), 1.0, **kwargs)
        return cls(retries, parse_duration(first), 2.0, parse_duration(last), **kwargs)

    def delays(self) -> tuple[float, ...]:
        """
        The wait before each retry, in order (one per retry).
        """
        cap = self.delay if self.max_delay is None else self.max_delay
        return tuple(min(self.delay * self.multiplier**i, cap) for i in range(self.retries))


def attempts(message: Message) -> int:
    """
    How many attempts at this message failed before, as txmsg counted them.
    """
    count = (message.headers or {}).get(ATTEMPTS_HEADER)
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0


def delay_queue_name(queue: str, delay: float) -> str:
    """
    The name of C{queue}'s delay queue for waits of C{delay} seconds.
    """
    return f"{queue}.retry.{round(delay * 1000)}ms"


def dead_letter_queue_name(queue: str) -> str:
    """
    The queue where C{queue}'s last attempts go when no dead-letter exchange is given.
    """
    return f"{queue}.dlq"


def retry_topology(queue: str, policy: RetryPolicy) -> list[Queue]:
    """
    The queues L{RetryPolicy} needs for C{queue}: a delay queue per distinct
    delay, and the dead-letter queue unless the policy names an exchange.
    """
    queues = []
    for delay in sorted(set(policy.delays())):
        arguments = {
            "x-message-ttl": round(delay * 1000),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
        }
        queues.append(Queue(delay_queue_name(queue, delay), durable=True, arguments=arguments))
    if policy.dead_letter is None:
        queues.append(Queue(dead_letter_queue_name(queue), durable=True))
    return queues


class Retrier:
    """
    The retries of one consumer's queue: its topology, and the confirmed
    publishes that send a failed message to a delay queue or to its dead
    letters.

    @ivar producer: the confirmed producer retries go out on.
    """

    def __init__(
        self,
        connection: Connection,
        policy: RetryPolicy,
        queue: Callable[[], str],
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.connection = connection
        self._queue = queue
        self._random = random_fraction
        self._delays = policy.delays()
        self.producer = Producer(connection)

    def declare(self, channel: Channel, names: dict[Any, str]) -> Deferred[Any]:
        """
        Declare the retry topology on C{channel} (on every connection, before consuming).
        """
        return self._declare_each(channel, names, retry_topology(self._queue(), self.policy))

    @inlineCallbacks
    def _declare_each(self, channel: Channel, names: dict[Any, str], queues: list[Queue]) -> Any:
        for queue in queues:
            yield queue.declare(channel, names)

    def fail(self, message: Message, failure: Failure, rejected: bool) -> tuple[float | None, Deferred[None]]:
        """
        Publish C{message}, which failed with C{failure}, to its next delay
        queue, or (its attempts spent, or C{rejected}) to its dead letters.
        Returns the delay (C{None}: dead-lettered) and the publish's Deferred,
        which fires once the broker confirmed it.
        """
        made = attempts(message) + 1
        queue = self._queue()
        headers = dict(message.headers or {})
        headers.setdefault(EXCHANGE_HEADER, message.exchange or "")
        headers.setdefault(ROUTING_KEY_HEADER, message.routing_key or "")
        headers[QUEUE_HEADER] = queue
        headers[ATTEMPTS_HEADER] = made
        if FIRST_FAILURE_HEADER not in headers:
            seconds = int(self.connection.reactor.seconds())
            headers[FIRST_FAILURE_HEADER] = _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc)
        error = failure.value
        headers[FAILURE_TYPE_HEADER] = type(error).__name__
        headers[FAILURE_HEADER] = str(error)[:MAX_FAILURE_TEXT]
        if not rejected and made <= len(self._delays):
            delay = self._delays[made - 1]
            wait = delay * (1 - self.policy.jitter * self._random())
            retry = message.replace(headers=headers, expiration=str(max(1, round(wait * 1000))))
            return delay, self.producer.publish("", delay_queue_name(queue, delay), retry, mandatory=True)
        headers[REASON_HEADER] = REJECTED if rejected else EXHAUSTED
        dead = message.replace(headers=headers, expiration=None, delivery_mode=2)
        if self.policy.dead_letter is not None:
            # as the broker dead-letters: to the exchange with the key it was delivered with
            return None, self.producer.publish(self.policy.dead_letter, message.routing_key or "", dead)
        return None, self.producer.publish("", dead_letter_queue_name(queue), dead, mandatory=True)


__all__ = [
    "ATTEMPTS_HEADER",
    "EXHAUSTED",
    "FAILURE_HEADER",
    "FAILURE_TYPE_HEADER",
    "FIRST_FAILURE_HEADER",
    "HEADERS",
    "QUEUE_HEADER",
    "REASON_HEADER",
    "REJECTED",
    "Retrier",
    "Retry",
    "RetryPolicy",
    "attempts",
    "dead_letter_queue_name",
    "delay_queue_name",
    "parse_duration",
    "retry_topology",
]
