"""
Tutorial 2, "Work Queues", the producer: queue a task that survives a broker restart.
Each dot in the task stands for a second of work.

    python examples/tutorials/new_task.py [--queue task_queue] [TASK WORDS ...]
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import task

from txmsg import Connection, Producer, Queue


async def main(reactor: Any, args: argparse.Namespace) -> None:
    message = " ".join(args.words) or "Hello World..."
    connection = Connection(args.url, reactor=reactor)
    try:
        # a durable queue and persistent messages: both are needed to outlive a restart
        await connection.declare(Queue.quorum(args.queue))
        await Producer(connection).publish("", args.queue, message, persistent=True)
        print(f" [x] Sent {message!r}")
    finally:
        await connection.stopService()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Queue one task.")
    parser.add_argument("--url", help="broker URL (default: $TXMSG_URL, else the local broker)")
    parser.add_argument("--queue", default="task_queue")
    parser.add_argument("words", nargs="*")
    task.react(main, [parser.parse_args()])
