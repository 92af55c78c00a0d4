"""
txmsg over HTTP, with C{twisted.web}: monitoring and a publishing endpoint.

  - L{MonitorResource} serves C{/metrics} (Prometheus text, from a
    L{txmsg.metrics.Metrics}) and C{/health} (JSON; 200 while the broker
    connection is up, 503 while it is down).
  - L{PublishResource} lets systems that cannot speak AMQP publish:
    C{POST /publish/<exchange>/<routing_key>} is answered once the broker
    confirmed the message, or with the reason it did not.
  - L{web_service} hosts either on a server endpoint description as an
    C{IService}, to add to an application's C{MultiService}.

Nothing here imports the global reactor: L{web_service} is given the one to use.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Protocol
from urllib.parse import parse_qsl

from twisted.application import strports
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from txmsg.errors import AccessRefused, ChannelError, ConnectionLost, FatalConnectionError, NotFound
from txmsg.metrics import CONTENT_TYPE, Metrics
from txmsg.producer import Nacked, Producer, PublishTimeout, Unroutable

__all__ = ["MonitorResource", "PublishResource", "web_service"]

#: AMQP short strings (exchange names, routing keys) hold at most this many bytes
_SHORTSTR_MAX = 255

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class _Watched(Protocol):
    """
    What L{MonitorResource} needs of a connection.
    """

    @property
    def is_connected(self) -> bool: ...


def _json(request: Any, code: int, body: dict[str, Any]) -> bytes:
    """
    Set the response code and JSON headers of C{request}; return the body.
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode("utf-8") + b"\n"


class _MetricsPage(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return self.metrics.render()


class _HealthPage(Resource):
    isLeaf = True

    def __init__(self, connection: _Watched) -> None:
        super().__init__()
        self.connection = connection

    def render_GET(self, request: Any) -> bytes:
        connected = bool(self.connection.is_connected)
        body: dict[str, Any] = {"status": "ok" if connected else "down", "broker_connected": connected}
        # the broker being used (or tried), as a URL whose password is masked
        current = getattr(getattr(self.connection, "endpoint", None), "current", None)
        safe_url = getattr(current, "safe_url", None)
        if isinstance(safe_url, str):
            body["broker"] = safe_url
        name = getattr(self.connection, "name", None)
        if isinstance(name, str):
            body["connection_name"] = name
        return _json(request, 200 if connected else 503, body)


class MonitorResource(Resource):
    """
    The monitoring pages of a txmsg process:

      - C{GET /metrics}: C{metrics.render()}, as
        C{text/plain; version=0.0.4; charset=utf-8};
      - C{GET /health}: JSON C{{"status": "ok", "broker_connected": true,
        "broker": ..., "connection_name": ...}} with 200 while C{connection} is
        connected, C{"status": "down"} with 503 while it is not.  C{broker} is
        the URL of the broker in use with its password masked
        (L{txmsg.url.ConnectionParameters.safe_url}).

    @param metrics: the registry to serve.
    @param connection: a L{txmsg.connection.Connection} (anything with an
        C{is_connected} attribute will do).
    """

    def __init__(self, metrics: Metrics, connection: _Watched) -> None:
        super().__init__()
        self.metrics = metrics
        self.connection = connection
        self.putChild(b"metrics", _MetricsPage(metrics))
        self.putChild(b"health", _HealthPage(connection))

    def render_GET(self, request: Any) -> bytes:
        """
        Serve C{/metrics} (Prometheus text) or C{/health} (JSON).
        """
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"txmsg: /metrics (Prometheus), /health (JSON)\n"


class PublishResource(Resource):
    """
    An HTTP endpoint that publishes each request body to RabbitMQ, answering
    once the broker confirmed it::

        POST /publish/<exchange>/<routing_key>[?persistent=1][&mandatory=1]

    The resource is a leaf: the path is read from where it is mounted (the
    site's root for L{web_service}).  Path segments are percent-decoded UTF-8,
    so a routing key holding C{/} writes it C{%2F}; C{-} names the default
    exchange (C{""}), and an empty routing key is allowed.  The body is
    published as bytes, as it is, with the request's C{Content-Type} as the
    message's C{content_type}; each message gets a new C{message_id}.  Query
    parameters: C{persistent} (delivery mode 2 when true, 1 when false, unset
    when absent) and C{mandatory} (return the message, and answer 404, when no
    queue is bound for it); each takes C{1}/C{true}/C{yes}/C{on} or
    C{0}/C{false}/C{no}/C{off}.  Any other query parameter is refused (400), so
    that a typo never goes unnoticed.

    Answers (JSON bodies; errors carry C{"published": false}, an C{"error"}
    word and a C{"message"}):

      - 200 C{{"published": true, "exchange", "routing_key", "message_id"}}:
        the broker confirmed the message;
      - 400: a malformed path (not C{/publish/<exchange>/<routing_key>}, empty
        exchange, not UTF-8, a name over 255 bytes), a bad query parameter or
        a message the producer refuses (e.g. a C{Content-Type} over 255 bytes);
      - 403: the broker refused access to the exchange (C{reply_code},
        C{reply_text} in the body);
      - 404: a mandatory message was unroutable, or the exchange does not
        exist (C{reply_code} 312 or 404, C{reply_text} in the body); any
        other path than C{/publish/...} is 404 too;
      - 405 (with C{Allow: POST}): not a POST;
      - 413: the body is over C{max_body} bytes (from C{Content-Length} when
        given, and from the body itself); nothing is published;
      - 502: the broker nacked the message (it did not take it, e.g. a full
        queue with C{x-overflow: reject-publish}: retrying cannot publish it
        twice), or closed the publishing channel for another reason;
      - 503 (with C{Retry-After}): no confirm within C{publish_timeout}
        seconds (the broker unreachable, or slow), or the connection stopped.
        A message that was written before the timeout may still reach its
        queue, so retrying may publish it twice (the C{message_id} is new on
        each request);
      - 500: anything else (logged).

    If the client goes away before the confirm, the publish goes on; it is
    logged and no answer is written.

    Twisted has received the whole body (spooled to a temporary file past
    100 KB) before this resource sees the request, so C{max_body} bounds what
    is published and read into memory, not what the server receives.

    @param producer: the L{Producer} to publish with.
    @param max_body: the largest body, in bytes, that is published.
    @param publish_timeout: seconds to wait for the broker's confirm.
    @param retry_after: the C{Retry-After} seconds sent with a 503.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        producer: Producer,
        *,
        max_body: int = 1_048_576,
        publish_timeout: float = 30.0,
        retry_after: int = 5,
    ) -> None:
        super().__init__()
        if max_body < 0:
            raise ValueError("max_body must not be negative")
        if publish_timeout <= 0:
            raise ValueError("publish_timeout must be greater than 0")
        self.producer = producer
        self.max_body = max_body
        self.publish_timeout = publish_timeout
        self.retry_after = retry_after

    def render(self, request: Any) -> bytes | int:
        """
        Publish the request's body; answer once the broker confirmed it (see the class).
        """
        postpath = list(request.postpath)
        if not postpath or postpath[0] != b"publish":
            return _error(
                request, 404, "not_found", "no such resource: use POST /publish/<exchange>/<routing_key>"
            )
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return _error(request, 405, "method_not_allowed", "use POST")
        try:
            exchange, routing_key = _parse_path(postpath[1:])
            flags = _parse_query(request.uri)
        except ValueError as e:
            return _error(request, 400, "bad_request", str(e))
        too_big = _error_if_too_big(request, self.max_body)
        if too_big is not None:
            return too_big
        body = _read_body(request, self.max_body)
        if body is None:
            return _error(request, 413, "too_large", f"the body is over {self.max_body} bytes")
        content_type = request.getHeader(b"content-type")
        message_id = uuid.uuid4().hex
        properties: dict[str, Any] = {"message_id": message_id}
        if content_type is not None:
            properties["content_type"] = content_type.decode("latin-1")
        if "persistent" in flags:
            properties["persistent"] = flags["persistent"]
        d = self.producer.publish(
            exchange,
            routing_key,
            body,
            mandatory=flags.get("mandatory", False),
            timeout=self.publish_timeout,
            **properties,
        )
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def settled(result: object) -> tuple[int, dict[str, Any]]:
            if isinstance(result, Failure):
                return self._failed(result, exchange, routing_key, message_id)
            return 200, {
                "published": True,
                "exchange": exchange,
                "routing_key": routing_key,
                "message_id": message_id,
            }

        def answer(result: tuple[int, dict[str, Any]]) -> None:
            code, payload = result
            if gone:
                self._log.info(
                    "the client went away before the answer to its publish to {exchange!r}/{routing_key!r} "
                    "(message {message_id}): {answer}",
                    exchange=exchange,
                    routing_key=routing_key,
                    message_id=message_id,
                    answer=code,
                )
                return
            if code == 503:
                request.setHeader(b"retry-after", str(self.retry_after).encode("ascii"))
            request.write(_json(request, code, payload))
            request.finish()

        d.addBoth(settled).addCallback(answer).addErrback(
            lambda f: self._log.failure("answering a publish over HTTP", f)
        )
        return NOT_DONE_YET

    def _failed(
        self, reason: Failure, exchange: str, routing_key: str, message_id: str
    ) -> tuple[int, dict[str, Any]]:
        """
        The status code and JSON body for a publish that failed with C{reason}.
        """
        e = reason.value
        where = {"exchange": exchange, "routing_key": routing_key, "message_id": message_id}
        if isinstance(e, Unroutable):
            return 404, _failure("unroutable", e, reply_code=e.reply_code, reply_text=e.reply_text, **where)
        if isinstance(e, PublishTimeout):
            return 503, _failure("timeout", e, **where)
        if isinstance(e, (ConnectionLost, FatalConnectionError)):
            return 503, _failure("unavailable", e, **where)
        if isinstance(e, Nacked):
            return 502, _failure("nacked", e, **where)
        if isinstance(e, NotFound):
            return 404, _failure("not_found", e, reply_code=e.reply_code, reply_text=e.reply_text, **where)
        if isinstance(e, AccessRefused):
            return 403, _failure(
                "access_refused", e, reply_code=e.reply_code, reply_text=e.reply_text, **where
            )
        if isinstance(e, ChannelError):
            return 502, _failure(
                "channel_error", e, reply_code=e.reply_code, reply_text=e.reply_text, **where
            )
        if isinstance(e, (TypeError, ValueError)):
            return 400, _failure("bad_request", e, **where)
        self._log.failure(
            "publishing to {exchange!r}/{routing_key!r} over HTTP failed",
            reason,
            exchange=exchange,
            routing_key=routing_key,
        )
        return 500, _failure("internal_error", "internal error (logged)", **where)


def _failure(error: str, message: object, **details: Any) -> dict[str, Any]:
    return {"published": False, "error": error, "message": str(message), **details}


def _error(request: Any, code: int, error: str, message: str) -> bytes:
    return _json(request, code, _failure(error, message))


def _parse_path(segments: list[bytes]) -> tuple[str, str]:
    """
    The exchange and routing key of C{[exchange, routing_key]} (already
    percent-decoded by C{twisted.web}); ValueError if malformed.
    """
    if len(segments) != 2:
        raise ValueError("the path must be /publish/<exchange>/<routing_key> (- for the default exchange)")
    raw_exchange, raw_key = segments
    if not raw_exchange:
        raise ValueError("empty exchange name: use - for the default exchange")
    if len(raw_exchange) > _SHORTSTR_MAX or len(raw_key) > _SHORTSTR_MAX:
        raise ValueError(f"exchange names and routing keys hold at most {_SHORTSTR_MAX} bytes")
    try:
        exchange = raw_exchange.decode("utf-8")
        routing_key = raw_key.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the exchange and routing key must be UTF-8") from None
    return ("" if exchange == "-" else exchange), routing_key


def _parse_query(uri: bytes) -> dict[str, bool]:
    """
    The flags of the query string of C{uri} (read from the URI, not from
    C{request.args}, which a form-encoded body would add to); ValueError for
    an unknown parameter or a value that is not a boolean.
    """
    _, _, query = uri.partition(b"?")
    flags: dict[str, bool] = {}
    try:
        pairs = parse_qsl(query.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(query))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("malformed query string") from None
    for name, value in pairs:
        if name not in ("persistent", "mandatory"):
            raise ValueError(f"unknown query parameter {name!r} (persistent and mandatory are known)")
        lowered = value.lower()
        if lowered in _TRUE:
            flags[name] = True
        elif lowered in _FALSE:
            flags[name] = False
        else:
            raise ValueError(f"{name} must be 1 or 0 (true/false, yes/no), not {value!r}")
    return flags


def _error_if_too_big(request: Any, max_body: int) -> bytes | None:
    """
    A 413 answer if the request's C{Content-Length} is over C{max_body}.
    """
    length = request.getHeader(b"content-length")
    if length is None:
        return None
    try:
        size = int(length)
    except ValueError:
        return _error(request, 400, "bad_request", "malformed Content-Length")
    if size > max_body:
        return _error(request, 413, "too_large", f"the body ({size} bytes) is over {max_body} bytes")
    return None


def _read_body(request: Any, max_body: int) -> bytes | None:
    """
    The request body, or None if it is over C{max_body} bytes.
    """
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    body = content.read(max_body + 1)
    if len(body) > max_body:
        return None
    return bytes(body)


def web_service(endpoint_description: str, resource: Resource, reactor: Any) -> IService:
    """
    An C{IService} that serves C{resource} as the root of a C{twisted.web}
    site on a server endpoint description such as C{tcp:8080} or
    C{tcp:0:interface=127.0.0.1}; it listens when started.
    """
    site = Site(resource)
    site.displayTracebacks = False
    return strports.service(endpoint_description, site, reactor=reactor)
