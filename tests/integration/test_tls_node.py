"""
Fault scenario 11, TLS against a real broker: a private RabbitMQ node with a
TLS listener whose certificate is signed by a CA this module creates (the
certificate names ``localhost`` only).  A verified connection carries
confirmed messages; a wrong CA, a wrong host name and plain AMQP to the TLS
port each fail at once, with one line and exit status 76 from the command and
from twistd, and the connection stops instead of retrying.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from txmsg import Connection, Consumer, Message, Producer, ProtocolError, Queue, TLSError

from ..tls import HAVE_TLS, cert_pem, key_pem, make_cert
from .nodes import RabbitNode, available, free_port, scratch
from .support import COMMAND as CLI
from .support import TWISTD, eventually, run, unique

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed"),
    pytest.mark.skipif(not HAVE_TLS, reason="needs twisted[tls]"),
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning"),
]


@dataclass
class TLSNode:
    node: RabbitNode
    tls_port: int
    files: dict[str, Path]

    def url(self, host: str = "localhost", ca: str = "ca", tls: bool = True, port: int | None = None) -> str:
        if not tls:
            return f"amqp://guest:guest@{host}:{port or self.tls_port}/%2F"
        return f"amqps://guest:guest@{host}:{port or self.tls_port}/%2F?cacertfile={self.files[ca]}"


@pytest.fixture(scope="module")
def tls_node() -> Iterator[TLSNode]:
    from cryptography import x509

    base = scratch("tls-node")
    ca = make_cert("txmsg test CA", ca=True)
    other_ca = make_cert("some other CA", ca=True)
    server = make_cert("localhost", ca, san=[x509.DNSName("localhost")])
    contents = {
        "ca": cert_pem(ca[0]),
        "other_ca": cert_pem(other_ca[0]),
        "cert": cert_pem(server[0]),
        "key": key_pem(server[1]),
    }
    files = {}
    for name, data in contents.items():
        files[name] = base / f"{name}.pem"
        files[name].write_bytes(data)
    tls_port = free_port()
    config = (
        f"listeners.ssl.default = {tls_port}\n"
        f"ssl_options.cacertfile = {RabbitNode.inside(files['ca'])}\n"
        f"ssl_options.certfile = {RabbitNode.inside(files['cert'])}\n"
        f"ssl_options.keyfile = {RabbitNode.inside(files['key'])}\n"
        "ssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n"
        # the 20 MB message of the big-message test is over RabbitMQ 4's default
        "max_message_size = 134217728\n"
    )
    node = RabbitNode(base, f"txmsg-{unique('tls')[-6:]}", config=config)
    node.start()
    try:
        node.wait()
        yield TLSNode(node, tls_port, files)
    finally:
        node.stop()


@pytest_twisted.ensureDeferred
async def test_verified_tls_connection_carries_confirmed_messages(tls_node: TLSNode) -> None:
    """
    amqps:// to localhost with the test CA: 200 confirmed messages go through
    and are consumed, and the broker lists the connection as TLS.
    """
    conn = Connection(tls_node.url(), reactor=reactor, name=unique("tls-ok"))
    queue = Queue(unique("tls"))
    got: list[str] = []
    try:
        await conn.declare(queue)
        producer = Producer(conn)
        for i in range(200):
            await producer.publish("", queue.name, f"m{i}".encode(), message_id=f"m{i}")

        def handle(message: Message) -> None:
            got.append(message.body.decode())

        consumer = Consumer(conn, queue, handle)
        consumer.startService()
        await eventually(lambda: len(got) == 200)
        await consumer.stopService()
        assert got == [f"m{i}" for i in range(200)]
        # this is the only client of the private node
        listed = tls_node.node.ctl("list_connections", "ssl", "ssl_protocol", "--no-table-headers", "-q")
        assert [line.split("\t")[0] for line in listed.splitlines()] == ["true"], listed
    finally:
        await conn.stopService()


@pytest_twisted.ensureDeferred
async def test_big_messages_over_tls_arrive_whole_and_in_order(tls_node: TLSNode) -> None:
    """
    Over TLS (a transport txmsg cannot write past, so a big message goes to it
    a frame at a time as it drains): a 20 MB message published between two
    small ones, and a second big one after, are confirmed and consumed in
    order, every byte intact.
    """
    import hashlib

    from twisted.internet.defer import gatherResults

    conn = Connection(tls_node.url(), reactor=reactor, name=unique("tls-big"))
    queue = Queue(unique("tls-big"))
    big = hashlib.sha256(b"tls").digest() * (20 * 1024 * 1024 // 32)
    bodies = [b"before", big, b"after", big[::-1]]
    got: list[bytes] = []
    try:
        await conn.declare(queue)
        producer = Producer(conn)
        await gatherResults([producer.publish("", queue.name, body) for body in bodies])
        consumer = Consumer(conn, queue, lambda message: got.append(message.body))
        consumer.startService()
        await eventually(lambda: len(got) == len(bodies), timeout=60)
        await consumer.stopService()
        assert [hashlib.sha256(b).digest() for b in got] == [hashlib.sha256(b).digest() for b in bodies]
    finally:
        await conn.stopService()


@dataclass(frozen=True)
class Bad:
    host: str
    ca: str
    tls: bool
    plain_port: bool
    error: type[Exception]
    needle: str


BAD = {
    "wrong CA": Bad("localhost", "other_ca", True, False, TLSError, "certificate verify failed"),
    "wrong host name": Bad("127.0.0.1", "ca", True, False, TLSError, "not valid for 127.0.0.1"),
    "plain AMQP to the TLS port": Bad("localhost", "ca", False, False, ProtocolError, "use an amqps:// URL"),
    "TLS to the plain AMQP port": Bad(
        "localhost", "ca", True, True, TLSError, "TLS handshake with localhost failed"
    ),
}


def bad_url(tls_node: TLSNode, bad: Bad) -> str:
    port = tls_node.node.port if bad.plain_port else None
    return tls_node.url(bad.host, bad.ca, bad.tls, port)


@pytest.mark.parametrize("name", list(BAD))
@pytest_twisted.ensureDeferred
async def test_connection_fails_once_with_a_typed_error(tls_node: TLSNode, name: str) -> None:
    """
    Connection.when_ready() fails with TLSError or ProtocolError saying what is
    wrong, and the connection stops rather than retrying.
    """
    bad = BAD[name]
    conn = Connection(bad_url(tls_node, bad), reactor=reactor, name=unique("tls-bad"))
    with pytest.raises(bad.error) as caught:
        await conn.when_ready()
    assert bad.needle in str(caught.value)
    await eventually(lambda: not conn.running)


@pytest.mark.parametrize("name", list(BAD))
def test_command_and_twistd_exit_76_with_one_line(tls_node: TLSNode, name: str, tmp_path: Path) -> None:
    """
    ``txmsg publish`` prints one line and exits 76 (EX_PROTOCOL) without
    waiting for its 30 s --timeout; ``twistd txmsg`` logs one "cannot start"
    line and exits 76 too.
    """
    bad = BAD[name]
    url = bad_url(tls_node, bad)
    ran = run([*CLI, "publish", "--url", url, "--timeout", "30", "-k", "q", "x"], tmp_path)
    assert ran.code == 76, ran.lines
    assert len(ran.lines) == 1 and bad.needle in ran.lines[0], ran.lines
    assert ran.seconds < 15
    ran = run([*TWISTD, "--role", "consumer", "--queue", "q", "--url", url], tmp_path)
    assert ran.code == 76, ran.lines
    stops = [line for line in ran.lines if "cannot start:" in line]
    assert len(stops) == 1 and bad.needle in stops[0], ran.lines
    assert not any("Scheduling retry" in line for line in ran.lines), ran.lines
