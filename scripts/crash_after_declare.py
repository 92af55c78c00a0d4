"""
Does a queue declared just before its node crashes survive?  pika alone (no
txmsg), on a private node: declare a durable queue, publish N persistent
messages with confirms, kill -9 the node DELAY seconds after the declaration,
restart it, and see whether the queue is there with its messages.

    python scripts/crash_after_declare.py [--trials 20] [--delay 0.2] [--quorum] [--flush]

Run it with the environment of the RabbitMQ to try (scripts/test.sh sets it:
for RabbitMQ 4.3, the variables of ``scripts/rabbitmq4.sh env``); --flush
writes the node's metadata out after the declaration (Mnesia's log on
RabbitMQ 3; nothing to do on RabbitMQ 4, whose Khepri store syncs each change).
Prints one line per trial and a summary.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pika

from tests.integration.nodes import RabbitNode, scratch


def trial(
    node: RabbitNode, count: int, delay: float, quorum: bool, flush: bool, settle: float
) -> tuple[bool, int]:
    name = f"crash-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    ch = conn.channel()
    ch.confirm_delivery()
    declared = time.monotonic()
    ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"} if quorum else None)
    if flush:
        node.flush_metadata()
    persistent = pika.BasicProperties(delivery_mode=2)
    for i in range(count):
        ch.basic_publish("", name, f"m{i}".encode(), persistent)
    left = delay - (time.monotonic() - declared)
    if left > 0:
        time.sleep(left)
    node.kill9()
    node.start()
    node.wait()
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        # a quorum queue counts its messages once it has read its log back: wait for it
        deadline = time.monotonic() + settle
        while True:
            held = conn.channel().queue_declare(name, passive=True).method.message_count
            if held >= count or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if held < count:
            # what a consumer gets: the count may lag, the messages may still be there
            got = 0
            ch = conn.channel()
            for method, _props, _body in ch.consume(name, inactivity_timeout=5):
                if method is None:
                    break
                got += 1
            held = max(held, got)
        return True, held
    except pika.exceptions.ChannelClosedByBroker:
        return False, 0
    except pika.exceptions.AMQPError:
        return True, -1  # there, but not answering (a quorum queue whose leader never started)
    finally:
        try:
            conn.close()
        except pika.exceptions.AMQPError:
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--count", type=int, default=200, help="messages per trial")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds from declaration to kill")
    parser.add_argument("--quorum", action="store_true")
    parser.add_argument("--flush", action="store_true")
    parser.add_argument(
        "--settle", type=float, default=30.0, help="seconds to wait after the restart for the messages"
    )
    args = parser.parse_args()
    node = RabbitNode(scratch("crash"), f"txmsg-crash-{uuid.uuid4().hex[:6]}")
    gone = partial = 0
    try:
        node.start()
        node.wait()
        kind = "quorum" if args.quorum else "classic"
        print(f"RabbitMQ {'.'.join(map(str, node.version()))}, {kind} queues")
        for n in range(args.trials):
            there, held = trial(node, args.count, args.delay, args.quorum, args.flush, args.settle)
            gone += not there
            partial += there and held != args.count
            outcome = f"kept, {held} messages" if there else "GONE (404)"
            print(f"trial {n + 1}: {outcome}", flush=True)
    finally:
        node.stop()
    print(f"{args.trials} trials, kill {args.delay:g} s after the declaration: {gone} queues gone, "
          f"{partial} kept with fewer than {args.count} messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
