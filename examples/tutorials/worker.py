"""
Tutorial 2, "Work Queues", the worker: take one task at a time, "work" one second
per dot in it, then ack.  Start several: each gets a new task only when it is free.

    python examples/tutorials/worker.py [--queue task_queue] [--delay 1.0] [--count N]
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from txmsg import Connection, Consumer, Message, Queue


async def main(reactor: Any, args: argparse.Namespace) -> None:
    connection = Connection(args.url, reactor=reactor)
    enough: Deferred[None] = Deferred()
    done = 0

    async def on_task(message: Message) -> None:
        nonlocal done
        print(f" [x] Received {message.text}", flush=True)
        await task.deferLater(reactor, message.text.count(".") * args.delay)
        print(f" [x] Done {message.text}", flush=True)
        done += 1
        if done == args.count:
            enough.callback(None)
        # returning acks the task; had this process died, the broker would give it to another worker

    # prefetch=1: the broker sends this worker no new task until it has acked the last one
    consumer = Consumer(connection, Queue.quorum(args.queue), on_task, prefetch=1)
    consumer.startService()
    reactor.addSystemEventTrigger("before", "shutdown", consumer.stopService)
    reactor.addSystemEventTrigger("before", "shutdown", connection.stopService)
    await consumer.when_ready()
    print(" [*] Waiting for tasks. To exit press CTRL+C", flush=True)
    await enough


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Work through the tasks of a queue.")
    parser.add_argument("--url", help="broker URL (default: $TXMSG_URL, else the local broker)")
    parser.add_argument("--queue", default="task_queue")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds of work per dot")
    parser.add_argument("--count", type=int, default=0, help="stop after N tasks (default: never)")
    task.react(main, [parser.parse_args()])
