"""
The HTTP resources without a network: /metrics and /health of
MonitorResource, and PublishResource's answers driven by a fake producer whose
publishes are settled by hand (and by a real Producer over a StringTransport
broker), with DummyRequest.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from txmsg import Connection
from txmsg.errors import ConnectionLost, NotFound
from txmsg.metrics import Metrics
from txmsg.producer import Nacked, PublishTimeout, Unroutable
from txmsg.web import MonitorResource, PublishResource, web_service

from .test_producer import Broker as ProducerBroker


class FakeConnection:
    def __init__(self, connected: bool) -> None:
        self.is_connected = connected


class FakeProducer:
    """
    Records each publish and returns a Deferred the test fires.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any], Deferred[None]]] = []

    def publish(self, *args: Any, **kwargs: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.calls.append((args, kwargs, d))
        return d


def get(root: Any, path: bytes) -> DummyRequest:
    """
    GET C{path} from C{root} through resource traversal; the finished request.
    """
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = b"GET"
    resource = getChildForRequest(root, request)
    result = resource.render(request)
    assert isinstance(result, bytes)
    request.write(result)
    request.finish()
    return request


def post(
    resource: PublishResource,
    path: bytes,
    body: bytes = b"hello",
    headers: dict[bytes, bytes] | None = None,
    method: bytes = b"POST",
    content_length: bool = True,
) -> DummyRequest:
    """
    Render a request for C{path} (with its query string) on C{resource}; the
    request, finished or not.
    """
    route, _, _ = path.partition(b"?")
    request = DummyRequest([unquote_to_bytes(p) for p in route.lstrip(b"/").split(b"/")])
    request.method = method
    request.uri = path
    request.content = BytesIO(body)  # type: ignore[attr-defined]
    if content_length:
        request.requestHeaders.setRawHeaders(b"content-length", [str(len(body)).encode()])
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        assert isinstance(result, bytes)
        request.write(result)
        request.finish()
    return request


def answer(request: DummyRequest) -> dict[str, Any]:
    assert request.finished == 1
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]
    return json.loads(b"".join(request.written))


# ----------------------------------------------------------------------
# MonitorResource


def test_metrics_page_serves_the_registry_as_prometheus_text() -> None:
    """
    GET /metrics renders the registry (read at request time) with the 0.0.4
    text content type.
    """
    value = {"n": 1}
    m = Metrics()
    m.counter("hits_total", "Hits.", lambda: value["n"])
    root = MonitorResource(m, FakeConnection(True))
    value["n"] = 42
    request = get(root, b"/metrics")
    assert request.responseHeaders.getRawHeaders(b"content-type") == [
        b"text/plain; version=0.0.4; charset=utf-8"
    ]
    assert b"".join(request.written) == m.render()
    assert b"hits_total 42\n" in b"".join(request.written)


def test_health_is_200_ok_when_connected_and_503_down_when_not() -> None:
    """
    /health answers 200 {"status": "ok", "broker_connected": true} while the
    connection is up, and 503 with "down" and false when it is not.
    """
    conn = FakeConnection(True)
    root = MonitorResource(Metrics(), conn)
    up = get(root, b"/health")
    assert up.responseCode == 200
    body = answer(up)
    assert body["status"] == "ok" and body["broker_connected"] is True
    conn.is_connected = False
    down = get(root, b"/health")
    assert down.responseCode == 503
    body = answer(down)
    assert body["status"] == "down" and body["broker_connected"] is False


def test_health_names_the_broker_without_its_password() -> None:
    """
    With a real Connection, /health names the broker and the connection but
    masks the URL's password.
    """
    conn = Connection("amqp://app:s3cr3t-pw@broker.example:5673/prod", reactor=Clock(), name="web-1")
    request = get(MonitorResource(Metrics(), conn), b"/health")
    raw = b"".join(request.written)
    assert b"s3cr3t" not in raw
    body = json.loads(raw)
    assert body["broker"] == "amqp://app:***@broker.example:5673/prod"
    assert body["connection_name"] == "web-1"
    assert request.responseCode == 503  # never started


# ----------------------------------------------------------------------
# PublishResource with a fake producer


def test_publish_answers_200_only_after_the_broker_confirmed() -> None:
    """
    A POST publishes the body as bytes with its Content-Type; nothing is
    answered until the publish Deferred fires, then 200 with the exchange,
    routing key and message id.
    """
    producer = FakeProducer()
    resource = PublishResource(producer, publish_timeout=12.5)  # type: ignore[arg-type]
    request = post(resource, b"/publish/orders/new.eu", b'{"id": 1}', {b"content-type": b"application/json"})
    [(args, kwargs, d)] = producer.calls
    assert args == ("orders", "new.eu", b'{"id": 1}')
    assert kwargs["content_type"] == "application/json"
    assert kwargs["timeout"] == 12.5
    assert kwargs["mandatory"] is False
    assert "persistent" not in kwargs
    assert request.finished == 0 and request.written == []
    d.callback(None)
    assert request.responseCode == 200
    body = answer(request)
    assert body == {
        "published": True,
        "exchange": "orders",
        "routing_key": "new.eu",
        "message_id": kwargs["message_id"],
    }
    assert len(body["message_id"]) == 32


def test_dash_is_the_default_exchange_and_segments_are_percent_decoded() -> None:
    """
    `-` names the default exchange ""; %2F and UTF-8 escapes in the routing
    key are decoded; an empty routing key is allowed.
    """
    producer = FakeProducer()
    resource = PublishResource(producer)  # type: ignore[arg-type]
    post(resource, b"/publish/-/a%2Fb%20%C3%A9")
    post(resource, b"/publish/logs/")
    assert [c[0][:2] for c in producer.calls] == [("", "a/b é"), ("logs", "")]


def test_persistent_and_mandatory_flags_reach_the_publish() -> None:
    """
    ?persistent=1&mandatory=1 publish persistent and mandatory;
    persistent=0 asks for delivery mode 1 explicitly.
    """
    producer = FakeProducer()
    resource = PublishResource(producer)  # type: ignore[arg-type]
    post(resource, b"/publish/-/q?persistent=1&mandatory=1")
    post(resource, b"/publish/-/q?persistent=0&mandatory=false")
    (_, kw1, _), (_, kw2, _) = producer.calls
    assert kw1["persistent"] is True and kw1["mandatory"] is True
    assert kw2["persistent"] is False and kw2["mandatory"] is False


def test_unroutable_mandatory_message_is_404_with_the_reply() -> None:
    """
    A mandatory publish failing with Unroutable is answered 404 with the
    broker's reply code and text.
    """
    producer = FakeProducer()
    request = post(PublishResource(producer), b"/publish/-/nowhere?mandatory=1")  # type: ignore[arg-type]
    producer.calls[0][2].errback(Unroutable(312, "NO_ROUTE", "", "nowhere"))
    assert request.responseCode == 404
    body = answer(request)
    assert body["published"] is False and body["error"] == "unroutable"
    assert body["reply_code"] == 312 and body["reply_text"] == "NO_ROUTE"


@pytest.mark.parametrize(
    "error",
    [PublishTimeout("no confirm"), ConnectionLost("the connection was stopped")],
)
def test_no_confirm_in_time_is_503_with_retry_after(error: Exception) -> None:
    """
    A publish that timed out (or whose connection stopped) is answered 503
    with a Retry-After header.
    """
    producer = FakeProducer()
    request = post(PublishResource(producer, retry_after=7), b"/publish/-/q")  # type: ignore[arg-type]
    producer.calls[0][2].errback(error)
    assert request.responseCode == 503
    assert request.responseHeaders.getRawHeaders(b"retry-after") == [b"7"]
    assert answer(request)["published"] is False


def test_nacked_is_502_and_a_missing_exchange_404() -> None:
    """
    A nack is answered 502; the channel closed with 404 NOT_FOUND for the
    exchange is 404 with the broker's reply; another error is 500.
    """
    producer = FakeProducer()
    resource = PublishResource(producer)  # type: ignore[arg-type]
    nacked = post(resource, b"/publish/-/q")
    missing = post(resource, b"/publish/nope/q")
    broken = post(resource, b"/publish/-/q")
    producer.calls[0][2].errback(Nacked("nacked"))
    producer.calls[1][2].errback(NotFound(404, "NOT_FOUND - no exchange 'nope' in vhost '/'"))
    logged: list[dict[str, Any]] = []
    resource._log = Logger(observer=logged.append)  # type: ignore[arg-type]
    producer.calls[2][2].errback(RuntimeError("bug"))
    assert nacked.responseCode == 502 and answer(nacked)["error"] == "nacked"
    assert missing.responseCode == 404
    assert answer(missing)["reply_text"].startswith("NOT_FOUND")
    assert broken.responseCode == 500 and "bug" not in json.dumps(answer(broken))
    assert [e["log_failure"].type for e in logged] == [RuntimeError]


def test_oversize_body_is_413_without_publishing() -> None:
    """
    A Content-Length over max_body, or a body over it without a (truthful)
    Content-Length, is answered 413 and nothing is published; a body of
    exactly max_body is published.
    """
    producer = FakeProducer()
    resource = PublishResource(producer, max_body=10)  # type: ignore[arg-type]
    by_header = post(resource, b"/publish/-/q", b"x" * 11)
    by_body = post(resource, b"/publish/-/q", b"x" * 11, content_length=False)
    assert by_header.responseCode == 413 and answer(by_header)["error"] == "too_large"
    assert by_body.responseCode == 413 and answer(by_body)["error"] == "too_large"
    assert producer.calls == []
    post(resource, b"/publish/-/q", b"x" * 10)
    assert producer.calls[0][0][2] == b"x" * 10


def test_content_length_over_max_body_is_413_before_the_body_is_read() -> None:
    """
    A Content-Length over max_body is answered 413 from the header alone:
    the body is never read.
    """

    class Unreadable(BytesIO):
        def read(self, *args: Any) -> bytes:
            raise AssertionError("the body was read")

    producer = FakeProducer()
    resource = PublishResource(producer, max_body=10)  # type: ignore[arg-type]
    request = DummyRequest([b"publish", b"-", b"q"])
    request.method = b"POST"
    request.uri = b"/publish/-/q"
    request.content = Unreadable(b"")  # type: ignore[attr-defined]
    request.requestHeaders.setRawHeaders(b"content-length", [b"5000000"])
    result = resource.render(request)
    assert request.responseCode == 413
    assert isinstance(result, bytes) and b"5000000" in result
    assert producer.calls == []


@pytest.mark.parametrize(
    "method, path, code",
    [
        (b"GET", b"/publish/-/q", 405),
        (b"PUT", b"/publish/-/q", 405),
        (b"POST", b"/elsewhere/-/q", 404),
        (b"POST", b"/", 404),
        (b"POST", b"/publish/-", 400),
        (b"POST", b"/publish/-/q/extra", 400),
        (b"POST", b"/publish//q", 400),
        (b"POST", b"/publish/-/%FF", 400),
        (b"POST", b"/publish/-/" + b"k" * 256, 400),
        (b"POST", b"/publish/-/q?persistant=1", 400),
        (b"POST", b"/publish/-/q?persistent=maybe", 400),
    ],
)
def test_bad_method_or_path_is_refused_without_publishing(method: bytes, path: bytes, code: int) -> None:
    """
    Non-POST is 405 with Allow: POST; a path outside /publish is 404; a
    malformed publish path or query is 400; none of them publishes.
    """
    producer = FakeProducer()
    request = post(PublishResource(producer), path, method=method)  # type: ignore[arg-type]
    assert request.responseCode == code
    assert answer(request)["published"] is False
    assert producer.calls == []
    if code == 405:
        assert request.responseHeaders.getRawHeaders(b"allow") == [b"POST"]


def test_a_client_gone_before_the_confirm_gets_nothing_written() -> None:
    """
    If the client disconnects before the confirm, the later confirm writes
    nothing to the finished request and does not finish it again.
    """
    producer = FakeProducer()
    request = post(PublishResource(producer), b"/publish/-/q")  # type: ignore[arg-type]
    request.processingFailed(Failure(ConnectionDone()))
    producer.calls[0][2].callback(None)
    assert request.written == [] and request.finished == 0


def test_a_publish_the_producer_refuses_is_400() -> None:
    """
    A publish the real Producer refuses before writing it (a Content-Type
    longer than an AMQP short string) is answered 400 at once, and nothing
    is written to the broker.
    """
    b = ProducerBroker()
    request = post(
        PublishResource(b.producer), b"/publish/-/q", headers={b"content-type": b"x/" + b"y" * 300}
    )
    assert request.responseCode == 400
    assert "short string" in answer(request)["message"]
    assert b.published() == []


# ----------------------------------------------------------------------
# PublishResource with a real Producer over a StringTransport broker


def test_real_producer_publish_is_answered_on_the_brokers_ack() -> None:
    """
    With a real Producer, the POST writes a basic.publish with the body,
    content type and delivery mode 2; the answer is 200 only after the
    broker's ack.
    """
    b = ProducerBroker()
    resource = PublishResource(b.producer)
    request = post(resource, b"/publish/-/jobs?persistent=1", b"payload", {b"content-type": b"text/plain"})
    [(exchange, key, props, body)] = b.published()
    assert (exchange, key, body) == ("", "jobs", b"payload")
    assert props["content_type"] == "text/plain" and props["delivery_mode"] == 2
    assert request.finished == 0
    b.ack(1)
    assert request.responseCode == 200
    assert answer(request)["message_id"] == props["message_id"]


def test_real_producer_return_is_404_and_timeout_is_503() -> None:
    """
    With a real Producer, a mandatory message the broker returns is 404; one
    the broker never confirms is 503 once publish_timeout passes on the clock.
    """
    b = ProducerBroker()
    resource = PublishResource(b.producer, publish_timeout=5.0)
    returned = post(resource, b"/publish/-/nowhere?mandatory=1")
    [(_, _, props, _)] = b.published()
    b.send_return(props["message_id"])
    b.ack(1)
    assert returned.responseCode == 404 and answer(returned)["reply_code"] == 312
    silent = post(resource, b"/publish/-/q")
    b.clock.advance(4.9)
    assert silent.finished == 0
    b.clock.advance(0.2)
    assert silent.responseCode == 503
    assert silent.responseHeaders.getRawHeaders(b"retry-after") == [b"5"]


def test_web_service_listens_on_the_endpoint_when_started() -> None:
    """
    web_service makes a service that listens on the described endpoint with
    a Site serving the resource, in the reactor it is given.
    """
    from twisted.internet.testing import MemoryReactor

    reactor = MemoryReactor()
    resource = MonitorResource(Metrics(), FakeConnection(True))
    service = web_service("tcp:8123:interface=127.0.0.1", resource, reactor)
    assert reactor.tcpServers == []
    service.startService()
    [(port, factory, _backlog, interface)] = reactor.tcpServers
    assert (port, interface) == (8123, "127.0.0.1")
    assert factory.resource is resource  # type: ignore[attr-defined]
    service.stopService()
