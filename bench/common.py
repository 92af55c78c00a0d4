"""
What every benchmark client shares: the broker URL, message bodies that
carry their send time, and broker set-up through pika's blocking connection
(outside the timed part, the same for every client).
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

URL = os.environ.get("TXMSG_URL", "amqp://guest:guest@localhost:5672/%2F")
#: consume: acknowledge every this many messages (multiple=True), for every client
ACK_EVERY = 100
PREFETCH = 1000
#: RPC: calls made (and checked) before the timed ones
WARMUP = 20
_STAMP = struct.Struct("!d")


def body(size: int) -> bytes:
    """
    A body of C{size} bytes (at least 8) that starts with the time it is made.
    """
    return _STAMP.pack(time.time()) + b"x" * max(0, size - _STAMP.size)


def sent_at(data: bytes) -> float:
    return float(_STAMP.unpack_from(data)[0])


def _blocking() -> Any:
    import pika

    return pika.BlockingConnection(pika.URLParameters(URL))


def declare(queue: str) -> None:
    conn = _blocking()
    conn.channel().queue_declare(queue, durable=True)
    conn.close()


def fill(queue: str, n: int, size: int) -> None:
    conn = _blocking()
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    data = b"x" * size
    for _ in range(n):
        ch.basic_publish("", queue, data)
    while ch.queue_declare(queue, passive=True).method.message_count < n:
        time.sleep(0.01)
    conn.close()


def depth(queue: str) -> int:
    conn = _blocking()
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


def delete(queue: str) -> None:
    conn = _blocking()
    conn.channel().queue_delete(queue)
    conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_twisted(main: Any) -> Any:
    """
    Run C{main(reactor)} (a coroutine function) on the global reactor to its
    end and return its result (or raise its exception).
    """
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.python.failure import Failure

    outcome: list[Any] = []

    def start() -> None:
        d = ensureDeferred(main(reactor))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


async def depth_wait_twisted(reactor: Any, queue: str, n: int) -> None:
    """
    Wait (without blocking the reactor, which may still be writing) until the
    broker holds C{n} messages in C{queue}.
    """
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThread

    while await deferToThread(depth, queue) < n:
        await deferLater(reactor, 0.005, lambda: None)


async def depth_wait_asyncio(queue: str, n: int) -> None:
    import asyncio

    while await asyncio.to_thread(depth, queue) < n:
        await asyncio.sleep(0.005)


def cpu() -> float:
    """
    CPU seconds this process has used (user + system).
    """
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def request(i: int, size: int) -> bytes:
    """
    RPC request number C{i}: C{size} bytes (at least 8), unique to it, so that
    the reply can be checked against it.
    """
    return b"%08d" % i + b"x" * max(0, size - 8)


def check(answer: bytes, sent: bytes) -> None:
    if bytes(answer) != sent:
        raise AssertionError(f"the reply {bytes(answer[:12])!r}... is not the request {sent[:12]!r}...")


def rpc_result(latencies: list[float], elapsed: float, spent: float) -> dict[str, Any]:
    return {"cpu": spent, "elapsed": elapsed, "count": len(latencies), "latencies": latencies}


async def _calls(call: Any, p: dict[str, Any], gather: Any) -> dict[str, Any]:
    """
    L{WARMUP} calls one at a time, then C{p["n"]} timed ones from
    C{p["inflight"]} callers at once (C{gather} runs their coroutines
    together on the client's event loop), each waiting for its reply before
    its next call; C{call(body)} returns an awaitable of the reply's body,
    which must be the request's.  Every call's latency is kept, and the
    timed part's CPU.
    """
    size = p["size"]
    for i in range(WARMUP):
        data = request(i, size)
        check(await call(data), data)
    n, inflight = p["n"], p.get("inflight", 1)
    numbers = iter(range(WARMUP, WARMUP + n))
    latencies: list[float] = []
    clock = time.perf_counter

    async def caller() -> None:
        for i in numbers:
            data = request(i, size)
            t0 = clock()
            answer = await call(data)
            latencies.append(clock() - t0)
            check(answer, data)

    start, c0 = clock(), cpu()
    if inflight == 1:
        await caller()
    else:
        await gather([caller() for _ in range(inflight)])
    return rpc_result(latencies, clock() - start, cpu() - c0)


async def calls_twisted(call: Any, p: dict[str, Any]) -> dict[str, Any]:
    """
    An RPC client's calls on Twisted (see L{_calls}).
    """
    from twisted.internet.defer import ensureDeferred, gatherResults

    return await _calls(
        call, p, lambda callers: gatherResults([ensureDeferred(c) for c in callers], consumeErrors=True)
    )


async def calls_asyncio(call: Any, p: dict[str, Any]) -> dict[str, Any]:
    """
    An RPC client's calls on asyncio (see L{_calls}).
    """
    import asyncio

    return await _calls(call, p, lambda callers: asyncio.gather(*callers))


def scenario_table(
    publish: Any, consume: Any, rpc_server: Any, rpc: Any, e2e_pub: Any, e2e_sub: Any, large: Any
) -> dict[str, Any]:
    """
    A client's functions by scenario name (the Twisted clients' take the
    reactor first, the others only the parameters).
    """
    return {
        "publish": lambda *args: publish(*args, confirm=False),
        "confirm": lambda *args: publish(*args, confirm=True),
        "consume": consume,
        "rpc-server": rpc_server,
        "rpc": rpc,
        "e2e-pub": e2e_pub,
        "e2e-sub": e2e_sub,
        "large": large,
    }
