"""
C{txmsg call}: one RPC call, or a broadcast gathering replies, its reply
printed on standard output.
"""

from __future__ import annotations

import json
from typing import Any

from txmsg._render import jsonable, one_line
from txmsg.cli._args import _CONTENT_TYPES, _STDIN, _call_payload
from txmsg.cli._errors import CommandFailed
from txmsg.cli._io import Io, _connect, _silence_stdout, _stop
from txmsg.cli._streams import _LineReader
from txmsg.connection import Connection
from txmsg.exits import EXIT_NO_SERVER, EXIT_OK, EXIT_REMOTE_ERROR, EXIT_TIMEOUT
from txmsg.rpc import NoServer, RemoteError, Reply, RpcClient, RpcTimeout


async def call(reactor: Any, args: Any, io: Io) -> int:
    """
    C{txmsg call}: one RPC call (or, with C{--gather}, a broadcast), its
    reply printed on standard output.

    @return: the exit code.
    """
    request = args.request
    if request is _STDIN:
        reader = _LineReader(reactor, io.stdin)
        chunks = []
        while lines := await io.interruptible(reader.read_lines()):
            chunks.extend(lines)
        request = _call_payload(args.format, b"\n".join(chunks).decode("utf-8", "surrogateescape"))
    content_type = _CONTENT_TYPES[args.format]
    connection = Connection(args.urls, reactor=reactor, name="txmsg call")
    try:
        await _connect(reactor, connection, args.timeout, io)
        client = RpcClient(connection)
        if args.gather:
            errors: list[str] = []

            def show(reply: Reply) -> None:
                shown: dict[str, Any] = {"server": reply.server}
                if isinstance(reply.payload, Exception):
                    error = reply.payload
                    kind = error.remote_type if isinstance(error, RemoteError) else type(error).__name__
                    text = error.remote_message if isinstance(error, RemoteError) else str(error)
                    shown["error"] = {"type": kind, "message": text}
                    errors.append(f"remote error from {reply.server}: {kind}: {one_line(text)}")
                else:
                    shown["payload"] = jsonable(reply.payload)
                _write(io, json.dumps(shown, ensure_ascii=False).encode("utf-8", "surrogateescape") + b"\n")

            replies = await io.interruptible(
                client.gather(
                    args.routing_key,
                    request,
                    exchange=args.exchange,
                    timeout=args.timeout,
                    expect=args.expect,
                    on_reply=show,
                    content_type=content_type,
                )
            )
            for line in errors:
                io.error(line)
            if errors:
                return EXIT_REMOTE_ERROR
            if not replies:
                raise RpcTimeout("no reply")
        else:
            reply = await io.interruptible(
                client.call(
                    args.routing_key,
                    request,
                    exchange=args.exchange,
                    timeout=args.timeout,
                    content_type=content_type,
                )
            )
            _write(io, _reply_bytes(reply))
    except RpcTimeout:
        raise CommandFailed(
            EXIT_TIMEOUT, f"no reply to {args.routing_key!r} within {args.timeout:g} s"
        ) from None
    except NoServer:
        where = f"exchange {args.exchange!r}" if args.exchange else "the default exchange"
        raise CommandFailed(
            EXIT_NO_SERVER, f"no server: no queue is bound to {args.routing_key!r} on {where}"
        ) from None
    except RemoteError as e:
        raise CommandFailed(
            EXIT_REMOTE_ERROR, f"remote error: {e.remote_type}: {one_line(e.remote_message)}"
        ) from None
    finally:
        await _stop(connection)
    return EXIT_OK


def _write(io: Io, data: bytes) -> None:
    """
    Write C{data} on standard output; a closed output is silenced.
    """
    try:
        io.stdout.write(data)
        io.stdout.flush()
    except (BrokenPipeError, ValueError):
        _silence_stdout(io)


def _reply_bytes(payload: Any) -> bytes:
    """
    A reply as printed by C{call}: JSON pretty-printed, text as it is (with a
    final newline), bytes raw.
    """
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, str):
        return (payload if payload.endswith("\n") else payload + "\n").encode("utf-8", "surrogateescape")
    return (json.dumps(jsonable(payload), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
