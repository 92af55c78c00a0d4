"""
pika's Twisted adapter (TwistedProtocolConnection), written the way its
documentation shows: Deferred-returning channel methods, basic_publish
returning a Deferred per confirm, a DeferredQueue of deliveries.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from twisted.internet.defer import ensureDeferred

from bench.common import (
    ACK_EVERY,
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
    await ch.basic_qos(prefetch_count=p["prefetch"])
    ack = p["ack"]
    queue_object, _tag = await ch.basic_consume(queue=p["queue"], auto_ack=not ack)
    print("READY", flush=True)
    c0 = cpu()
    for _ in range(p["n"]):
        _ch, method, props, data = await queue_object.get()
        ch.basic_publish("", props.reply_to, data, pika.BasicProperties(correlation_id=props.correlation_id))
        if ack:
            ch.basic_ack(method.delivery_tag)
    spent = cpu() - c0
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.2, lambda: None)  # let the last reply leave first
    conn.close()
    return {"served": p["n"], "cpu": spent}


async def rpc(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    import pika
    from twisted.internet.defer import Deferred

    conn, ch = await _connect(reactor)
    result = await ch.queue_declare(queue="", exclusive=True)
    reply_to = result.method.queue
    replies, _tag = await ch.basic_consume(queue=reply_to, auto_ack=True)
    queue = p["queue"]

    def send(data: bytes) -> str:
        cid = uuid.uuid4().hex
        ch.basic_publish("", queue, data, pika.BasicProperties(reply_to=reply_to, correlation_id=cid))
        return cid

    if p["inflight"] == 1:
        # the tutorial's loop: publish, then read replies until ours
        async def call(data: bytes) -> bytes:
            cid = send(data)
            while True:
                _ch, _method, props, answer = await replies.get()
                if props.correlation_id == cid:
                    return bytes(answer)

        figures = await calls_twisted(call, p)
        conn.close()
        return figures

    waiting: dict[str, Deferred[bytes]] = {}

    async def dispatch() -> None:
        # many calls in flight: one reader of the reply queue hands each reply to its caller
        while True:
            _ch, _method, props, answer = await replies.get()
            d = waiting.pop(props.correlation_id, None)
            if d is not None:
                d.callback(bytes(answer))

    reader = ensureDeferred(dispatch())
    reader.addErrback(lambda _: None)  # cancelled at the end

    def call_many(data: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        waiting[send(data)] = d
        return d

    figures = await calls_twisted(call_many, p)
    reader.cancel()
    conn.close()
    return figures


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
