"""
Tutorial 6, "RPC", the client: ask an RPC server for ``fib(n)`` and wait for the reply.

    python examples/tutorials/rpc_client.py [--queue rpc_queue] [--timeout 10] [N]
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import task

from txmsg import Connection, NoServer, RpcClient, RpcTimeout


async def main(reactor: Any, args: argparse.Namespace) -> None:
    connection = Connection(args.url, reactor=reactor)
    try:
        # replies come back on RabbitMQ's direct reply-to, matched to calls by correlation id
        client = RpcClient(connection)
        print(f" [x] Requesting fib({args.n})", flush=True)
        reply = await client.call(args.queue, str(args.n), timeout=args.timeout)
        print(f" [.] Got {int(reply)}")
    except (NoServer, RpcTimeout) as e:
        # NoServer: no queue is bound to the key; RpcTimeout: nobody answered in time
        print(f" [!] {e}")
        raise SystemExit(1) from None
    finally:
        await connection.stopService()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Call fib(n) on an RPC server.")
    parser.add_argument("--url", help="broker URL (default: $TXMSG_URL, else the local broker)")
    parser.add_argument("--queue", default="rpc_queue")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply")
    parser.add_argument("n", nargs="?", type=int, default=30)
    task.react(main, [parser.parse_args()])
