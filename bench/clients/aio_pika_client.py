"""
aio-pika on asyncio, as its documentation shows it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from bench.common import (
    ACK_EVERY,
    PREFETCH,
    URL,
    body,
    calls_asyncio,
    cpu,
    depth_wait_asyncio,
    scenario_table,
    sent_at,
)


async def _connect(confirms: bool = True) -> tuple[Any, Any]:
    import aio_pika

    conn = await aio_pika.connect(URL)
    return conn, await conn.channel(publisher_confirms=confirms)


async def publish(p: dict[str, Any], confirm: bool) -> dict[str, Any]:
    import aio_pika

    conn, ch = await _connect(confirm)
    queue, n = p["queue"], p["n"]
    data = b"x" * p["size"]
    ex = ch.default_exchange
    await ex.publish(aio_pika.Message(b"warm-up"), routing_key=queue)
    start, c0 = time.perf_counter(), cpu()
    if confirm:
        await asyncio.gather(*[ex.publish(aio_pika.Message(data), routing_key=queue) for _ in range(n)])
    else:
        for _ in range(n):
            await ex.publish(aio_pika.Message(data), routing_key=queue)
    await depth_wait_asyncio(queue, n + 1)
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    await conn.close()
    return {"cpu": spent, "elapsed": elapsed}


async def _consume(ch: Any, queue_name: str, n: int, each: Any = None) -> None:
    await ch.set_qos(prefetch_count=PREFETCH)
    queue = await ch.get_queue(queue_name, ensure=False)
    count = 0
    async with queue.iterator() as messages:
        async for message in messages:
            count += 1
            if each is not None:
                each(message.body)
            if count % ACK_EVERY == 0 or count == n:
                await message.ack(multiple=True)
            if count == n:
                break


async def consume(p: dict[str, Any]) -> dict[str, Any]:
    conn, ch = await _connect()
    start, c0 = time.perf_counter(), cpu()
    await _consume(ch, p["queue"], p["n"])
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    await conn.close()
    return {"cpu": spent, "elapsed": elapsed}


async def rpc_server(p: dict[str, Any]) -> dict[str, Any]:
    import aio_pika

    conn, ch = await _connect(confirms=False)
    queue = await ch.declare_queue(p["queue"], durable=True)
    await ch.set_qos(prefetch_count=p["prefetch"])
    ack = p["ack"]
    print("READY", flush=True)
    c0 = cpu()
    served = 0
    async with queue.iterator(no_ack=not ack) as messages:
        async for message in messages:
            await ch.default_exchange.publish(
                aio_pika.Message(message.body, correlation_id=message.correlation_id),
                routing_key=message.reply_to,
            )
            if ack:
                await message.ack()
            served += 1
            if served == p["n"]:
                break
    spent = cpu() - c0
    await conn.close()
    return {"served": served, "cpu": spent}


async def rpc(p: dict[str, Any]) -> dict[str, Any]:
    import aio_pika

    conn, ch = await _connect(confirms=False)
    callback_queue = await ch.declare_queue(exclusive=True)
    futures: dict[str, asyncio.Future[bytes]] = {}

    async def on_reply(message: Any) -> None:
        future = futures.pop(message.correlation_id, None)
        if future is not None:
            future.set_result(message.body)

    await callback_queue.consume(on_reply, no_ack=True)
    loop = asyncio.get_running_loop()
    exchange, queue = ch.default_exchange, p["queue"]

    async def call(data: bytes) -> bytes:
        cid = uuid.uuid4().hex
        future = futures[cid] = loop.create_future()
        await exchange.publish(
            aio_pika.Message(data, correlation_id=cid, reply_to=callback_queue.name), routing_key=queue
        )
        return await future

    result = await calls_asyncio(call, p)
    await conn.close()
    return result


async def e2e_pub(p: dict[str, Any]) -> dict[str, Any]:
    import aio_pika

    conn, ch = await _connect(confirms=False)
    start, c0 = time.time(), cpu()
    for _ in range(p["n"]):
        await ch.default_exchange.publish(aio_pika.Message(body(p["size"])), routing_key=p["queue"])
    await conn.close()
    return {"start": start, "cpu": cpu() - c0}


async def e2e_sub(p: dict[str, Any]) -> dict[str, Any]:
    conn, ch = await _connect()
    await ch.declare_queue(p["queue"], durable=True)
    latencies: list[float] = []
    print("READY", flush=True)
    c0 = cpu()
    await _consume(ch, p["queue"], p["n"], lambda data: latencies.append(time.time() - sent_at(data)))
    end, spent = time.time(), cpu() - c0
    await conn.close()
    return {"cpu": spent, "end": end, "latencies": latencies}


async def large(p: dict[str, Any]) -> dict[str, Any]:
    import aio_pika

    conn, ch = await _connect()
    data = b"x" * p["size"]
    start, c0 = time.perf_counter(), cpu()
    await asyncio.gather(
        *[ch.default_exchange.publish(aio_pika.Message(data), routing_key=p["queue"]) for _ in range(p["n"])]
    )
    await _consume(ch, p["queue"], p["n"])
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    await conn.close()
    return {"cpu": spent, "elapsed": elapsed}


SCENARIOS = scenario_table(publish, consume, rpc_server, rpc, e2e_pub, e2e_sub, large)


def run(scenario: str, params: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(SCENARIOS[scenario](params))  # type: ignore[no-any-return]
