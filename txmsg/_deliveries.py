"""
The deliveries half of a L{txmsg.consumer.Consumer}: each message from its
channel to the handler, and settled.

Three settlement modes: C{"auto"} (the default) acks a message when its
handler succeeds and settles a failure by the consumer's rules (requeue,
reject, retry); C{"manual"} lets the handler settle it with
C{message.ack()}, C{nack()} or C{reject()}, now or later, while an
unsettled message counts against the prefetch (a handler that raises before
settling has its message settled as a failure); C{"none"} consumes without
acks (C{no_ack}): the broker forgets each message as it sends it, fastest
and lossy.  A batch (C{batch_size}, C{batch_wait}) hands the handler lists of
messages and acks them together once it succeeds.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmsg._acks import Acks
from txmsg._outcome import Reject, Requeue, delivery_count, run_handler
from txmsg.connection import Channel, Connection
from txmsg.errors import TxmsgError, UndecodableMessage
from txmsg.message import Message
from txmsg.retry import Retrier, attempts

if TYPE_CHECKING:  # pragma: no cover
    from txmsg.topology import Queue

AUTO, MANUAL, NONE = "auto", "manual", "none"
#: the settlement modes a consumer takes
ACK_MODES = (AUTO, MANUAL, NONE)
#: first and longest wait before giving back a message whose retry could not be sent
REQUEUE_DELAY = 0.5


class AlreadySettled(TxmsgError):
    """
    A message was acked, nacked or rejected a second time.
    """


class StaleDelivery(TxmsgError):
    """
    A message was settled after the channel it came on closed (a reconnect):
    the broker has put it back on its queue already, and it will come again.
    """


class Settlement:
    """
    How a handler settles its message in C{"manual"} mode (C{message.ack()}
    and so on call this); a message is settled once.
    """

    __slots__ = ("_acks", "_deliveries", "message", "settled")

    def __init__(self, deliveries: Deliveries, acks: Acks, message: Message) -> None:
        self._deliveries = deliveries
        self._acks = acks
        self.message = message
        self.settled = False

    def _take(self) -> int:
        tag = cast(int, self.message.delivery_tag)
        if self.settled:
            raise AlreadySettled(f"message {tag} is settled already")
        if self._deliveries._acks is not self._acks:
            raise StaleDelivery(
                f"message {tag} came on a channel that has closed: the broker requeued it, it will come again"
            )
        self.settled = True
        return tag

    def ack(self) -> None:
        tag = self._take()
        self._deliveries._acked(self._acks, self.message, tag)

    def nack(self, requeue: bool = True) -> None:
        tag = self._take()
        self._deliveries._reject(self._acks, tag, requeue)

    def reject(self, requeue: bool = False) -> None:
        tag = self._take()
        self._deliveries._reject(self._acks, tag, requeue)


class Deliveries:
    """
    The delivery path of a consumer (a mixin of L{txmsg.consumer.Consumer},
    which sets every attribute below).
    """

    _log = Logger()
    running: bool | int
    connection: Connection
    queue: Queue | str
    handler: Any
    acks: str
    concurrency: int | None
    max_body: int | None
    max_redeliveries: int
    allow_pickle: bool
    dedupe_window: int
    batch_size: int | None
    batch_wait: float
    consumed: int
    rejected: int
    requeued: int
    deduplicated: int
    retried: int
    retries_scheduled: int
    dead_lettered: int
    _seen: OrderedDict[str, None]
    _acks: Acks | None
    _retrier: Retrier | None
    _in_flight: dict[Deferred[Any], Channel]
    _backlog: deque[tuple[Channel, dict[str, Any], dict[str, Any], bytes]]
    _batch: list[tuple[Acks, Message]]
    _batch_timer: Any

    def _deliver(self, channel: Channel, args: dict[str, Any], props: dict[str, Any], body: bytes) -> None:
        if not self.running:
            return  # stopping: left unacked, it goes back to the queue with the channel
        limit = self.concurrency
        if limit is not None and len(self._in_flight) >= limit:
            self._backlog.append((channel, args, props, body))
            return
        self._handle(channel, args, props, body)

    def _handle(self, channel: Channel, args: dict[str, Any], props: dict[str, Any], body: bytes) -> None:
        acks = self._acks
        if acks is None or acks.channel is not channel:
            return  # a delivery from a channel already given up
        tag = args["delivery_tag"]
        if self.max_body is not None and len(body) > self.max_body:
            self._log.error(
                "rejecting message {tag} from {queue}: its body of {size} bytes is over the maximum of {max}",
                tag=tag,
                queue=self.queue,
                size=len(body),
                max=self.max_body,
            )
            self._reject(acks, tag, False)
            return
        try:
            message = Message.from_delivery(body, props, args, allow_pickle=self.allow_pickle)
            message.payload  # noqa: B018 - decode before the handler sees it
        except UndecodableMessage as e:
            self._log.error(
                "rejecting undecodable message {tag} from {queue}: {error}",
                tag=tag,
                queue=self.queue,
                error=e,
            )
            self._reject(acks, tag, False)
            return
        except Exception:  # noqa: BLE001 - a message that cannot be read must not stop the consumer
            self._log.failure("rejecting unreadable message {tag} from {queue}", tag=tag, queue=self.queue)
            self._reject(acks, tag, False)
            return
        if self.dedupe_window and message.message_id is not None and message.message_id in self._seen:
            self.deduplicated += 1
            self.consumed += 1
            acks.ack(tag)
            return
        count = delivery_count(message)
        if count is not None and count > self.max_redeliveries:
            # e.g. a message whose handling kills the process, over and over
            self._log.error(
                "dead-lettering message {tag} from {queue}: delivered {count} times before",
                tag=tag,
                queue=self.queue,
                count=count,
            )
            self._reject(acks, tag, False)
            return
        if self._retrier is not None and attempts(message):
            self.retried += 1
        mode = self.acks
        if mode != AUTO:
            self._handle_other(mode, acks, tag, message)
            return
        # A synchronous handler is settled at once; only an asynchronous result
        # (a Deferred or an awaitable) pays for Deferred machinery.
        result = run_handler(self.handler, message)
        if isinstance(result, Failure):
            self._settle(acks, message, result)
        elif isinstance(result, Deferred):
            d = result
            acks.begin(tag)
            self._in_flight[d] = acks.channel

            def done(outcome: Any) -> Any:
                self._in_flight.pop(d, None)
                if self._acks is not acks:
                    # its channel closed meanwhile: the broker put the message back
                    self._log.info("a handler finished after its channel closed; its message was requeued")
                    return None
                self._settle(acks, message, outcome)
                self._next()
                return None

            d.addBoth(done)
        else:
            if self.dedupe_window:
                self._remember(message)
            self.consumed += 1
            acks.ack(tag)

    def _next(self) -> None:
        backlog = self._backlog
        limit = self.concurrency
        while backlog and self.running and (limit is None or len(self._in_flight) < limit):
            self._handle(*backlog.popleft())

    def _reject(self, acks: Acks, tag: int, requeue: bool) -> None:
        self.consumed += 1
        if requeue:
            self.requeued += 1
        else:
            self.rejected += 1
        acks.reject(tag, requeue)

    def _remember(self, message: Message) -> None:
        seen = self._seen
        if message.message_id is not None:
            seen[message.message_id] = None
            if len(seen) > self.dedupe_window:
                seen.popitem(last=False)

    def _settle(self, acks: Acks, message: Message, outcome: Any) -> None:
        tag = cast(int, message.delivery_tag)
        if not isinstance(outcome, Failure):
            if self.dedupe_window:
                self._remember(message)
            self.consumed += 1
            acks.ack(tag)
        elif self._retrier is not None and not outcome.check(Requeue):  # Retry, Reject, any error
            self._retry_later(acks, message, outcome)
        elif outcome.check(Requeue):
            count = delivery_count(message)
            spent = message.redelivered if count is None else count >= self.max_redeliveries
            if spent:
                self._log.error(
                    "dead-lettering message {tag} from {queue} instead of requeueing it: "
                    "it was delivered before{times}",
                    tag=tag,
                    queue=self.queue,
                    times="" if count is None else f" {count} times",
                )
            self._reject(acks, tag, not spent)
        elif outcome.check(Reject):
            self._reject(acks, tag, False)
        else:
            self._log.failure(
                "handler failed on message {tag} from {queue}; rejected", outcome, tag=tag, queue=self.queue
            )
            self._reject(acks, tag, False)

    def _retry_later(self, acks: Acks, message: Message, failure: Failure) -> None:
        """
        Publish the failed message to its delay queue (or its dead letters)
        and ack it once the broker confirmed that; if the publish fails, give
        it back to the queue (a little later, so that it does not spin).
        """
        assert self._retrier is not None
        tag = cast(int, message.delivery_tag)
        acks.begin(tag)
        delay, d = self._retrier.fail(message, failure, rejected=bool(failure.check(Reject)))
        self._in_flight[d] = acks.channel
        if delay is not None:
            self._log.warn(
                "message {tag} from {queue} failed ({error}); "
                "retrying in {delay:g} s (attempt {n} of {total})",
                tag=tag,
                queue=self.queue,
                error=failure.getErrorMessage(),
                delay=delay,
                n=attempts(message) + 2,
                total=self._retrier.policy.retries + 1,
            )

        def published(result: Any) -> None:
            self._in_flight.pop(d, None)
            if self._acks is not acks:
                return  # its channel closed: the broker put it back (a duplicate at worst)
            if isinstance(result, Failure):
                self._log.error(
                    "cannot send message {tag} from {queue} to be retried or dead-lettered: {error}; "
                    "it goes back to the queue",
                    tag=tag,
                    queue=self.queue,
                    error=result.getErrorMessage(),
                )
                self.requeued += 1
                self.connection.reactor.callLater(REQUEUE_DELAY, acks.reject, tag, True)
            else:
                if delay is None:
                    self.dead_lettered += 1
                    self._log.error(
                        "dead-lettered message {tag} from {queue} after {n} attempts: {error}",
                        tag=tag,
                        queue=self.queue,
                        n=attempts(message) + 1,
                        error=failure.getErrorMessage(),
                    )
                else:
                    self.retries_scheduled += 1
                self.consumed += 1
                acks.ack(tag)
            self._next()

        d.addBoth(published)

    def _acked(self, acks: Acks, message: Message, tag: int) -> None:
        if self.dedupe_window:
            self._remember(message)
        self.consumed += 1
        acks.ack(tag)

    def _handle_other(self, mode: str, acks: Acks, tag: int, message: Message) -> None:
        """
        A delivery in C{"manual"} or C{"none"} mode, or for a batch.
        """
        if mode == NONE:
            self.consumed += 1
            result = run_handler(self.handler, message)
            if isinstance(result, Failure):
                self._log.failure(
                    "handler failed on message from {queue} (no ack: lost)", result, queue=self.queue
                )
            elif isinstance(result, Deferred):
                result.addErrback(
                    lambda f: self._log.failure(
                        "handler failed on message from {queue} (no ack: lost)", f, queue=self.queue
                    )
                )
            return
        acks.begin(tag)
        if self.batch_size is not None:
            self._add_to_batch(acks, message)
            return
        settlement = Settlement(self, acks, message)
        object.__setattr__(message, "settlement", settlement)
        result = run_handler(self.handler, message)
        if isinstance(result, Failure):
            if not settlement.settled:
                settlement.settled = True
                self._settle(acks, message, result)
        elif isinstance(result, Deferred):
            d = result
            self._in_flight[d] = acks.channel

            def done(outcome: Any) -> None:
                self._in_flight.pop(d, None)
                if isinstance(outcome, Failure) and not settlement.settled and self._acks is acks:
                    settlement.settled = True
                    self._settle(acks, message, outcome)
                self._next()

            d.addBoth(done)

    def _add_to_batch(self, acks: Acks, message: Message) -> None:
        batch = self._batch
        batch.append((acks, message))
        assert self.batch_size is not None
        if len(batch) >= self.batch_size:
            self._flush_batch()
        elif self._batch_timer is None:
            self._batch_timer = self.connection.reactor.callLater(self.batch_wait, self._flush_batch)

    def _flush_batch(self) -> None:
        """
        Hand the collected messages to the handler as one list; ack them
        together once it succeeds, settle each as a failure if it fails.
        """
        timer, self._batch_timer = self._batch_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        batch = [(acks, m) for acks, m in self._batch if self._acks is acks]  # the others were requeued
        self._batch = []
        if not batch:
            return
        messages = [m for _, m in batch]
        result = run_handler(self.handler, messages)

        def settle(outcome: Any) -> None:
            for acks, message in batch:
                if self._acks is not acks:
                    continue  # its channel closed meanwhile: the broker put it back
                if isinstance(outcome, Failure):
                    self._settle(acks, message, outcome)
                else:
                    self._acked(acks, message, cast(int, message.delivery_tag))

        if isinstance(result, Deferred):
            d = result
            self._in_flight[d] = batch[0][0].channel

            def done(outcome: Any) -> None:
                self._in_flight.pop(d, None)
                settle(outcome)
                self._next()

            d.addBoth(done)
        else:
            settle(result)
