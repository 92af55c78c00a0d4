"""
Handlers that the twistd tests name with --handler.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from txmsg import Message


def fib(message: Message) -> int:
    """
    The RabbitMQ tutorial's RPC server: text n in, fib(n) out.
    """
    n = int(message.body)
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def fail(message: Message) -> Any:
    raise ValueError(f"cannot handle {message.body!r}")


def slow(message: Message) -> Any:
    """
    Takes a second, then logs the body (so a test sees which finished).
    """

    def done() -> None:
        print(f"handled {message.body.decode()}", flush=True)

    return deferLater(reactor, 1.0, done)


def first_try_fails(message: Message) -> None:
    """
    Fails a message's first attempt (no retry header yet), then logs it handled.
    """
    from txmsg.retry import ATTEMPTS_HEADER

    if ATTEMPTS_HEADER not in (message.headers or {}):
        raise RuntimeError("first attempt fails")
    print(f"handled {message.message_id}", flush=True)
