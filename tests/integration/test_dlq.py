"""
C{txmsg dlq} on the real broker: list groups dead letters by reason and
origin, show prints their death records without consuming them, replay sends
them back to where they first went (each removed only once its republish is
confirmed) and loses nothing when its connection is cut in the middle, purge
says how many it deleted; an unknown queue exits 66.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pika
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred

from txmsg import Connection, Consumer, Message, Producer, Queue, Reject, RetryPolicy
from txmsg.cli import Io, parse_args
from txmsg.cli._errors import CommandFailed
from txmsg.cli.dlq import dlq

from .support import BROKER_URL, COMMAND, PikaPeer, eventually, proxied, run, unique

pytestmark = pytest.mark.integration


async def _dead_letters(connection: Connection, name: str, bodies: list[str]) -> Consumer:
    """
    Messages of queue C{name} that fail (C{bad...}: rejected, the others
    after one retry) until each rests in C{name}.dlq.
    """

    def handler(message: Message) -> None:
        if str(message.payload).startswith("bad"):
            raise Reject("malformed order")
        raise ValueError("payment service down")

    consumer = Consumer(connection, Queue(name), handler, retry=RetryPolicy(retries=1, delay=0.2))
    consumer.startService()
    await consumer.when_ready()
    producer = Producer(connection)
    for body in bodies:
        await producer.publish("", name, body, message_id=body)
    await eventually(lambda: consumer.dead_lettered == len(bodies), timeout=30)
    await consumer.stopService()
    return consumer


async def _cleanup(pika_peer: PikaPeer, name: str) -> None:
    for queue in (name, f"{name}.dlq", f"{name}.retry.200ms"):
        await pika_peer.delete_queue(queue)


@pytest_twisted.ensureDeferred
async def test_list_show_and_purge_say_what_died_and_why_without_consuming(
    connection: Connection, pika_peer: PikaPeer, tmp_path: Path
) -> None:
    """
    Three dead letters (two after their retries, one rejected): list groups
    them by reason and origin, show prints each with its reason and x-death,
    both leave the queue as it was; purge --yes deletes them and says so.
    """
    name = unique("dlq")
    await _dead_letters(connection, name, ["a", "b", "bad"])
    try:
        listed = run([*COMMAND, "dlq", "list", f"{name}.dlq"], tmp_path)
        assert listed.code == 0, listed.text
        assert f"{name}.dlq: 3 messages" in listed.text
        rows = {line.split()[1]: int(line.split()[0]) for line in listed.lines[1:]}
        assert rows == {"ValueError": 2, "Reject": 1}, listed.text
        assert f"from queue {name}, key {name}" in listed.text
        shown = run([*COMMAND, "dlq", "show", f"{name}.dlq", "--json"], tmp_path)
        assert shown.code == 0, shown.text
        records = [json.loads(line) for line in shown.lines if line.startswith("{")]
        assert sorted(r["payload"] for r in records) == ["a", "b", "bad"]
        retried = next(r for r in records if r["payload"] == "a")
        assert retried["death"]["attempts"] == 2 and retried["death"]["reason"] == "ValueError"
        assert retried["death"]["x-death"][0]["reason"] == "expired"
        text = run([*COMMAND, "dlq", "show", f"{name}.dlq", "-n", "1"], tmp_path)
        assert "reason: " in text.text and text.text.startswith("#1 ")
        assert await pika_peer.depth(f"{name}.dlq") == 3  # nothing consumed for good
        refused = run([*COMMAND, "dlq", "purge", f"{name}.dlq"], tmp_path)
        assert refused.code == 2 and "--yes" in refused.text
        purged = run([*COMMAND, "dlq", "purge", f"{name}.dlq", "--yes"], tmp_path)
        assert purged.code == 0 and "purged 3 messages" in purged.text, purged.text
        assert await pika_peer.depth(f"{name}.dlq") == 0
    finally:
        await _cleanup(pika_peer, name)


def test_an_unknown_queue_exits_66_with_one_line(tmp_path: Path) -> None:
    """
    Every dlq action on a queue that does not exist: one line, exit 66.
    """
    for action in ("list", "show", "replay"):
        ran = run([*COMMAND, "dlq", action, unique("no-such-dlq")], tmp_path)
        assert ran.code == 66, ran.text
        assert len(ran.lines) == 1 and "not found" in ran.text and "Traceback" not in ran.text


@pytest_twisted.ensureDeferred
async def test_replay_sends_messages_back_where_they_first_went_and_where_filters(
    connection: Connection, pika_peer: PikaPeer, tmp_path: Path
) -> None:
    """
    replay --where reason=ValueError sends the two retried messages back to
    their queue (without txmsg's failure headers) and leaves the rejected
    one; replay --to sends it elsewhere.
    """
    name = unique("dlq-replay")
    other = unique("dlq-other")
    await _dead_letters(connection, name, ["a", "b", "bad"])
    await connection.declare(Queue(other))
    try:
        ran = run([*COMMAND, "dlq", "replay", f"{name}.dlq", "--where", "reason=ValueError"], tmp_path)
        assert ran.code == 0 and "replayed 2, skipped 1" in ran.text, ran.text
        back = await pika_peer.get(name, count=2)
        assert sorted(body for _, _, body in back) == [b"a", b"b"]
        assert all("x-txmsg-attempts" not in (props.headers or {}) for _, props, _ in back)
        assert await pika_peer.depth(f"{name}.dlq") == 1
        ran = run([*COMMAND, "dlq", "replay", f"{name}.dlq", "--to", f"/{other}"], tmp_path)
        assert ran.code == 0 and "replayed 1" in ran.text, ran.text
        assert [body for _, _, body in await pika_peer.get(other)] == [b"bad"]
        assert await pika_peer.depth(f"{name}.dlq") == 0
    finally:
        await _cleanup(pika_peer, name)
        await pika_peer.delete_queue(other)


@pytest_twisted.ensureDeferred
async def test_a_replay_cut_in_the_middle_loses_nothing_and_duplicates_at_most_the_one_in_flight(
    pika_peer: PikaPeer,
) -> None:
    """
    300 dead letters a pika peer put in a queue; a replay through a proxy is
    cut after part of them; it stops with one line; a second replay finishes.
    Every id reaches the target queue, at most one twice, and the dead-letter
    queue is empty.
    """
    name = unique("dlq-cut")
    dlq_name = f"{name}.dlq"
    target = unique("dlq-cut-target")
    ids = [f"m{i}" for i in range(300)]

    def fill(ch: Any) -> None:
        ch.queue_declare(dlq_name, durable=True)
        ch.queue_declare(target, durable=True)
        for i in ids:
            ch.basic_publish("", dlq_name, i.encode(), pika.BasicProperties(message_id=i, delivery_mode=2))

    await pika_peer._run(fill)
    proxy, url = await proxied()
    try:
        args = parse_args(["dlq", "replay", dlq_name, "--to", f"/{target}", "--url", url])
        err = io.StringIO()
        first = Io(stdout=io.BytesIO(), stderr=err)
        replaying = ensureDeferred(dlq(reactor, args, first))
        await eventually(lambda: pika_peer.depth(target).addCallback(lambda n: n >= 50), timeout=30)
        proxy.cut_all()
        proxy.refuse = True
        with pytest.raises(CommandFailed) as failed:
            await replaying
        assert "run the replay again" in str(failed.value)
        second = Io(stdout=io.BytesIO(), stderr=io.StringIO())
        args = parse_args(["dlq", "replay", dlq_name, "--to", f"/{target}", "--url", BROKER_URL])
        assert await dlq(reactor, args, second) == 0
        got = await pika_peer.get(target, count=400, timeout=3)
        seen = Counter(props.message_id for _, props, _ in got)
        assert set(seen) == set(ids), sorted(set(ids) - set(seen))[:5]
        assert sum(seen.values()) - len(ids) <= 1, seen.most_common(3)
        assert await pika_peer.depth(dlq_name) == 0
    finally:
        await proxy.stop()
        await pika_peer.delete_queue(dlq_name)
        await pika_peer.delete_queue(target)
