"""
Tutorial 1, "Hello World!", the sending side: put one message on a queue.

    python examples/tutorials/hello_send.py [--queue hello] [MESSAGE]
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import task

from txmsg import Connection, Producer, Queue


async def main(reactor: Any, args: argparse.Namespace) -> None:
    connection = Connection(args.url, reactor=reactor)
    try:
        # as the tutorial declares it today: a durable quorum queue
        await connection.declare(Queue.quorum(args.queue))
        # the default exchange ("") routes a message to the queue named by its routing key;
        # publish() fires once the broker has confirmed the message
        await Producer(connection).publish("", args.queue, args.message)
        print(f" [x] Sent {args.message!r}")
    finally:
        await connection.stopService()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Send one message to a queue.")
    parser.add_argument("--url", help="broker URL (default: $TXMSG_URL, else the local broker)")
    parser.add_argument("--queue", default="hello")
    parser.add_argument("message", nargs="?", default="Hello World!")
    task.react(main, [parser.parse_args()])
