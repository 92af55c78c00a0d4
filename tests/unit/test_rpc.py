"""
RpcServer and RpcClient against the in-memory broker, on a Clock: the order
of a reply and its request's ack, and what a call puts on the wire.
"""

from __future__ import annotations

from typing import Any

from txmsg import Message, RpcClient, RpcServer
from txmsg.testing import MemoryBroker


def test_a_request_is_acked_only_after_its_reply_is_written() -> None:
    """
    While the server's connection cannot write (its buffer is full) the reply
    waits, and so does the request's ack: when that connection is lost the
    broker still holds the request for another server.  Once writing resumes
    the reply goes, the ack after it, and the call is answered.
    """
    broker = MemoryBroker()
    server_conn, client_conn = broker.connection(), broker.connection()
    server = RpcServer(server_conn, "work", lambda m: m.payload + 1)
    server.startService()
    client = RpcClient(client_conn)
    broker.flush()
    protocol = server_conn.protocol
    assert protocol is not None
    protocol.pauseProducing()
    answers: list[Any] = []
    client.call("work", 1).addBoth(answers.append)
    broker.flush()
    assert server.answered == 1 and answers == []
    assert broker.depth("work") == 0  # delivered, unacked
    protocol.resumeProducing()
    broker.flush()
    assert answers == [2]

    # the same again, but the server's connection dies while the reply waits
    protocol.pauseProducing()
    client.call("work", 10).addBoth(answers.append)
    broker.flush()
    assert server.answered == 2
    broker.drop(server_conn)
    assert broker.depth("work") == 1  # never acked: back in the queue


def test_a_request_carries_its_time_left_and_no_confirm_is_asked() -> None:
    """
    The client publishes requests mandatory, without publisher confirms, with
    a correlation id, reply_to and the call's timeout as expiration.
    """
    broker = MemoryBroker()
    server_conn, client_conn = broker.connection(), broker.connection()
    requests: list[Message] = []

    def handler(m: Message) -> str:
        requests.append(m)
        return "ok"

    RpcServer(server_conn, "svc", handler).startService()
    client = RpcClient(client_conn)
    broker.flush()
    answers: list[Any] = []
    client.call("svc", "x", timeout=7).addBoth(answers.append)
    broker.flush()
    assert answers == ["ok"]
    [request] = requests
    assert request.expiration == "7000"
    assert (request.reply_to or "").startswith(client.reply_to) and request.correlation_id
    assert client.producer.confirm is False


def test_a_server_id_that_cannot_be_an_app_id_is_refused() -> None:
    """
    The server id goes in each reply's app_id, a short string: one longer
    than 255 bytes is refused when the server is made, not at its first reply.
    """
    import pytest

    broker = MemoryBroker()
    with pytest.raises(ValueError, match="255 bytes"):
        RpcServer(broker.connection(), "svc", lambda m: None, server_id="é" * 200)
    assert RpcServer(broker.connection(), "svc", lambda m: None, server_id="s" * 255).server_id == "s" * 255
