"""
A quick side-by-side benchmark: txmsg and pika's Twisted adapter on the same broker.

    python bench/quick.py [--messages 20000] [--rounds 3] [--size 100]

Each (client, scenario) runs in a fresh process; rounds are interleaved so that
both clients see the same broker conditions.  Reports the median rate and the
client's CPU time per message, and txmsg's ratio to pika.

Scenarios:
  publish   N messages without confirms, then one round trip so the broker has them all
  confirm   N messages with publisher confirms, pipelined (all in flight at once)
  consume   N messages from a pre-filled queue, prefetch 1000, manual acks
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

URL = os.environ.get("TXMSG_URL", "amqp://guest:guest@localhost:5672/%2F")
SCENARIOS = ("publish", "confirm", "consume")
CLIENTS = ("txmsg", "pika-twisted")


def fill_queue(queue: str, n: int, size: int) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    ch.queue_declare(queue)
    body = b"x" * size
    for _ in range(n):
        ch.basic_publish("", queue, body)
    ch.queue_declare(queue, passive=True)
    conn.close()


def delete_queue(queue: str) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(URL))
    conn.channel().queue_delete(queue)
    conn.close()


# ---------------------------------------------------------------------------
# txmsg


def run_txmsg(reactor: Any, scenario: str, queue: str, n: int, size: int) -> Any:
    from twisted.internet.defer import Deferred, DeferredList, ensureDeferred

    from txmsg import Connection, Consumer, Producer, Queue

    async def go() -> float:
        conn = Connection(URL, reactor=reactor)
        await conn.declare(Queue(queue))
        body = b"x" * size
        if scenario == "publish":
            channel = await conn.channel()
            start = time.perf_counter()
            for _ in range(n):
                channel.publish("", queue, body, {})
            await channel.call("queue.declare", queue=queue, passive=True)
        elif scenario == "confirm":
            producer = Producer(conn)
            await producer.publish("", queue, b"warm-up")
            start = time.perf_counter()
            await DeferredList([producer.publish("", queue, body) for _ in range(n)], fireOnOneErrback=True)
        else:
            done: Deferred[None] = Deferred()
            count = [0]

            def handle(message: Any) -> None:
                count[0] += 1
                if count[0] == n:
                    done.callback(None)

            start = time.perf_counter()
            Consumer(conn, queue, handle, prefetch=1000).startService()
            await done
        elapsed = time.perf_counter() - start
        await conn.stopService()
        return elapsed

    return ensureDeferred(go())


# ---------------------------------------------------------------------------
# pika's Twisted adapter


def run_pika(reactor: Any, scenario: str, queue: str, n: int, size: int) -> Any:
    import pika
    from pika.adapters.twisted_connection import TwistedProtocolConnection
    from twisted.internet import protocol
    from twisted.internet.defer import DeferredList, ensureDeferred

    async def go() -> float:
        params = pika.URLParameters(URL)
        creator = protocol.ClientCreator(reactor, TwistedProtocolConnection, params)
        conn = await creator.connectTCP(params.host, params.port)
        await conn.ready
        ch = await conn.channel()
        await ch.queue_declare(queue=queue)
        body = b"x" * size
        if scenario == "publish":
            start = time.perf_counter()
            for _ in range(n):
                ch.basic_publish("", queue, body)
            await ch.queue_declare(queue=queue, passive=True)
        elif scenario == "confirm":
            await ch.confirm_delivery()
            await ch.basic_publish("", queue, b"warm-up")
            start = time.perf_counter()
            await DeferredList([ch.basic_publish("", queue, body) for _ in range(n)], fireOnOneErrback=True)
        else:
            await ch.basic_qos(prefetch_count=1000)
            start = time.perf_counter()
            queue_object, _tag = await ch.basic_consume(queue=queue, auto_ack=False)
            for _ in range(n):
                _ch, method, _props, _body = await queue_object.get()
                ch.basic_ack(method.delivery_tag)
        elapsed = time.perf_counter() - start
        conn.close()
        return elapsed

    return ensureDeferred(go())


def child(client: str, scenario: str, queue: str, n: int, size: int) -> None:
    from twisted.internet import reactor, task

    runner = run_txmsg if client == "txmsg" else run_pika
    result: dict[str, float] = {}

    def main(r: Any) -> Any:
        before = resource.getrusage(resource.RUSAGE_SELF)

        def done(elapsed: float) -> None:
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            result.update(elapsed=elapsed, cpu=cpu, maxrss_mb=after.ru_maxrss / 1024)

        return runner(r, scenario, queue, n, size).addCallback(done)

    try:
        task.react(main)
    finally:
        print(json.dumps(result))
    del reactor


def measure(client: str, scenario: str, n: int, size: int) -> dict[str, float]:
    queue = f"txmsg-bench-{uuid.uuid4().hex[:8]}"
    if scenario == "consume":
        fill_queue(queue, n, size)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", client, scenario, queue, str(n), str(size)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if not lines or lines[-1] == "{}":
            raise RuntimeError(f"{client} {scenario} failed:\n{out.stdout}\n{out.stderr}")
        return json.loads(lines[-1])  # type: ignore[no-any-return]
    finally:
        delete_queue(queue)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, client, scenario, queue, n, size = sys.argv
        child(client, scenario, queue, int(n), int(size))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for rnd in range(args.rounds):
        for scenario in scenarios:
            for client in CLIENTS if rnd % 2 == 0 else reversed(CLIENTS):
                r = measure(client, scenario, args.messages, args.size)
                results.setdefault((client, scenario), []).append(r)
                print(
                    f"round {rnd + 1} {scenario:8} {client:13} {args.messages / r['elapsed']:>9,.0f} msg/s",
                    file=sys.stderr,
                )
    print(f"\n{args.messages} messages of {args.size} bytes, median of {args.rounds} interleaved rounds")
    print(f"{'scenario':10}{'client':15}{'msg/s':>10}{'CPU us/msg':>12}{'max RSS MB':>12}")
    for scenario in scenarios:
        rates = {}
        for client in CLIENTS:
            rs = results[(client, scenario)]
            rate = statistics.median(args.messages / r["elapsed"] for r in rs)
            cpu = statistics.median(r["cpu"] for r in rs) / args.messages * 1e6
            rss = max(r["maxrss_mb"] for r in rs)
            rates[client] = rate
            print(f"{scenario:10}{client:15}{rate:>10,.0f}{cpu:>12.1f}{rss:>12.0f}")
        print(f"{'':10}{'txmsg / pika':15}{rates['txmsg'] / rates['pika-twisted']:>10.2f}x")


if __name__ == "__main__":
    main()
