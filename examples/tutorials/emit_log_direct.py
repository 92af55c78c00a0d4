"""
Tutorial 4, "Routing", the emitter: send a log line with its severity as the
routing key of a direct exchange.

    python examples/tutorials/emit_log_direct.py [--exchange direct_logs] [SEVERITY [MESSAGE ...]]
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
        await connection.declare(Exchange(args.exchange, "direct"))
        await Producer(connection).publish(args.exchange, args.severity, message)
        print(f" [x] Sent {args.severity}: {message!r}")
    finally:
        await connection.stopService()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Send one log line with a severity.")
    parser.add_argument("--url", help="broker URL (default: $TXMSG_URL, else the local broker)")
    parser.add_argument("--exchange", default="direct_logs")
    parser.add_argument("severity", nargs="?", default="info")
    parser.add_argument("words", nargs="*")
    task.react(main, [parser.parse_args()])
