"""
C{txmsg publish}: publish the messages of the arguments, or of standard
input, and wait for every confirm.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from txmsg._render import one_line
from txmsg.cli._args import _CONTENT_TYPES, _loads
from txmsg.cli._errors import Interrupted, _exit_code
from txmsg.cli._io import Io, _connect, _stop
from txmsg.cli._streams import _LineReader
from txmsg.connection import Connection
from txmsg.errors import MessageTooLarge
from txmsg.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from txmsg.producer import Nacked, Producer, Unroutable

#: the most published messages awaiting their confirm at once
PUBLISH_WINDOW = 1000
#: publishing from standard input goes on once this few await their confirm
PUBLISH_RESUME = PUBLISH_WINDOW // 2


class _BadInput(Exception):
    """
    A line of standard input is not what C{--json} or C{--text} needs.
    """


def _line_body(format: str, line: bytes) -> bytes | None:
    """
    The body for one line of standard input, or C{None} to skip it.

    @raise _BadInput: the line is not valid in C{format}.
    """
    if format == "bytes":
        return line
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadInput("not valid UTF-8 (use --bytes to send bytes)") from None
    if format == "json":
        if not text.strip():
            return None
        try:
            _loads(text)
        except ValueError as e:
            raise _BadInput(f"not valid JSON: {e}") from None
    return line


class _Tally:
    """
    The outcome of the publishes of one C{txmsg publish}, with a bounded
    number awaiting their confirm.

    @ivar fatal: a failure after which publishing more is pointless (a
        missing exchange, a refused permission, a lost broker).
    """

    def __init__(self) -> None:
        self.published = 0
        self.confirmed = 0
        self.failures: Counter[str] = Counter()
        self.codes: set[int] = set()
        self.fatal: BaseException | None = None
        self.outstanding = 0
        self._wake: Deferred[None] | None = None
        self._wake_at = 0

    def track(self, d: Deferred[None]) -> None:
        self.published += 1
        self.outstanding += 1
        d.addCallbacks(self._confirmed, self._failed)

    def room(self) -> Deferred[None]:
        """
        Fire once there is room to publish more: at once below the window,
        else when only L{PUBLISH_RESUME} await their confirm.
        """
        if self.outstanding < PUBLISH_WINDOW:
            return succeed(None)
        return self._wait(PUBLISH_RESUME)

    def all_settled(self) -> Deferred[None]:
        """
        Fire once every publish is confirmed or failed.
        """
        return succeed(None) if not self.outstanding else self._wait(0)

    def _wait(self, level: int) -> Deferred[None]:
        self._wake = Deferred()
        self._wake_at = level
        return self._wake

    def _settled(self) -> None:
        self.outstanding -= 1
        wake = self._wake
        if wake is not None and self.outstanding <= self._wake_at:
            self._wake = None
            wake.callback(None)

    def _confirmed(self, _: object) -> None:
        self.confirmed += 1
        self._settled()

    def _failed(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, Nacked):
            self.failures[f"nacked: {error}"] += 1
            self.codes.add(EXIT_FAILED)
        elif isinstance(error, Unroutable):
            self.failures[f"returned: {error}"] += 1
            self.codes.add(EXIT_FAILED)
        elif isinstance(error, MessageTooLarge):
            # that message alone: the others go on
            self.failures[f"refused: {error}"] += 1
            self.codes.add(EXIT_FAILED)
        else:
            self.failures[f"failed: {one_line(str(error)) or type(error).__name__}"] += 1
            self.codes.add(_exit_code(error))
            if self.fatal is None:
                self.fatal = error
        self._settled()


async def publish(reactor: Any, args: Any, io: Io) -> int:
    """
    C{txmsg publish}: publish the messages of the arguments, or of standard
    input, and wait for every confirm.

    @return: the exit code.
    """
    connection = Connection(args.urls, reactor=reactor, name="txmsg publish")
    tally = _Tally()
    reader: _LineReader | None = None
    bad_input: str | None = None
    interrupted: Interrupted | None = None
    try:
        await _connect(reactor, connection, args.timeout, io)
        producer = Producer(connection, window=PUBLISH_WINDOW)
        properties = dict(args.properties)
        content_type = properties.pop("content_type", _CONTENT_TYPES[args.format])

        def send(body: bytes) -> None:
            tally.track(
                producer.publish(
                    args.exchange,
                    args.routing_key,
                    body,
                    mandatory=args.mandatory,
                    timeout=args.timeout,
                    content_type=content_type,
                    persistent=True if args.persistent else None,
                    headers=args.headers or None,
                    **properties,
                )
            )

        def stop_reading(signum: int) -> None:
            nonlocal interrupted
            interrupted = Interrupted(signum)
            if reader is not None:
                reader.stop()

        io.on_interrupt(stop_reading)
        if args.bodies:
            for body in args.bodies:
                if tally.fatal is not None or interrupted is not None:
                    break
                send(body)
                await tally.room()
        else:
            reader = _LineReader(reactor, io.stdin)
            number = 0
            while tally.fatal is None and interrupted is None and bad_input is None:
                lines = await reader.read_lines()
                if not lines:
                    break
                for line in lines:
                    number += 1
                    try:
                        body = _line_body(args.format, line)
                    except _BadInput as e:
                        bad_input = f"line {number} of standard input is {e}"
                        break
                    if body is not None:
                        send(body)
                    if tally.outstanding >= PUBLISH_WINDOW:
                        await tally.room()
                        if tally.fatal is not None or interrupted is not None:
                            break
            reader.stop()
        # a first Ctrl-C stops the reading, not the wait for what was sent
        await tally.all_settled()
    finally:
        await _stop(connection)
    for reason, count in sorted(tally.failures.items()):
        io.error(f"{count} message{'s' if count != 1 else ''} {reason}")
    if bad_input is not None:
        io.error(bad_input)
    summary = f"published {tally.published}, confirmed {tally.confirmed}"
    failed = tally.published - tally.confirmed
    io.stderr.write(summary + (f", failed {failed}" if failed else "") + "\n")
    io.stderr.flush()
    if interrupted is not None:
        return 128 + interrupted.signum
    if bad_input is not None:
        return EXIT_USAGE
    if tally.codes:
        # the most specific reason wins over "some failed"
        return max(tally.codes - {EXIT_FAILED}, default=EXIT_FAILED)
    return EXIT_OK
