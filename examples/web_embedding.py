"""
Embedding txmsg in an existing Twisted application.

One process, one reactor, one C{MultiService}: a C{twisted.web} site whose
request handler publishes each job to RabbitMQ (answering only once the
broker confirmed it), and a txmsg L{Consumer} that works through the same
queue.  txmsg's connection, consumer and the web server are ordinary
Twisted services, so the application starts and stops them together::

    python examples/web_embedding.py --port 8080 [--url amqp://guest:guest@localhost:5672/%2F]

    curl -X POST --data 'resize cat.jpg' http://127.0.0.1:8080/jobs
    # -> 202 queued 3f2a...     and the program prints: handled 3f2a...: resize cat.jpg

C{--port 0} picks a free port; the program prints the address it listens on
once it is consuming.  SIGTERM or Ctrl-C stops it gracefully: the web server
stops listening, the consumer finishes and acks the jobs it is handling, and
the connection closes; the exit status is 0.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from txmsg import Connection, Consumer, FatalConnectionError, Message, Producer, PublishTimeout, Queue


class JobsResource(Resource):
    """
    C{POST /jobs}: publish the request body as a persistent job; answer
    C{202 queued <message id>} once the broker confirmed it, 503 if it did
    not within C{timeout} seconds.
    """

    isLeaf = True

    def __init__(self, producer: Producer, queue: str, timeout: float = 10.0) -> None:
        super().__init__()
        self.producer = producer
        self.queue = queue
        self.timeout = timeout

    def render_POST(self, request: Any) -> Any:
        body = request.content.read()
        message_id = uuid.uuid4().hex[:12]
        d = self.producer.publish(
            "",
            self.queue,
            body,
            persistent=True,
            content_type="text/plain; charset=utf-8",
            message_id=message_id,
            timeout=self.timeout,
        )
        # The client may hang up before the broker confirms: then write nothing.
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def confirmed(_: object) -> None:
            if not gone:
                request.setResponseCode(202)
                request.write(f"queued {message_id}\n".encode())
                request.finish()

        def failed(reason: Failure) -> None:
            if gone:
                return
            if reason.check(PublishTimeout):
                request.setResponseCode(503)
                request.setHeader(b"retry-after", b"5")
            else:
                request.setResponseCode(502)
            request.write(f"not queued: {reason.getErrorMessage()}\n".encode())
            request.finish()

        d.addCallbacks(confirmed, failed)
        return NOT_DONE_YET


class Root(Resource):
    def getChild(self, path: bytes, request: Any) -> Resource:
        return self if path == b"" else super().getChild(path, request)

    def render_GET(self, request: Any) -> bytes:
        return b"POST a job to /jobs\n"


class ListeningService(Service):
    """
    Listen on C{endpoint} with C{factory} while running (like Twisted's
    C{StreamServerEndpointService}, and C{listening} fires with the port).
    """

    def __init__(self, endpoint: Any, factory: Any) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port: Any = None
        self.listening: Deferred[Any] = Deferred()

    def startService(self) -> None:
        super().startService()
        self.listening = self.endpoint.listen(self.factory).addCallback(self._listened)

    def _listened(self, port: Any) -> Any:
        self.port = port
        return port

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


def handle(message: Message) -> None:
    """
    The consumer's handler: do the job (here: say so).  Returning normally
    acks the message; raising would reject it.
    """
    print(f"handled {message.message_id}: {message.payload}", flush=True)


async def main(reactor: Any, *argv: str) -> None:
    parser = argparse.ArgumentParser(description="A twisted.web site and a txmsg consumer in one reactor.")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (0: any free port)")
    parser.add_argument("--interface", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--url", default=None, help="broker URL (default: $TXMSG_URL or the local broker)")
    parser.add_argument("--queue", default="web-embedding-jobs", help="the jobs queue")
    args = parser.parse_args(argv)
    # Twisted's and txmsg's log to stderr; stdout stays the program's own
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)

    app = MultiService()
    connection = Connection(args.url, reactor=reactor, name="web-embedding")
    connection.setServiceParent(app)
    # the consumer owns the queue: it declares it on every (re)connection
    consumer = Consumer(connection, Queue(args.queue, durable=True), handle)
    consumer.setServiceParent(app)
    producer = Producer(connection)
    web = ListeningService(
        TCP4ServerEndpoint(reactor, args.port, interface=args.interface), Site(_site(producer, args.queue))
    )
    web.setServiceParent(app)

    # Children stop in reverse order: the web server first, then the consumer
    # (its running handlers finish and ack), then the connection.
    reactor.addSystemEventTrigger("before", "shutdown", app.stopService)
    app.startService()
    try:
        port = await web.listening
        await connection.when_ready()
        await consumer.when_ready()
    except FatalConnectionError as e:
        print(f"cannot connect: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except Exception as e:  # noqa: BLE001 - e.g. the port is taken: say so and exit 1
        print(f"cannot start: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    address = port.getHost()
    print(f"listening on http://{address.host}:{address.port}/ ; consuming {args.queue}", flush=True)
    # run until SIGTERM / Ctrl-C stops the reactor (the services stop first)
    await Deferred()


def _site(producer: Producer, queue: str) -> Resource:
    root = Root()
    root.putChild(b"jobs", JobsResource(producer, queue))
    return root


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
