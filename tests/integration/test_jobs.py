"""
Jobs against the real broker: tasks distributed to workers, results reduced
exactly once, failures reported, workers dying mid-task.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from txmsg import Connection, Message
from txmsg.jobs import JobClient, JobProgress, JobTimeout, Worker

from .support import BROKER_URL, PikaPeer, eventually, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def connections() -> Iterator[list[Connection]]:
    made: list[Connection] = []
    yield made
    from pytest_twisted import blockon

    for c in made:
        if c.running:
            blockon(c.stopService())


def new_connection(made: list[Connection]) -> Connection:
    c = Connection(BROKER_URL, reactor=reactor, name=unique("worker"))
    made.append(c)
    return c


async def start_workers(workers: list[Worker]) -> None:
    for w in workers:
        w.startService()
    for w in workers:
        await w.declared
        for c in w.consumers:
            await c.when_ready()


def square(m: Message) -> Any:
    return deferLater(reactor, 0.001, lambda: m.payload * m.payload)


@pytest_twisted.ensureDeferred
async def test_job_is_reduced_from_every_tasks_result_once(
    connection: Connection, connections: list[Connection], pika_peer: PikaPeer
) -> None:
    """
    200 tasks over three workers: the reduced value is the sum of squares,
    every task counted once, progress reported up to done == total, and the
    work queue is empty afterwards.
    """
    queue = unique("jobs")
    workers = [Worker(new_connection(connections), queue, square, worker_id=f"w{i}") for i in range(3)]
    await start_workers(workers)
    progress: list[JobProgress] = []
    try:
        result = await JobClient(connection, queue).run(
            range(200), lambda acc, r: acc + r, 0, on_progress=progress.append, progress_interval=0
        )
        assert result.value == sum(i * i for i in range(200))
        assert result.ok and result.done == 200 and result.duplicates == 0
        assert progress[-1].done == 200 and progress[-1].total == 200 and progress[-1].rate > 0
        assert sum(w.answered for w in workers) == 200
        assert sum(1 for w in workers if w.answered) >= 2  # fair dispatch spread the work
        assert await pika_peer.depth(queue) == 0
    finally:
        for w in workers:
            await w.stopService()
        await pika_peer.delete_queue(queue)


@pytest_twisted.ensureDeferred
async def test_failing_task_is_reported_not_lost(
    connection: Connection, connections: list[Connection], pika_peer: PikaPeer
) -> None:
    """
    A task whose handler raises comes back as a TaskFailure with the error;
    the other tasks are reduced.
    """
    queue = unique("jobs-fail")

    def handler(m: Message) -> Any:
        if m.payload == 3:
            raise ValueError("three is right out")
        return m.payload

    worker = Worker(new_connection(connections), queue, handler)
    await start_workers([worker])
    try:
        result = await JobClient(connection, queue).run(range(6), lambda acc, r: [*acc, r], [])
        assert sorted(result.value) == [0, 1, 2, 4, 5]
        assert not result.ok and result.done == 5
        [failure] = result.failures
        assert (failure.index, failure.error_type, failure.message) == (3, "ValueError", "three is right out")
    finally:
        await worker.stopService()
        await pika_peer.delete_queue(queue)


@pytest_twisted.ensureDeferred
async def test_task_of_a_dying_worker_is_redone_by_another(
    connection: Connection, connections: list[Connection], pika_peer: PikaPeer
) -> None:
    """
    A worker takes a task and dies (its connection is cut) before answering:
    the broker gives the task to another worker and the result is complete.
    """
    queue = unique("jobs-die")
    doomed_conn = new_connection(connections)
    taken: Deferred[None] = Deferred()

    def hang(m: Message) -> Deferred[Any]:
        if not taken.called:
            taken.callback(None)
        return Deferred()  # never answers

    doomed = Worker(doomed_conn, queue, hang)
    await start_workers([doomed])
    client = JobClient(connection, queue)
    job = client.run(range(5), lambda acc, r: acc + r, 0, timeout=30)
    await taken
    survivor = Worker(new_connection(connections), queue, lambda m: m.payload)
    await start_workers([survivor])
    try:
        # the worker process dies: its connection drops without acking
        doomed.stopService()
        doomed_conn.protocol.transport.abortConnection()  # type: ignore[union-attr]
        await doomed_conn.stopService()
        result = await job
        assert result.ok and result.value == sum(range(5))
        assert survivor.answered == 5
    finally:
        await survivor.stopService()
        await pika_peer.delete_queue(queue)


@pytest_twisted.ensureDeferred
async def test_task_that_keeps_killing_workers_is_given_up(
    connection: Connection, connections: list[Connection], pika_peer: PikaPeer
) -> None:
    """
    A task whose handling kills the worker every time (its connection drops)
    is delivered max_attempts times, then reported as GaveUp; the job ends.
    """
    queue = unique("jobs-poison")
    worker_conn = new_connection(connections)
    attempts: list[int] = []

    def handler(m: Message) -> Any:
        if m.payload == "poison":
            attempts.append(1)
            worker_conn.protocol.transport.abortConnection()  # type: ignore[union-attr]
            return Deferred()
        return m.payload

    worker = Worker(worker_conn, queue, handler, max_attempts=2)
    await start_workers([worker])
    try:
        result = await JobClient(connection, queue).run(
            ["ok", "poison"], lambda acc, r: [*acc, r], [], timeout=60
        )
        assert result.value == ["ok"]
        [failure] = result.failures
        assert failure.index == 1 and failure.error_type == "GaveUp"
        assert len(attempts) == 2
    finally:
        await worker.stopService()
        await pika_peer.delete_queue(queue)


@pytest_twisted.ensureDeferred
async def test_duplicate_results_are_counted_once(
    connection: Connection, connections: list[Connection], pika_peer: PikaPeer
) -> None:
    """
    A result delivered twice (as when a worker dies between its reply and its
    ack and the task is redone) is reduced once and counted as a duplicate.
    """
    queue = unique("jobs-dup")
    from txmsg import Producer

    extra = Producer(connection)

    def handler(m: Message) -> Any:
        # publish a copy of our own result first, as a redone task would
        d = extra.publish("", m.reply_to or "", m.payload, correlation_id=m.correlation_id)
        return d.addCallback(lambda _: m.payload)

    worker = Worker(new_connection(connections), queue, handler)
    await start_workers([worker])
    try:
        result = await JobClient(connection, queue).run([10, 20], lambda acc, r: acc + r, 0)
        assert result.value == 30 and result.done == 2
        # the second copy of the last result may arrive after the job ended
        assert result.duplicates >= 1
    finally:
        await worker.stopService()
        await pika_peer.delete_queue(queue)


@pytest_twisted.ensureDeferred
async def test_job_without_workers_times_out_with_its_partial_result(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    With no worker running the job ends at its timeout with JobTimeout holding
    the partial result; the tasks wait in the durable work queue for workers.
    """
    queue = unique("jobs-idle")
    try:
        with pytest.raises(JobTimeout) as e:
            await JobClient(connection, queue).run(range(3), lambda acc, r: acc + r, 0, timeout=1)
        assert e.value.partial.done == 0 and e.value.partial.total == 3
        await eventually(lambda: pika_peer.depth(queue).addCallback(lambda n: n == 3))
    finally:
        await pika_peer.delete_queue(queue)
