"""
Raw txAMQP (what txmsg is built on), as its own examples use it: AMQClient
with the TwistedDelegate, channel methods as Deferreds, a TimeoutDeferredQueue
per consumer tag; confirms through a delegate that handles basic.ack.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

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

SPEC = Path(__file__).resolve().parents[2] / "amqp0-9-1.xml"


async def _connect(reactor: Any, on_ack: Any = None) -> tuple[Any, Any]:
    import txamqp.spec
    from twisted.internet.protocol import ClientCreator
    from txamqp.client import TwistedDelegate
    from txamqp.protocol import AMQClient

    class Delegate(TwistedDelegate):  # type: ignore[misc]
        def basic_ack(self, ch: Any, msg: Any) -> None:
            if on_ack is not None:
                on_ack(msg.delivery_tag, msg.multiple)

    url = urlparse(URL)
    vhost = unquote(url.path[1:]) if url.path not in ("", "/") else "/"
    spec = txamqp.spec.load(str(SPEC))
    creator = ClientCreator(reactor, AMQClient, delegate=Delegate(), vhost=vhost, spec=spec)
    conn = await creator.connectTCP(url.hostname or "localhost", url.port or 5672)
    await conn.authenticate(
        unquote(url.username or "guest"), unquote(url.password or "guest"), mechanism="PLAIN"
    )
    ch = await conn.channel(1)
    await ch.channel_open()
    return conn, ch


def _raw(body: Any) -> bytes:
    # txAMQP hands some bodies over as str (read through a StringIO)
    return body.encode("latin-1") if isinstance(body, str) else bytes(body)


async def _close(conn: Any) -> None:
    chan0 = await conn.channel(0)
    await chan0.connection_close()


async def publish(reactor: Any, p: dict[str, Any], confirm: bool) -> dict[str, Any]:
    from twisted.internet.defer import Deferred
    from txamqp.content import Content

    n, queue = p["n"], p["queue"]
    acked: Deferred[None] = Deferred()
    total = n + 1

    def on_ack(tag: int, multiple: bool) -> None:
        if tag >= total and not acked.called:
            acked.callback(None)

    conn, ch = await _connect(reactor, on_ack)
    if confirm:
        await ch.confirm_select()
    data = b"x" * p["size"]
    ch.basic_publish(exchange="", routing_key=queue, content=Content(b"warm-up"))
    start, c0 = time.perf_counter(), cpu()
    for _ in range(n):
        ch.basic_publish(exchange="", routing_key=queue, content=Content(data))
    if confirm:
        await acked
    await depth_wait_twisted(reactor, queue, total)
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    await _close(conn)
    return {"cpu": spent, "elapsed": elapsed}


async def _consume(conn: Any, ch: Any, queue: str, n: int, each: Any = None) -> None:
    await ch.basic_qos(prefetch_count=PREFETCH)
    reply = await ch.basic_consume(queue=queue, no_ack=False)
    deliveries = await conn.queue(reply.consumer_tag)
    for i in range(1, n + 1):
        msg = await deliveries.get()
        if each is not None:
            each(msg.content.body)
        if i % ACK_EVERY == 0 or i == n:
            ch.basic_ack(delivery_tag=msg.delivery_tag, multiple=True)


async def consume(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    conn, ch = await _connect(reactor)
    start, c0 = time.perf_counter(), cpu()
    await _consume(conn, ch, p["queue"], p["n"])
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    await _close(conn)
    return {"cpu": spent, "elapsed": elapsed}


async def rpc_server(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    from txamqp.content import Content

    conn, ch = await _connect(reactor)
    await ch.queue_declare(queue=p["queue"], durable=True)
    await ch.basic_qos(prefetch_count=p["prefetch"])
    ack = p["ack"]
    reply = await ch.basic_consume(queue=p["queue"], no_ack=not ack)
    deliveries = await conn.queue(reply.consumer_tag)
    print("READY", flush=True)
    c0 = cpu()
    for _ in range(p["n"]):
        msg = await deliveries.get()
        answer = Content(msg.content.body, properties={"correlation-id": msg.content["correlation-id"]})
        ch.basic_publish(exchange="", routing_key=msg.content["reply-to"], content=answer)
        if ack:
            ch.basic_ack(delivery_tag=msg.delivery_tag)
    spent = cpu() - c0
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.2, lambda: None)  # let the last reply leave first
    await _close(conn)
    return {"served": p["n"], "cpu": spent}


async def rpc(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    from twisted.internet.defer import Deferred, ensureDeferred
    from txamqp.content import Content

    conn, ch = await _connect(reactor)
    reply_to = (await ch.queue_declare(queue="", exclusive=True)).queue
    reply = await ch.basic_consume(queue=reply_to, no_ack=True)
    replies = await conn.queue(reply.consumer_tag)
    queue = p["queue"]

    def send(data: bytes) -> str:
        cid = uuid.uuid4().hex
        request = Content(data, properties={"reply-to": reply_to, "correlation-id": cid})
        ch.basic_publish(exchange="", routing_key=queue, content=request)
        return cid

    if p["inflight"] == 1:

        async def call(data: bytes) -> bytes:
            cid = send(data)
            while True:
                msg = await replies.get()
                if msg.content["correlation-id"] == cid:
                    return _raw(msg.content.body)

        result = await calls_twisted(call, p)
        await _close(conn)
        return result

    waiting: dict[str, Deferred[bytes]] = {}

    async def dispatch() -> None:
        # many calls in flight: one reader of the reply queue hands each reply to its caller
        while True:
            msg = await replies.get()
            d = waiting.pop(msg.content["correlation-id"], None)
            if d is not None:
                d.callback(_raw(msg.content.body))

    reader = ensureDeferred(dispatch())
    reader.addErrback(lambda _: None)  # cancelled at the end

    def call_many(data: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        waiting[send(data)] = d
        return d

    result = await calls_twisted(call_many, p)
    reader.cancel()
    await _close(conn)
    return result


async def e2e_pub(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    from txamqp.content import Content

    conn, ch = await _connect(reactor)
    start, c0 = time.time(), cpu()
    for _ in range(p["n"]):
        ch.basic_publish(exchange="", routing_key=p["queue"], content=Content(body(p["size"])))
    await ch.queue_declare(queue=p["queue"], passive=True)  # a round trip: all written before it
    await _close(conn)
    return {"start": start, "cpu": cpu() - c0}


async def e2e_sub(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    conn, ch = await _connect(reactor)
    await ch.queue_declare(queue=p["queue"], durable=True)
    latencies: list[float] = []
    print("READY", flush=True)
    c0 = cpu()
    await _consume(conn, ch, p["queue"], p["n"], lambda data: latencies.append(time.time() - sent_at(data)))
    end, spent = time.time(), cpu() - c0
    await _close(conn)
    return {"cpu": spent, "end": end, "latencies": latencies}


async def large(reactor: Any, p: dict[str, Any]) -> dict[str, Any]:
    from twisted.internet.defer import Deferred
    from txamqp.content import Content

    acked: Deferred[None] = Deferred()

    def on_ack(tag: int, multiple: bool) -> None:
        if tag >= p["n"] and not acked.called:
            acked.callback(None)

    conn, ch = await _connect(reactor, on_ack)
    await ch.confirm_select()
    data = b"x" * p["size"]
    start, c0 = time.perf_counter(), cpu()
    for _ in range(p["n"]):
        ch.basic_publish(exchange="", routing_key=p["queue"], content=Content(data))
    await acked
    await _consume(conn, ch, p["queue"], p["n"])
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    await _close(conn)
    return {"cpu": spent, "elapsed": elapsed}


SCENARIOS = scenario_table(publish, consume, rpc_server, rpc, e2e_pub, e2e_sub, large)


def run(scenario: str, params: dict[str, Any]) -> dict[str, Any]:
    return run_twisted(lambda reactor: SCENARIOS[scenario](reactor, params))  # type: ignore[no-any-return]
