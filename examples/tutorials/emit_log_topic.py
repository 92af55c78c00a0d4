"""
Tutorial 5, "Topics", the emitter: send a log line with a dotted routing key such
as ``kern.critical`` (facility.severity) to a topic exchange.

    python examples/tutorials/emit_log_topic.py [--exchange topic_logs] [ROUTING_KEY [MESSAGE ...]]
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import task

from txmsg import Connection, Exchange, Producer


async def main(reactor: Any, args: argparse.Namespace) -> None:
    message = " ".join(args.words) or "Hello World!"
    connection = Connection(args.url, reactor=reactor)
    try:
        await connection.declare(Exchange(args.exchange, "topic"))
        await Producer(connection).publish(args.exchange, args.routing_key, message)
        print(f" [x] Sent {args.routing_key}: {message!r}")
    finally:
        await connection.stopService()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Send one log line with a dotted routing key.")
    parser.add_argument("--url", help="broker URL (default: $TXMSG_URL, else the local broker)")
    parser.add_argument("--exchange", default="topic_logs")
    parser.add_argument("routing_key", nargs="?", default="anonymous.info")
    parser.add_argument("words", nargs="*")
    task.react(main, [parser.parse_args()])
