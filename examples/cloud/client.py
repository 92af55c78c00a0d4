"""
The small cloud provider's command line (seed 004).

    python examples/cloud/client.py create-vm NAME     # one server with room creates it
    python examples/cloud/client.py list-vms           # every server lists its VMs
    python examples/cloud/client.py stop-vm NAME       # also start-vm, delete-vm: the owner acts

Options: --exchange (default computing), --url, --timeout (seconds: the call's
deadline, or how long to gather replies), --expect N (stop gathering once N
servers answered).

Exit codes: 0 done; 1 the servers answered with errors (e.g. nobody hosts the
VM); 3 no answer in time; 4 no server (none running, or for create-vm none with
room); 5 a server failed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import defer, task

from txmsg import Connection, NoServer, NotFound, RemoteError, Reply, RpcClient, RpcTimeout

COMMANDS = ["create-vm", "list-vms", "start-vm", "stop-vm", "delete-vm"]
DONE, FAILED, TIMED_OUT, NO_SERVER, REMOTE_ERROR = 0, 1, 3, 4, 5


def say(line: str) -> None:
    print(line, flush=True)


def describe(reply: Reply) -> tuple[bool, str]:
    """
    One server's answer to list-vms, start-vm, stop-vm or delete-vm as a line;
    and whether it succeeded.
    """
    server = reply.server or "?"
    answer = reply.payload
    if isinstance(answer, RemoteError):
        return False, f"{server}: failed: {answer}"
    if not isinstance(answer, dict):
        return False, f"{server}: unreadable answer {answer!r}"
    if answer.get("status") != "ok":
        return False, f"{server}: error: {answer.get('reason')}"
    if "vms" in answer:
        vms = answer["vms"]
        listed = ", ".join(f"{name} ({state})" for name, state in vms.items()) or "no VMs"
        return True, f"{server} [{len(vms)}/{answer.get('capacity')}]: {listed}"
    return True, f"{server}: {answer.get('state')} {answer.get('vm')}"


async def create(client: RpcClient, args: argparse.Namespace) -> int:
    answer = await client.call("create-vm", {"name": args.name}, exchange=args.exchange, timeout=args.timeout)
    if not isinstance(answer, dict) or answer.get("status") != "ok":
        reason = answer.get("reason") if isinstance(answer, dict) else f"unreadable answer {answer!r}"
        say(f"{answer.get('server') if isinstance(answer, dict) else '?'}: error: {reason}")
        return FAILED
    say(f"created {answer['vm']} on server {answer['server']} ({answer['state']})")
    return DONE


async def gather(client: RpcClient, args: argparse.Namespace) -> int:
    payload = {} if args.command == "list-vms" else {"name": args.name}
    replies = await client.gather(
        args.command, payload, exchange=args.exchange, timeout=args.timeout, expect=args.expect
    )
    if not replies:
        say(f"no server answered {args.command} within {args.timeout:g} s")
        return TIMED_OUT
    outcomes = sorted((describe(r) for r in replies), key=lambda o: o[1])
    for _, line in outcomes:
        say(line)
    succeeded = sum(ok for ok, _ in outcomes)
    if args.command == "list-vms":
        say(f"{len(replies)} servers answered")
        return DONE
    if not succeeded:
        say(f"no server hosts {args.name}")
        return FAILED
    return DONE


async def main(reactor: Any, args: argparse.Namespace) -> int:
    connection = Connection(args.url, reactor=reactor, name="cloud-client")
    client = RpcClient(connection)
    try:
        if args.command == "create-vm":
            return await create(client, args)
        return await gather(client, args)
    except (NoServer, NotFound):
        # NotFound: the exchange does not exist, so no server ever declared it
        if args.command == "create-vm":
            say(
                f"no server: none has room for {args.name} on exchange {args.exchange!r} (or none is running)"
            )
        else:
            say(f"no server: no cloud server is running on exchange {args.exchange!r}")
        return NO_SERVER
    except RpcTimeout:
        say(f"no server answered {args.command} within {args.timeout:g} s")
        return TIMED_OUT
    except RemoteError as e:
        say(f"{e.server}: failed: {e}")
        return REMOTE_ERROR
    finally:
        await connection.stopService()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("name", nargs="?", help="the VM (every command but list-vms)")
    parser.add_argument("--exchange", default="computing")
    parser.add_argument("--url", default=None, help="broker URL (default $TXMSG_URL or localhost)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for answers")
    parser.add_argument("--expect", type=int, default=None, help="stop gathering after N answers")
    args = parser.parse_args(argv)
    if args.command != "list-vms" and not args.name:
        parser.error(f"{args.command} needs a VM name")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])

    async def run(reactor: Any) -> None:
        code = await main(reactor, arguments)
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
