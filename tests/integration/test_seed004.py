"""
Seed 004: the small cloud provider.  Server processes (examples/cloud/server.py)
share a direct exchange; the command-line client (examples/cloud/client.py)
sends commands as routing keys: create-vm reaches one server with room,
list-vms reaches all, start/stop/delete-vm reach all and the owner acts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from .support import BROKER_URL, unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), TXMSG_URL=BROKER_URL)


class Cloud:
    """
    Server processes on an exchange of their own, and the client to drive them.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.exchange = unique("computing")
        self.servers: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, server_id: str) -> str:
        return (self.tmp / f"{server_id}.log").read_text()

    def start(self, **capacities: int) -> None:
        """
        Start a server per C{server_id=capacity}, all at once; return when every
        one printed its readiness line.
        """
        for server_id, capacity in capacities.items():
            out = (self.tmp / f"{server_id}.log").open("w")
            self.servers[server_id] = subprocess.Popen(
                [
                    sys.executable,
                    "examples/cloud/server.py",
                    *("--server-id", server_id, "--capacity", str(capacity)),
                    *("--exchange", self.exchange, "--url", BROKER_URL),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=ENV,
            )
            out.close()
        deadline = time.monotonic() + 20
        for server_id, proc in self.servers.items():
            while f"server {server_id} ready" not in self.log(server_id):
                assert proc.poll() is None, self.log(server_id)
                assert time.monotonic() < deadline, self.log(server_id)
                time.sleep(0.05)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "examples/cloud/client.py", "--exchange", self.exchange, *args]

    def client(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=30, check=False
        )

    def stop(self, server_id: str) -> int | None:
        """
        SIGTERM; the exit code.
        """
        proc = self.servers[server_id]
        proc.send_signal(signal.SIGTERM)
        return proc.wait(15)

    def vms(self, expect: int) -> dict[str, str]:
        """
        list-vms: each server's line (without its id), by server id.
        """
        done = self.client("list-vms", "--expect", str(expect))
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert lines[-1] == f"{expect} servers answered"
        return dict(line.split(" ", 1) for line in lines[:-1])

    def close(self) -> None:
        for proc in self.servers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        try:
            ch = conn.channel()
            ch.queue_delete(f"{self.exchange}.create-vm")
            ch.exchange_delete(self.exchange)
        finally:
            conn.close()


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path)
    yield c
    c.close()


def created_on(line: str, vm: str) -> str:
    """
    The server in the client's "created VM on server ID (running)" line.
    """
    prefix = f"created {vm} on server "
    assert line.startswith(prefix) and line.endswith(" (running)"), line
    return line[len(prefix) : -len(" (running)")]


def test_create_vm_lands_on_one_server_and_list_vms_gathers_all(cloud: Cloud) -> None:
    """
    create-vm is created by exactly one of three servers (the one the client
    names); list-vms gathers a line from every server, the VM only in its
    owner's, both with --expect 3 and, without it, at the deadline.
    """
    cloud.start(s1=3, s2=3, s3=3)
    done = cloud.client("create-vm", "web1")
    assert done.returncode == 0, done.stdout + done.stderr
    owner = created_on(done.stdout.strip(), "web1")
    assert owner in ("s1", "s2", "s3")
    assert [s for s in cloud.servers if "created web1" in cloud.log(s)] == [owner]

    listed = cloud.vms(expect=3)
    assert sorted(listed) == ["s1", "s2", "s3"]
    for server, line in listed.items():
        assert line == ("[1/3]: web1 (running)" if server == owner else "[0/3]: no VMs")

    # without --expect the client takes what came by the deadline: still every server
    start = time.monotonic()
    done = cloud.client("list-vms", "--timeout", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - start >= 1.0
    assert done.stdout.splitlines()[-1] == "3 servers answered"
    assert sorted(line.split(" ", 1)[0] for line in done.stdout.splitlines()[:-1]) == ["s1", "s2", "s3"]


def test_full_servers_leave_create_vm_to_servers_with_room(cloud: Cloud) -> None:
    """
    Capacities 0, 1 and 2: three creates sent at once all succeed, none on the
    server without room and none beyond a server's capacity; a fourth fails at
    once with "no server" (every server is full); after a delete the owner
    takes create-vm again.
    """
    cloud.start(none=0, one=1, two=2)
    assert "not taking create-vm" in cloud.log("none")
    procs = [
        subprocess.Popen(
            cloud.command("create-vm", f"vm{i}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=ENV,
        )
        for i in range(3)
    ]
    owners = {}
    for i, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        owners[f"vm{i}"] = created_on(out.strip(), f"vm{i}")
    assert sorted(owners.values()) == ["one", "two", "two"]
    listed = cloud.vms(expect=3)
    assert listed["none"] == "[0/0]: no VMs"
    assert listed["one"].startswith("[1/1]: ")
    assert listed["two"].startswith("[2/2]: ")

    start = time.monotonic()
    done = cloud.client("create-vm", "vm3", "--timeout", "20")
    assert done.returncode == 4, done.stdout + done.stderr
    assert (
        done.stdout.strip()
        == f"no server: none has room for vm3 on exchange {cloud.exchange!r} (or none is running)"
    )
    assert time.monotonic() - start < 10

    freed = next(vm for vm, server in owners.items() if server == "two")
    done = cloud.client("delete-vm", freed, "--expect", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"two: deleted {freed}" in done.stdout.splitlines()
    done = cloud.client("create-vm", "vm3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert created_on(done.stdout.strip(), "vm3") == "two"


def test_vm_commands_reach_the_owner_and_others_answer_errors(cloud: Cloud) -> None:
    """
    stop-vm, start-vm and delete-vm reach every server: the owner acts and
    says so, the two others answer with an error status; a VM nobody hosts
    makes the client fail with exit code 1.
    """
    cloud.start(s1=2, s2=2, s3=2)
    done = cloud.client("create-vm", "db")
    assert done.returncode == 0, done.stdout + done.stderr
    owner = created_on(done.stdout.strip(), "db")
    others = sorted({"s1", "s2", "s3"} - {owner})

    for command, state in (("stop-vm", "stopped"), ("start-vm", "running"), ("delete-vm", "deleted")):
        done = cloud.client(command, "db", "--expect", "3")
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert f"{owner}: {state} db" in lines
        assert sorted(line for line in lines if line != f"{owner}: {state} db") == [
            f"{other}: error: no VM named 'db' here" for other in others
        ]
        if command == "stop-vm":
            assert cloud.vms(expect=3)[owner] == "[1/2]: db (stopped)"

    # deleted: nobody hosts it any more
    done = cloud.client("stop-vm", "db", "--expect", "3")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "no server hosts db"


def test_without_servers_the_client_fails_fast(cloud: Cloud) -> None:
    """
    Before any server ran (no exchange yet) and after the last one stopped on
    SIGTERM (cleanly: exit 0, its goodbye line), every command fails within
    seconds with a "no server" line and exit code 4, not at its 20 s timeout.
    """

    def fails_fast(*args: str) -> str:
        start = time.monotonic()
        done = cloud.client(*args, "--timeout", "20")
        assert done.returncode == 4, done.stdout + done.stderr
        assert time.monotonic() - start < 10
        return done.stdout.strip()

    running = f"no server: no cloud server is running on exchange {cloud.exchange!r}"
    assert fails_fast("list-vms") == running
    assert fails_fast("create-vm", "vm").startswith("no server: none has room for vm")

    cloud.start(s1=1)
    assert cloud.client("create-vm", "vm").returncode == 0
    assert cloud.stop("s1") == 0
    assert cloud.log("s1").splitlines()[-1] == "server s1 stopped"
    assert fails_fast("stop-vm", "vm") == running
    assert fails_fast("create-vm", "vm2").startswith("no server: none has room for vm2")
