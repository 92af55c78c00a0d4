"""
Scenario 9: poison input.  Bodies that do not decode, handlers that raise, a
pickle whose __reduce__ would run code, and a body over the consumer's maximum
each land in the dead-letter queue with a logged reason; the consumer keeps
running and the counts add up.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pika
import pytest
import pytest_twisted

from txmsg import Connection, Consumer, Exchange, Message, Queue

from .report import record
from .support import PikaPeer, eventually, unique

pytestmark = pytest.mark.integration


class Boom:
    """
    Unpickling this runs os.system: it must never happen.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


@pytest_twisted.ensureDeferred
async def test_poison_messages_are_dead_lettered_and_the_consumer_goes_on(
    connection: Connection, pika_peer: PikaPeer, tmp_path: Path
) -> None:
    """
    A pika peer publishes good messages between poison ones; every poison
    message reaches the dead-letter queue, every good one the handler; the
    pickle's code never runs.
    """
    name = unique("poison")
    dlx = Exchange(unique("poison-dlx"), "fanout")
    dlq = Queue(unique("poison-dlq"))
    from txmsg import Binding

    await connection.declare(dlx, dlq, Binding(dlq, dlx, ""))
    queue = Queue(name, arguments={"x-dead-letter-exchange": dlx.name})
    await connection.declare(queue)
    handled: list[Any] = []

    def handler(m: Message) -> None:
        if m.payload == {"explode": True}:
            raise RuntimeError("handler failed on purpose")
        handled.append(m.payload)

    consumer = Consumer(connection, name, handler, max_body=1024)
    consumer.startService()
    await consumer.when_ready()
    marker = tmp_path / "pickle-ran"
    json_type = pika.BasicProperties(content_type="application/json")
    poison = [
        (b"{not json", json_type),
        (b"\xff\xfe not utf-8", pika.BasicProperties(content_type="text/plain")),
        (pickle.dumps(Boom(marker)), pika.BasicProperties(content_type="application/python-pickle")),
        (b'{"explode": true}', json_type),
        (b'"' + b"x" * 2000 + b'"', json_type),  # over max_body
    ]
    try:
        for i, (body, props) in enumerate(poison):
            await pika_peer.publish("", name, f'{{"good": {i}}}'.encode(), json_type)
            await pika_peer.publish("", name, body, props)
        await eventually(lambda: consumer.consumed == 2 * len(poison), timeout=15)
        assert handled == [{"good": i} for i in range(len(poison))]
        assert consumer.rejected == len(poison)
        await eventually(lambda: pika_peer.depth(dlq.name).addCallback(lambda n: n == len(poison)))
        dead = await pika_peer.get(dlq.name, count=len(poison))
        assert sorted(body for _, _, body in dead) == sorted(body for body, _ in poison)
        assert all(props.headers["x-death"][0]["reason"] == "rejected" for _, props, _ in dead)
        assert not marker.exists(), "the pickle's __reduce__ ran"
        sent = 2 * len(poison)
        record(
            "9 poison input",
            published=sent,
            consumed=consumer.consumed,
            lost=sent - len(handled) - len(dead),
            detail=f"{len(handled)} handled, {len(dead)} dead-lettered (rejected); the pickle never ran",
        )
        assert await pika_peer.depth(name) == 0
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)
        await pika_peer.delete_queue(dlq.name)
        await pika_peer.delete_exchange(dlx.name)
