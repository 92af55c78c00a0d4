"""
Open peer groups over a fanout exchange: every peer hears every shout.

A peer joins by binding a queue of its own to the group's fanout exchange;
anyone may join or leave at any time (an open set).  A transient peer's queue
is exclusive and goes with the peer; a durable peer's queue stays while the
peer is away and collects what was shouted meanwhile, until the peer leaves
for good with C{leave(discard=True)}.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmsg._declaring_service import DeclaringService
from txmsg.connection import Connection
from txmsg.consumer import DEFAULT_PREFETCH, Consumer, Handler
from txmsg.message import Message
from txmsg.producer import Producer
from txmsg.topology import Binding, Exchange, Queue

#: the header naming the peer that shouted a message
PEER_HEADER = "x-txmsg-peer"


class PeerGroup(DeclaringService):
    """
    Join the group C{name} (a fanout exchange of that name) as C{peer_id};
    C{handler(message)} gets every shout, this peer's own too unless
    C{ignore_self}.  Start the service to join, stop it to leave.

    @param durable: keep this peer's queue (named C{<group>.<peer_id>}) while
        it is away; otherwise it is exclusive and deleted when the peer leaves.
    """

    _log = Logger()

    def __init__(
        self,
        connection: Connection,
        name: str,
        handler: Handler,
        *,
        peer_id: str | None = None,
        durable: bool = False,
        ignore_self: bool = False,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> None:
        if not name:
            raise ValueError("a peer group needs a name")
        super().__init__(connection)
        self.group = name
        self.handler = handler
        self.peer_id = peer_id or uuid.uuid4().hex[:12]
        self.durable = durable
        self.ignore_self = ignore_self
        self.exchange = Exchange(name, "fanout", durable=True)
        self.queue = Queue(
            f"{name}.{self.peer_id}", durable=durable, exclusive=not durable, auto_delete=not durable
        )
        self.topology = [self.exchange, self.queue, Binding(self.queue, self.exchange, "")]
        self.producer = Producer(connection)
        self.consumer = Consumer(connection, self.queue, self._heard, prefetch=prefetch)
        self.consumers = [self.consumer]
        #: shouts heard (own ones skipped by ignore_self not counted)
        self.heard = 0

    def shout(self, payload: Any, **properties: Any) -> Deferred[None]:
        """
        Send C{payload} to every peer in the group (confirmed by the broker).
        """
        headers = dict(properties.pop("headers", None) or {})
        headers[PEER_HEADER] = self.peer_id
        return self.producer.publish(self.group, "", payload, headers=headers, **properties)

    def leave(self, discard: bool = False) -> Deferred[None]:
        """
        Leave the group: stop hearing shouts.  A durable peer's queue stays (it
        goes on collecting shouts for when the peer comes back) unless
        C{discard}; a transient peer's queue is always deleted.
        """
        d: Deferred[Any] = succeed(None)
        if self.running:
            d = self.stopService() or succeed(None)
        self.connection.forget(*self.topology[1:])
        if discard or not self.durable:
            d.addCallback(lambda _: self.connection.delete(self.queue))
            d.addErrback(
                lambda f: self._log.failure("deleting the queue of peer {peer}", f, peer=self.peer_id)
            )
        return d.addCallback(lambda _: None)

    def _delete_failed(self, reason: Failure) -> None:
        self._log.failure("deleting the queue of peer {peer}", reason, peer=self.peer_id)

    @staticmethod
    def sender(message: Message) -> str | None:
        """
        The id of the peer that shouted C{message}, if it said.
        """
        peer = (message.headers or {}).get(PEER_HEADER)
        return peer if isinstance(peer, str) else None

    def _heard(self, message: Message) -> Any:
        if self.ignore_self and self.sender(message) == self.peer_id:
            return None
        self.heard += 1
        return self.handler(message)  # the consumer makes its outcome (txmsg._outcome)


__all__ = ["PEER_HEADER", "PeerGroup"]
