"""
Private RabbitMQ nodes beside the shared broker, for tests that crash and
restart brokers: each node has its own ports, data, logs and Erlang cookie
(a private HOME), and is started with the package's own scripts under
/usr/lib/rabbitmq/bin (the /usr/sbin wrappers switch user and write to the
main node's log).  Only processes started here are ever signalled, by the PID
their node wrote.

Nodes run where L{tests.broker.NODES} says: on the host's C{rabbitmq-server}
package, or inside the Debian sid root of C{scripts/rabbitmq4.sh} (RabbitMQ 4),
where every command goes through that script's C{run} (a private mount
namespace and chroot) and the nodes share the root's epmd.  A node's files
then live inside the root; L{RabbitNode.inside} gives a path as the node sees it.
"""

from __future__ import annotations

import atexit
import functools
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..broker import NODES

BIN = Path("/usr/lib/rabbitmq/bin")
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq4.sh"
#: the sid root when nodes run in it, else None
SID_ROOT: Path | None = (
    Path(os.environ.get("TXMSG_RABBITMQ4_ROOT", Path(__file__).resolve().parents[2] / ".txmsg" / "sid"))
    if NODES == "rabbitmq4"
    else None
)


#: RabbitMQ 4 nodes run as upstream 4.3 ships (Debian's build permits both)
UPSTREAM_4_3 = (
    "deprecated_features.permit.transient_nonexcl_queues = false\n"
    "deprecated_features.permit.global_qos = false\n"
    if SID_ROOT is not None
    else ""
)


#: ports L{free_port} gave out in this process (a node's AMQP, distribution
#: and TLS ports must differ)
_GIVEN: set[int] = set()
#: where L{free_port} looks: below Linux's default ephemeral range (32768 and
#: up), so that a client connection's local port cannot take a port between
#: the moment it is picked and the moment a node binds it
_PORTS = range(20000, 32768)


def _bindable(port: int) -> bool:
    # a node listens on [::] (IPv4 as well): the port must be free on every address
    try:
        s = socket.socket(socket.AF_INET6)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        where: tuple[str, int] = ("::", port)
    except OSError:
        s, where = socket.socket(), ("0.0.0.0", port)
    with s:
        try:
            s.bind(where)
        except OSError:
            return False
    return True


def free_port() -> int:
    """
    A port nothing uses on any address, not given out before in this process,
    outside the kernel's range for the local ports of connections.
    """
    for _ in range(200):
        port = random.choice(_PORTS)
        if port not in _GIVEN and _bindable(port):
            _GIVEN.add(port)
            return port
    raise RuntimeError(f"no free port in {_PORTS.start}-{_PORTS.stop - 1}")


def available() -> bool:
    if SID_ROOT is not None:
        return (SID_ROOT / str(BIN).lstrip("/") / "rabbitmq-server").exists()
    return (BIN / "rabbitmq-server").exists()


def scratch(prefix: str) -> Path:
    """
    A new empty directory for private nodes' files, where those nodes can
    read it (inside the sid root for RabbitMQ 4); removed when the tests end.
    """
    parent = None
    if SID_ROOT is not None:
        parent = SID_ROOT / "txmsg" / "tests"
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=parent))
    atexit.register(shutil.rmtree, path, True)
    return path


def _command(exe: str, *args: str) -> list[str]:
    if SID_ROOT is None:
        return [str(BIN / exe), *args]
    return ["bash", str(SCRIPT), "run", str(BIN / exe), *args]


@functools.cache
def _epmd_port() -> str:
    """
    The port of the sid root's epmd, started if need be (the script knows it).
    """
    done = subprocess.run(
        ["bash", str(SCRIPT), "epmd"], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout.strip()


class RabbitNode:
    """
    One private node, C{name@localhost}, on C{port} (AMQP) and C{dist_port}.
    """

    def __init__(self, base: Path, name: str, home: Path | None = None, config: str = "") -> None:
        """
        @param base: a directory from L{scratch}.
        @param config: more lines for the node's C{rabbitmq.conf} (e.g. a TLS
            listener; paths in it as L{inside} gives them).
        """
        self.name = name
        self.node = f"{name}@localhost"
        self.base = base / name
        self.home = home or (base / "home")
        self.port = free_port()
        self.dist_port = free_port()
        self.pid_file = self.base / "rabbit.pid"
        for d in (self.base / "mnesia", self.base / "log", self.home):
            d.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(os.urandom(16).hex())
            cookie.chmod(0o400)
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "rabbitmq.conf").write_text("loopback_users = none\n" + UPSTREAM_4_3 + config)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @staticmethod
    def inside(path: Path) -> str:
        """
        C{path} (on the host) as the node sees it.
        """
        if SID_ROOT is None:
            return str(path)
        return "/" + str(Path(path).resolve().relative_to(SID_ROOT.resolve()))

    def env(self) -> dict[str, str]:
        if SID_ROOT is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        else:
            # a clean environment inside the root; the script's own settings
            env = {
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG": "C.UTF-8",
                "TXMSG_RABBITMQ4_ROOT": str(SID_ROOT),
                "ERL_EPMD_PORT": _epmd_port(),
                "TXMSG_RABBITMQ4_EPMD_PORT": _epmd_port(),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
            }
        inside = self.inside
        env.update(
            HOME=inside(self.home),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=inside(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=inside(self.base / "log"),
            RABBITMQ_PID_FILE=inside(self.pid_file),
            RABBITMQ_ENABLED_PLUGINS_FILE=inside(self.base / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=inside(self.base / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=inside(self.base / "rabbitmq"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_CRASH_DUMP=inside(self.base / "log" / "erl_crash.dump"),
        )
        return env

    def ctl(self, *args: str, timeout: float = 120) -> str:
        return subprocess.run(
            _command("rabbitmqctl", "-n", self.node, *args),
            env=self.env(),
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
        ).stdout

    def start(self) -> None:
        """
        Start the node detached; L{wait} for it.
        """
        self.pid_file.unlink(missing_ok=True)
        subprocess.run(
            _command("rabbitmq-server", "-detached"),
            env=self.env(),
            check=True,
            timeout=60,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait(self, timeout: int = 120) -> None:
        deadline = time.monotonic() + 30
        while not self.pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            self.ctl("wait", self.inside(self.pid_file), "--timeout", str(timeout), timeout=timeout + 10)
        except subprocess.CalledProcessError as e:
            why = (e.stderr or "").strip()
            raise RuntimeError(f"{self.node} did not start: {why}\n{self.log_tail()}") from None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.node} does not accept AMQP on {self.port}")

    def version(self) -> tuple[int, int]:
        """
        The node's RabbitMQ (major, minor) version.
        """
        out = self.ctl("eval", "rabbit_misc:version().").strip().strip('"')
        major, minor = (int(n) for n in out.split(".")[:2])
        return major, minor

    def flush_metadata(self) -> None:
        """
        Make the node's metadata (queues, exchanges, bindings declared so far)
        survive a C{kill -9}.  RabbitMQ 3 keeps it in Mnesia, whose log is
        written out by C{mnesia:dump_log()}; RabbitMQ 4 keeps it in Khepri,
        which answers a declaration only once the change is in its Raft log,
        synced to disk: nothing is left to flush, and Mnesia is not running.
        """
        if self.version() < (4, 0):
            self.ctl("eval", "mnesia:dump_log().")

    def log_tail(self, lines: int = 30) -> str:
        """
        The last lines of the node's logs (why it did not start).
        """
        parts = []
        for path in sorted((self.base / "log").glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(parts) or f"(no log in {self.base / 'log'})"

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def kill9(self) -> None:
        """
        Crash the node: SIGKILL to the PID it wrote (ours alone).
        """
        pid = self.pid()
        if pid is None:
            raise RuntimeError(f"{self.node} has no pid")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            self.ctl("stop", self.inside(self.pid_file), timeout=60)
        except (subprocess.SubprocessError, OSError):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
