"""
RpcClient's documented knobs, on the in-memory broker: requests go
mandatory with an expiration by default; without mandatory a call nobody
serves times out instead of failing at once; without expiration a request
carries none; reply_queue=True names the client's own reply queue.
"""

from __future__ import annotations

from typing import Any

from txmsg import Message, NoServer, RpcClient, RpcServer, RpcTimeout
from txmsg.testing import MemoryBroker


def _serve(broker: MemoryBroker, seen: list[Message]) -> None:
    def answer(message: Message) -> str:
        seen.append(message)
        return "ok"

    RpcServer(broker.connection(), "svc", answer).startService()
    broker.flush()


def test_by_default_requests_are_mandatory_and_expire_with_their_call() -> None:
    """
    The default client: a request carries the time its call has left as its
    expiration, and a call to a key nobody serves fails at once with NoServer.
    """
    broker = MemoryBroker()
    seen: list[Message] = []
    _serve(broker, seen)
    client = RpcClient(broker.connection())
    served: list[Any] = []
    unserved: list[Any] = []
    client.call("svc", "x", timeout=7).addBoth(served.append)
    client.call("nobody", "x", timeout=7).addBoth(unserved.append)
    broker.flush()
    assert served == ["ok"] and unserved[0].check(NoServer)
    assert seen[0].expiration is not None and 6000 <= int(seen[0].expiration) <= 7000


def test_without_mandatory_and_expire_a_call_waits_out_its_timeout_and_requests_do_not_expire() -> None:
    """
    mandatory=False: a call nobody serves times out (RpcTimeout); expire=False:
    the request has no expiration.
    """
    broker = MemoryBroker()
    seen: list[Message] = []
    _serve(broker, seen)
    client = RpcClient(broker.connection(), mandatory=False, expire=False, reply_queue=True)
    assert client.reply_to.startswith("txmsg.reply.")
    served: list[Any] = []
    unserved: list[Any] = []
    client.call("svc", "x", timeout=5).addBoth(served.append)
    client.call("nobody", "x", timeout=5).addBoth(unserved.append)
    broker.flush()
    assert served == ["ok"] and unserved == [] and seen[0].expiration is None
    broker.flush(6)
    assert unserved[0].check(RpcTimeout)


def test_an_auto_ack_server_answers_and_leaves_nothing_unacked() -> None:
    """
    RpcServer(auto_ack=True) consumes without acks: calls are answered and
    the broker holds no request unacked; with a retry policy it is refused.
    """
    import pytest

    from txmsg import RetryPolicy

    broker = MemoryBroker()
    server = RpcServer(broker.connection(), "svc", lambda m: m.payload * 2, auto_ack=True)
    server.startService()
    client = RpcClient(broker.connection())
    broker.flush()
    out: list[Any] = []
    for n in range(3):
        client.call("svc", n).addBoth(out.append)
    broker.flush()
    assert out == [0, 2, 4]
    assert all(not ch.unacked for _, srv, _ in broker._links for ch in srv.channels.values())
    assert server.consumers[0].acks == "none"
    with pytest.raises(ValueError):
        RpcServer(broker.connection(), "svc", lambda m: None, auto_ack=True, retry=RetryPolicy())
