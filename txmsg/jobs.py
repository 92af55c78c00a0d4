"""
Jobs: distribute a data set's tasks to workers and reduce their results.

L{JobClient.run} publishes each task of a job to a durable work queue
(persistent, confirmed, with C{reply_to} the job's own result queue), and
reduces results as they arrive, reporting progress.  L{Worker}s consume the
work queue with fair dispatch (prefetch 1 by default): a worker that dies
mid-task leaves the task unacked and the broker gives it to another worker;
workers may join and leave while a job runs.

Nothing is lost silently: a task whose handler raises comes back as a failed
task in the job's result; a task that keeps killing workers is given up after
C{max_attempts} deliveries (the work queue is a quorum queue, which counts
them) and comes back as failed too.  Results are delivered at least once, so
the client counts each task once, whatever a worker dying between its reply
and its ack makes the broker redo.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmsg.connection import Connection
from txmsg.consumer import Consumer, Handler, delivery_count
from txmsg.errors import TxmsgError
from txmsg.message import Message
from txmsg.producer import Producer
from txmsg.retry import RetryPolicy
from txmsg.rpc import ERROR_HEADER, RpcServer
from txmsg.topology import Queue

DEFAULT_MAX_ATTEMPTS = 3
#: how long an idle job result queue outlives a vanished client (ms)
RESULT_QUEUE_EXPIRES = 3_600_000


def work_queue(name: str) -> Queue:
    """
    The durable work queue of C{name}: a quorum queue, so that deliveries are
    counted and a task that keeps killing workers can be given up.
    """
    return Queue.quorum(name)


class GaveUp(TxmsgError):
    """
    A task was delivered C{max_attempts} times without a result (its workers
    died or were stopped each time).
    """


class Worker(RpcServer):
    """
    Process tasks from the work queue C{queue} with C{handler(message)}; its
    return value is the task's result.  An exception becomes a failed result.

    @param prefetch: tasks a worker takes at once (1: fair dispatch of long tasks).
    @param max_attempts: deliveries of one task before it is reported as failed.
    @param retry: a L{RetryPolicy}: a task whose handler fails is tried again
        later (held by the broker) before its failure is reported.
    """

    def __init__(
        self,
        connection: Connection,
        queue: str,
        handler: Handler,
        *,
        prefetch: int = 1,
        concurrency: int | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        worker_id: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.task_handler = handler
        super().__init__(
            connection,
            work_queue(queue),
            self._work,
            server_id=worker_id,
            prefetch=prefetch,
            concurrency=concurrency,
            persistent_replies=True,
            # the worker reports a task it gives up on; the consumer's own cap must not come first
            max_redeliveries=max_attempts + 1,
            retry=retry,
        )

    def _final(self, reason: Failure) -> bool:
        return bool(reason.check(GaveUp))  # already retried by its redeliveries

    def _work(self, message: Message) -> Any:
        count = delivery_count(message)
        if count is not None and count >= self.max_attempts:
            raise GaveUp(f"task delivered {count + 1} times; given up after {self.max_attempts} attempts")
        return self.task_handler(message)


@dataclass(frozen=True)
class TaskFailure:
    """
    A task that failed: its index in the job, the error's type and message.
    """

    index: int
    error_type: str
    message: str
    worker: str | None = None


@dataclass(frozen=True)
class JobProgress:
    """
    Where a running job stands.
    """

    done: int
    failed: int
    total: int
    elapsed: float

    @property
    def rate(self) -> float:
        """
        Tasks settled per second so far.
        """
        return (self.done + self.failed) / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class JobResult:
    """
    A finished job: the reduced C{value}, how many tasks succeeded, the
    failed ones, and how many duplicate results were ignored.
    """

    value: Any
    done: int
    total: int
    failures: list[TaskFailure] = field(default_factory=list)
    duplicates: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """
        Whether every task succeeded.
        """
        return not self.failures and self.done == self.total


class JobTimeout(TxmsgError):
    """
    The job did not finish in time; C{partial} is the L{JobResult} so far.
    """

    def __init__(self, message: str, partial: JobResult) -> None:
        super().__init__(message)
        self.partial = partial


class JobClient:
    """
    Submit jobs to the workers of a work queue and reduce their results.
    """

    _log = Logger()

    def __init__(self, connection: Connection, queue: str, *, in_flight: int = 1000) -> None:
        self.connection = connection
        self.queue = queue
        self.producer = Producer(connection)
        self._submitting = DeferredSemaphore(in_flight)

    def run(
        self,
        tasks: Iterable[Any],
        reduce: Callable[[Any, Any], Any],
        initial: Any = None,
        *,
        on_progress: Callable[[JobProgress], None] | None = None,
        progress_interval: float = 1.0,
        timeout: float | None = None,
    ) -> Deferred[JobResult]:
        """
        Publish every task (persistent, confirmed; at most C{in_flight} awaiting
        their confirm) and fire with the L{JobResult} once every task has a
        result: C{reduce(accumulated, result)} is applied to each task's result
        once, in the order they arrive, starting from C{initial}.

        @param on_progress: called with a L{JobProgress} at most every
            C{progress_interval} seconds while results arrive, and at the end.
        @raise JobTimeout: the job took longer than C{timeout} seconds.
        """
        return _Run(self, list(tasks), reduce, initial, on_progress, progress_interval, timeout).start()


class _Run:
    def __init__(
        self,
        client: JobClient,
        tasks: list[Any],
        reduce: Callable[[Any, Any], Any],
        initial: Any,
        on_progress: Callable[[JobProgress], None] | None,
        progress_interval: float,
        timeout: float | None,
    ) -> None:
        self.client = client
        self.connection = client.connection
        self.reactor = client.connection.reactor
        self.tasks = tasks
        self.reduce = reduce
        self.value = initial
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.timeout = timeout
        self.job_id = uuid.uuid4().hex[:12]
        self.results = Queue(
            f"txmsg.job.{self.job_id}", durable=True, arguments={"x-expires": RESULT_QUEUE_EXPIRES}
        )
        self.settled: set[int] = set()
        self.failures: list[TaskFailure] = []
        self.duplicates = 0
        self.done = 0
        self.started = 0.0
        self.last_progress = 0.0
        self.finished: Deferred[JobResult] = Deferred()
        self.consumer: Consumer | None = None
        self.timer: Any = None

    def start(self) -> Deferred[JobResult]:
        self.started = time.monotonic()
        if not self.tasks:
            return succeed(self._result())
        consumer = self.consumer = Consumer(self.connection, self.results, self._result_arrived, prefetch=100)
        if self.timeout is not None:
            self.timer = self.reactor.callLater(self.timeout, self._timed_out)
        # the work queue exists before the first task goes, whether or not a worker ever ran
        d = self.connection.declare(work_queue(self.client.queue))

        def consume(_: object) -> Deferred[Any]:
            consumer.startService()
            return consumer.when_ready()

        d.addCallback(consume)
        d.addCallback(lambda _: self._submit())
        d.addErrback(self._fail)
        return self.finished

    def _submit(self) -> None:
        semaphore = self.client._submitting
        publish = self.client.producer.publish
        for index, task in enumerate(self.tasks):
            if self.finished.called:
                return

            def send(index: int = index, task: Any = task) -> Deferred[None]:
                return publish(
                    "",
                    self.client.queue,
                    task,
                    persistent=True,
                    reply_to=self.results.name,
                    correlation_id=f"{self.job_id}:{index}",
                )

            semaphore.run(send).addErrback(self._fail)

    def _result_arrived(self, message: Message) -> None:
        job, _, index_text = (message.correlation_id or "").partition(":")
        if job != self.job_id or not index_text.isdigit() or int(index_text) >= len(self.tasks):
            self.client._log.warn("ignoring a result that is not this job's: {id}", id=message.correlation_id)
            return
        index = int(index_text)
        if index in self.settled:
            self.duplicates += 1
            return
        self.settled.add(index)
        worker = message.app_id
        error = (message.headers or {}).get(ERROR_HEADER)
        if error is not None:
            text = message.body.decode("utf-8", "replace")
            self.failures.append(TaskFailure(index, str(error), text, worker))
        else:
            try:
                self.value = self.reduce(self.value, message.payload)
                self.done += 1
            except Exception as e:  # noqa: BLE001 - a failing reduce fails the job, never the consumer
                self._fail(Failure(e))
                return
        now = time.monotonic()
        if self.on_progress is not None and now - self.last_progress >= self.progress_interval:
            self.last_progress = now
            self._progress(now)
        if len(self.settled) == len(self.tasks):
            self._finish()

    def _progress(self, now: float) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(JobProgress(self.done, len(self.failures), len(self.tasks), now - self.started))
        except Exception:  # noqa: BLE001 - a failing progress callback must not lose results
            self.client._log.failure("progress callback failed")

    def _result(self) -> JobResult:
        return JobResult(
            self.value,
            self.done,
            len(self.tasks),
            sorted(self.failures, key=lambda f: f.index),
            self.duplicates,
            time.monotonic() - self.started,
        )

    def _finish(self) -> None:
        if self.finished.called:
            return
        self._progress(time.monotonic())
        result = self._result()
        self._cleanup().addBoth(lambda _: self.finished.callback(result))

    def _timed_out(self) -> None:
        self.timer = None
        if self.finished.called:
            return
        partial = self._result()
        error = JobTimeout(
            f"job {self.job_id}: {len(self.settled)} of {len(self.tasks)} tasks settled "
            f"in {self.timeout:g} s",
            partial,
        )
        self._cleanup().addBoth(lambda _: self.finished.errback(error))

    def _fail(self, reason: Failure) -> None:
        if self.finished.called:
            return
        self._cleanup().addBoth(lambda _: self.finished.errback(reason))

    def _cleanup(self) -> Deferred[Any]:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        consumer, self.consumer = self.consumer, None
        d: Deferred[Any] = consumer.stopService() if consumer is not None else succeed(None)

        def delete(_: object) -> Any:
            return self.connection.delete(self.results)

        return d.addCallback(delete).addErrback(
            lambda f: self.client._log.failure("removing the result queue of job {id}", f, id=self.job_id)
        )


__all__ = [
    "GaveUp",
    "JobClient",
    "JobProgress",
    "JobResult",
    "JobTimeout",
    "TaskFailure",
    "Worker",
    "work_queue",
]
