"""
pika's Twisted adapter (TwistedProtocolConnection), written the way its
documentation shows: Deferred-returning channel methods, basic_publish
returning a Deferred per confirm, a DeferredQueue of deliveries.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.common import (
    ACK_EVERY,
    PREFETCH,
    URL,
    body,
    cpu,
    depth_wait_twisted,
    run_twisted,
    scenario_table,
    sent_at,
)


async def _connect(reactor: Any) -> tuple[Any, Any]:
    import pika
    from pika.adapters.twisted_connection import TwistedProtocolConnection
    from twisted.internet import protocol

    params = pika.URLParameters(URL)
    creator = protocol.ClientCreator(reactor, TwistedProtocolConnection, params)
    conn = await creator.connectTCP(params.host, params.port)
    await conn.ready
    return conn, await conn.channel()


async def publish(reactor: Any, p: dict[str, Any], confirm: bool) -> dict[str, Any]:
    from twisted.internet.defer import DeferredList

    conn, ch = await _connect(reactor)
    queue, n = p["queue"], p["n"]
    data = b"x" * p["size"]
    if confirm:
        await ch.confirm_delivery()
    ch.basic_publish("", queue, b"warm-up")
    start, c0 = time.perf_counter(), cpu()
    if confirm:
        await DeferredList([ch.basic_publish("", queue, data) for _ in range(n)], fireOnOneErrback=True)
    else:
        for _ in range(n):
            ch.basic_publish("", queue, data)
    await depth_wait_twisted(reactor, queue, n + 1)
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    conn.close()
    return {"cpu": spent, "elapsed": elapsed}


async def _consume(ch: Any, queue: str, n: int, each: Any = None) -> None:
    await ch.basic_qos(prefetch_count=PREFETCH)
    queue_object, _tag = await ch.basic_consume(queue=queue, auto_ack=False)
    for i in range(1, n + 1):
        _ch, method, _props, data = await queue_object.get()
        if each is not None:
            each(data)
        if i % ACK_EVERY == 0 or i == n:
            ch.basic_ack(method.delivery_tag, multiple=True)


async def consume(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    conn, ch = await _connect(reactor)
    start, c0 = time.perf_counter(), cpu()
    await _consume(ch, p["queue"], p["n"])
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    conn.close()
    return {"cpu": spent, "elapsed": elapsed}


async def rpc_server(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    import pika

    conn, ch = await _connect(reactor)
    await ch.queue_declare(queue=p["queue"], durable=True)
    await ch.basic_qos(prefetch_count=PREFETCH)
    queue_object, _tag = await ch.basic_consume(queue=p["queue"], auto_ack=False)
    print("READY", flush=True)
    c0 = cpu()
    for _ in range(p["n"]):
        _ch, method, props, data = await queue_object.get()
        ch.basic_publish("", props.reply_to, data, pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.2, lambda: None)  # let the last reply leave first
    conn.close()
    return {"served": p["n"], "cpu": cpu() - c0}


async def rpc(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    import pika

    conn, ch = await _connect(reactor)
    result = await ch.queue_declare(queue="", exclusive=True)
    reply_to = result.method.queue
    replies, _tag = await ch.basic_consume(queue=reply_to, auto_ack=True)
    data = b"x" * p["size"]

    async def call() -> bytes:
        cid = uuid.uuid4().hex
        ch.basic_publish("", p["queue"], data, pika.BasicProperties(reply_to=reply_to, correlation_id=cid))
        while True:
            _ch, _method, props, answer = await replies.get()
            if props.correlation_id == cid:
                return bytes(answer)

    await call()
    start, c0 = time.perf_counter(), cpu()
    for _ in range(p["n"] - 1):
        await call()
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    conn.close()
    return {"cpu": spent, "elapsed": elapsed, "count": p["n"] - 1}


async def e2e_pub(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    conn, ch = await _connect(reactor)
    start, c0 = time.time(), cpu()
    for _ in range(p["n"]):
        ch.basic_publish("", p["queue"], body(p["size"]))
    await ch.queue_declare(queue=p["queue"], passive=True)  # a round trip: all written before it
    conn.close()
    return {"start": start, "cpu": cpu() - c0}


async def e2e_sub(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    conn, ch = await _connect(reactor)
    await ch.queue_declare(queue=p["queue"], durable=True)
    latencies: list[float] = []
    print("READY", flush=True)
    c0 = cpu()
    await _consume(ch, p["queue"], p["n"], lambda data: latencies.append(time.time() - sent_at(data)))
    end, spent = time.time(), cpu() - c0
    conn.close()
    return {"cpu": spent, "end": end, "latencies": latencies}


async def large(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    from twisted.internet.defer import DeferredList

    conn, ch = await _connect(reactor)
    await ch.confirm_delivery()
    data = b"x" * p["size"]
    start, c0 = time.perf_counter(), cpu()
    await DeferredList([ch.basic_publish("", p["queue"], data) for _ in range(p["n"])], fireOnOneErrback=True)
    await _consume(ch, p["queue"], p["n"])
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    conn.close()
    return {"cpu": spent, "elapsed": elapsed}


SCENARIOS = scenario_table(publish, consume, rpc_server, rpc, e2e_pub, e2e_sub, large)


def run(scenario: str, params: dict[str, Any]) -> dict[str, Any]:
    return run_twisted(lambda reactor: SCENARIOS[scenario](reactor, params))  # type: ignore[no-any-return]
