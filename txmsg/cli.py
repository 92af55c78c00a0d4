"""
The ``txmsg`` command: publish from a shell.

    txmsg publish [--url URL] [--exchange X] ROUTING_KEY BODY...

This first version publishes (each message confirmed); ``call`` and ``listen``
arrive with the services issue.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet.defer import inlineCallbacks

from txmsg.connection import Connection
from txmsg.errors import TxmsgError
from txmsg.producer import Producer
from txmsg.url import InvalidURL, parse_urls


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="txmsg", description="Talk to RabbitMQ through txmsg.")
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="publish messages, each confirmed by the broker")
    pub.add_argument("--url", action="append", default=[], help="broker URL (repeat for a cluster)")
    pub.add_argument("--exchange", "-x", default="", help="exchange (default: the default exchange)")
    pub.add_argument("--persistent", action="store_true", help="delivery mode 2")
    pub.add_argument("--mandatory", action="store_true", help="fail if no queue takes the message")
    pub.add_argument("routing_key")
    pub.add_argument("bodies", nargs="+", metavar="BODY", help="message bodies, sent as text")
    return parser


@inlineCallbacks
def publish(reactor: Any, args: argparse.Namespace) -> Any:
    connection = Connection(args.url or None, reactor=reactor, name="txmsg-cli")
    try:
        producer = Producer(connection)
        for body in args.bodies:
            yield producer.publish(
                args.exchange,
                args.routing_key,
                body,
                persistent=args.persistent or None,
                mandatory=args.mandatory,
                timeout=30,
            )
        print(f"published {len(args.bodies)} message(s) to {args.exchange or '(default)'}/{args.routing_key}")
    finally:
        yield connection.stopService()


def main(argv: list[str] | None = None) -> int:
    from twisted.internet import task

    args = build_parser().parse_args(argv)
    try:
        parse_urls(args.url or None)
    except InvalidURL as e:
        print(f"txmsg: {e}", file=sys.stderr)
        return 2

    def run(reactor: Any) -> Any:
        def failed(f: Any) -> None:
            f.trap(TxmsgError, ConnectionError, OSError)
            print(f"txmsg: {f.getErrorMessage()}", file=sys.stderr)
            raise SystemExit(1)

        return publish(reactor, args).addErrback(failed)

    task.react(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
