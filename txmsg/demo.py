"""
``python -m txmsg.demo``: publish a few messages through txmsg, consume them,
show them on screen, and stop cleanly.  ``make demo`` runs it.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from txmsg.connection import Connection
from txmsg.consumer import Consumer
from txmsg.errors import TxmsgError
from txmsg.message import Message
from txmsg.producer import Producer
from txmsg.topology import Queue

QUEUE = Queue("txmsg-demo", auto_delete=False)
MESSAGES = [
    "Hello from txmsg!",
    {"order": 1, "items": ["tea", "scones"]},
    "Every message here was confirmed by the broker before we counted it.",
]


@inlineCallbacks
def run(reactor: Any, url: str | None = None) -> Any:
    connection = Connection(url, reactor=reactor, name="txmsg-demo")
    info = yield connection.declare(QUEUE)
    print(f"connected to {connection.params[0].safe_url}; queue {info.name!r} holds {info.message_count}")
    received: list[Message] = []
    done: Deferred[None] = Deferred()

    def show(message: Message) -> None:
        received.append(message)
        print(f"  received #{len(received)}: {message.payload!r} ({message.content_type})")
        if len(received) == len(MESSAGES) and not done.called:
            done.callback(None)

    producer = Producer(connection)
    for payload in MESSAGES:
        yield producer.publish("", QUEUE.name, payload)
        print(f"  published and confirmed: {payload!r}")
    consumer = Consumer(connection, QUEUE, show, prefetch=10)
    consumer.startService()

    def give_up() -> None:
        if not done.called:
            done.errback(TxmsgError("timed out waiting for the messages to come back"))

    timeout = reactor.callLater(10, give_up)
    yield done
    if timeout.active():
        timeout.cancel()
    yield consumer.stopService()
    yield connection.stopService()
    print(f"done: {len(received)} messages published, confirmed and consumed; connection closed.")


def main(argv: list[str] | None = None) -> int:
    from twisted.internet import task

    argv = sys.argv[1:] if argv is None else argv
    url = argv[0] if argv else None

    def go(r: Any) -> Deferred[Any]:
        def failed(f: Any) -> None:
            print(f"txmsg demo: {f.getErrorMessage()}", file=sys.stderr)
            raise SystemExit(1)

        return run(r, url).addErrback(failed)

    task.react(go)  # exits the process with 0, or 1 after one readable line
    return 0


if __name__ == "__main__":
    sys.exit(main())
