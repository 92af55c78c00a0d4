"""
Run the fault-injection scenarios with larger counts and print one table.

Each scenario runs as its own pytest process (so its peak memory is its own)
with C{$TXMSG_FAULT_SCALE} multiplying its message counts; the tests write
their figures to C{$TXMSG_FAULT_REPORT} (see tests/integration/report.py),
and this script gathers them:

    scenario | RabbitMQ | result | confirmed | consumed | lost
             | duplicated flagged/unflagged | reconnect p50/max
             | peak RSS of the test process

With C{--broker local} and C{--broker 4.3} (what C{make reliability} passes)
every scenario runs on each: the broker on localhost:5672 with private nodes
of the host's rabbitmq-server (RabbitMQ 3.10 on Debian 12), and RabbitMQ 4.3
in the sid root of scripts/rabbitmq4.sh (started for the run, stopped after
it); their rows sit side by side.  Without C{--broker} the scenarios run on
the broker the environment names (C{$TXMSG_TEST_URL}, see tests/broker.py).

Usage (from the repository root; scripts/reliability-report sets up the
venv and the broker first):

    python scripts/reliability_report.py [--scale 5] [--only 1,3,9] [--broker local --broker 4.3]
                                         [--json FILE]

Exits 0 when every scenario passed (0 confirmed messages lost among them), 1
otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
T = "tests/integration/"
#: the script that runs the RabbitMQ 4.3 node
RABBITMQ4 = ["/bin/bash", str(ROOT / "scripts" / "rabbitmq4.sh")]

#: number, what it does, the tests that prove it
SCENARIOS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "connection cuts every 0.75 s",
        [T + "test_faults.py::test_cuts_every_second_lose_no_confirmed_message"],
    ),
    (
        2,
        "node kill -9 and restart",
        [T + "test_node_faults.py::test_kill_9_and_restart_loses_no_confirmed_message"],
    ),
    (
        3,
        "3-node cluster failover",
        [T + "test_cluster_faults.py::test_failover_and_rolling_kills_lose_no_confirmed_message"],
    ),
    (
        4,
        "blackholed connection",
        [T + "test_faults.py::test_blackholed_connection_is_detected_within_two_heartbeats"],
    ),
    (
        5,
        "memory alarm",
        [T + "test_node_faults.py::test_memory_alarm_pauses_publishers_and_they_resume_at_once"],
    ),
    (
        6,
        "consumer cancel and consumer_timeout",
        [
            T + "test_publish_consume.py::test_deleted_owned_queue_is_declared_again_and_consumed",
            T + "test_node_faults.py::test_consumer_timeout_closing_the_channel_is_recovered",
        ],
    ),
    (7, "RPC under cuts", [T + "test_faults.py::test_rpc_under_cuts_answers_each_call_once_or_times_out"]),
    (
        8,
        "peer group under cuts",
        [T + "test_faults.py::test_peer_groups_under_cuts_hear_every_confirmed_shout"],
    ),
    (9, "poison input", [T + "test_poison.py"]),
    (10, "bad configuration", [T + "test_bad_config.py"]),
    (11, "TLS on a private node", [T + "test_tls_node.py"]),
    (
        12,
        "no password in logs or reprs",
        [T + "test_faults.py::test_password_never_appears_in_logs_or_reprs"],
    ),
]


def broker_env(broker: str) -> dict[str, str]:
    """
    The environment the tests need to run on C{broker} (C{local}, C{4.3}, or
    C{""} for the environment as it is); starts the RabbitMQ 4.3 node.
    """
    env = dict(os.environ)
    if broker == "local":
        env.pop("TXMSG_TEST_URL", None)
        env.pop("TXMSG_TEST_RABBITMQCTL", None)
        env["TXMSG_TEST_NODES"] = "host"
        own_ctl = ROOT / ".txmsg" / "rabbitmq" / "bin"
        if own_ctl.is_dir():
            env["PATH"] = f"{own_ctl}{os.pathsep}{env.get('PATH', '')}"
    elif broker in ("4.3", "4"):
        subprocess.run([*RABBITMQ4, "start"], cwd=ROOT, check=True, stdout=sys.stderr)  # noqa: S603
        listed = subprocess.run(  # noqa: S603 - our own script
            [*RABBITMQ4, "env"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        env.update(line.split("=", 1) for line in listed.splitlines() if "=" in line)
    elif broker:
        raise ValueError(f"unknown broker {broker!r}: use local or 4.3")
    return env


def broker_version(env: dict[str, str]) -> str:
    """
    The RabbitMQ version of the test broker of C{env}, as it reports it.
    """
    done = subprocess.run(
        [sys.executable, "-c", "from tests import broker; print(broker.version_string())"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip() or "?"


def run_scenario(
    tests: list[str], scale: float, report: Path, base: dict[str, str] | None = None
) -> tuple[bool, float, str]:
    """
    Run C{tests} in one pytest process: whether they passed, how long it took,
    and the output's last lines.
    """
    env = dict(base if base is not None else os.environ)
    env.update(TXMSG_FAULT_SCALE=str(scale), TXMSG_FAULT_REPORT=str(report))
    start = time.monotonic()
    done = subprocess.run(  # noqa: S603 - our own interpreter and test ids
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    tail = "\n".join(done.stdout.splitlines()[-15:])
    return done.returncode == 0, time.monotonic() - start, tail


def cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return "—"
    return f"{value:,}" if isinstance(value, int) else str(value)


def seconds(row: dict[str, Any]) -> str:
    if "reconnect_p50" not in row:
        return "—"
    return f"{row['reconnect_p50']:.2f} / {row['reconnect_max']:.2f} s"


def duplicates(row: dict[str, Any]) -> str:
    if "flagged" not in row:
        return "—"
    return f"{row['flagged']:,} / {row['unflagged']:,}"


Result = tuple[int, str, str, bool, float, list[dict[str, Any]], str]


def table(results: list[Result]) -> str:
    lines = [
        "| # | RabbitMQ | scenario | result | confirmed | consumed | lost | duplicated flagged / unflagged "
        "| reconnect p50 / max | peak RSS | detail |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # each scenario's rows on every broker together
    for number, version, title, passed, took, rows, summary in sorted(results, key=lambda r: r[0]):
        result = f"{'passed' if passed else 'FAILED'} ({took:.0f} s)"
        for row in rows or [{"scenario": title, "detail": summary}]:
            confirmed = cell(row, "confirmed") if "confirmed" in row else cell(row, "published")
            consumed = cell(row, "consumed") if "consumed" in row else cell(row, "held")
            rss = f"{row['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in row else "—"
            # the tests name their rows "N what"; the number has its own column
            name = str(row["scenario"])
            if name[:1].isdigit():
                name = name.split(" ", 1)[1]
            lines.append(
                f"| {number} | {version} | {name} | {result} | {confirmed} "
                f"| {consumed} | {cell(row, 'lost')} | {duplicates(row)} | {seconds(row)} | {rss} "
                f"| {row.get('detail', '')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run txmsg's fault scenarios and print one table of figures."
    )
    parser.add_argument(
        "--scale", type=float, default=5.0, help="multiply message counts (CI runs 1; default 5)"
    )
    parser.add_argument("--only", default="", help="comma-separated scenario numbers (default: all 12)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file as JSON")
    parser.add_argument(
        "--broker",
        action="append",
        choices=["local", "4.3"],
        help="run on this broker (repeatable; default: the one the environment names)",
    )
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    try:
        wanted = {int(n) for n in args.only.split(",") if n.strip()}
    except ValueError:
        parser.error("--only takes scenario numbers, e.g. 1,3,9")
    chosen = [s for s in SCENARIOS if not wanted or s[0] in wanted]
    if not chosen:
        parser.error("--only names no scenario (they are numbered 1 to 12)")
    results: list[Result] = []
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for broker in args.broker or [""]:
            env = broker_env(broker)
            version = broker_version(env)
            try:
                for number, title, tests in chosen:
                    report = Path(tmp) / f"{broker or 'env'}-{number}.jsonl"
                    print(f"scenario {number} on RabbitMQ {version}: {title} ...", file=sys.stderr)
                    passed, took, tail = run_scenario(tests, args.scale, report, env)
                    lines = report.read_text().splitlines() if report.exists() else []
                    rows = [json.loads(line) for line in lines]
                    if not passed:
                        failed = True
                        print(tail, file=sys.stderr)
                    lost = sum(int(r.get("lost") or 0) for r in rows)
                    print(
                        f"scenario {number}: {'passed' if passed else 'FAILED'} in {took:.0f} s, lost {lost}",
                        file=sys.stderr,
                        flush=True,
                    )
                    # pytest's last line, e.g. "13 passed in 16.07s": the detail of a scenario without figures
                    summary = tail.splitlines()[-1].split(" in ")[0] + " (tests)" if tail else ""
                    results.append((number, version, title, passed, took, rows, summary))
            finally:
                if broker == "4.3":
                    subprocess.run([*RABBITMQ4, "stop"], cwd=ROOT, stdout=sys.stderr)  # noqa: S603
    print(f"\nScale {args.scale:g} (message counts {args.scale:g} times those of the CI run)\n")
    print(table(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {"number": n, "rabbitmq": v, "title": t, "passed": p, "seconds": s, "rows": r}
                    for n, v, t, p, s, r, _ in results
                ],
                indent=2,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
