"""
The HTTP resources against the real broker: a Site with PublishResource (and
one with MonitorResource) listening in the test's reactor, a real Connection
and Producer, POSTs made with twisted.web.client.Agent, and what the broker
then holds read back with a pika peer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from txmsg import Binding, Connection, Exchange, Producer, Queue
from txmsg.metrics import Metrics, watch_connection, watch_producer
from txmsg.url import parse_url
from txmsg.web import MonitorResource, PublishResource

from .support import BROKER_URL, PikaPeer, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def listen() -> Iterator[Callable[[Resource], Deferred[str]]]:
    """
    Serve a resource on 127.0.0.1 (a free port) in the test's reactor; fires
    with the base URL.  Stopped after the test.
    """
    ports: list[Any] = []

    def start(resource: Resource) -> Deferred[str]:
        d = serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(resource))

        def listening(port: Any) -> str:
            ports.append(port)
            return f"http://127.0.0.1:{port.getHost().port}"

        return d.addCallback(listening)

    yield start
    from pytest_twisted import blockon

    for port in ports:
        blockon(port.stopListening())


async def http(
    method: bytes, url: str, body: bytes | None = None, headers: dict[bytes, list[bytes]] | None = None
) -> tuple[int, Headers, bytes]:
    """
    One request with Agent: the status code, headers and body of the answer.
    """
    producer = FileBodyProducer(BytesIO(body)) if body is not None else None
    response = await Agent(reactor).request(method, url.encode(), Headers(headers or {}), producer)
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Collect(done))
    data = await done
    return response.code, response.headers, data


class _Collect(Protocol):
    """
    Gathers a response body; fires C{done} with it when the response ends.
    """

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


@pytest_twisted.ensureDeferred
async def test_post_is_answered_200_once_confirmed_and_the_queue_holds_the_message(
    connection: Connection, pika_peer: PikaPeer, listen: Any
) -> None:
    """
    POST /publish/-/<queue> with a JSON body answers 200 with the message id;
    the broker then holds exactly that message, with its body, content type
    and message id (read back with pika), and no delivery mode set.
    """
    name = unique("web")
    await connection.declare(Queue(name))
    producer = Producer(connection)
    base = await listen(PublishResource(producer))
    try:
        code, headers, raw = await http(
            b"POST",
            f"{base}/publish/-/{name}",
            b'{"order": 17}',
            {b"content-type": [b"application/json"]},
        )
        assert code == 200, raw
        assert headers.getRawHeaders(b"content-type") == [b"application/json"]
        answer = json.loads(raw)
        assert answer["published"] is True and answer["exchange"] == "" and answer["routing_key"] == name
        assert producer.confirmed == 1
        assert await pika_peer.depth(name) == 1
        [(_, props, body)] = await pika_peer.get(name)
        assert body == b'{"order": 17}'
        assert props.content_type == "application/json"
        assert props.message_id == answer["message_id"]
        assert props.delivery_mode is None
    finally:
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_persistent_flag_gives_delivery_mode_2(
    connection: Connection, pika_peer: PikaPeer, listen: Any
) -> None:
    """
    ?persistent=1 publishes with delivery mode 2, as pika sees it; a routing
    key holding a percent-encoded slash and a space reaches a queue of that name.
    """
    name = unique("web-persist") + "/a b"
    await connection.declare(Queue(name, durable=True))
    base = await listen(PublishResource(Producer(connection)))
    try:
        code, _, raw = await http(
            b"POST",
            f"{base}/publish/-/{name.replace('/', '%2F').replace(' ', '%20')}?persistent=1",
            b"keep me",
        )
        assert code == 200, raw
        [(_, props, body)] = await pika_peer.get(name)
        assert body == b"keep me" and props.delivery_mode == 2
        assert props.content_type is None
    finally:
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_mandatory_to_an_unbound_key_is_404_and_nothing_is_queued(
    connection: Connection, pika_peer: PikaPeer, listen: Any
) -> None:
    """
    On an exchange whose only queue is bound to "bound", a mandatory POST to
    "unbound" is 404 with 312 NO_ROUTE and the queue stays empty; the same
    POST to "bound" is 200 and queued.
    """
    exchange, name = unique("web-x"), unique("web-q")
    await connection.declare(Exchange(exchange), Queue(name), Binding(name, exchange, "bound"))
    base = await listen(PublishResource(Producer(connection)))
    try:
        code, _, raw = await http(b"POST", f"{base}/publish/{exchange}/unbound?mandatory=1", b"lost?")
        assert code == 404, raw
        answer = json.loads(raw)
        assert answer["error"] == "unroutable" and answer["reply_code"] == 312
        assert await pika_peer.depth(name) == 0
        code, _, raw = await http(b"POST", f"{base}/publish/{exchange}/bound?mandatory=1", b"found")
        assert code == 200, raw
        [(_, _, body)] = await pika_peer.get(name)
        assert body == b"found"
    finally:
        await pika_peer.delete_queue(name)
        await pika_peer.delete_exchange(exchange)


@pytest_twisted.ensureDeferred
async def test_a_missing_exchange_is_404_and_publishing_goes_on(
    connection: Connection, pika_peer: PikaPeer, listen: Any
) -> None:
    """
    A POST to an exchange that does not exist is 404 with the broker's
    NOT_FOUND; the producer's channel recovers and the next POST is queued.
    """
    name = unique("web-after")
    await connection.declare(Queue(name))
    base = await listen(PublishResource(Producer(connection)))
    try:
        code, _, raw = await http(b"POST", f"{base}/publish/{unique('no-such-x')}/k", b"x")
        assert code == 404, raw
        assert json.loads(raw)["reply_code"] == 404
        code, _, raw = await http(b"POST", f"{base}/publish/-/{name}", b"next")
        assert code == 200, raw
        [(_, _, body)] = await pika_peer.get(name)
        assert body == b"next"
    finally:
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_oversize_body_is_413_and_nothing_is_queued(
    connection: Connection, pika_peer: PikaPeer, listen: Any
) -> None:
    """
    A body one byte over max_body is 413 and the queue stays empty; one of
    exactly max_body bytes is queued.
    """
    name = unique("web-big")
    await connection.declare(Queue(name))
    producer = Producer(connection)
    base = await listen(PublishResource(producer, max_body=64))
    try:
        code, _, raw = await http(b"POST", f"{base}/publish/-/{name}", b"x" * 65)
        assert code == 413, raw
        assert json.loads(raw)["error"] == "too_large"
        assert await pika_peer.depth(name) == 0
        assert producer.confirmed == 0 and producer.failed == 0
        code, _, _ = await http(b"POST", f"{base}/publish/-/{name}", b"y" * 64)
        assert code == 200
        assert await pika_peer.depth(name) == 1
    finally:
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_metrics_and_health_after_publishing(
    connection: Connection, pika_peer: PikaPeer, listen: Any
) -> None:
    """
    With the publishing site and a monitoring site: /health is 200 ok with
    the broker connected (and no password), and /metrics shows the confirmed
    counter at 2 after two POSTs and txmsg_connection_up 1.
    """
    name = unique("web-metrics")
    await connection.declare(Queue(name))
    producer = Producer(connection)
    metrics = Metrics()
    watch_connection(metrics, connection)
    watch_producer(metrics, producer)
    publish = await listen(PublishResource(producer))
    monitor = await listen(MonitorResource(metrics, connection))
    try:
        code, _, raw = await http(b"GET", f"{monitor}/health")
        assert code == 200, raw
        health = json.loads(raw)
        assert health["status"] == "ok" and health["broker_connected"] is True
        password = parse_url(BROKER_URL).password
        assert f":{password}@".encode() not in raw and ":***@" in health["broker"]
        code, _, raw = await http(b"GET", f"{monitor}/metrics")
        assert b"txmsg_producer_confirmed_total 0\n" in raw
        for i in range(2):
            code, _, raw = await http(b"POST", f"{publish}/publish/-/{name}", b"%d" % i)
            assert code == 200, raw
        code, headers, raw = await http(b"GET", f"{monitor}/metrics")
        assert code == 200
        assert headers.getRawHeaders(b"content-type") == [b"text/plain; version=0.0.4; charset=utf-8"]
        lines = raw.decode().splitlines()
        assert "txmsg_producer_confirmed_total 2" in lines
        assert "txmsg_producer_failed_total 0" in lines
        assert "txmsg_connection_up 1" in lines
        assert await pika_peer.depth(name) == 2
    finally:
        await pika_peer.delete_queue(name)


@pytest_twisted.ensureDeferred
async def test_unreachable_broker_is_503_with_retry_after_and_health_down(listen: Any) -> None:
    """
    With no broker at the connection's address, a POST is answered 503 with
    Retry-After once publish_timeout passes, and /health is 503 down.
    """
    conn = Connection(
        "amqp://guest:guest@127.0.0.1:1/%2F",
        reactor=reactor,
        name=unique("nobroker"),
        retry_policy=lambda n: 0.2,
    )
    producer = Producer(conn)
    base = await listen(PublishResource(producer, publish_timeout=0.5, retry_after=3))
    monitor = await listen(MonitorResource(Metrics(), conn))
    try:
        code, headers, raw = await http(b"POST", f"{base}/publish/-/q", b"x")
        assert code == 503, raw
        assert headers.getRawHeaders(b"retry-after") == [b"3"]
        assert json.loads(raw)["error"] == "timeout"
        code, _, raw = await http(b"GET", f"{monitor}/health")
        assert code == 503 and json.loads(raw)["status"] == "down"
    finally:
        await conn.stopService()
