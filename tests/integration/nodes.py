"""
Private RabbitMQ nodes beside the shared broker, for tests that crash and
restart brokers: each node has its own ports, data, logs and Erlang cookie
(a private HOME), and is started with the package's own scripts under
/usr/lib/rabbitmq/bin (the /usr/sbin wrappers switch user and write to the
main node's log).  Only processes started here are ever signalled, by the PID
their node wrote.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

BIN = Path("/usr/lib/rabbitmq/bin")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def available() -> bool:
    return (BIN / "rabbitmq-server").exists()


class RabbitNode:
    """
    One private node, C{name@localhost}, on C{port} (AMQP) and C{dist_port}.
    """

    def __init__(self, base: Path, name: str, home: Path | None = None, config: str = "") -> None:
        """
        @param config: more lines for the node's C{rabbitmq.conf} (e.g. a TLS
            listener).
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
        (self.base / "rabbitmq.conf").write_text("loopback_users = none\n" + config)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME=str(self.home),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_CRASH_DUMP=str(self.base / "log" / "erl_crash.dump"),
        )
        return env

    def ctl(self, *args: str, timeout: float = 120) -> str:
        return subprocess.run(
            [str(BIN / "rabbitmqctl"), "-n", self.node, *args],
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
            [str(BIN / "rabbitmq-server"), "-detached"],
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
        self.ctl("wait", str(self.pid_file), "--timeout", str(timeout), timeout=timeout + 10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.node} does not accept AMQP on {self.port}")

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
            self.ctl("stop", str(self.pid_file), timeout=60)
        except (subprocess.SubprocessError, OSError):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
