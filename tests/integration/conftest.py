"""
Fixtures for the broker tests: a pika peer, a txmsg connection, a broker that
takes big bodies.  The helpers under them (and that tests import) are in
L{tests.integration.support}.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet import reactor

from txmsg import Connection

from .. import broker
from .support import BIG_MESSAGE_SIZE, BROKER_URL, PikaPeer, unique


@pytest.fixture
def pika_peer() -> PikaPeer:
    return PikaPeer()


@pytest.fixture(scope="session")
def big_messages_url() -> Iterator[str]:
    """
    The URL of a broker that takes bodies up to 128 MiB: the test broker on
    RabbitMQ 3 (its default), else a private node of the test's RabbitMQ
    configured with C{max_message_size} 128 MiB (RabbitMQ 4 takes 16 MiB by
    default, as the test broker is left).
    """
    if not broker.at_least(4):
        yield BROKER_URL
        return
    from .nodes import RabbitNode, scratch

    config = f"max_message_size = {BIG_MESSAGE_SIZE}\n"
    node = RabbitNode(scratch("big"), f"txmsg-{unique('big')[-6:]}", config=config)
    node.start()
    try:
        node.wait()
        yield node.url
    finally:
        node.stop()


@pytest.fixture
def connection() -> Iterator[Connection]:
    """
    A txmsg connection with a unique name, stopped after the test.
    """
    conn = Connection(BROKER_URL, reactor=reactor, name=unique("conn"))
    yield conn
    if conn.running:
        from pytest_twisted import blockon

        blockon(conn.stopService())
