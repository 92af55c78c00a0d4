"""
Tutorial 3, "Publish/Subscribe", a subscriber: a queue of its own, bound to the
fanout exchange, that lives as long as this program.

    python examples/tutorials/receive_logs.py [--exchange logs] [--count N]
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from txmsg import Binding, Connection, Consumer, Exchange, Message, Queue


async def main(reactor: Any, args: argparse.Namespace) -> None:
    connection = Connection(args.url, reactor=reactor)
    enough: Deferred[None] = Deferred()
    received = 0

    def on_log(message: Message) -> None:
        nonlocal received
        print(f" [x] {message.text}", flush=True)
        received += 1
        if received == args.count:
            enough.callback(None)

    logs = Exchange(args.exchange, "fanout")
    mine = Queue(exclusive=True)  # the broker names it; it goes when the connection does
    # topology as data: declared now and again (with the queue's new name) after a reconnect
    await connection.declare(logs, mine, Binding(mine, logs))
    consumer = Consumer(connection, mine, on_log)
    consumer.startService()
    reactor.addSystemEventTrigger("before", "shutdown", consumer.stopService)
    reactor.addSystemEventTrigger("before", "shutdown", connection.stopService)
    await consumer.when_ready()
    print(" [*] Waiting for logs. To exit press CTRL+C", flush=True)
    await enough


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print every log line broadcast on an exchange.")
    parser.add_argument("--url", help="broker URL (default: $TXMSG_URL, else the local broker)")
    parser.add_argument("--exchange", default="logs")
    parser.add_argument("--count", type=int, default=0, help="stop after N messages (default: never)")
    task.react(main, [parser.parse_args()])
