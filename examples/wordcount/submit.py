"""
The word count job (seed 001): split a generated corpus into chunks, have the
workers count each chunk, reduce their counts, and check the total against a
count made in this process.

    python examples/wordcount/submit.py [--lines 20000] [--chunk 500] [--queue wordcount]

Start workers first (as many as you like, any time, also while the job runs):

    twistd -n txmsg --role worker --queue wordcount --handler examples.wordcount.tasks:count_words
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections import Counter
from typing import Any

from twisted.internet import defer, task

from txmsg import Connection, JobClient, JobProgress

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tasks import count  # the workers' own count, next to this script

VOCABULARY = (
    "rabbit queue message broker twisted reactor deferred exchange binding consumer producer "
    "confirm ack nack route topic fanout direct header worker result reduce map job task"
).split()


def corpus(lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)  # noqa: S311 - a reproducible corpus, not a secret
    return [" ".join(rng.choices(VOCABULARY, k=rng.randint(3, 12))) for _ in range(lines)]


def merge(total: Counter[str], counts: dict[str, int]) -> Counter[str]:
    total.update(counts)
    return total


def show(progress: JobProgress) -> None:
    print(
        f"{progress.done + progress.failed}/{progress.total} tasks, {progress.rate:.1f} tasks/s", flush=True
    )


async def main(reactor: Any, args: argparse.Namespace) -> int:
    text = corpus(args.lines, args.seed)
    chunks = ["\n".join(text[i : i + args.chunk]) for i in range(0, len(text), args.chunk)]
    connection = Connection(args.url, reactor=reactor, name="wordcount-submit")
    try:
        result = await JobClient(connection, args.queue).run(
            chunks, merge, Counter(), on_progress=show, progress_interval=0.5, timeout=args.timeout
        )
    finally:
        await connection.stopService()
    expected = count("\n".join(text))
    for word, n in result.value.most_common(5):
        print(f"{word:>10} {n}")
    for failure in result.failures:
        print(f"task {failure.index} failed: {failure.error_type}: {failure.message}")
    same = result.value == expected
    print(
        f"{result.done}/{result.total} tasks in {result.elapsed:.1f} s; "
        f"{result.duplicates} duplicate results ignored; "
        f"matches a single-process count: {'yes' if same else 'NO'}"
    )
    return 0 if same and result.ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=None)
    parser.add_argument("--queue", default="wordcount")
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300)
    arguments = parser.parse_args()

    def run(reactor: Any) -> Any:
        def done(code: int) -> None:
            if code:
                raise SystemExit(code)

        return defer.ensureDeferred(main(reactor, arguments)).addCallback(done)

    task.react(run)
