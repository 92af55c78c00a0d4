"""
The public API is what C{txmsg.__all__} and C{txmsg.testing.__all__} say, no
more and no less (as klein's C{test_exports.py} guards its own): a name added
or dropped is a decision this test makes visible.
"""

from __future__ import annotations

import inspect

import txmsg
import txmsg.testing

PUBLIC = {
    # connecting
    "Connection", "ClusterEndpoint", "ConnectionParameters", "parse_url", "parse_urls",
    # topology
    "Exchange", "Queue", "Binding", "ExchangeBinding", "QueueInfo",
    # messages, publishing, consuming
    "Message", "Producer", "Consumer", "Requeue", "Reject", "Retry", "RetryPolicy",
    # patterns
    "RpcClient", "RpcServer", "Reply", "PeerGroup", "JobClient", "Worker",
    "JobProgress", "JobResult", "TaskFailure",
    # errors
    "TxmsgError", "AMQPError", "ChannelError", "NotFound", "PreconditionFailed", "ResourceLocked",
    "AccessRefused", "ConnectionClosed", "ConnectionLost", "ChannelClosed", "FatalConnectionError",
    "AuthenticationError", "VhostNotFound", "TLSError", "ProtocolError", "UndecodableMessage",
    "DeprecatedFeature", "MessageTooLarge", "InvalidURL", "NoBrokerAvailable", "Nacked", "Unroutable",
    "PublishTimeout", "RpcError", "RpcTimeout", "NoServer", "RemoteError", "JobTimeout",
    "__version__",
}  # fmt: skip


def test_txmsg_exports_exactly_the_public_names() -> None:
    """
    C{txmsg.__all__} is the public set above, with no duplicate and no
    private name, and every name in it is importable from C{txmsg}.
    """
    assert len(txmsg.__all__) == len(set(txmsg.__all__))
    assert set(txmsg.__all__) == PUBLIC
    for name in txmsg.__all__:
        assert hasattr(txmsg, name), name


def test_every_public_class_and_function_has_a_docstring() -> None:
    """
    Each exported class or function says what it is (the API reference is
    made from these).
    """
    missing = [
        name
        for name in txmsg.__all__
        if (inspect.isclass(getattr(txmsg, name)) or inspect.isfunction(getattr(txmsg, name)))
        and not inspect.getdoc(getattr(txmsg, name))
    ]
    assert missing == []


def test_txmsg_testing_exports_the_memory_broker() -> None:
    """
    C{txmsg.testing} offers the in-memory broker and the URL its connections use.
    """
    assert set(txmsg.testing.__all__) == {"MEMORY_URL", "MemoryBroker"}
    assert inspect.getdoc(txmsg.testing.MemoryBroker)
