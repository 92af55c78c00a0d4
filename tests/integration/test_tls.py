"""
TLS failures are fatal and typed: a certificate the client cannot verify
stops the connection with TLSError instead of retrying forever.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from txmsg import Connection, ProtocolError, TLSError

from ..tls import HAVE_TLS, TLSServer
from .support import eventually

pytestmark = [
    pytest.mark.skipif(not HAVE_TLS, reason="needs twisted[tls]"),
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning"),
]


@pytest_twisted.ensureDeferred
async def test_unverifiable_certificate_is_tls_error(tls_server: TLSServer, pki: dict[str, Path]) -> None:
    """
    A server certificate signed by a CA the client does not trust fails
    when_ready() with TLSError, and the connection stops trying.
    """
    port = tls_server.start()
    conn = Connection(f"amqps://guest:guest@127.0.0.1:{port}/?cacertfile={pki['other_ca']}", reactor=reactor)
    with pytest.raises(TLSError) as err:
        await conn.when_ready()
    assert "127.0.0.1" in str(err.value)
    await eventually(lambda: not conn.running)


@pytest_twisted.ensureDeferred
async def test_verified_tls_to_a_non_amqp_server_is_a_protocol_error(
    tls_server: TLSServer, pki: dict[str, Path]
) -> None:
    """
    With the right CA the TLS handshake succeeds; a peer that then does not
    speak AMQP is a ProtocolError, also not retried.
    """
    port = tls_server.start()
    conn = Connection(f"amqps://guest:guest@127.0.0.1:{port}/?cacertfile={pki['ca']}", reactor=reactor)
    with pytest.raises(ProtocolError):
        await conn.when_ready()
