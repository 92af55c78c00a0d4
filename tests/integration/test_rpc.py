"""
RPC and scatter-gather against the real broker, with txmsg and pika peers.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pika
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThread

from txmsg import Connection, Message, Queue, Requeue
from txmsg.rpc import NoServer, RemoteError, RpcClient, RpcServer, RpcTimeout

from .support import BROKER_URL, PikaPeer, eventually, proxied, sleep, unique

pytestmark = pytest.mark.integration


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


async def started(server: RpcServer) -> RpcServer:
    server.startService()
    await server.when_ready()
    return server


async def request_queue_with_dlq(connection: Connection, name: str) -> tuple[Queue, str]:
    """
    A request queue for C{name} whose rejected requests are dead-lettered to
    a queue of their own (declared here, empty): a server that rejects a
    request leaves it there, one that acks it leaves nothing anywhere.
    Returns the request queue and the dead-letter queue's name.
    """
    dlq = name + ".dlq"
    await connection.declare(Queue(dlq))
    return Queue(name, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}), dlq


async def assert_acked_not_rejected(server: RpcServer, pika_peer: PikaPeer, name: str, dlq: str) -> None:
    """
    Stop C{server} (closing its channel returns any unacked request to its
    queue), then check that the request queue is empty and nothing was
    dead-lettered: every request was acked, none rejected or left unacked.
    """
    await server.stopService()
    assert await pika_peer.depth(name) == 0, "a request was left unacked or requeued"
    assert await pika_peer.depth(dlq) == 0, "a request was dead-lettered (rejected, or expired unacked)"


@pytest_twisted.ensureDeferred
async def test_call_returns_the_handlers_value_as_json(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    A JSON request gets a JSON reply with the handler's return value; the
    request is acked: once the server stopped, neither the request queue nor
    its dead-letter queue holds it.
    """
    name = unique("rpc")
    queue, dlq = await request_queue_with_dlq(connection, name)
    server = await started(RpcServer(connection, queue, lambda m: {"sum": sum(m.payload)}))
    try:
        client = RpcClient(connection)
        assert await client.call(name, [1, 2, 3], timeout=10) == {"sum": 6}
        await eventually(lambda: server.consumers[0].consumed == 1)
        await assert_acked_not_rejected(server, pika_peer, name, dlq)
    finally:
        await server.stopService()
        await pika_peer.delete_queue(name)
        await pika_peer.delete_queue(dlq)


@pytest_twisted.ensureDeferred
async def test_many_calls_in_flight_get_their_own_replies(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    200 concurrent calls on one connection each get the reply to their own
    request (told apart by correlation id), from an asynchronous handler.
    """
    name = unique("rpc-many")

    def handler(m: Message) -> Deferred[Any]:
        from twisted.internet.task import deferLater

        return deferLater(reactor, 0.01 * (m.payload % 7), lambda: m.payload * 2)

    server = await started(RpcServer(connection, name, handler, prefetch=50))
    try:
        client = RpcClient(connection)
        results = await DeferredList(
            [client.call(name, i, timeout=20) for i in range(200)], fireOnOneErrback=True
        )
        assert [value for _, value in results] == [i * 2 for i in range(200)]
    finally:
        await server.stopService()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_call_with_no_server_fails_at_once(connection: Connection) -> None:
    """
    A call to a routing key no queue is bound to fails with NoServer as soon
    as the broker returns it, long before its timeout.
    """
    client = RpcClient(connection)
    start = time.monotonic()
    with pytest.raises(NoServer) as e:
        await client.call(unique("nobody"), {"x": 1}, timeout=20)
    assert e.value.reply_code == 312
    assert time.monotonic() - start < 5


@pytest_twisted.ensureDeferred
async def test_unanswered_call_times_out_and_its_request_expires(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    A call nobody answers fails with RpcTimeout after its timeout, and its
    request carries an expiration so the broker drops it rather than hand it to
    a server later.
    """
    name = unique("rpc-silent")
    await connection.declare(Queue(name))
    client = RpcClient(connection)
    start = time.monotonic()
    with pytest.raises(RpcTimeout):
        await client.call(name, "hello?", timeout=1)
    assert 0.9 <= time.monotonic() - start < 5
    # the request is gone once its expiration (the call's timeout) passed
    await eventually(lambda: pika_peer.depth(name).addCallback(lambda n: n == 0), timeout=10)
    await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_remote_exception_arrives_as_remote_error(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    A handler that raises makes an error reply: the caller gets RemoteError
    with the remote type and message, and the request is acked, not
    dead-lettered: once the server stopped, neither the request queue nor its
    dead-letter queue holds it.
    """
    name = unique("rpc-err")

    def handler(m: Message) -> Any:
        raise ValueError(f"no VM called {m.payload}")

    queue, dlq = await request_queue_with_dlq(connection, name)
    server = await started(RpcServer(connection, queue, handler))
    try:
        client = RpcClient(connection)
        with pytest.raises(RemoteError) as e:
            await client.call(name, "vm-7", timeout=10)
        assert e.value.remote_type == "ValueError"
        assert e.value.remote_message == "no VM called vm-7"
        assert e.value.server == server.server_id
        await eventually(lambda: server.consumers[0].consumed == 1)
        await assert_acked_not_rejected(server, pika_peer, name, dlq)
    finally:
        await server.stopService()
        await pika_peer.delete_queue(name)
        await pika_peer.delete_queue(dlq)


@pytest_twisted.ensureDeferred
async def test_cancelled_call_drops_its_late_reply(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    Cancelling a call's Deferred forgets it: the reply that comes later is
    dropped and the next call still works.
    """
    name = unique("rpc-cancel")
    from twisted.internet.task import deferLater

    server = await started(RpcServer(connection, name, lambda m: deferLater(reactor, 0.5, lambda: m.payload)))
    try:
        client = RpcClient(connection)
        d = client.call(name, "late", timeout=10)
        await sleep(0.1)
        d.cancel()
        with pytest.raises(Exception) as e:
            await d
        assert "Cancelled" in type(e.value).__name__
        await eventually(lambda: server.answered == 1)
        assert client._calls == {}
        assert await client.call(name, "next", timeout=10) == "next"
    finally:
        await server.stopService()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_exclusive_reply_queue(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    With reply_queue=True replies come on the client's own exclusive queue.
    """
    name = unique("rpc-rq")
    server = await started(RpcServer(connection, name, lambda m: m.payload.upper()))
    try:
        client = RpcClient(connection, reply_queue=True)
        assert client.reply_to.startswith("txmsg.reply.")
        assert await client.call(name, "shout", timeout=10) == "SHOUT"
    finally:
        await server.stopService()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_requeue_lets_another_server_answer(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    Seed 004: a server without capacity requeues the request and another
    server on the same queue answers it.
    """
    name = unique("rpc-capacity")
    other = Connection(BROKER_URL, reactor=reactor, name=unique("conn"))

    def no_capacity(m: Message) -> Any:
        # out of capacity: give the request back and stop taking work
        reactor.callLater(0, full.stopService)
        raise Requeue()

    full = RpcServer(connection, name, no_capacity, server_id="full")
    free = RpcServer(other, name, lambda m: "created", server_id="free")
    await started(full)
    try:
        client = RpcClient(connection)
        calls = [client.call(name, f"vm-{i}", timeout=10) for i in range(6)]
        await eventually(lambda: full.consumers[0].requeued >= 1)
        await started(free)
        replies = await DeferredList(calls, consumeErrors=True)
        assert [r for ok, r in replies] == ["created"] * 6
        assert full.consumers[0].requeued >= 1
        assert free.answered == 6
    finally:
        await full.stopService()
        await free.stopService()
        await other.stopService()
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_gather_collects_replies_from_every_server(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    Scatter-gather: one request on a broadcast key reaches three servers with
    queues of their own; with expect=3 the gather ends as the third reply
    arrives, each reply naming its server.
    """
    exchange = unique("vms")
    servers = [
        RpcServer(
            connection,
            None,
            lambda m, i=i: {"vms": [f"vm-{i}"]},
            exchange=exchange,
            broadcast=["list-vms"],
            server_id=f"host-{i}",
        )
        for i in range(3)
    ]
    for s in servers:
        await started(s)
    try:
        client = RpcClient(connection)
        seen: list[str | None] = []
        start = time.monotonic()
        replies = await client.gather(
            "list-vms", {}, exchange=exchange, timeout=10, expect=3, on_reply=lambda r: seen.append(r.server)
        )
        assert time.monotonic() - start < 5
        assert sorted(r.server or "" for r in replies) == ["host-0", "host-1", "host-2"]
        assert sorted(seen) == ["host-0", "host-1", "host-2"]
        assert sorted(r.payload["vms"][0] for r in replies) == ["vm-0", "vm-1", "vm-2"]
        # without expect, the deadline ends it with what came: a result, not an error
        partial = await client.gather("list-vms", {}, exchange=exchange, timeout=1)
        assert len(partial) == 3
    finally:
        for s in servers:
            await s.stopService()
        await pika_peer.delete_exchange(exchange)


@pytest_twisted.ensureDeferred
async def test_gather_with_no_server_fails_with_no_server(
    connection: Connection, pika_peer: PikaPeer
) -> None:
    """
    A gather whose request no queue takes fails with NoServer at once.
    """
    exchange = unique("empty")
    from txmsg import Exchange

    await connection.declare(Exchange(exchange, "direct"))
    client = RpcClient(connection)
    with pytest.raises(NoServer):
        await client.gather("list-vms", {}, exchange=exchange, timeout=10)
    await pika_peer.delete_exchange(exchange)


# ---------------------------------------------------------------------------
# interop with the RabbitMQ tutorial's pika RPC client and server


def pika_tutorial_call(queue: str, n: int) -> int:
    """
    The tutorial's RpcClient: an exclusive callback queue, a correlation id,
    text in and text out.
    """
    conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        ch = conn.channel()
        callback_queue = ch.queue_declare(queue="", exclusive=True).method.queue
        response: list[bytes] = []
        corr_id = str(uuid.uuid4())

        def on_response(ch: Any, method: Any, props: Any, body: bytes) -> None:
            if props.correlation_id == corr_id:
                response.append(body)

        ch.basic_consume(queue=callback_queue, on_message_callback=on_response, auto_ack=True)
        ch.basic_publish(
            exchange="",
            routing_key=queue,
            properties=pika.BasicProperties(reply_to=callback_queue, correlation_id=corr_id),
            body=str(n),
        )
        deadline = time.monotonic() + 10
        while not response and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.2)
        return int(response[0])
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_pika_tutorial_client_calls_a_txmsg_server(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    The tutorial's pika client sends "30" as text to rpc_queue; txmsg's server
    answers fib(30) as text and pika reads it with int().
    """
    name = unique("rpc_queue")
    server = await started(RpcServer(connection, name, lambda m: fib(int(m.body))))
    try:
        assert await deferToThread(pika_tutorial_call, name, 30) == 832040
    finally:
        await server.stopService()
        await pika_peer.delete_queue(name)


def pika_tutorial_server(queue: str, ready: Any, stop: list[bool]) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        ch = conn.channel()
        # as the tutorial declares it today
        ch.queue_declare(queue=queue, durable=True, arguments={"x-queue-type": "quorum"})

        def on_request(ch: Any, method: Any, props: Any, body: bytes) -> None:
            ch.basic_publish(
                exchange="",
                routing_key=props.reply_to,
                properties=pika.BasicProperties(correlation_id=props.correlation_id),
                body=str(fib(int(body))),
            )
            ch.basic_ack(delivery_tag=method.delivery_tag)

        ch.basic_qos(prefetch_count=1)
        ch.basic_consume(queue=queue, on_message_callback=on_request)
        reactor.callFromThread(ready.callback, None)
        while not stop:
            conn.process_data_events(time_limit=0.1)
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_txmsg_client_calls_the_pika_tutorial_server(
    pika_peer: PikaPeer, connection: Connection
) -> None:
    """
    txmsg's client calls the tutorial's pika server over direct reply-to: the
    server's text reply arrives (as bytes, no content type was set).
    """
    name = unique("rpc_queue")
    ready: Deferred[None] = Deferred()
    stop: list[bool] = []
    running = deferToThread(pika_tutorial_server, name, ready, stop)
    try:
        await ready
        client = RpcClient(connection)
        assert int(await client.call(name, "30", timeout=10)) == 832040
        assert int(await client.call(name, "10", timeout=10)) == 55
    finally:
        stop.append(True)
        await running
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_call_to_a_missing_exchange_is_no_server(connection: Connection) -> None:
    """
    A call to an exchange that does not exist fails at once with NoServer
    (the broker's 404), like a call nobody is bound to.
    """
    client = RpcClient(connection)
    with pytest.raises(NoServer) as e:
        await client.call("anything", "hi", exchange=unique("no-such-exchange"), timeout=10)
    assert e.value.reply_code == 404


@pytest_twisted.ensureDeferred
async def test_wait_ready_means_bound_even_before_the_connection_ran(pika_peer: PikaPeer) -> None:
    """
    A server started on a connection that is not running yet: wait_ready fires
    only once its broadcast queue is bound, so a gather right after reaches it.
    """
    exchange = unique("ready")
    conn = Connection(BROKER_URL, reactor=reactor, name=unique("conn"))
    server = RpcServer(conn, None, lambda m: "here", exchange=exchange, broadcast=["ping"], server_id="s1")
    server.startService()
    try:
        await server.when_ready()
        replies = await RpcClient(conn).gather("ping", "?", exchange=exchange, timeout=5, expect=1)
        assert [(r.server, r.payload) for r in replies] == [("s1", "here")]
    finally:
        await server.stopService()
        await conn.stopService()
        await pika_peer.delete_exchange(exchange)


@pytest.mark.parametrize("reply_queue", [False, True], ids=["direct-reply-to", "reply-queue"])
@pytest_twisted.ensureDeferred
async def test_call_cut_off_from_its_reply_is_sent_again_and_answered(
    connection: Connection, pika_peer: PikaPeer, reply_queue: bool
) -> None:
    """
    The client's connection is cut while a server handles its request, so the
    reply cannot reach it; once reconnected the client sends the request
    again (same correlation id, the time left as its expiration) and the call
    is answered within its timeout.  The handler saw the request twice.
    """
    proxy, url = await proxied()
    name = unique("rpc-again")
    seen: list[Message] = []
    gate: Deferred[None] = Deferred()

    def handler(m: Message) -> Any:
        seen.append(m)
        if len(seen) == 1:  # the first one is held until the client is cut off
            return gate.addCallback(lambda _: m.payload)
        return m.payload

    server = await started(RpcServer(connection, name, handler))
    client_conn = Connection(url, reactor=reactor, name=unique("rpc-again-cli"))
    try:
        client = RpcClient(client_conn, reply_queue=reply_queue)
        d = client.call(name, "hello", timeout=30)
        await eventually(lambda: len(seen) == 1)
        first_protocol = client_conn.protocol
        assert proxy.cut_all() == 2
        gate.callback(None)
        assert await d == "hello"
        assert client_conn.protocol is not first_protocol
        assert len(seen) == 2
        assert seen[0].correlation_id == seen[1].correlation_id
        assert int(seen[1].expiration or 0) < 30_000
        assert client._calls == {}
    finally:
        await server.stopService()
        await client_conn.stopService()
        proxy.stop()
        await pika_peer.delete_queue(name)
