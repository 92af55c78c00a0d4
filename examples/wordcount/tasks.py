"""
The map step of the word count: what a worker computes for one task.

    twistd -n txmsg --role worker --queue wordcount --handler examples.wordcount.tasks:count_words

A task's payload is a chunk of text; its result is ``{word: count}``.
``WORDCOUNT_DELAY`` (seconds) makes each task take that long, to watch a job
spread over workers, or to kill one mid-job.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

from twisted.internet.task import deferLater

from txmsg import Message

WORD = re.compile(r"[a-z']+")


def count(text: str) -> Counter[str]:
    return Counter(WORD.findall(text.lower()))


def count_words(message: Message) -> Any:
    counts = dict(count(message.payload))
    delay = float(os.environ.get("WORDCOUNT_DELAY", "0"))
    if delay <= 0:
        return counts
    from twisted.internet import reactor

    return deferLater(reactor, delay, lambda: counts)
