"""
Tutorial 5, "Topics", a subscriber: bind with patterns, where ``*`` stands for
exactly one word and ``#`` for zero or more (``kern.*``, ``*.critical``, ``#``).

    python examples/tutorials/receive_logs_topic.py [--exchange topic_logs] [--count N] BINDING_KEY ...
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

    logs = Exchange(args.exchange, "topic")
    mine = Queue(exclusive=True)
    # a message matching several of the patterns still arrives once
    await connection.declare(logs, mine, *(Binding(mine, logs, key) for key in args.binding_keys))
    consumer = Consumer(connection, mine, on_log)
    consumer.startService()
    reactor.addSystemEventTrigger("before", "shutdown", consumer.stopService)
    reactor.addSystemEventTrigger("before", "shutdown", connection.stopService)
    await consumer.when_ready()
    print(" [*] Waiting for logs. To exit press CTRL+C", flush=True)
    await enough


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print the log lines whose routing key matches a pattern.")
    parser.add_argument("--url", help="broker URL (default: $TXMSG_URL, else the local broker)")
    parser.add_argument("--exchange", default="topic_logs")
    parser.add_argument("--count", type=int, default=0, help="stop after N messages (default: never)")
    parser.add_argument("binding_keys", nargs="+", metavar="BINDING_KEY", help="e.g. 'kern.*' '*.critical'")
    task.react(main, [parser.parse_args()])
