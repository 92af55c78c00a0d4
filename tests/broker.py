"""
The broker the tests talk to, in one place: its URL, its host and port, the
C{rabbitmqctl} that reaches it, its RabbitMQ version, and where private nodes
for fault tests run.  Every test module takes these from here; nothing else
names a port or a C{rabbitmqctl}.

Set by C{scripts/test.sh} (C{make test}) for each broker of the run:

  - C{TXMSG_TEST_URL}: the broker (default C{amqp://guest:guest@localhost:5672/%2F});
  - C{TXMSG_TEST_RABBITMQCTL}: a C{rabbitmqctl} for it (default: the one on
    C{PATH}, where C{make test} puts the project's private node's first, else
    C{/usr/sbin/rabbitmqctl});
  - C{TXMSG_TEST_NODES}: where private nodes run: C{host} (the machine's
    C{rabbitmq-server} package, the default) or C{rabbitmq4} (the Debian sid
    root of C{scripts/rabbitmq4.sh}, with C{TXMSG_RABBITMQ4_ROOT} and
    C{TXMSG_RABBITMQ4_EPMD_PORT}).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from urllib.parse import urlsplit

URL = os.environ.get("TXMSG_TEST_URL", "amqp://guest:guest@localhost:5672/%2F")
_parts = urlsplit(URL)
#: the broker's host and AMQP port, as the URL gives them
HOST: str = _parts.hostname or "localhost"
PORT: int = _parts.port or 5672
#: C{host:port}, as it appears in URLs and in txmsg's messages
ADDRESS = f"{HOST}:{PORT}"
#: where private nodes run (see L{tests.integration.nodes})
NODES = os.environ.get("TXMSG_TEST_NODES", "host")


def url_with(
    user: str | None = None,
    password: str | None = None,
    vhost: str | None = None,
    host: str | None = None,
    query: str = "",
) -> str:
    """
    The test broker's URL with some parts replaced (a wrong password, another
    vhost, an unreachable host, heartbeat options...).
    """
    cur_user = _parts.username or "guest"
    cur_pass = _parts.password or "guest"
    netloc = f"{user or cur_user}:{cur_pass if password is None else password}@{host or ADDRESS}"
    path = _parts.path if vhost is None else "/" + vhost
    q = query or _parts.query
    return f"{_parts.scheme}://{netloc}{path}" + (f"?{q}" if q else "")


def rabbitmqctl_command() -> list[str]:
    """
    The command line of a C{rabbitmqctl} that reaches the test broker.
    """
    exe = os.environ.get("TXMSG_TEST_RABBITMQCTL")
    if exe:
        return [exe]
    return [shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"]


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """
    Run C{rabbitmqctl ARGS} against the test broker; its standard output.
    """
    return subprocess.run(
        [*rabbitmqctl_command(), *args], check=True, capture_output=True, text=True, timeout=timeout
    ).stdout


@functools.cache
def version_string() -> str:
    """
    The RabbitMQ version the test broker reports (C{server_properties}).
    """
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        raw = conn._impl.server_properties.get("version", b"0")
    finally:
        conn.close()
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def version() -> tuple[int, int]:
    """
    The test broker's (major, minor) version, e.g. C{(4, 3)}.
    """
    numbers = [*(int(n) for n in version_string().split(".")[:2] if n.isdigit()), 0, 0]
    return numbers[0], numbers[1]


def at_least(major: int, minor: int = 0) -> bool:
    """
    Whether the test broker is RabbitMQ C{major.minor} or later.
    """
    return version() >= (major, minor)


def denies_transient_queues() -> bool:
    """
    Whether the test broker refuses transient non-exclusive queues (RabbitMQ 4
    configured as upstream 4.3 ships).  Asked of the broker itself.
    """
    if not at_least(3, 13):
        return False
    import json

    features = json.loads(rabbitmqctl("list_deprecated_features", "--formatter=json", "-q"))
    return any(f["name"] == "transient_nonexcl_queues" and f["state"] == "denied" for f in features)
