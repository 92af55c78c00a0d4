"""
Settling a consumer's deliveries on one channel: acks batched into one
C{multiple} ack where that is safe, after the read that brought them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from txmsg.connection import Channel


class Acks:
    """
    Settles the deliveries of one channel.  Acks wait until the read that
    brought their deliveries is handled (else until the end of the reactor
    turn) and then go as one C{multiple} ack for the longest run of
    settled deliveries from the oldest, and singly for the rest; rejects go at
    once.  A C{multiple} ack is only sent where every earlier delivery on the
    channel is settled, so it never acks a message still being handled.
    """

    def __init__(self, channel: Channel, reactor: Any) -> None:
        self.channel = channel
        self.reactor = reactor
        #: deliveries in handlers or acked but not yet flushed, oldest first: tag -> acked
        self._open: OrderedDict[int, bool] = OrderedDict()
        self._acked = 0
        #: every delivery up to this tag is settled (and none is in _open)
        self._upto = 0
        self._call: Any = None
        self._flush_due = False

    def begin(self, tag: int) -> None:
        """
        A delivery goes to an asynchronous handler: it stays open until settled.
        """
        self._open[tag] = False

    def ack(self, tag: int) -> None:
        open_ = self._open
        if tag in open_ or open_:
            # behind an open delivery: flushed singly unless that one settles first
            open_[tag] = True
            self._acked += 1
        else:
            self._upto = tag
        if not self._flush_due:
            self._flush_due = True
            if not self.channel.call_after_read(self.flush):
                self._call = self.reactor.callLater(0, self.flush)

    def reject(self, tag: int, requeue: bool) -> None:
        self._open.pop(tag, None)
        if requeue:
            # "not now": basic.nack, which RabbitMQ 4 does not count against a
            # quorum queue's delivery limit (a reject would)
            self.channel.nack(tag, requeue=True)
        else:
            self.channel.reject(tag, requeue=False)

    def flush(self) -> None:
        self._flush_due = False
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        open_ = self._open
        last = self._upto
        self._upto = 0
        while open_ and self._acked:
            tag, acked = next(iter(open_.items()))
            if not acked:
                break
            open_.popitem(last=False)
            self._acked -= 1
            last = tag
        if last:
            self.channel.ack(last, multiple=True)
        if self._acked:
            for tag in [t for t, acked in open_.items() if acked]:
                del open_[tag]
                self.channel.ack(tag)
            self._acked = 0

    def discard(self) -> None:
        """
        The channel closed: unacked deliveries went back to the queue.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._flush_due = False
        self._open.clear()
        self._acked = self._upto = 0
