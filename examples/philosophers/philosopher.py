"""
The counting philosophers (seed 000): peers around a table draw numbered slips
and shout when one beats the highest number seen so far; everyone keeps the
highest.  Anyone may sit down or leave at any time.

    python examples/philosophers/philosopher.py --peer ann [--group table] [--rounds 50] [--seed 1]

- Shouts go to the group's fanout exchange (a L{PeerGroup}): every peer hears them.
- A newcomer first joins (so it misses no shout), then asks the others for their
  current maximum: a C{current-max} request on the direct exchange
  C{<group>.max}, where every peer answers on a queue of its own
  (C{RpcServer(broadcast=...)}); it gathers the answers for a short deadline
  and keeps the largest.
- It then draws C{--rounds} numbers, and finally waits until the table has
  been quiet for C{--quiet} seconds, prints its final line and leaves.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task

from txmsg import Connection, Exchange, Message, NoServer, PeerGroup, RpcClient, RpcServer

HIGHEST = 1_000_000


def draws(seed: int, peer: str, rounds: int) -> list[int]:
    """
    The numbers C{peer} draws: the same for the same seed and peer.
    """
    rng = random.Random(f"{seed}/{peer}")  # noqa: S311 - reproducible slips, not secrets
    return [rng.randint(1, HIGHEST) for _ in range(rounds)]


class Philosopher:
    """
    One peer: C{current} is the highest number it knows of.
    """

    def __init__(
        self,
        connection: Connection,
        group: str,
        peer: str,
        numbers: list[int],
        *,
        interval: float = 0.05,
        ask_timeout: float = 0.5,
        say: Callable[[str], None] = print,
    ) -> None:
        self.connection = connection
        self.peer = peer
        self.numbers = numbers
        self.interval = interval
        self.ask_timeout = ask_timeout
        self.say = say
        self.current: int | None = None
        #: the maximum the others told us when we joined, and how many answered
        self.learned: int | None = None
        self.answers = 0
        #: shouts heard from others
        self.heard = 0
        self.changed_at = connection.reactor.seconds()
        self.group = PeerGroup(connection, group, self._heard, peer_id=peer, ignore_self=True)
        self.ask = Exchange(f"{group}.max", "direct")
        self.answering = RpcServer(
            connection, None, self._answer, exchange=self.ask, broadcast=["current-max"], server_id=peer
        )
        self.client = RpcClient(connection)

    def _raise_to(self, number: int, how: str) -> None:
        if self.current is None or number > self.current:
            self.current = number
            self.changed_at = self.connection.reactor.seconds()
            self.say(f"{self.peer}: maximum {number} ({how})")

    def _heard(self, message: Message) -> None:
        self.heard += 1
        number = message.payload.get("max") if isinstance(message.payload, dict) else None
        if isinstance(number, int):
            self._raise_to(number, f"heard from {PeerGroup.sender(message)}")

    def _answer(self, message: Message) -> dict[str, Any]:
        return {"peer": self.peer, "max": self.current}

    async def join(self) -> None:
        """
        Sit down: hear shouts from now on, learn the current maximum from the
        others, then answer newcomers' questions too.
        """
        await self.connection.connect()
        self.group.startService()
        await self.group.declared  # bound: from here no shout passes us by
        self.say(f"{self.peer}: joined {self.group.group}")
        await self.connection.declare(self.ask)
        try:
            replies = await self.client.gather(
                "current-max", {}, exchange=self.ask.name, timeout=self.ask_timeout
            )
        except NoServer:
            replies = []  # nobody at the table yet
        known = [r.payload["max"] for r in replies if isinstance(r.payload, dict)]
        self.answers = len(replies)
        self.learned = max((n for n in known if isinstance(n, int)), default=None)
        self.say(f"{self.peer}: {self.answers} peer{'' if self.answers == 1 else 's'} answered")
        if self.learned is not None:
            self._raise_to(self.learned, "learned from the others")
        self.answering.startService()
        await self.answering.declared

    async def draw(self) -> None:
        """
        Draw the slips one by one; shout each that beats the maximum.
        """
        for number in self.numbers:
            await task.deferLater(self.connection.reactor, self.interval, lambda: None)
            if self.current is None or number > self.current:
                self._raise_to(number, "drew it")
                await self.group.shout({"max": number})

    async def settle(self, quiet: float) -> None:
        """
        Wait until the maximum has not changed for C{quiet} seconds.
        """
        reactor = self.connection.reactor
        while (left := self.changed_at + quiet - reactor.seconds()) > 0:
            await task.deferLater(reactor, left, lambda: None)

    async def leave(self) -> None:
        await self.answering.stopService()
        await self.group.leave()


async def main(reactor: Any, args: argparse.Namespace) -> None:
    connection = Connection(args.url, reactor=reactor, name=f"philosopher-{args.peer}")
    numbers = draws(args.seed, args.peer, args.rounds)
    me = Philosopher(
        connection,
        args.group,
        args.peer,
        numbers,
        interval=args.interval,
        ask_timeout=args.ask_timeout,
        say=lambda line: print(line, flush=True),
    )
    try:
        await me.join()
        await me.draw()
        await me.settle(args.quiet)
        print(
            f"{args.peer}: final maximum {me.current} (my best slip {max(numbers, default=None)})", flush=True
        )
        await me.leave()
    finally:
        await connection.stopService()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--group", default="philosophers")
    parser.add_argument("--peer", required=True)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--url", default=None, help="broker URL (default $TXMSG_URL or localhost)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between draws")
    parser.add_argument(
        "--ask-timeout", type=float, default=0.5, help="seconds to gather the others' maximum"
    )
    parser.add_argument("--quiet", type=float, default=2.0, help="quiet seconds before leaving")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
