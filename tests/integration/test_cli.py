"""
The ``txmsg`` command from a shell: it publishes confirmed messages, and user
mistakes are one readable line with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import pytest_twisted

from txmsg import Connection, Queue

from .conftest import BROKER_URL, PikaPeer, unique

pytestmark = pytest.mark.integration


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "txmsg.cli", *args], capture_output=True, text=True, timeout=60
    )


@pytest_twisted.ensureDeferred
async def test_publish_puts_messages_on_the_queue(connection: Connection, pika_peer: PikaPeer) -> None:
    """
    ``txmsg publish QUEUE a b`` leaves two messages on the queue, read by pika.
    """
    name = unique("cli")
    await connection.declare(Queue(name))
    try:
        from twisted.internet.threads import deferToThread

        result = await deferToThread(run_cli, "publish", "--url", BROKER_URL, name, "first", "second")
        assert result.returncode == 0, result.stderr
        got = await pika_peer.get(name, count=2)
        assert [b for _, _, b in got] == [b"first", b"second"]
    finally:
        await pika_peer.delete_queue(name)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--url", "amqp://guest:wrong-pw@localhost:5672/%2F"], "refused the login of user 'guest'"),
        (["--url", "amqp://guest:guest@localhost:5672/nope-vhost"], "nope-vhost"),
        (["--url", "amqp://guest:guest@localhost:99999/"], "port 99999 out of range"),
        (["--url", BROKER_URL, "--mandatory"], "NO_ROUTE"),
    ],
)
def test_user_mistakes_are_one_line_and_nonzero_exit(args: list[str], expected: str) -> None:
    """
    A wrong password, an unknown vhost, a bad URL and an unroutable mandatory
    message each print one line naming the problem (never the password) and exit
    non-zero without a traceback.
    """
    result = run_cli("publish", *args, unique("nowhere"), "body")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "wrong-pw" not in result.stderr and "Traceback" not in result.stderr
