"""
C{txmsg dlq}: see why messages died, and send them back::

    txmsg dlq list QUEUE                 how many, grouped by reason and origin
    txmsg dlq show QUEUE [-n N] [--json] the messages with their death records
    txmsg dlq replay QUEUE [--to EXCHANGE/KEY] [--where reason=...] [-n N]
    txmsg dlq purge QUEUE --yes

C{list} and C{show} read the queue without consuming it for good: every
message goes back, in its place, when they close (RabbitMQ then flags them
redelivered).  C{replay} publishes each message (with confirms) to where it
first went, or where C{--to} says, and acks it in the dead-letter queue only
once the broker has confirmed the republish: a cut or Ctrl-C in the middle
loses nothing and duplicates at most the messages in flight.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.python.failure import Failure

from txmsg._render import jsonable, message_to_json, one_line, readable_line
from txmsg.cli._deadletters import Death, death_of, take
from txmsg.cli._errors import CommandFailed
from txmsg.cli._io import Io, _connect, _stop
from txmsg.connection import Connection
from txmsg.errors import NotFound
from txmsg.exits import EXIT_FAILED, EXIT_NOINPUT, EXIT_OK
from txmsg.message import Message
from txmsg.producer import Producer
from txmsg.retry import HEADERS

#: replay: seconds between progress lines
PROGRESS_EVERY = 2.0


async def dlq(reactor: Any, args: Any, io: Io) -> int:
    """
    C{txmsg dlq}: the subcommand C{args.action} on the queue C{args.queue}.
    """
    connection = Connection(args.urls, reactor=reactor, name=f"txmsg dlq {args.action}")
    try:
        await _connect(reactor, connection, args.timeout, io)
        try:
            depth = (await io.interruptible(connection.queue_info(args.queue))).message_count
            channel = await io.interruptible(connection.channel())
        except NotFound as e:
            raise CommandFailed(EXIT_NOINPUT, f"queue {args.queue!r} not found: {e}") from None
        if args.action == "purge":
            ok = await io.interruptible(channel.queue_purge(args.queue))
            io.stderr.write(f"purged {ok['message_count']} messages from {args.queue}\n")
            return EXIT_OK
        if args.action == "replay":
            return await _replay(reactor, connection, channel, depth, args, io)
        return await _read(channel, depth, args, io)
    finally:
        await _stop(connection)


def _origin(death: Death) -> str:
    queue = death.queue or "?"
    key = death.routing_key if death.routing_key is not None else "?"
    return f"queue {queue}, key {key}"


def _when(death: Death) -> str:
    return death.when.isoformat() if death.when is not None else "?"


async def _read(channel: Any, depth: int, args: Any, io: Io) -> int:
    """
    C{list} and C{show}: read up to the queue's depth (C{show}: C{-n}),
    acking nothing: all go back, in their places, when the channel closes.
    """
    limit = depth if args.action == "list" else min(depth, args.count)
    groups: Counter[tuple[str, str]] = Counter()
    oldest: dict[tuple[str, str], str] = {}
    newest: dict[tuple[str, str], str] = {}
    for index in range(1, limit + 1):
        got = await io.interruptible(ensureDeferred(take(channel, args.queue)))
        if got is None:
            break
        _, message = got
        death = death_of(message)
        if args.action == "show":
            _show(io, index, message, death, args.json)
            continue
        key = (death.reason, _origin(death))
        groups[key] += 1
        when = _when(death)
        if when != "?":
            oldest[key] = min(oldest.get(key, when), when)
            newest[key] = max(newest.get(key, when), when)
    await channel.close()
    if args.action == "list":
        io.stdout.write(f"{args.queue}: {depth} messages\n".encode())
        for (reason, origin), n in groups.most_common():
            key = (reason, origin)
            span = f"oldest {oldest.get(key, '?')}  newest {newest.get(key, '?')}"
            line = f"{n:>8}  {reason}  from {origin}  {span}"
            io.stdout.write(line.encode("utf-8", "surrogateescape") + b"\n")
        io.stdout.flush()
    return EXIT_OK


def _show(io: Io, index: int, message: Message, death: Death, as_json: bool) -> None:
    headers = message.headers or {}
    if as_json:
        record = message_to_json(message)
        record["death"] = {
            "reason": death.reason,
            "detail": death.detail,
            "queue": death.queue,
            "exchange": death.exchange,
            "routing_key": death.routing_key,
            "attempts": death.attempts,
            "first_failure": _when(death) if death.when else None,
            "x-death": jsonable(headers.get("x-death")),
        }
        io.stdout.write(json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogateescape") + b"\n")
        io.stdout.flush()
        return
    lines = [f"#{index} {readable_line(message)}"]
    plural = "" if death.attempts == 1 else "s"
    attempts = f" after {death.attempts} attempt{plural}" if death.attempts else ""
    detail = f": {one_line(death.detail)}" if death.detail else ""
    lines.append(f"    reason: {death.reason}{detail}{attempts}, first failed {_when(death)}")
    lines.append(f"    from: {_origin(death)} (published to exchange {death.exchange!r})")
    for record in headers.get("x-death") or []:
        if isinstance(record, dict):
            lines.append(
                f"    x-death: {record.get('reason')} in {record.get('queue')} "
                f"x{record.get('count')} (exchange {record.get('exchange')!r}, "
                f"keys {jsonable(record.get('routing-keys'))})"
            )
    io.stdout.write("\n".join(lines).encode("utf-8", "surrogateescape") + b"\n")
    io.stdout.flush()


def _matches(death: Death, where: list[tuple[str, str]]) -> bool:
    values = {"reason": death.reason, "queue": death.queue, "key": death.routing_key}
    return all(values.get(field) == wanted for field, wanted in where)


def _target(death: Death, to: tuple[str, str] | None) -> tuple[str, str] | None:
    if to is not None:
        return to
    if death.exchange is None or death.routing_key is None:
        return None
    return death.exchange, death.routing_key


async def _replay(reactor: Any, connection: Connection, channel: Any, depth: int, args: Any, io: Io) -> int:
    """
    C{replay}: one message at a time, republish it (confirmed) and only then
    ack it here, so that a cut or a signal duplicates at most the one in flight.
    """
    limit = min(depth, args.count) if args.count is not None else depth
    producer = Producer(connection)
    counts = Counter[str]()
    lost: Failure | None = None
    last_progress = time.monotonic()
    for _ in range(depth):
        if counts["replayed"] + counts["failed"] >= limit or io.signum is not None:
            break
        try:
            got = await take(channel, args.queue)
        except Exception:  # noqa: BLE001 - the channel or connection went: stop, losing nothing
            lost = Failure()
            break
        if got is None:
            break
        tag, message = got
        death = death_of(message)
        if not _matches(death, args.where):
            counts["skipped"] += 1  # left unacked: it goes back with the channel
            continue
        target = _target(death, args.to)
        if target is None:
            counts["no origin"] += 1
            continue
        headers = {k: v for k, v in (message.headers or {}).items() if k not in HEADERS}
        try:
            await producer.publish(
                target[0],
                target[1],
                message.replace(headers=headers or None),
                mandatory=True,
                timeout=args.timeout,
            )
        except Exception as e:  # noqa: BLE001 - reported, and the message stays in the queue
            counts["failed"] += 1
            io.error(f"cannot replay a message to {target[0]!r}/{target[1]!r}: {one_line(str(e))}")
            continue
        channel.ack(tag)  # a no-op if the channel went meanwhile: then it is a duplicate, not a loss
        counts["replayed"] += 1
        if time.monotonic() - last_progress >= PROGRESS_EVERY:
            last_progress = time.monotonic()
            io.stderr.write(f"replayed {counts['replayed']} of up to {limit}...\n")
            io.stderr.flush()
    if channel.is_open:
        await channel.close()
    summary = f"replayed {counts['replayed']}"
    for what in ("skipped", "no origin", "failed"):
        if counts[what]:
            summary += f", {what} {counts[what]}"
    if io.signum is not None:
        summary += " (interrupted)"
    io.stderr.write(summary + "\n")
    io.stderr.flush()
    if lost is not None:
        raise CommandFailed(
            EXIT_FAILED,
            f"lost the broker while replaying ({lost.getErrorMessage()}): the rest stay in "
            f"{args.queue}; run the replay again",
        )
    if io.signum is not None:
        return 128 + io.signum
    return EXIT_FAILED if counts["failed"] else EXIT_OK
