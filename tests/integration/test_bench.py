"""
The benchmark runs end to end (correctness only: tiny counts, no timing
assertions): every scenario yields a figure for txmsg and a peer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_measures_every_scenario(tmp_path: Path, big_messages_url: str) -> None:
    """
    bench.run --quick with txmsg and pika's blocking connection: exit 0, a row
    per (scenario, client) in the table and in the JSON, latencies for e2e
    and each RPC row, a CPU line per client, a by-size line for the large
    bodies, and no queue left behind.
    """
    from bench.run import SCENARIOS

    figures = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--clients",
            "txmsg,pika-blocking",
            "--json",
            str(figures),
        ],
        cwd=ROOT,
        # its large scenarios move 64 MB bodies: a broker that takes them
        env=dict(os.environ, TXMSG_URL=big_messages_url),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line[:1].isalpha()]
    for scenario in SCENARIOS:
        for client in ("txmsg", "pika-blocking"):
            assert any(r[:2] == [scenario, client] for r in rows), (scenario, client, done.stdout)
    by_size = done.stdout.split("large bodies, median MB/s by size", 1)[1].splitlines()
    assert any(line.split()[:3] == ["txmsg", "1", "MB"] and "64 MB" in line for line in by_size)
    import json

    runs = json.loads(figures.read_text())
    assert all(run["rate"] > 0 for entry in runs.values() for run in entry)
    assert runs["txmsg e2e"][0]["p50_ms"] is not None
    for scenario in ("rpc", "rpc-tutorial", "rpc-pipelined"):
        for client in ("txmsg", "pika-blocking"):
            run = runs[f"{client} {scenario}"][0]
            assert 0 < run["p50_ms"] <= run["p99_ms"] and run["server_cpu_us"] > 0, (client, scenario, run)
    spent = done.stdout.split("client CPU us per message", 1)[1].splitlines()
    assert any(line.split()[:2] == ["txmsg", "publish"] and "rpc-pipelined" in line for line in spent)
    from .support import rabbitmqctl

    assert "txmsg-bench-" not in rabbitmqctl("list_queues", "name", "--no-table-headers", "-q")
