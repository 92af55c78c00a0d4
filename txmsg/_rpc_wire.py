"""
What RPC clients and servers share: the conventions of a request and its
reply (see L{txmsg.rpc}), the errors a call fails with, and a reply.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from txmsg.errors import TxmsgError
from txmsg.message import Message
from txmsg.producer import Unroutable

#: RabbitMQ's direct reply-to pseudo-queue
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
ERROR_HEADER = "x-txmsg-error"
DEFAULT_TIMEOUT = 30.0


class RpcError(TxmsgError):
    """
    Base class of RPC failures.
    """


class NoServer(Unroutable, RpcError):
    """
    No queue is bound to the call's routing key: the broker returned the request.
    """


class RpcTimeout(RpcError):
    """
    No reply came within the call's timeout.
    """


class RemoteError(RpcError):
    """
    The server's handler raised; C{remote_type} and C{remote_message} say what.
    """

    def __init__(self, remote_type: str, remote_message: str, server: str | None = None) -> None:
        super().__init__(f"{remote_type}: {remote_message}" if remote_message else remote_type)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.server = server


@dataclass(frozen=True)
class Reply:
    """
    One server's reply: C{server} is its id (C{None} for a server that does not
    say), C{payload} the decoded body, C{message} the whole message.
    """

    server: str | None
    payload: Any
    message: Message


def default_server_id() -> str:
    """
    A server id unique to this process: host name, process id and a random part.
    """
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
