"""
Peak memory of a txmsg process publishing (with confirms) or consuming many messages.

    python bench/memory.py [--messages 1000000] [--size 100] [--batch 1000] [--mode publish|consume|both]

publish: a loop that publishes --messages confirmed messages, waiting on a bounded batch
         of --batch Deferreds at a time (--batch 1 waits on each one).  The queue is
         declared with x-max-length so the broker drops old messages instead of holding
         gigabytes; confirms are unaffected.
consume: a backlog of --messages is put into a queue first (by txmsg, confirmed), then a
         fresh process consumes it all with the default prefetch and acks.

Each measurement runs in its own process and prints its peak RSS (getrusage), the RSS
right after start-up for reference, and the rate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from typing import Any

URL = os.environ.get("TXMSG_URL", "amqp://guest:guest@localhost:5672/%2F")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, queue: str, n: int, size: int, batch: int) -> None:
    from twisted.internet import task
    from twisted.internet.defer import DeferredList, ensureDeferred

    from txmsg import Connection, Consumer, Producer, Queue

    result: dict[str, float] = {}

    def main(reactor: Any) -> Any:
        async def go() -> None:
            conn = Connection(URL, reactor=reactor)
            limited = Queue(queue, arguments={"x-max-length": 10_000})
            backlog = Queue(queue)
            result["start_mb"] = rss_mb()
            body = b"x" * size
            start = time.perf_counter()
            progress_at = start
            if mode in ("publish", "fill"):
                await conn.declare(limited if mode == "publish" else backlog)
                producer = Producer(conn)
                sent = 0
                while sent < n:
                    k = min(batch, n - sent)
                    batch_ds = [producer.publish("", queue, body) for _ in range(k)]
                    await DeferredList(batch_ds, fireOnOneErrback=True)
                    sent += k
                    now = time.perf_counter()
                    if mode == "publish" and now - progress_at >= 5:
                        progress_at = now
                        print(f"  {sent:,}/{n:,} confirmed, peak RSS {rss_mb():.0f} MB", file=sys.stderr)
            else:
                from twisted.internet.defer import Deferred

                done: Deferred[None] = Deferred()
                count = [0]

                def handle(message: Any) -> None:
                    count[0] += 1
                    if count[0] == n:
                        done.callback(None)

                consumer = Consumer(conn, queue, handle)
                consumer.startService()
                await done
                await consumer.stopService()
            result["elapsed"] = time.perf_counter() - start
            result["peak_mb"] = rss_mb()
            await conn.stopService()
            print(json.dumps(result), flush=True)

        return ensureDeferred(go())

    task.react(main)


def run_child(mode: str, queue: str, n: int, size: int, batch: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, queue, str(n), str(size), str(batch)],
        stdout=subprocess.PIPE,
        text=True,
        timeout=3600,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{mode} child failed (exit {out.returncode})")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def delete_queue(queue: str) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(URL))
    conn.channel().queue_delete(queue)
    conn.close()


def report(mode: str, n: int, size: int, r: dict[str, float]) -> None:
    rate = n / r["elapsed"]
    print(
        f"{mode:8} {n:>10,} x {size:>6,} B  {rate:>9,.0f} msg/s  "
        f"peak RSS {r['peak_mb']:>6.0f} MB  (after start-up {r['start_mb']:.0f} MB)"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, mode, queue, n, size, batch = sys.argv
        child(mode, queue, int(n), int(size), int(batch))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--mode", choices=("publish", "consume", "both"), default="both")
    args = parser.parse_args()
    queue = f"txmsg-memory-{uuid.uuid4().hex[:8]}"
    try:
        if args.mode in ("publish", "both"):
            report(
                "publish",
                args.messages,
                args.size,
                run_child("publish", queue, args.messages, args.size, args.batch),
            )
            delete_queue(queue)
        if args.mode in ("consume", "both"):
            print(f"filling {queue} with {args.messages:,} messages ...", file=sys.stderr)
            run_child("fill", queue, args.messages, args.size, args.batch)
            report(
                "consume",
                args.messages,
                args.size,
                run_child("consume", queue, args.messages, args.size, args.batch),
            )
    finally:
        delete_queue(queue)


if __name__ == "__main__":
    main()
