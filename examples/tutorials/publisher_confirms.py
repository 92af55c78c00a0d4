"""
Tutorial 7, "Publisher Confirms": three ways to wait for the broker's confirms,
timed.  Every txmsg publish is confirmed; what differs is how long you wait for it.

- individually: wait for each message's confirm before publishing the next (slow);
- in batches: publish a batch, then wait for all of its confirms;
- asynchronously: publish everything, each message's Deferred firing on its own
  confirm (fast; the producer's window bounds how many are unconfirmed at once).

    python examples/tutorials/publisher_confirms.py [--count 5000] [--queue NAME]
        [--strategy all|individually|batches|async]

Without ``--queue`` the messages go to a server-named queue that vanishes with the
connection; with it, to that durable queue, where they stay.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from twisted.internet import task
from twisted.internet.defer import gatherResults

from txmsg import Connection, Producer, Queue


async def individually(producer: Producer, queue: str, count: int) -> None:
    for i in range(count):
        await producer.publish("", queue, f"message {i}", persistent=True)


async def in_batches(producer: Producer, queue: str, count: int, size: int = 100) -> None:
    for start in range(0, count, size):
        batch = [
            producer.publish("", queue, f"message {i}", persistent=True)
            for i in range(start, min(start + size, count))
        ]
        await gatherResults(batch, consumeErrors=True)


async def asynchronously(producer: Producer, queue: str, count: int) -> None:
    # nothing waits here until all are published; each Deferred fires with its own confirm
    pending = [producer.publish("", queue, f"message {i}", persistent=True) for i in range(count)]
    await gatherResults(pending, consumeErrors=True)


#: option value -> (what it does, how)
STRATEGIES = {
    "individually": ("individually", individually),
    "batches": ("in batches of 100", in_batches),
    "async": ("asynchronously", asynchronously),
}


async def main(reactor: Any, args: argparse.Namespace) -> None:
    connection = Connection(args.url, reactor=reactor)
    try:
        queue = Queue(args.queue, durable=True) if args.queue else Queue(exclusive=True)
        info = await connection.declare(queue)
        producer = Producer(connection)
        for key, (how, strategy) in STRATEGIES.items():
            if args.strategy not in ("all", key):
                continue
            start = time.perf_counter()
            await strategy(producer, info.name, args.count)
            elapsed = time.perf_counter() - start
            print(f"published {args.count} messages {how}, all confirmed, in {elapsed * 1000:.0f} ms")
    finally:
        await connection.stopService()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Publish with confirms, three ways.")
    parser.add_argument("--url", help="broker URL (default: $TXMSG_URL, else the local broker)")
    parser.add_argument("--queue", default="", help="a durable queue to fill (default: a temporary one)")
    parser.add_argument("--count", type=int, default=5000, help="messages per strategy")
    parser.add_argument("--strategy", default="all", choices=["all", *STRATEGIES])
    task.react(main, [parser.parse_args()])
