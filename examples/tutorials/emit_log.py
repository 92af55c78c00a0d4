"""
Tutorial 3, "Publish/Subscribe", the emitter: broadcast a log line on a fanout exchange.

    python examples/tutorials/emit_log.py [--exchange logs] [MESSAGE WORDS ...]
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import task

from txmsg import Connection, Exchange, Producer


async def main(reactor: Any, args: argparse.Namespace) -> None:
    message = " ".join(args.words) or "info: Hello World!"
    connection = Connection(args.url, reactor=reactor)
    try:
        await connection.declare(Exchange(args.exchange, "fanout"))
        # a fanout exchange ignores the routing key: every bound queue gets a copy
        await Producer(connection).publish(args.exchange, "", message)
        print(f" [x] Sent {message!r}")
    finally:
        await connection.stopService()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Broadcast one log line.")
    parser.add_argument("--url", help="broker URL (default: $TXMSG_URL, else the local broker)")
    parser.add_argument("--exchange", default="logs")
    parser.add_argument("words", nargs="*")
    task.react(main, [parser.parse_args()])
