"""
Shared pytest configuration for the whole suite: the fixtures both the unit
and the integration tests use.

Conftest files hold only fixtures; the helpers they and the tests share live
in support modules that test modules import (never from each other or from a
conftest):

  - C{tests/broker.py}: the broker the tests talk to;
  - C{tests/tls.py}: certificates and TLS servers (under the C{pki} and
    C{tls_server} fixtures here);
  - C{tests/integration/support.py}: the broker tests' helpers (pika peer,
    C{eventually}, the C{txmsg} command and C{twistd txmsg} processes), under
    the fixtures of C{tests/integration/conftest.py}.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .tls import TLSServer, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """
    A CA, a server certificate for localhost/127.0.0.1 and a client
    certificate signed by it, and an unrelated CA, written as PEM files
    (L{tests.tls.make_pki}).
    """
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_server(pki: dict[str, Path]) -> Iterator[TLSServer]:
    """
    A L{TLSServer} with the C{pki} certificates, stopped after the test.
    """
    server = TLSServer(pki)
    yield server
    server.stop()
