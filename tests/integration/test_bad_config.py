"""
Fault scenario 10, bad configuration: one table of mistakes, each run through
the ``txmsg`` command and ``twistd txmsg`` as real processes against the
broker.  Each ends with one readable line and its documented exit status
(txmsg.exits); a fatal mistake ends at once, never in a retry loop, and no
password is ever shown.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .nodes import free_port
from .support import BROKER_URL, ROOT, TWISTD, run
from .support import COMMAND as CLI

pytestmark = pytest.mark.integration

SECRET = "pw-Secret-42"
HOST = BROKER_URL.split("@")[-1].split("/")[0]


@dataclass(frozen=True)
class Case:
    #: --url, or None for the test broker
    url: str | None
    #: more twistd arguments
    twistd_args: tuple[str, ...]
    #: exit status of ``txmsg publish`` (None: the command has no such option)
    cli_code: int | None
    #: exit status of ``twistd txmsg``
    twistd_code: int
    #: what the one line says
    needle: str
    #: the mistake is fatal: the process must not wait for its timeout
    fatal: bool = True


CASES = {
    "wrong password": Case(
        f"amqp://guest:{SECRET}@{HOST}/%2F", (), 77, 77, "refused the login of user 'guest'"
    ),
    "unknown vhost": Case(
        f"amqp://guest:guest@{HOST}/no-such-vhost", (), 77, 77, "cannot open virtual host 'no-such-vhost'"
    ),
    "malformed URL": Case(f"amqp://guest:{SECRET}@{HOST}:99999/%2F", (), 2, 1, "invalid AMQP URL"),
    "unreachable host": Case(
        f"amqp://guest:{SECRET}@127.0.0.1:{free_port()}/%2F",
        ("--connect-timeout", "2"),
        69,
        69,
        "no broker reachable within 2 s",
        fatal=False,
    ),
    "unknown host name": Case(
        f"amqp://guest:{SECRET}@no-such-host.invalid/%2F",
        ("--connect-timeout", "2"),
        69,
        69,
        "no broker reachable within 2 s",
        fatal=False,
    ),
    "handler that does not exist": Case(
        None,
        ("--handler", "no_such_module:handle"),
        None,
        1,
        "--handler no_such_module:handle: cannot find it",
    ),
    "handler whose module fails to import": Case(
        None,
        ("--handler", "broken_handler:handle"),
        None,
        1,
        "--handler broken_handler:handle: importing it failed",
    ),
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "broken_handler.py").write_text("import no_such_dependency_of_the_handler\n")
    return tmp_path


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.cli_code is not None])
def test_txmsg_command(name: str, workdir: Path) -> None:
    """
    ``txmsg publish`` with the mistake: exactly one line on stderr saying what
    is wrong, the documented exit status, at once for a fatal mistake (the
    --timeout is 30 s), and the password nowhere.
    """
    case = CASES[name]
    timeout = "30" if case.fatal else "2"
    assert case.url is not None
    ran = run([*CLI, "publish", "--url", case.url, "--timeout", timeout, "-k", "nowhere", "x"], workdir)
    assert ran.code == case.cli_code, ran.text
    assert len(ran.lines) == 1, ran.text
    assert case.needle in ran.lines[0]
    assert "Traceback" not in ran.text and SECRET not in ran.text
    if case.fatal:
        assert ran.seconds < 15, f"{name} waited {ran.seconds:.1f} s: a fatal error must not be retried"


@pytest.mark.parametrize("name", list(CASES))
def test_twistd_txmsg(name: str, workdir: Path) -> None:
    """
    ``twistd txmsg --role consumer`` with the mistake: the process ends by
    itself with the documented status and one line naming the mistake; a fatal
    broker refusal is tried once (one "connecting to", no retry scheduled).
    """
    case = CASES[name]
    args = [*TWISTD, "--role", "consumer", "--queue", "bad-config", *case.twistd_args]
    if case.url is not None:
        args += ["--url", case.url]
    ran = run(args, workdir)
    assert ran.code == case.twistd_code, ran.text
    assert "Traceback" not in ran.text and SECRET not in ran.text
    if case.twistd_code == 1 and "cannot start" not in ran.text:
        # a usage error: twistd's usage text, then the one line
        assert case.needle in ran.lines[-1], ran.text
        assert len([line for line in ran.lines if case.needle in line]) == 1, ran.text
        return
    stops = [line for line in ran.lines if "cannot start:" in line]
    assert len(stops) == 1 and case.needle in stops[0], ran.text
    if case.fatal:
        assert ran.text.count("connecting to") == 1, ran.text
        assert "Scheduling retry" not in ran.text, ran.text


def test_twistd_keeps_trying_an_unreachable_broker_without_connect_timeout(workdir: Path) -> None:
    """
    An unreachable broker is not a fatal mistake for a service: without
    --connect-timeout, twistd txmsg goes on trying (the broker may come up)
    until it is stopped.
    """
    port = free_port()
    args = [
        *TWISTD,
        "--role",
        "consumer",
        "--queue",
        "bad-config",
        "--url",
        f"amqp://guest:guest@127.0.0.1:{port}/",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = workdir / "twistd.log"
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env)
        try:
            deadline = time.monotonic() + 20
            while log.read_text().count("did not answer") < 2 and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
            assert log.read_text().count("did not answer") >= 2, log.read_text()
            assert proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(30)
    text = log.read_text()
    assert "cannot start" not in text, text
