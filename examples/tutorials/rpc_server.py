"""
Tutorial 6, "RPC", the server: answer ``fib(n)`` requests from a queue.  Start
several to share the load: each takes one request at a time.

    python examples/tutorials/rpc_server.py [--queue rpc_queue] [--count N]
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from txmsg import Connection, Message, Queue, RpcServer


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


async def main(reactor: Any, args: argparse.Namespace) -> None:
    connection = Connection(args.url, reactor=reactor)
    enough: Deferred[None] = Deferred()
    answered = 0

    def on_request(request: Message) -> str:
        nonlocal answered
        n = int(request.text)
        print(f" [.] fib({n})", flush=True)
        answered += 1
        if answered == args.count:
            enough.callback(None)  # the reply still goes out: the server stops after it
        # the return value is the reply, sent to the request's reply_to with its correlation_id
        return str(fib(n))

    server = RpcServer(connection, Queue.quorum(args.queue), on_request, prefetch=1)
    server.startService()
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.addSystemEventTrigger("before", "shutdown", connection.stopService)
    for consumer in server.consumers:
        await consumer.when_ready()
    print(" [x] Awaiting RPC requests", flush=True)
    await enough


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Answer fib(n) requests.")
    parser.add_argument("--url", help="broker URL (default: $TXMSG_URL, else the local broker)")
    parser.add_argument("--queue", default="rpc_queue")
    parser.add_argument("--count", type=int, default=0, help="stop after N requests (default: never)")
    task.react(main, [parser.parse_args()])
