"""
pika's BlockingConnection, as its tutorials use it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.common import ACK_EVERY, PREFETCH, URL, body, cpu, scenario_table, sent_at


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
    ch.basic_qos(prefetch_count=PREFETCH)
    print("READY", flush=True)
    c0 = cpu()
    served = 0
    for method, props, data in ch.consume(p["queue"], auto_ack=False):
        ch.basic_publish("", props.reply_to, data, pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)
        served += 1
        if served == p["n"]:
            break
    ch.cancel()
    conn.close()
    return {"served": served, "cpu": cpu() - c0}


def rpc(p: dict[str, Any]) -> dict[str, Any]:
    import pika

    conn, ch = _connect()
    reply_to = ch.queue_declare("", exclusive=True).method.queue
    answers: dict[str, bytes] = {}
    ch.basic_consume(
        reply_to, lambda _c, _m, props, data: answers.__setitem__(props.correlation_id, data), auto_ack=True
    )
    data = b"x" * p["size"]

    def call() -> bytes:
        cid = uuid.uuid4().hex
        ch.basic_publish("", p["queue"], data, pika.BasicProperties(reply_to=reply_to, correlation_id=cid))
        while cid not in answers:
            conn.process_data_events(time_limit=None)
        return answers.pop(cid)

    call()
    start, c0 = time.perf_counter(), cpu()
    for _ in range(p["n"] - 1):
        call()
    elapsed, spent = time.perf_counter() - start, cpu() - c0
    conn.close()
    return {"cpu": spent, "elapsed": elapsed, "count": p["n"] - 1}


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
