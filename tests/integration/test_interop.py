"""
txmsg and a pika peer interoperate both ways on the real broker: the tutorial's
hello world, headers of every field type, and bodies of any bytes.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pika
import pytest
import pytest_twisted

from txmsg import Consumer, Message, Producer, Queue

from .support import PikaPeer, eventually, unique

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_hello_world_txmsg_to_pika(connection, pika_peer: PikaPeer) -> None:
    """
    A message txmsg publishes to the tutorial's queue is confirmed, held by the
    broker, and received by pika with the same body.
    """
    name = unique("hello")
    await connection.declare(Queue(name, auto_delete=False))
    try:
        await Producer(connection).publish("", name, b"Hello World!")
        assert await pika_peer.depth(name) == 1
        got = await pika_peer.get(name)
        assert [body for _, _, body in got] == [b"Hello World!"]
        assert await pika_peer.depth(name) == 0
    finally:
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_hello_world_pika_to_txmsg(connection, pika_peer: PikaPeer) -> None:
    """
    Messages pika publishes are delivered to a txmsg consumer and acked, so the
    broker holds none afterwards.
    """
    name = unique("hello")
    await connection.declare(Queue(name))
    received: list[Message] = []
    consumer = Consumer(connection, name, received.append)
    consumer.startService()
    try:
        await consumer.when_ready()
        for i in range(3):
            await pika_peer.publish("", name, f"Hello World! {i}".encode())
        await eventually(lambda: len(received) == 3)
        assert [m.body for m in received] == [b"Hello World! 0", b"Hello World! 1", b"Hello World! 2"]
        assert all(m.routing_key == name and m.exchange == "" for m in received)
        # closing the consumer's channel would return unacked messages: none come back
        await consumer.stopService()
        assert await pika_peer.depth(name) == 0
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)


PIKA_HEADERS = {
    "string": "héllo",
    "true": True,
    "false": False,
    "negative": -17,
    "int64": 2**42,
    "neg64": -(2**45),
    "list": [1, "two", False, {"three": 3}],
    "nested": {"level": {"deeper": {"deepest": "yes"}}},
    "decimal": Decimal("12.34"),
    "timestamp": dt.datetime(2021, 6, 7, 8, 9, 10),
    "void": None,
}


@pytest_twisted.ensureDeferred
async def test_headers_of_every_type_from_pika(connection, pika_peer: PikaPeer) -> None:
    """
    Headers pika sends with booleans, negative and 64-bit integers, lists,
    nested tables, decimals, timestamps and void reach the txmsg handler intact.
    """
    name = unique("headers")
    await connection.declare(Queue(name))
    received: list[Message] = []
    consumer = Consumer(connection, name, received.append)
    consumer.startService()
    try:
        await consumer.when_ready()
        await pika_peer.publish(
            "",
            name,
            b"{}",
            pika.BasicProperties(
                headers=PIKA_HEADERS,
                content_type="application/json",
                priority=3,
                correlation_id="corr",
                message_id="mid",
                app_id="pika-peer",
                timestamp=1700000000,
                type="greeting",
                expiration="60000",
                delivery_mode=2,
            ),
        )
        await eventually(lambda: received)
        msg = received[0]
        expected = dict(PIKA_HEADERS, timestamp=PIKA_HEADERS["timestamp"].replace(tzinfo=dt.timezone.utc))
        assert dict(msg.headers or {}) == expected
        assert (msg.priority, msg.correlation_id, msg.message_id, msg.app_id, msg.type) == (
            3,
            "corr",
            "mid",
            "pika-peer",
            "greeting",
        )
        assert msg.persistent and msg.expiration == "60000"
        assert msg.timestamp == dt.datetime.fromtimestamp(1700000000, dt.timezone.utc)
        assert msg.payload == {}
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_headers_and_properties_from_txmsg_to_pika(connection, pika_peer: PikaPeer) -> None:
    """
    Headers txmsg sends (bytes, 64-bit ints, nested lists, booleans) and its
    JSON payload encoding arrive at pika as sent.  (pika truncates floats when it
    decodes them, so floats are checked txmsg to txmsg below.)
    """
    name = unique("headers")
    await connection.declare(Queue(name))
    try:
        headers = {"raw": b"\x00\xff", "big": 2**40, "nested": [{"a": [1, None]}], "ok": True}
        await Producer(connection).publish(
            "", name, {"answer": 42}, headers=headers, correlation_id="c-1", priority=7
        )
        [(_method, props, body)] = await pika_peer.get(name)
        assert body == b'{"answer":42}'
        assert props.content_type == "application/json"
        assert props.headers == headers
        assert (props.correlation_id, props.priority) == ("c-1", 7)
    finally:
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_non_ascii_and_binary_bodies_round_trip(connection, pika_peer: PikaPeer) -> None:
    """
    Bodies are bytes: 'é' * 50 (which stalls txAMQP 0.8.2) and every byte value
    round-trip through the broker, both to pika and back to txmsg.
    """
    name = unique("bytes")
    await connection.declare(Queue(name))
    received: list[Message] = []
    bodies = [("é" * 50).encode(), bytes(range(256)) * 3, b""]
    try:
        producer = Producer(connection)
        for body in bodies:
            await producer.publish("", name, body)
        got = await pika_peer.get(name, count=3)
        assert [b for _, _, b in got] == bodies
        for body in bodies:
            await pika_peer.publish("", name, body)
        consumer = Consumer(connection, name, received.append)
        consumer.startService()
        await eventually(lambda: len(received) == 3)
        await consumer.stopService()
        assert [m.body for m in received] == bodies
    finally:
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_every_python_header_type_round_trips_through_the_broker(connection) -> None:
    """
    Headers of every Python type txmsg encodes (bool, 64-bit int, float, str,
    bytes, None, list, dict, datetime, Decimal) come back from RabbitMQ unchanged.
    """
    name = unique("types")
    await connection.declare(Queue(name, exclusive=True))
    headers = {
        "bool": True,
        "int": -5,
        "int64": -(2**62),
        "float": 2.718281828,
        "str": "ünïcode",
        "bytes": b"\x00\x01\xfe",
        "none": None,
        "list": [1, [2.5, "x"], {"k": None}],
        "dict": {"a": {"b": False}},
        "when": dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        "dec": Decimal("-0.125"),
    }
    received: list[Message] = []
    consumer = Consumer(connection, Queue(name, exclusive=True), received.append)
    consumer.startService()
    try:
        await Producer(connection).publish("", name, b"", headers=headers)
        await eventually(lambda: received)
        assert dict(received[0].headers or {}) == headers
    finally:
        await consumer.stopService()
