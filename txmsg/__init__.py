"""
txmsg: Twisted-native messaging for RabbitMQ (AMQP 0-9-1).
"""

from txmsg._version import __version__
from txmsg.connection import ClusterEndpoint, Connection, NoBrokerAvailable
from txmsg.consumer import Consumer, Reject, Requeue
from txmsg.errors import (
    AccessRefused,
    AMQPError,
    AuthenticationError,
    ChannelClosed,
    ChannelError,
    ConnectionClosed,
    ConnectionLost,
    DeprecatedFeature,
    FatalConnectionError,
    MessageTooLarge,
    NotFound,
    PreconditionFailed,
    ProtocolError,
    ResourceLocked,
    TLSError,
    TxmsgError,
    UndecodableMessage,
    VhostNotFound,
)
from txmsg.jobs import JobClient, JobProgress, JobResult, JobTimeout, TaskFailure, Worker
from txmsg.message import Message
from txmsg.peers import PeerGroup
from txmsg.producer import Nacked, Producer, PublishTimeout, Unroutable
from txmsg.retry import Retry, RetryPolicy
from txmsg.rpc import NoServer, RemoteError, Reply, RpcClient, RpcError, RpcServer, RpcTimeout
from txmsg.topology import Binding, Exchange, ExchangeBinding, Queue, QueueInfo
from txmsg.url import ConnectionParameters, InvalidURL, parse_url, parse_urls

__all__ = [
    "AMQPError",
    "AccessRefused",
    "AuthenticationError",
    "Binding",
    "ChannelClosed",
    "ChannelError",
    "ClusterEndpoint",
    "Connection",
    "ConnectionClosed",
    "ConnectionLost",
    "ConnectionParameters",
    "Consumer",
    "DeprecatedFeature",
    "Exchange",
    "ExchangeBinding",
    "FatalConnectionError",
    "InvalidURL",
    "JobClient",
    "JobProgress",
    "JobResult",
    "JobTimeout",
    "Message",
    "MessageTooLarge",
    "Nacked",
    "NoBrokerAvailable",
    "NoServer",
    "NotFound",
    "PeerGroup",
    "PreconditionFailed",
    "Producer",
    "ProtocolError",
    "PublishTimeout",
    "Queue",
    "QueueInfo",
    "Reject",
    "RemoteError",
    "Reply",
    "Requeue",
    "ResourceLocked",
    "Retry",
    "RetryPolicy",
    "RpcClient",
    "RpcError",
    "RpcServer",
    "RpcTimeout",
    "TLSError",
    "TaskFailure",
    "TxmsgError",
    "UndecodableMessage",
    "Unroutable",
    "VhostNotFound",
    "Worker",
    "__version__",
    "parse_url",
    "parse_urls",
]
