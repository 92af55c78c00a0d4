"""
Tutorial 1, "Hello World!", the receiving side: print what arrives on a queue.

    python examples/tutorials/hello_receive.py [--queue hello] [--count N]
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from txmsg import Connection, Consumer, Message, Queue


async def main(reactor: Any, args: argparse.Namespace) -> None:
    connection = Connection(args.url, reactor=reactor)
    enough: Deferred[None] = Deferred()
    received = 0

    def on_message(message: Message) -> None:
        nonlocal received
        print(f" [x] Received {message.text}", flush=True)
        received += 1
        if received == args.count:
            enough.callback(None)

    # txmsg acks each message once its handler has returned
    consumer = Consumer(connection, Queue.quorum(args.queue), on_message)
    consumer.startService()
    # Ctrl-C, SIGTERM or the end of main: stop consuming, then close the connection
    reactor.addSystemEventTrigger("before", "shutdown", consumer.stopService)
    reactor.addSystemEventTrigger("before", "shutdown", connection.stopService)
    await consumer.when_ready()
    print(" [*] Waiting for messages. To exit press CTRL+C", flush=True)
    await enough


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print the messages of a queue.")
    parser.add_argument("--url", help="broker URL (default: $TXMSG_URL, else the local broker)")
    parser.add_argument("--queue", default="hello")
    parser.add_argument("--count", type=int, default=0, help="stop after N messages (default: never)")
    task.react(main, [parser.parse_args()])
