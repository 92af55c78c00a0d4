"""
Seed 003, the producer: put a few persistent messages on a durable queue, whether
or not a consumer is running.  They wait in the queue until one starts:

    python examples/seed003/producer.py [--queue seed003] ["a message" ...]
    twistd -n txmsg --role consumer --queue seed003 --durable
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import task
from twisted.internet.defer import gatherResults

from txmsg import Connection, Producer, Queue


async def main(reactor: Any, args: argparse.Namespace) -> None:
    messages = args.messages or [f"producer-to-consumer test message {n}" for n in (1, 2, 3)]
    connection = Connection(args.url, reactor=reactor)
    try:
        # declared exactly as `twistd txmsg --role consumer --queue Q --durable` declares it
        await connection.declare(Queue(args.queue, durable=True))
        producer = Producer(connection)
        # persistent messages in a durable queue also outlive a broker restart
        await gatherResults([producer.publish("", args.queue, m, persistent=True) for m in messages])
        print(f"published {len(messages)} messages to {args.queue}, all confirmed")
    finally:
        await connection.stopService()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Publish persistent messages to a durable queue.")
    parser.add_argument("--url", help="broker URL (default: $TXMSG_URL, else the local broker)")
    parser.add_argument("--queue", default="seed003")
    parser.add_argument("messages", nargs="*", help="one message each (default: three test messages)")
    task.react(main, [parser.parse_args()])
