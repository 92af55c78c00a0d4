"""
A server of the small cloud provider (seed 004): it hosts up to C{--capacity}
VMs and answers the commands clients send to the direct exchange C{computing}.

    python examples/cloud/server.py --server-id s1 --capacity 2 [--exchange computing] [--url URL]

- C{create-vm} goes to one server: the servers compete on a shared queue
  (C{<exchange>.create-vm}) and only servers with room consume it.
- C{list-vms}, C{start-vm}, C{stop-vm} and C{delete-vm} go to every server (a
  queue of its own, bound with those keys); a server that does not host the VM
  answers with an error status.

Every reply is a dict with C{status} ("ok" or "error") and C{server}.
SIGTERM (or Ctrl-C) stops it cleanly: running requests are answered first.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from txmsg import Binding, Connection, Exchange, Message, Queue, Requeue, RpcServer

#: the commands every server hears; create-vm goes to one server only
BROADCAST = ["list-vms", "start-vm", "stop-vm", "delete-vm"]


def say(line: str) -> None:
    print(line, flush=True)


class CloudServer:
    """
    One server's VMs and its two RPC servers: C{creates} on the shared queue
    (running only while there is room) and C{commands} on a queue of its own.
    """

    def __init__(self, connection: Connection, exchange: str, server_id: str, capacity: int) -> None:
        self.connection = connection
        self.server_id = server_id
        self.capacity = capacity
        #: VM name -> "running" or "stopped"
        self.vms: dict[str, str] = {}
        self.exchange = Exchange(exchange, "direct", durable=True)
        # auto-delete: when no server has room nobody consumes it, it goes, and a
        # client's create-vm fails at once with NoServer instead of waiting
        self.shared = Queue(f"{exchange}.create-vm", auto_delete=True)
        self.binding = Binding(self.shared, self.exchange, "create-vm")
        self.creates = RpcServer(
            connection,
            self.shared,
            self.handle,
            exchange=self.exchange,
            bindings=["create-vm"],
            server_id=server_id,
            prefetch=1,  # take one create at a time: capacity is checked per request
        )
        self.commands = RpcServer(
            connection, None, self.handle, exchange=self.exchange, broadcast=BROADCAST, server_id=server_id
        )
        self.taking = False
        self._switch: Deferred[Any] = defer.succeed(None)

    @property
    def room(self) -> bool:
        return len(self.vms) < self.capacity

    async def start(self) -> None:
        """
        Join: fire once this server consumes its queues.
        """
        await self.connection.connect()
        self.commands.startService()
        await self.commands.declared
        for consumer in self.commands.consumers:
            await consumer.when_ready()
        await self._take_creates(self.room)

    async def stop(self) -> None:
        await self._take_creates(False)
        await self.commands.stopService()
        await self.connection.stopService()

    # ------------------------------------------------------------------
    # taking create-vm only while there is room

    def _take_creates(self, take: bool) -> Deferred[None]:
        """
        Start or stop consuming the shared queue; switches run one after the
        other.  Fire once this one is done.
        """
        if take != self.taking:
            self.taking = take
            step = self._start_creates if take else self._stop_creates
            # on the next turn of the reactor: a handler asks for this while it runs
            later = self.connection.reactor
            self._switch.addCallback(
                lambda _: task.deferLater(later, 0, lambda: defer.ensureDeferred(step()))
            )
            self._switch.addErrback(lambda f: say(f"{self.server_id}: {f.getErrorMessage()}"))
        done: Deferred[None] = Deferred()

        def reached(result: Any) -> Any:
            done.callback(None)
            return result

        self._switch.addBoth(reached)
        return done

    async def _start_creates(self) -> None:
        # declared anew: the queue was deleted if every server was full
        await self.connection.declare(self.shared, self.binding)
        self.creates.startService()
        await self.creates.declared
        for consumer in self.creates.consumers:
            await consumer.when_ready()

    async def _stop_creates(self) -> None:
        # not declared again after a reconnect while full
        self.connection.forget(self.shared, self.binding)
        await self.creates.stopService()

    # ------------------------------------------------------------------
    # the commands

    def handle(self, message: Message) -> dict[str, Any] | Deferred[dict[str, Any]]:
        command = message.routing_key
        payload = message.payload if isinstance(message.payload, dict) else {}
        name = str(payload.get("name", ""))
        if command == "list-vms":
            return self.ok(vms=dict(sorted(self.vms.items())), capacity=self.capacity)
        if command == "create-vm":
            return self.create(name)
        if name not in self.vms:
            return self.error(f"no VM named {name!r} here")
        if command == "delete-vm":
            del self.vms[name]
            say(f"{self.server_id}: deleted {name} ({len(self.vms)}/{self.capacity})")
            reply = self.ok(vm=name, state="deleted")
            if self.room and not self.taking:
                say(f"{self.server_id}: room again, taking create-vm")
                # answer once consuming again, so a create-vm right after finds us
                return self._take_creates(True).addCallback(lambda _: reply)
            return reply
        if command in ("start-vm", "stop-vm"):
            state = "running" if command == "start-vm" else "stopped"
            self.vms[name] = state
            say(f"{self.server_id}: {name} {state}")
            return self.ok(vm=name, state=state)
        return self.error(f"unknown command {command!r}")

    def create(self, name: str) -> dict[str, Any]:
        if not name:
            return self.error("create-vm needs a name")
        if name in self.vms:
            return self.error(f"a VM named {name!r} exists here already")
        if not self.room:
            # delivered before we stopped consuming: back to the queue, for a server with room
            say(f"{self.server_id}: full, requeued create-vm {name}")
            self._take_creates(False)
            raise Requeue()
        self.vms[name] = "running"
        say(f"{self.server_id}: created {name} ({len(self.vms)}/{self.capacity})")
        if not self.room:
            say(f"{self.server_id}: full, no longer taking create-vm")
            self._take_creates(False)
        return self.ok(vm=name, state="running")

    def ok(self, **fields: Any) -> dict[str, Any]:
        return {"status": "ok", "server": self.server_id, **fields}

    def error(self, reason: str) -> dict[str, Any]:
        return {"status": "error", "server": self.server_id, "reason": reason}


async def main(reactor: Any, args: argparse.Namespace) -> None:
    if args.verbose:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    connection = Connection(args.url, reactor=reactor, name=f"cloud-server-{args.server_id}")
    server = CloudServer(connection, args.exchange, args.server_id, args.capacity)
    stopped: Deferred[None] = Deferred()

    async def shutdown() -> None:
        await server.stop()
        say(f"server {args.server_id} stopped")
        stopped.callback(None)

    # SIGTERM and Ctrl-C stop the reactor; it waits for this first
    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(shutdown()))
    await server.start()
    say(
        f"server {args.server_id} ready: capacity {args.capacity}, exchange {args.exchange!r}"
        f"{'' if server.taking else ', not taking create-vm (no room)'}"
    )
    await stopped


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A server of the small cloud provider.")
    parser.add_argument("--server-id", required=True)
    parser.add_argument("--capacity", type=int, default=2, help="how many VMs it hosts at most")
    parser.add_argument("--exchange", default="computing")
    parser.add_argument("--url", default=None, help="broker URL (default $TXMSG_URL or localhost)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log txmsg's events to stderr")
    args = parser.parse_args(argv)
    if args.capacity < 0:
        parser.error("--capacity must not be negative")
    return args


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
