"""
C{txmsg listen}: print messages as they arrive, and ack exactly those
printed.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txmsg._render import message_to_json, readable_line
from txmsg.cli._errors import CommandFailed, Interrupted
from txmsg.cli._io import Io, _connect, _silence_stdout, _stop
from txmsg.cli._streams import _HangupWatcher
from txmsg.connection import Connection
from txmsg.consumer import Consumer
from txmsg.errors import NotFound
from txmsg.exits import EXIT_NOINPUT, EXIT_OK
from txmsg.message import Message
from txmsg.topology import Binding, Queue

#: listen's prefetch: bounded by --count so that no more are taken than printed
LISTEN_PREFETCH = 100


async def listen(reactor: Any, args: Any, io: Io) -> int:
    """
    C{txmsg listen}: print messages as they arrive until C{--count} of them,
    a signal, or a closed standard output; ack exactly those printed.

    @return: the exit code.
    """
    connection = Connection(args.urls, reactor=reactor, name="txmsg listen")
    try:
        await _connect(reactor, connection, args.timeout, io)
        queue: Queue | str
        if args.queue is not None:
            try:
                await io.interruptible(connection.declare(Queue(args.queue, passive=True)))
            except NotFound as e:
                raise CommandFailed(EXIT_NOINPUT, f"queue {args.queue!r} not found: {e}") from None
            queue = args.queue
        else:
            queue = Queue("", exclusive=True, auto_delete=True)
            bindings = [Binding(queue, args.exchange, key) for key in args.keys]
            try:
                await io.interruptible(connection.declare(queue, *bindings))
            except NotFound as e:
                raise CommandFailed(EXIT_NOINPUT, f"exchange {args.exchange!r} not found: {e}") from None
        return await _print_messages(reactor, connection, queue, args, io)
    finally:
        await _stop(connection)


async def _print_messages(reactor: Any, connection: Connection, queue: Queue | str, args: Any, io: Io) -> int:
    """
    Consume C{queue}, printing each message, until done; the body of L{listen}.
    """
    count: int | None = args.count

    def render(message: Message) -> str:
        if args.json:
            return json.dumps(message_to_json(message), ensure_ascii=False)
        return readable_line(message)

    printed = 0
    done: Deferred[None] = Deferred()
    stopped: list[Deferred[None]] = []

    def finish(_: object = None) -> None:
        # Stopping the consumer at once (from inside the handler) means no
        # delivery after this one reaches the handler: they stay unacked and
        # go back to the queue when the channel closes.
        if not stopped:
            stopped.append(consumer.stopService())
        if not done.called:
            done.callback(None)

    def hung_up() -> None:
        if watcher is not None:
            watcher.stop()
        _silence_stdout(io)
        finish()

    def handle(message: Message) -> Deferred[None] | None:
        nonlocal printed
        line = render(message)
        try:
            io.stdout.write(line.encode("utf-8", "surrogateescape") + b"\n")
            io.stdout.flush()
        except (BrokenPipeError, ValueError):  # ValueError: closed
            hung_up()
            # never settled: the message was not printed, so it goes back to
            # the queue when the stopping consumer gives up on it
            return Deferred()
        printed += 1
        if count is not None and printed >= count:
            finish()
        return None

    def stopped_for_good(reason: Failure) -> None:
        if not done.called:
            done.errback(reason)

    prefetch = min(count, LISTEN_PREFETCH) if count is not None else LISTEN_PREFETCH
    consumer = Consumer(connection, queue, handle, prefetch=prefetch, stop_timeout=0)
    connection.add_stop_listener(stopped_for_good)
    forget = io.on_interrupt(finish)
    watcher = _HangupWatcher.watch(reactor, io.stdout, hung_up)
    consumer.startService()
    try:
        try:
            await io.interruptible(consumer.when_ready())
        except Interrupted:
            return EXIT_OK
        except NotFound as e:
            raise CommandFailed(
                EXIT_NOINPUT, f"cannot consume {_queue_name(connection, queue)!r}: {e}"
            ) from None
        await done
    finally:
        forget()
        if watcher is not None:
            watcher.stop()
        if not stopped:
            stopped.append(consumer.stopService())
        await stopped[0]
    return EXIT_OK


def _queue_name(connection: Connection, queue: Queue | str) -> str:
    return queue if isinstance(queue, str) else queue.resolve(connection.names)
