"""
Figures of the fault scenarios.  Each scenario test classifies every message
id (L{Tally}) and calls L{record}, which prints one line (seen with
C{pytest -s}) and, when C{$TXMSG_FAULT_REPORT} names a file, appends the
figures to it as a JSON line for C{scripts/reliability-report}.
C{$TXMSG_FAULT_SCALE} multiplies the scenarios' message counts (default 1,
the size CI runs).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
from dataclasses import dataclass, field
from typing import Any

from txmsg import Message

SCALE_ENV = "TXMSG_FAULT_SCALE"
REPORT_ENV = "TXMSG_FAULT_REPORT"


def scaled(count: int) -> int:
    """
    C{count} times the scale the run asked for.
    """
    return max(1, round(count * float(os.environ.get(SCALE_ENV, "1"))))


@dataclass
class Tally:
    """
    What happened to each message id: confirmed by the broker, consumed (how
    many times), and the repeats split by the C{redelivered} flag they came with.
    """

    confirmed: set[str] = field(default_factory=set)
    consumed: dict[str, int] = field(default_factory=dict)
    flagged: int = 0
    unflagged: int = 0

    def delivered(self, message: Message) -> None:
        mid = message.message_id or ""
        if mid in self.consumed:
            if message.redelivered:
                self.flagged += 1
            else:
                self.unflagged += 1
        self.consumed[mid] = self.consumed.get(mid, 0) + 1

    @property
    def lost(self) -> set[str]:
        """
        Confirmed, never consumed.
        """
        return self.confirmed - self.consumed.keys()

    @property
    def all_consumed(self) -> bool:
        return self.confirmed <= self.consumed.keys()

    def figures(self) -> dict[str, int]:
        return {
            "confirmed": len(self.confirmed),
            "consumed": len(self.consumed),
            "lost": len(self.lost),
            "flagged": self.flagged,
            "unflagged": self.unflagged,
        }


def peak_rss_mb() -> float:
    """
    The most memory this process has held so far (Linux reports KiB).
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def record(
    scenario: str,
    tally: Tally | None = None,
    *,
    reconnects: list[float] | None = None,
    detail: str = "",
    **figures: Any,
) -> None:
    """
    Print and (with C{$TXMSG_FAULT_REPORT}) save one scenario's figures:
    C{tally}'s counts, reconnect or failover times in seconds, free text.
    """
    row: dict[str, Any] = {"scenario": scenario, **(tally.figures() if tally else {}), **figures}
    if reconnects:
        row["reconnect_p50"] = statistics.median(reconnects)
        row["reconnect_max"] = max(reconnects)
    row["peak_rss_mb"] = round(peak_rss_mb(), 1)
    row["detail"] = detail
    shown = ", ".join(
        f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if v != ""
    )
    print(f"\n{shown}")
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
