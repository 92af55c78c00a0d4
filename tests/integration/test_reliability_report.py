"""
scripts/reliability_report.py runs scenarios in their own processes and
prints their figures as one table.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .. import broker
from .support import BROKER_URL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_report_runs_a_scenario_and_prints_its_row(tmp_path: Path) -> None:
    """
    --only 9 runs the poison scenario on the test broker and prints its row
    with the broker's version and the figures the test recorded (10
    published, 10 consumed, 0 lost); --json keeps them.
    """
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "scripts/reliability_report.py", "--scale", "1", "--only", "9", "--json", str(out)],
        cwd=ROOT,
        env=dict(os.environ, TXMSG_TEST_URL=BROKER_URL),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    [row] = [line for line in done.stdout.splitlines() if line.startswith("| 9 |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == broker.version_string()
    assert cells[2:7] == ["poison input", cells[3], "10", "10", "0"]
    assert cells[3].startswith("passed")
    assert "the pickle never ran" in cells[-1]
    assert '"lost": 0' in out.read_text()


def test_report_refuses_an_unknown_scenario() -> None:
    """
    --only with a number no scenario has is a usage error: exit 2, one line.
    """
    done = subprocess.run(
        [sys.executable, "scripts/reliability_report.py", "--only", "13"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--only names no scenario" in done.stderr.splitlines()[-1]
