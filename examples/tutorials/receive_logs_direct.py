"""
Tutorial 4, "Routing", a subscriber: receive only the severities asked for (one
binding per severity on the direct exchange).

    python examples/tutorials/receive_logs_direct.py [--exchange direct_logs] [--count N] SEVERITY ...
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
        print(f" [x] {message.routing_key}: {message.text}", flush=True)
        received += 1
        if received == args.count:
            enough.callback(None)

    logs = Exchange(args.exchange, "direct")
    mine = Queue(exclusive=True)
    # a direct exchange delivers a message to the queues bound with exactly its routing key
    await connection.declare(logs, mine, *(Binding(mine, logs, severity) for severity in args.severities))
    consumer = Consumer(connection, mine, on_log)
    consumer.startService()
    reactor.addSystemEventTrigger("before", "shutdown", consumer.stopService)
    reactor.addSystemEventTrigger("before", "shutdown", connection.stopService)
    await consumer.when_ready()
    print(" [*] Waiting for logs. To exit press CTRL+C", flush=True)
    await enough


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print the log lines of the given severities.")
    parser.add_argument("--url", help="broker URL (default: $TXMSG_URL, else the local broker)")
    parser.add_argument("--exchange", default="direct_logs")
    parser.add_argument("--count", type=int, default=0, help="stop after N messages (default: never)")
    parser.add_argument("severities", nargs="+", metavar="SEVERITY", help="e.g. info warning error")
    task.react(main, [parser.parse_args()])
