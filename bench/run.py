"""
txmsg against the other Python AMQP clients, side by side on one broker.

    python -m bench.run [--rounds 5] [--messages 20000] [--clients txmsg,pika-twisted,...]
                        [--scenarios publish,confirm,...] [--ceiling] [--quick] [--json FILE]

(`make bench` installs the peers, the "bench" extra, and runs it.)  Every
(client, scenario) runs in a fresh process (bench/child.py); rounds are
interleaved and the client order turns each round, so every client sees the
same broker conditions.  Rules, the same for every client: a fresh queue per
run, deleted after; publishing is timed until the broker reports every
message queued; confirms are pipelined (except pika's blocking connection,
whose API waits for each); consumers use prefetch 1000 and ack every 100
messages with multiple=True (txmsg: its own batching, one multiple ack per
read); RPC against an echo server of the same library in another process,
each client with an exclusive server-named reply queue consumed without
acks, 20 warm-up calls, every request body unique and every reply checked
against it, client CPU per call (the server's beside it); end to end runs
publisher and consumer in separate processes and measures latency from a
timestamp in each body.  After the e2e rows, txmsg runs end to end again with
its publisher paced to the fastest other client's e2e throughput: its latency
at that peer's throughput.

Scenarios:
  publish      N messages, no confirms
  confirm      N messages with publisher confirms
  consume      N queued messages
  rpc          --rpc-calls round trips, one in flight; each server as fast as its
               library's docs make it: consuming with auto-ack (txmsg: auto_ack=True,
               requests without mandatory and expiration)
  rpc-tutorial the same, written as RabbitMQ's RPC tutorial: the server at prefetch 1
               acking each request after its reply (txmsg: its defaults)
  rpc-pipelined 5 x --rpc-calls round trips from 100 callers at once on one
               connection (a web handler fanning out), servers as in "rpc"
  e2e          N messages from a publisher process to a consumer process: msg/s, p50/p99 latency
  consume-10k  N/2 queued 10 KB messages
  publish-10k  N/2 10 KB messages, no confirms: the publisher's peak memory
  large-1m     --large-count 1 MB messages confirmed, then consumed: MB/s
  large-16m    --large-count/16 16 MB messages, the same
  large-64m    --large-count/64 64 MB messages (at least 2), the same
  large-<N>m   any other size, the same (RabbitMQ's default limit is 128 MB)
With two sizes of large bodies or more, a line per client gives its MB/s at
each size and the largest size's over the smallest's: 1.00 is linear.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import common
from bench.child import CLIENTS

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = (
    "publish",
    "confirm",
    "consume",
    "rpc",
    "rpc-tutorial",
    "rpc-pipelined",
    "e2e",
    "consume-10k",
    "publish-10k",
    "large-1m",
    "large-16m",
    "large-64m",
)
MB = 1024 * 1024
_LARGE = re.compile(r"large-([1-9][0-9]*)m")


def large_mb(scenario: str) -> int | None:
    """
    The body size in MB of a C{large-<N>m} scenario, else L{None}.
    """
    match = _LARGE.fullmatch(scenario)
    return int(match.group(1)) if match else None


def unit(scenario: str) -> str:
    return "MB/s" if large_mb(scenario) else UNITS.get(scenario, "msg/s")


@dataclass
class Settings:
    messages: int = 20_000
    rpc_calls: int = 2_000
    large_count: int = 200
    huge_count: int = 2
    #: seconds one run may take before it counts as failed (a stuck peer must not stall the rest)
    timeout: float = 300


@dataclass
class Run:
    """
    One client's figures for one scenario in one round.
    """

    rate: float  # msg/s, calls/s or MB/s
    cpu_us: float  # client CPU per message (both processes for e2e)
    rss_mb: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    #: RPC: the server's CPU per call (cpu_us is the client's)
    server_cpu_us: float | None = None


#: the RPC scenarios: how the server consumes, how many calls are in flight,
#: whether txmsg runs with its defaults; calls per run, in --rpc-calls
RPC = {
    "rpc": {"ack": False, "prefetch": common.PREFETCH, "inflight": 1, "defaults": False, "scale": 1},
    "rpc-tutorial": {"ack": True, "prefetch": 1, "inflight": 1, "defaults": True, "scale": 1},
    "rpc-pipelined": {
        "ack": False,
        "prefetch": common.PREFETCH,
        "inflight": 100,
        "defaults": False,
        "scale": 5,
    },
}


@dataclass
class Child:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if line.strip() == "READY":
                return
        raise RuntimeError("the helper process did not get ready:\n" + "".join(self.lines) + self.errors())

    def errors(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        for line in (self.lines + out.splitlines())[::-1]:
            if line.startswith("RESULT "):
                return json.loads(line[7:])  # type: ignore[no-any-return]
        raise RuntimeError(f"no result (exit {self.proc.returncode}):\n{out}\n{err}")


def start(client: str, scenario: str, params: dict[str, Any]) -> Child:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.child", client, scenario, json.dumps(params)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Child(proc)


def fresh_queue() -> str:
    return f"txmsg-bench-{uuid.uuid4().hex[:8]}"


def measure(client: str, scenario: str, s: Settings) -> Run:
    queue = fresh_queue()
    n = s.messages
    try:
        if scenario in ("publish", "confirm", "publish-10k"):
            size = 10240 if scenario == "publish-10k" else 100
            count = n // 2 if scenario == "publish-10k" else n
            common.declare(queue)
            kind = "confirm" if scenario == "confirm" else "publish"
            r = start(client, kind, {"queue": queue, "n": count, "size": size}).result(s.timeout)
            return Run(count / r["elapsed"], r["cpu"] / count * 1e6, r["maxrss_mb"])
        if scenario in ("consume", "consume-10k"):
            size, count = (10240, n // 2) if scenario == "consume-10k" else (100, n)
            common.fill(queue, count, size)
            r = start(client, "consume", {"queue": queue, "n": count, "size": size}).result(s.timeout)
            return Run(count / r["elapsed"], r["cpu"] / count * 1e6, r["maxrss_mb"])
        if scenario in RPC:
            return rpc(client, queue, RPC[scenario], s)
        if scenario == "e2e":
            return end_to_end(client, queue, s)
        mb = large_mb(scenario)
        if mb:
            size, count = mb * MB, s.large_count if mb == 1 else max(s.huge_count, s.large_count // mb)
            common.declare(queue)
            r = start(client, "large", {"queue": queue, "n": count, "size": size}).result(s.timeout)
            return Run(count * size / MB / r["elapsed"], r["cpu"] / count * 1e6, r["maxrss_mb"])
        raise ValueError(f"unknown scenario {scenario}")
    finally:
        try:
            common.delete(queue)
        except Exception:  # noqa: BLE001, S110 - a server-side queue that is already gone
            pass


def rpc(client: str, queue: str, style: dict[str, Any], s: Settings) -> Run:
    """
    An echo server process and a client process: calls/s, the client's CPU
    per call (the server's beside it), p50/p99 of every call's round trip.
    """
    calls = s.rpc_calls * style["scale"]
    server = start(
        client,
        "rpc-server",
        {"queue": queue, "n": calls + common.WARMUP, "ack": style["ack"], "prefetch": style["prefetch"]},
    )
    server.wait_ready()
    try:
        params = {"queue": queue, "n": calls, "size": 100, "inflight": style["inflight"]}
        r = start(client, "rpc", {**params, "defaults": style["defaults"]}).result(s.timeout)
    except Exception:
        server.proc.kill()  # it would wait for calls that never come
        raise
    served = server.result(60)
    if served["served"] != calls + common.WARMUP or r["count"] != calls:
        raise RuntimeError(f"{r['count']} calls timed, the server answered {served['served']}")
    latencies = r["latencies"]
    return Run(
        calls / r["elapsed"],
        r["cpu"] / calls * 1e6,
        r["maxrss_mb"],
        common.percentile(latencies, 0.5) * 1000,
        common.percentile(latencies, 0.99) * 1000,
        served["cpu"] / calls * 1e6,
    )


def end_to_end(client: str, queue: str, s: Settings, rate: float | None = None) -> Run:
    """
    Publisher and consumer processes on a fresh queue; the publisher paced to
    C{rate} messages a second if given (txmsg only).
    """
    n = s.messages
    sub = start(client, "e2e-sub", {"queue": queue, "n": n})
    sub.wait_ready()
    try:
        pub = start(client, "e2e-pub", {"queue": queue, "n": n, "size": 100, "rate": rate}).result(s.timeout)
    except Exception:
        sub.proc.kill()
        raise
    got = sub.result(s.timeout)
    latencies = got["latencies"]
    return Run(
        n / (got["end"] - pub["start"]),
        (pub["cpu"] + got["cpu"]) / n * 1e6,
        max(pub["maxrss_mb"], got["maxrss_mb"]),
        common.percentile(latencies, 0.5) * 1000,
        common.percentile(latencies, 0.99) * 1000,
    )


def at_peer_rate(
    results: dict[tuple[str, str], list[Run]], clients: list[str], s: Settings, rounds: int
) -> str:
    """
    txmsg end to end with its publisher paced to the fastest other client's
    median e2e throughput: its latency at that peer's throughput.
    """
    peers = {
        c: statistics.median(r.rate for r in results[(c, "e2e")]) for c in clients if (c, "e2e") in results
    }
    peers.pop("txmsg", None)
    if not peers:
        return ""
    peer = max(peers, key=lambda c: peers[c])
    runs = []
    for _ in range(rounds):
        queue = fresh_queue()
        try:
            runs.append(end_to_end("txmsg", queue, s, rate=peers[peer]))
        finally:
            common.delete(queue)
    p50 = statistics.median(r.p50_ms or 0 for r in runs)
    p99 = statistics.median(r.p99_ms or 0 for r in runs)
    peer_p50 = statistics.median(r.p50_ms or 0 for r in results[(peer, "e2e")])
    peer_p99 = statistics.median(r.p99_ms or 0 for r in results[(peer, "e2e")])
    return (
        f"e2e at {peer}'s {peers[peer]:,.0f} msg/s ({rounds} runs, txmsg's publisher paced to it): "
        f"txmsg {statistics.median(r.rate for r in runs):,.0f} msg/s, p50/p99 {p50:,.1f} / {p99:,.1f} ms "
        f"against {peer_p50:,.0f} / {peer_p99:,.0f} ms: {p50 / peer_p50:.3f}x / {p99 / peer_p99:.3f}x"
    )


UNITS = {"rpc": "calls/s", "rpc-tutorial": "calls/s", "rpc-pipelined": "calls/s"}


def report(
    results: dict[tuple[str, str], list[Run]], clients: list[str], scenarios: list[str], rounds: int
) -> str:
    out = [f"median of {rounds} interleaved rounds; ratio: to the fastest other client in the row", ""]
    header = (
        f"{'scenario':13} {'client':14} {'rate':>10} {'unit':8} {'min-max':>19} {'ratio':>7} "
        f"{'CPU us/msg':>10} {'RSS MB':>7} {'p50/p99 ms':>14}"
    )
    out.append(header)
    out.append("-" * len(header))
    for scenario in scenarios:
        medians = {
            c: statistics.median(r.rate for r in results[(c, scenario)])
            for c in clients
            if (c, scenario) in results
        }
        for client in clients:
            runs = results.get((client, scenario))
            if not runs:
                continue
            rate = medians[client]
            others = [v for c, v in medians.items() if c != client]
            ratio = f"{rate / max(others):.2f}x" if others else "-"
            lo, hi = min(r.rate for r in runs), max(r.rate for r in runs)
            cpu = statistics.median(r.cpu_us for r in runs)
            rss = max(r.rss_mb for r in runs)
            lat = ""
            if runs[0].p50_ms is not None:
                p50 = statistics.median(r.p50_ms or 0 for r in runs)
                p99 = statistics.median(r.p99_ms or 0 for r in runs)
                lat = f"{p50:,.2f} / {p99:,.2f}" if p99 < 10 else f"{p50:,.0f} / {p99:,.0f}"
            out.append(
                f"{scenario:13} {client:14} {rate:>10,.0f} {unit(scenario):8} "
                f"{lo:>9,.0f}-{hi:<9,.0f} {ratio:>7} {cpu:>10.1f} {rss:>7.0f} {lat:>14}"
            )
        out.append("")
    return "\n".join(out)


#: the rows of the CPU summary, and what a message is in each
CPU_ROWS = ("publish", "confirm", "consume", "e2e", "rpc", "rpc-tutorial", "rpc-pipelined")


def cpu_summary(results: dict[tuple[str, str], list[Run]], clients: list[str], scenarios: list[str]) -> str:
    """
    A line per client: its median client CPU per message (per call for RPC,
    both processes for e2e) in each row, and, in brackets, that over the
    lowest other client's.
    """
    rows = [sc for sc in CPU_ROWS if sc in scenarios]
    if not rows:
        return ""
    medians = {
        (c, sc): statistics.median(r.cpu_us for r in results[(c, sc)])
        for c in clients
        for sc in rows
        if (c, sc) in results
    }
    out = [
        "client CPU us per message (RPC: per call, the client's; e2e: both processes), "
        "(x the lowest other client's):"
    ]
    for client in clients:
        cells = []
        for sc in rows:
            mine = medians.get((client, sc))
            if mine is None:
                continue
            others = [v for (c, r), v in medians.items() if r == sc and c != client]
            ratio = f" ({mine / min(others):.2f}x)" if others else ""
            cells.append(f"{sc} {mine:,.1f}{ratio}")
        if cells:
            out.append(f"  {client:14} " + "  ".join(cells))
    return "\n".join(out) + "\n"


def by_size(results: dict[tuple[str, str], list[Run]], clients: list[str], scenarios: list[str]) -> str:
    """
    Each client's median MB/s at each large body size, and the largest size's
    over the smallest's (1.00: the time per message grows linearly with size).
    """
    sizes = sorted((mb, sc) for sc in scenarios if (mb := large_mb(sc)))
    if len(sizes) < 2:
        return ""
    out = ["large bodies, median MB/s by size (last: largest size over smallest, 1.00 is linear):"]
    for client in clients:
        rates = [
            (mb, statistics.median(r.rate for r in results[(client, sc)]))
            for mb, sc in sizes
            if (client, sc) in results
        ]
        if len(rates) < 2:
            continue
        cells = "  ".join(f"{mb} MB {rate:,.0f}" for mb, rate in rates)
        out.append(f"  {client:14} {cells}  ({rates[-1][1] / rates[0][1]:.2f})")
    return "\n".join(out) + "\n"


def ceiling(s: Settings, client: str, processes: int) -> str:
    """
    Several publisher processes, then several consumer processes, of one
    client at once: how many messages per second the broker takes and gives.
    """
    queues = [fresh_queue() for _ in range(processes)]
    for q in queues:
        common.declare(q)
    try:
        # each process times its own run; they overlap, so the slowest bounds the total
        kids = [start(client, "publish", {"queue": q, "n": s.messages, "size": 100}) for q in queues]
        slowest = max(k.result(s.timeout)["elapsed"] for k in kids)
        published = processes * s.messages / slowest
        kids = [start(client, "consume", {"queue": q, "n": s.messages + 1, "size": 100}) for q in queues]
        slowest = max(k.result(s.timeout)["elapsed"] for k in kids)
        consumed = processes * (s.messages + 1) / slowest
    finally:
        for q in queues:
            common.delete(q)
    return (
        f"ceiling: {processes} {client} processes at once publish {published:,.0f} msg/s and consume "
        f"{consumed:,.0f} msg/s in all (each process timed from its own start; they overlap)"
    )


def available(client: str) -> bool:
    module = {
        "pika-twisted": "pika",
        "pika-blocking": "pika",
        "aio-pika": "aio_pika",
        "txamqp": "txamqp",
    }.get(client, "txmsg")
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rpc-calls", type=int, default=2_000)
    parser.add_argument("--large-count", type=int, default=200, help="1 MB messages per large-1m run")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--ceiling", action="store_true", help="also run 2 processes of txmsg at once")
    parser.add_argument(
        "--quick", action="store_true", help="tiny counts, one round: checks that it all runs"
    )
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args(argv)
    settings = Settings(args.messages, args.rpc_calls, args.large_count)
    rounds = args.rounds
    if args.quick:
        settings, rounds = Settings(messages=400, rpc_calls=40, large_count=2, huge_count=1, timeout=120), 1
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    scenarios = [c.strip() for c in args.scenarios.split(",") if c.strip()]
    unknown = [c for c in clients if c not in CLIENTS] + [
        s for s in scenarios if s not in SCENARIOS and not large_mb(s)
    ]
    if unknown or rounds < 1:
        parser.error(
            f"unknown client or scenario: {', '.join(unknown)}" if unknown else "--rounds must be >= 1"
        )
    missing = [c for c in clients if not available(c)]
    if missing:
        print(f"not installed, skipped: {', '.join(missing)} (pip install '.[bench]')", file=sys.stderr)
        clients = [c for c in clients if c not in missing]
    if not clients:
        print("bench: no client to run (pip install '.[bench]')", file=sys.stderr)
        return 2
    results: dict[tuple[str, str], list[Run]] = {}
    failures = 0
    for rnd in range(rounds):
        order = clients[rnd % len(clients) :] + clients[: rnd % len(clients)]
        for scenario in scenarios:
            for client in order:
                try:
                    run = measure(client, scenario, settings)
                except Exception as e:  # noqa: BLE001 - one client failing must not end the comparison
                    failures += 1
                    print(f"round {rnd + 1} {scenario} {client}: FAILED: {e}", file=sys.stderr)
                    continue
                results.setdefault((client, scenario), []).append(run)
                print(
                    f"round {rnd + 1} {scenario:13} {client:14} {run.rate:>10,.0f} {unit(scenario)}",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"\n{settings.messages:,} messages of 100 B (10 KB rows: {settings.messages // 2:,}), "
        f"{settings.rpc_calls:,} RPC calls, broker {common.URL.split('@')[-1]}, {os.cpu_count()} CPUs"
    )
    print(report(results, clients, scenarios, rounds))
    spent = cpu_summary(results, clients, scenarios)
    if spent:
        print(spent)
    sizes = by_size(results, clients, scenarios)
    if sizes:
        print(sizes)
    if "e2e" in scenarios and ("txmsg", "e2e") in results:
        line = at_peer_rate(results, clients, settings, rounds)
        if line:
            print(line + "\n")
    if args.ceiling and "txmsg" in clients:
        print(ceiling(settings, "txmsg", 2))
    if args.json:
        args.json.write_text(
            json.dumps({f"{c} {s}": [r.__dict__ for r in runs] for (c, s), runs in results.items()}, indent=1)
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
