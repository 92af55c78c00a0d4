"""
pika's BlockingConnection, as its tutorials use it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.common import (
    ACK_EVERY,
    PREFETCH,
    URL,
    WARMUP,
    body,
    check,
    cpu,
    request,
    rpc_result,
    scenario_table,
    sent_at,
)


def _connect() -> tuple[Any, Any]:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(URL))
    return conn, conn.channel()


def _wait_depth(ch: Any, queue: str, n: int) -> None:
    while ch.queue_declare(queue, passive=True).method.message_count < n:
        time.sleep(0.005)


def publish(p: dict[str, Any], confirm: bool) -> dict[str, Any]:
    conn, ch = _connect()
    queue, n = p["queue"], p["n"]
    data = b"x" * p["size"]
    if confirm:
        ch.confirm_delivery()  # each publish then waits for its confirm: no pipelining in this API
    ch.basic_publish("", queue, b"warm-up")
    start, c0 = time.perf_counter(), cpu()
    for _ in range(n):
        ch.basic_publish("", queue, data)
    _wait_depth(ch, queue, n + 1)
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    conn.close()
    return {"cpu": spent, "elapsed": elapsed}


def _consume(ch: Any, queue: str, n: int, each: Any = None) -> None:
    ch.basic_qos(prefetch_count=PREFETCH)
    count = 0
    for method, _props, data in ch.consume(queue, auto_ack=False):
        count += 1
        if each is not None:
            each(data)
        if count % ACK_EVERY == 0 or count == n:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if count == n:
            break
    ch.cancel()


def consume(p: dict[str, Any]) -> dict[str, Any]:
    conn, ch = _connect()
    start, c0 = time.perf_counter(), cpu()
    _consume(ch, p["queue"], p["n"])
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    conn.close()
    return {"cpu": spent, "elapsed": elapsed}


def rpc_server(p: dict[str, Any]) -> dict[str, Any]:
    import pika

    conn, ch = _connect()
    ch.queue_declare(p["queue"], durable=True)
    ch.basic_qos(prefetch_count=p["prefetch"])
    ack = p["ack"]
    print("READY", flush=True)
    c0 = cpu()
    served = 0
    for method, props, data in ch.consume(p["queue"], auto_ack=not ack):
        ch.basic_publish("", props.reply_to, data, pika.BasicProperties(correlation_id=props.correlation_id))
        if ack:
            ch.basic_ack(method.delivery_tag)
        served += 1
        if served == p["n"]:
            break
    spent = cpu() - c0
    ch.cancel()
    conn.close()
    return {"served": served, "cpu": spent}


def rpc(p: dict[str, Any]) -> dict[str, Any]:
    import pika

    conn, ch = _connect()
    reply_to = ch.queue_declare("", exclusive=True).method.queue
    queue, size = p["queue"], p["size"]
    # correlation id -> (request, time sent); a reply settles its call
    waiting: dict[str, tuple[bytes, float]] = {}
    latencies: list[float] = []
    clock = time.perf_counter
    numbers = iter(range(WARMUP + p["n"]))
    timed = False

    def send() -> None:
        i = next(numbers, None)
        if i is None:
            return
        cid = uuid.uuid4().hex
        data = request(i, size)
        waiting[cid] = (data, clock())
        ch.basic_publish("", queue, data, pika.BasicProperties(reply_to=reply_to, correlation_id=cid))

    def on_reply(_c: Any, _m: Any, props: Any, answer: bytes) -> None:
        call = waiting.pop(props.correlation_id, None)
        if call is None:
            return
        check(answer, call[0])
        if timed:
            latencies.append(clock() - call[1])
            send()  # this caller's next call

    ch.basic_consume(reply_to, on_reply, auto_ack=True)
    for _ in range(WARMUP):  # one at a time, as the tutorial's client calls
        send()
        while waiting:
            conn.process_data_events(time_limit=None)
    timed = True
    start, c0 = clock(), cpu()
    for _ in range(p["inflight"]):
        send()
    while waiting:
        conn.process_data_events(time_limit=None)
    result = rpc_result(latencies, clock() - start, cpu() - c0)
    conn.close()
    return result


def e2e_pub(p: dict[str, Any]) -> dict[str, Any]:
    conn, ch = _connect()
    start, c0 = time.time(), cpu()
    for _ in range(p["n"]):
        ch.basic_publish("", p["queue"], body(p["size"]))
    conn.close()
    return {"start": start, "cpu": cpu() - c0}


def e2e_sub(p: dict[str, Any]) -> dict[str, Any]:
    conn, ch = _connect()
    ch.queue_declare(p["queue"], durable=True)
    latencies: list[float] = []
    print("READY", flush=True)
    c0 = cpu()
    _consume(ch, p["queue"], p["n"], lambda data: latencies.append(time.time() - sent_at(data)))
    end, spent = time.time(), cpu() - c0
    conn.close()
    return {"cpu": spent, "end": end, "latencies": latencies}


def large(p: dict[str, Any]) -> dict[str, Any]:
    conn, ch = _connect()
    ch.confirm_delivery()
    data = b"x" * p["size"]
    start, c0 = time.perf_counter(), cpu()
    for _ in range(p["n"]):
        ch.basic_publish("", p["queue"], data)
    _consume(ch, p["queue"], p["n"])
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    conn.close()
    return {"cpu": spent, "elapsed": elapsed}


SCENARIOS = scenario_table(publish, consume, rpc_server, rpc, e2e_pub, e2e_sub, large)


def run(scenario: str, params: dict[str, Any]) -> dict[str, Any]:
    return SCENARIOS[scenario](params)  # type: ignore[no-any-return]
