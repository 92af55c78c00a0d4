"""
txmsg, as its users would write it: Producer (with or without confirms, paced
by its own backpressure), Consumer, RpcClient/RpcServer.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    PREFETCH,
    URL,
    body,
    calls_twisted,
    cpu,
    depth_wait_twisted,
    run_twisted,
    scenario_table,
    sent_at,
)


async def publish(reactor: Any, p: dict[str, Any], confirm: bool) -> dict[str, Any]:
    from twisted.internet.defer import DeferredList

    from txmsg import Connection, Producer

    conn = Connection(URL, reactor=reactor)
    producer = Producer(conn, confirm=confirm)
    await producer.when_ready()  # its channel is open: the first publish goes at once
    await producer.publish("", p["queue"], b"warm-up")
    n, size, queue = p["n"], p["size"], p["queue"]
    data = b"x" * size
    start, c0 = time.perf_counter(), cpu()
    if confirm:
        ds = []
        for _ in range(n):
            if producer.unconfirmed + producer.waiting >= producer.window:
                await producer.room()
            ds.append(producer.publish("", queue, data))
        await DeferredList(ds, fireOnOneErrback=True)
    else:
        for _ in range(n):
            d = producer.publish("", queue, data)
            if not d.called:
                await d
    await depth_wait_twisted(reactor, queue, n + 1)
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    await conn.stopService()
    return {"cpu": spent, "elapsed": elapsed}


async def _consume(conn: Any, queue: str, n: int) -> Any:
    """
    Consume C{n} messages from C{queue}; return the (running) consumer once they came.
    """
    from twisted.internet.defer import Deferred

    from txmsg import Consumer

    done: Deferred[None] = Deferred()
    count = 0

    def handle(message: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.callback(None)

    consumer = Consumer(conn, queue, handle, prefetch=PREFETCH)
    consumer.startService()
    await done
    return consumer


async def consume(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    from txmsg import Connection

    conn = Connection(URL, reactor=reactor)
    await conn.when_ready()
    start, c0 = time.perf_counter(), cpu()
    consumer = await _consume(conn, p["queue"], p["n"])
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    await consumer.stopService()
    await conn.stopService()
    return {"cpu": spent, "elapsed": elapsed}


async def rpc_server(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    from twisted.internet.defer import Deferred

    from txmsg import Connection, Queue, RpcServer

    conn = Connection(URL, reactor=reactor)
    done: Deferred[None] = Deferred()
    served = 0

    def echo(message: Any) -> bytes:
        nonlocal served
        served += 1
        if served == p["n"]:
            reactor.callLater(0.2, done.callback, None)
        return bytes(message.body)

    # "ack": its defaults (acks, the default prefetch); else consuming without acks
    if p["ack"]:
        server = RpcServer(conn, Queue(p["queue"]), echo)
    else:
        server = RpcServer(conn, Queue(p["queue"]), echo, prefetch=p["prefetch"], auto_ack=True)
    server.startService()
    await server.when_ready()
    print("READY", flush=True)
    c0 = cpu()
    await done
    spent = cpu() - c0
    await server.stopService()
    await conn.stopService()
    return {"served": served, "cpu": spent}


async def rpc(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    from txmsg import Connection, RpcClient

    conn = Connection(URL, reactor=reactor)
    # An exclusive reply queue, as the other clients' RPC (RabbitMQ's tutorial):
    # RabbitMQ 3.10 spends about 10 us more per call on direct reply-to.
    if p["defaults"]:
        client = RpcClient(conn, reply_queue=True)
    else:
        client = RpcClient(conn, reply_queue=True, mandatory=False, expire=False)
    await client.when_ready()
    queue = p["queue"]
    result = await calls_twisted(lambda data: client.call(queue, data, timeout=30), p)
    await conn.stopService()
    return result


async def e2e_pub(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    from twisted.internet.task import deferLater

    from txmsg import Connection, Producer

    conn = Connection(URL, reactor=reactor)
    producer = Producer(conn, confirm=False)
    await producer.when_ready()  # its channel is open: the first publish goes at once
    await producer.publish("", p["queue"], body(p["size"]))
    start, c0 = time.time(), cpu()
    rate, n, sent = p.get("rate"), p["n"], 1
    while sent < n:
        # at most `rate` messages a second when paced (bench.run's e2e at a peer's rate)
        due = n if not rate else min(n, int((time.time() - start) * rate) + 1)
        while sent < due:
            d = producer.publish("", p["queue"], body(p["size"]))
            sent += 1
            if not d.called:
                await d
        if sent < n:
            await deferLater(reactor, 0.002, lambda: None)
    await conn.stopService()
    return {"start": start, "cpu": cpu() - c0}


async def e2e_sub(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    from twisted.internet.defer import Deferred

    from txmsg import Connection, Consumer, Queue

    conn = Connection(URL, reactor=reactor)
    n = p["n"]
    latencies: list[float] = []
    done: Deferred[None] = Deferred()

    def handle(message: Any) -> None:
        latencies.append(time.time() - sent_at(message.body))
        if len(latencies) == n:
            done.callback(None)

    consumer = Consumer(conn, Queue(p["queue"]), handle, prefetch=PREFETCH)
    consumer.startService()
    await consumer.when_ready()
    print("READY", flush=True)
    c0 = cpu()
    await done
    end, spent = time.time(), cpu() - c0
    await consumer.stopService()
    await conn.stopService()
    return {"cpu": spent, "end": end, "latencies": latencies}


async def large(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    from twisted.internet.defer import DeferredList

    from txmsg import Connection, Producer

    conn = Connection(URL, reactor=reactor)
    producer = Producer(conn)
    await producer.when_ready()  # its channel is open: the first publish goes at once
    await producer.publish("", p["queue"], b"warm-up")
    data = b"x" * p["size"]
    start, c0 = time.perf_counter(), cpu()
    await DeferredList([producer.publish("", p["queue"], data) for _ in range(p["n"])], fireOnOneErrback=True)
    consumer = await _consume(conn, p["queue"], p["n"] + 1)  # the warm-up too
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    await consumer.stopService()
    await conn.stopService()
    return {"cpu": spent, "elapsed": elapsed}


SCENARIOS = scenario_table(publish, consume, rpc_server, rpc, e2e_pub, e2e_sub, large)


def run(scenario: str, params: dict[str, Any]) -> dict[str, Any]:
    return run_twisted(lambda reactor: SCENARIOS[scenario](reactor, params))  # type: ignore[no-any-return]
