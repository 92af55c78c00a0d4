"""
The connection against the real broker: channel errors stay on their channel,
a connection the broker closes is replaced with its topology and consumers,
fatal errors are typed and not retried, and large bodies round-trip.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from txmsg import (
    AuthenticationError,
    Binding,
    Connection,
    Consumer,
    Exchange,
    ExchangeBinding,
    Message,
    NotFound,
    PreconditionFailed,
    Producer,
    Queue,
    VhostNotFound,
)

from .. import broker
from .support import PikaPeer, close_connection, eventually, rabbitmqctl, unique

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_channel_error_fails_only_that_operation(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    A 406 (redeclare with other flags) and a 404 (passive declare of a missing
    queue) fail their operations with errors carrying the reply code and text;
    the connection and a consumer on another channel live on.
    """
    name = unique("iso")
    await connection.declare(Queue(name))
    received: list[Message] = []
    consumer = Consumer(connection, name, received.append)
    consumer.startService()
    try:
        await consumer.when_ready()
        protocol = connection.protocol
        with pytest.raises(PreconditionFailed) as e406:
            await connection.declare(Queue(name, durable=False))
        assert e406.value.reply_code == 406
        assert "durable" in e406.value.reply_text
        with pytest.raises(NotFound) as e404:
            await connection.declare(Queue(unique("missing"), passive=True))
        assert e404.value.reply_code == 404
        # the failed declarations are not replayed, the connection is the same one
        assert connection.protocol is protocol and protocol.is_open
        assert [q for q in connection.topology if isinstance(q, Queue)] == [Queue(name)]
        # a fresh channel works, and the consumer on its own channel still gets messages
        info = await connection.declare(Queue(name))
        assert info.name == name
        await pika_peer.publish("", name, b"still here")
        await eventually(lambda: received)
        assert received[0].body == b"still here"
    finally:
        await consumer.stopService()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_closed_connection_is_replaced_with_topology_and_consumer(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    After rabbitmqctl close_connection, txmsg reconnects, declares its topology
    again (an exclusive server-named queue gets a new name and its binding
    follows it), and the consumer resumes: messages published afterwards
    through the exchange reach it.
    """
    exchange = Exchange(unique("x"), "topic", auto_delete=True)
    queue = Queue(exclusive=True)
    await connection.declare(exchange, queue, Binding(queue, exchange, "news.#"))
    old_name = connection.names[queue]
    received: list[Message] = []
    consumer = Consumer(connection, queue, received.append)
    consumer.startService()
    await consumer.when_ready()
    await pika_peer.publish(exchange.name, "news.before", b"1")
    await eventually(lambda: len(received) == 1)
    old_protocol = connection.protocol

    closed = await close_connection(connection.name)
    assert len(closed) == 1
    await eventually(lambda: connection.is_connected and connection.protocol is not old_protocol, timeout=15)
    await eventually(lambda: consumer.channel is not None and consumer.channel._link is connection.protocol)
    new_name = connection.names[queue]
    assert new_name != old_name
    await pika_peer.publish(exchange.name, "news.after", b"2")
    await eventually(lambda: len(received) == 2)
    assert [m.body for m in received] == [b"1", b"2"]
    assert received[1].routing_key == "news.after"
    await consumer.stopService()


@pytest_twisted.ensureDeferred
async def test_exchange_to_exchange_binding_routes(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    An exchange-to-exchange binding (RabbitMQ's exchange.bind extension) routes
    what the source exchange receives into the destination's queue.
    """
    source = Exchange(unique("src"), "fanout", auto_delete=True)
    dest = Exchange(unique("dst"), "direct", auto_delete=True)
    queue = Queue(unique("e2e"))
    await connection.declare(
        source, dest, queue, Binding(queue, dest, "k"), ExchangeBinding(dest, source, "k")
    )
    try:
        await Producer(connection).publish(source.name, "k", b"via e2e")
        got = await pika_peer.get(queue.name)
        assert [b for _, _, b in got] == [b"via e2e"]
    finally:
        await pika_peer.delete_queue(queue.name)


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_a_typed_error_not_a_retry_loop() -> None:
    """
    Wrong credentials fail when_ready() with AuthenticationError, whose message
    names the user but never the password, and the connection stops trying.
    """
    conn = Connection(broker.url_with(password="not-the-password"), reactor=reactor)
    with pytest.raises(AuthenticationError) as err:
        await conn.when_ready()
    assert "guest" in str(err.value)
    assert "not-the-password" not in str(err.value)
    await eventually(lambda: not conn.running)
    with pytest.raises(AuthenticationError):
        await conn.when_ready()


@pytest_twisted.ensureDeferred
async def test_unknown_vhost_is_a_typed_error() -> None:
    """
    An unknown virtual host fails with VhostNotFound naming the vhost.
    """
    conn = Connection(broker.url_with(vhost="no-such-vhost"), reactor=reactor)
    with pytest.raises(VhostNotFound) as err:
        await conn.when_ready()
    assert "no-such-vhost" in str(err.value)
    await eventually(lambda: not conn.running)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_64_mib_body_round_trips(big_messages_url: str) -> None:
    """
    A 64 MiB message is split into frame_max frames, confirmed, held by the
    broker, and delivered back with every byte intact (on a broker that takes
    bodies that big: RabbitMQ 4's default limit is 16 MiB).
    """
    connection = Connection(big_messages_url, reactor=reactor, name=unique("big"))
    pika_peer = PikaPeer(big_messages_url)
    name = unique("big")
    await connection.declare(Queue(name))
    body = hashlib.sha256(b"seed").digest() * (64 * 1024 * 1024 // 32)
    assert len(body) == 64 * 1024 * 1024
    received: list[Message] = []
    try:
        await Producer(connection).publish("", name, body)
        assert await pika_peer.depth(name) == 1
        consumer = Consumer(connection, name, received.append)
        consumer.startService()
        await eventually(lambda: received, timeout=60)
        await consumer.stopService()
        assert len(received[0].body) == len(body)
        assert hashlib.sha256(received[0].body).digest() == hashlib.sha256(body).digest()
    finally:
        await pika_peer.delete_queue(name)
        await connection.stopService()


@pytest_twisted.ensureDeferred
async def test_publishes_during_an_outage_wait_and_are_confirmed(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    Messages published while the broker has just closed the connection wait for
    the reconnect and are then confirmed; the queue holds every one of them (at
    least once: a message in flight at the cut may be there twice).
    """
    name = unique("outage")
    await connection.declare(Queue(name, durable=True))
    producer = Producer(connection)
    try:
        await producer.publish("", name, b"before")
        confirmations: list = []

        def publish_while_down(_reason: object) -> None:
            assert not connection.is_connected
            confirmations.extend(
                producer.publish("", name, f"during-{i}".encode(), timeout=30) for i in range(50)
            )

        assert connection.protocol is not None
        connection.protocol.when_lost(publish_while_down)
        await close_connection(connection.name)
        await eventually(lambda: len(confirmations) == 50)
        for d in confirmations:
            await d
        got = await pika_peer.get(name, count=1000, timeout=1)
        bodies = {b for _, _, b in got}
        assert bodies == {b"before"} | {f"during-{i}".encode() for i in range(50)}
    finally:
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_delete_removes_a_queue_and_stops_replaying_it(connection: Connection) -> None:
    """
    Connection.delete deletes the queue on the broker and takes it out of the
    topology replayed on reconnect.
    """
    name = unique("delete")
    queue = Queue(name)
    await connection.declare(queue)
    assert name in rabbitmqctl("list_queues", "name", "--no-table-headers", "-q").split()
    await connection.delete(queue)
    assert queue not in connection.topology
    assert name not in rabbitmqctl("list_queues", "name", "--no-table-headers", "-q").split()


@pytest_twisted.ensureDeferred
async def test_a_big_message_written_to_a_full_socket_keeps_its_bytes_in_order() -> None:
    """
    The frames of a big message go straight to the socket while it takes
    them; when a peer that does not read lets it fill, the rest waits in the
    protocol (the transport's buffer holds about one frame, and the
    connection is not writable), and once the peer reads it gets every frame
    byte for byte, in order, with a message written afterwards behind it,
    and producers waiting for room are woken.  (No broker: a TCP listener
    that stops reading.)
    """
    from twisted.internet import protocol
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol

    from txmsg._amqp import AMQPProtocol, Channel
    from txmsg._amqp import codec as _codec
    from txmsg.url import parse_url

    got = bytearray()
    server_side: Deferred[Any] = Deferred()

    class Sink(protocol.Protocol):
        def connectionMade(self) -> None:
            self.transport.pauseProducing()  # read nothing: the client's socket fills
            server_side.callback(self.transport)

        def dataReceived(self, data: bytes) -> None:
            got.extend(data)

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Sink)
    )
    client = AMQPProtocol(parse_url("amqp://guest:guest@127.0.0.1/%2F?connection_timeout=60"), reactor)
    try:
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        sink_transport = await server_side
        body = hashlib.sha256(b"seed").digest() * (
            40 * 1024 * 1024 // 32
        )  # 40 MB: more than the socket takes
        frames = _codec.publish_frames(1, "", "q", False, {}, body, 131072)
        assert isinstance(frames, list)
        woken: list[bool] = []
        client.channels[1] = Channel(client, 1)  # a channel to be told, with no channel.open
        client.channels[1].on_writable = lambda: woken.append(True)
        client.write_sequence(frames)
        transport = client.transport
        held = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        assert 0 < held < 2 * 131072  # the transport holds about a frame; the rest waits
        assert client._out.pending and not client.writable
        small = _codec.publish_frames(1, "", "q", False, {}, b"after", 131072)
        assert isinstance(small, bytes)
        client.write(small)
        expected = _codec.PROTOCOL_HEADER + b"".join(frames) + small
        sink_transport.resumeProducing()
        await eventually(lambda: len(got) >= len(expected), timeout=30)
        assert hashlib.sha256(got).digest() == hashlib.sha256(expected).digest()
        assert client.writable and woken
    finally:
        client.transport.abortConnection()
        await port.stopListening()
