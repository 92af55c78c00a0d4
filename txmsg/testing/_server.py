"""
The in-memory broker's side of an AMQP 0-9-1 connection: frames in, methods
applied to L{MemoryBrokerState}, frames out, with RabbitMQ's replies and
error codes.
"""

from __future__ import annotations

import itertools
import struct
from collections import OrderedDict
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from txmsg._amqp import codec as _codec
from txmsg._amqp.methods import methods
from txmsg.testing._broker import ChannelError, ConnectionError, Consumer, MemoryBrokerState, Queue, Stored

_FRAME_HEAD = struct.Struct("!BHI")
_HH = struct.Struct("!HH")
FRAME_MAX = 131072
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
_ids = itertools.count(1)


class _Channel:
    def __init__(self, server: AMQPServer, number: int) -> None:
        self.server = server
        self.number = number
        self.connection_id = server.connection_id
        self.confirming = False
        self.published = 0
        self.prefetch = 0
        self.next_tag = 1
        #: delivery tag -> (consumer or None for basic.get, message)
        self.unacked: OrderedDict[int, tuple[Consumer | None, Stored]] = OrderedDict()
        self.consumers: dict[str, Consumer] = {}
        self.closing = False
        #: direct reply-to: this channel's consumer of its replies and its token
        self.reply_consumer: Consumer | None = None
        self.reply_token: str | None = None
        #: a publish being assembled: (method args, properties, expected size, chunks)
        self.incoming: list[Any] | None = None

    # --- Owner: called by the broker state ---------------------------------

    def deliver(self, consumer: Consumer, message: Stored) -> None:
        tag = self._track(consumer, message)
        queue = consumer.queue if consumer.queue.name != DIRECT_REPLY_TO else None
        props = self.server.state.delivered(queue, message)
        self.server.send(
            self.number,
            "basic.deliver",
            consumer_tag=consumer.tag,
            delivery_tag=tag,
            redelivered=message.redelivered,
            exchange=message.exchange,
            routing_key=message.routing_key,
        )
        self.server.send_content(self.number, props, message.body)

    def cancelled(self, consumer: Consumer) -> None:
        self.consumers.pop(consumer.tag, None)
        self.server.send(self.number, "basic.cancel", consumer_tag=consumer.tag, no_wait=True)

    def _track(self, consumer: Consumer | None, message: Stored) -> int:
        tag = self.next_tag
        self.next_tag += 1
        if consumer is None or not consumer.no_ack:
            self.unacked[tag] = (consumer, message)
        return tag

    # --- settling -------------------------------------------------------------

    def _take(self, tag: int, multiple: bool) -> list[tuple[Consumer | None, Stored]]:
        if multiple:
            tags = [t for t in self.unacked if t <= tag] if tag else list(self.unacked)
        elif tag in self.unacked:
            tags = [tag]
        else:
            raise ChannelError(406, f"PRECONDITION_FAILED - unknown delivery tag {tag}")
        taken = [self.unacked.pop(t) for t in tags]
        for consumer, _ in taken:
            if consumer is not None:
                consumer.unacked -= 1
        return taken

    def settle(
        self, tag: int, multiple: bool, requeue: bool, dead: bool = False, failed: bool = False
    ) -> None:
        """
        Ack (neither flag), requeue, or reject without requeue (C{dead}: the
        queue's dead-letter exchange gets them, reason "rejected").  A requeue
        is C{failed} for a reject or a lost consumer, not for a nack or a
        recover (RabbitMQ 4's quorum queues count only those).
        """
        state = self.server.state
        # the queues these messages came from (those still there), in delivery order
        taken = [(m, state.queues.get(m.queue)) for _, m in self._take(tag, multiple)]
        if requeue:
            for message, queue in reversed(taken):
                if queue is not None:
                    state.give_back(queue, message, failed)
        elif dead:
            for message, queue in taken:
                if queue is not None:
                    state.dead_letter(queue, message, "rejected")
        # settling made room for their consumers, or gave them messages again
        for queue in {q.name: q for _, q in taken if q is not None}.values():
            state.dispatch(queue)

    def closed(self) -> None:
        """
        The channel is gone: its consumers stop, its unacked messages go back.
        """
        for consumer in list(self.consumers.values()):
            self.server.state.cancel(consumer)
        self.consumers.clear()
        if self.reply_token is not None:
            self.server.state.reply_channels.pop(self.reply_token, None)
            self.reply_token = self.reply_consumer = None
        if self.unacked:
            self.settle(0, True, True, failed=True)


class AMQPServer(Protocol):
    transport: Any
    """
    One client connection to the in-memory broker.
    """

    def __init__(self, state: MemoryBrokerState, frame_max: int = FRAME_MAX) -> None:
        self.state = state
        self.frame_max = frame_max
        self.connection_id = next(_ids)
        self.channels: dict[int, _Channel] = {}
        self._buf = bytearray()
        self._started = False
        self._methods = methods()
        self.client_properties: dict[str, Any] = {}
        self.closing = False

    # --- frames -----------------------------------------------------------------

    def send(self, channel: int, name: str, **args: Any) -> None:
        if self.transport is not None:
            self.transport.write(_codec.method_frame(channel, self._methods[name].encode(args)))

    def send_content(self, channel: int, props: dict[str, Any], body: bytes) -> None:
        if self.transport is not None:
            self.transport.write(b"".join(_codec.content_frames(channel, props, body, self.frame_max)))

    def dataReceived(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._started:
            if len(buf) < 8:
                return
            if bytes(buf[:8]) != _codec.PROTOCOL_HEADER:
                self.transport.write(_codec.PROTOCOL_HEADER)
                self.transport.loseConnection()
                return
            del buf[:8]
            self._started = True
            self.send(
                0,
                "connection.start",
                version_major=0,
                version_minor=9,
                server_properties={
                    "product": "txmsg.testing",
                    "capabilities": {
                        "publisher_confirms": True,
                        "basic.nack": True,
                        "consumer_cancel_notify": True,
                        "connection.blocked": True,
                    },
                },
                mechanisms=b"PLAIN AMQPLAIN",
                locales=b"en_US",
            )
        while len(buf) >= 7:
            ftype, channel, size = _FRAME_HEAD.unpack_from(buf, 0)
            if len(buf) < size + 8:
                return
            payload = bytes(buf[7 : 7 + size])
            del buf[: size + 8]
            try:
                self._frame(ftype, channel, payload)
            except ConnectionError as e:
                self._close_connection(e.code, e.text)
                return

    def _frame(self, ftype: int, number: int, payload: bytes) -> None:
        if ftype == 8:
            return  # heartbeat
        if number == 0:
            if ftype == 1:
                ms = self._methods.by_key[_HH.unpack_from(payload)]
                self._connection_method(ms.name, ms.decode(payload, 4))
            return
        channel = self.channels.get(number)
        if ftype == 1:
            ms = self._methods.by_key[_HH.unpack_from(payload)]
            args = ms.decode(payload, 4)
            if ms.name == "channel.open":
                if channel is not None:
                    raise ConnectionError(504, "CHANNEL_ERROR - second 'channel.open' seen")
                self.channels[number] = _Channel(self, number)
                self.send(number, "channel.open-ok")
                return
            if channel is None:
                raise ConnectionError(504, f"CHANNEL_ERROR - expected 'channel.open' on channel {number}")
            if ms.name == "channel.close-ok":
                self.channels.pop(number, None)
                return
            if channel.closing:
                return  # everything but close-ok is dropped until the client answers
            try:
                self._channel_method(channel, ms, args)
            except ChannelError as e:
                self._close_channel(channel, e, ms)
            return
        if channel is None or channel.closing or channel.incoming is None:
            if channel is not None and channel.closing:
                return
            raise ConnectionError(505, "UNEXPECTED_FRAME - content frame without basic.publish")
        if ftype == 2:
            size, props = _codec.decode_content_header(payload, 0)
            channel.incoming[1] = props
            channel.incoming[2] = size
        else:
            channel.incoming[3].append(payload)
        args, props, size, chunks = channel.incoming
        if props is not None and sum(len(c) for c in chunks) >= size:
            channel.incoming = None
            try:
                self._publish(channel, args, props, b"".join(chunks))
            except ChannelError as e:
                self._close_channel(channel, e, self._methods["basic.publish"])

    def _close_channel(self, channel: _Channel, error: ChannelError, ms: Any) -> None:
        channel.closing = True
        channel.closed()
        self.send(
            channel.number,
            "channel.close",
            reply_code=error.code,
            reply_text=error.text,
            class_id=ms.class_id,
            method_id=ms.method_id,
        )

    def _close_connection(self, code: int, text: str) -> None:
        self.closing = True
        self.send(0, "connection.close", reply_code=code, reply_text=text, class_id=0, method_id=0)

    # --- connection class -------------------------------------------------------

    def _connection_method(self, name: str, args: dict[str, Any]) -> None:
        if name == "connection.start-ok":
            self.client_properties = args.get("client_properties") or {}
            self.send(0, "connection.tune", channel_max=2047, frame_max=self.frame_max, heartbeat=0)
        elif name == "connection.tune-ok":
            self.frame_max = min(self.frame_max, args["frame_max"] or self.frame_max)
        elif name == "connection.open":
            vhost = args["virtual_host"]
            if vhost != self.state.vhost:
                self._close_connection(530, f"NOT_ALLOWED - vhost {vhost} not found")
                return
            self.send(0, "connection.open-ok")
        elif name == "connection.close":
            self.send(0, "connection.close-ok")
            self.transport.loseConnection()
        elif name == "connection.close-ok":
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        for channel in list(self.channels.values()):
            channel.closed()
        self.channels.clear()
        self.state.connection_closed(self.connection_id)

    # --- channel methods --------------------------------------------------------

    def _channel_method(self, channel: _Channel, ms: Any, args: dict[str, Any]) -> None:
        state = self.state
        name = ms.name
        n = channel.number
        cid = self.connection_id
        if name == "channel.close":
            channel.closed()
            self.channels.pop(n, None)
            self.send(n, "channel.close-ok")
        elif name == "confirm.select":
            channel.confirming = True
            if not args.get("nowait"):
                self.send(n, "confirm.select-ok")
        elif name == "basic.qos":
            channel.prefetch = args["prefetch_count"]
            self.send(n, "basic.qos-ok")
        elif name == "exchange.declare":
            state.declare_exchange(
                args["exchange"], args["type"], args["durable"], args["auto_delete"], args["passive"]
            )
            if not args["no_wait"]:
                self.send(n, "exchange.declare-ok")
        elif name == "exchange.delete":
            state.delete_exchange(args["exchange"])
            if not args["no_wait"]:
                self.send(n, "exchange.delete-ok")
        elif name == "queue.declare":
            queue = state.declare_queue(
                args["queue"],
                args["durable"],
                args["exclusive"],
                args["auto_delete"],
                args.get("arguments") or {},
                args["passive"],
                cid,
            )
            if not args["no_wait"]:
                self.send(
                    n,
                    "queue.declare-ok",
                    queue=queue.name,
                    message_count=len(queue.messages),
                    consumer_count=len(queue.consumers),
                )
        elif name == "queue.bind":
            state.bind(args["queue"], args["exchange"], args["routing_key"], args.get("arguments") or {}, cid)
            if not args["no_wait"]:
                self.send(n, "queue.bind-ok")
        elif name == "queue.unbind":
            state.unbind(
                args["queue"], args["exchange"], args["routing_key"], args.get("arguments") or {}, cid
            )
            self.send(n, "queue.unbind-ok")
        elif name in ("exchange.bind", "exchange.unbind"):
            how = state.bind_exchange if name == "exchange.bind" else state.unbind_exchange
            how(args["destination"], args["source"], args["routing_key"], args.get("arguments") or {})
            if not args["no_wait"]:
                self.send(n, name + "-ok")
        elif name == "queue.delete":
            count = state.delete_queue(args["queue"], cid)
            if not args["no_wait"]:
                self.send(n, "queue.delete-ok", message_count=count)
        elif name == "queue.purge":
            queue = state.queue(args["queue"], cid)
            count = len(queue.messages)
            queue.messages.clear()
            if not args["no_wait"]:
                self.send(n, "queue.purge-ok", message_count=count)
        elif name == "basic.publish":
            state.exchange(args["exchange"])  # 404 before the content, as RabbitMQ does
            channel.incoming = [args, None, 0, []]
        elif name == "basic.consume" and args["queue"] == DIRECT_REPLY_TO:
            self._consume_replies(channel, args)
        elif name == "basic.consume":
            queue = state.queue(args["queue"], cid)
            tag = args["consumer_tag"] or f"amq.ctag-{next(_ids)}"
            if tag in channel.consumers:
                raise ConnectionError(530, f"NOT_ALLOWED - attempt to reuse consumer tag '{tag}'")
            consumer = Consumer(tag, queue, channel, args["no_ack"], channel.prefetch)
            channel.consumers[tag] = consumer
            if not args["no_wait"]:
                self.send(n, "basic.consume-ok", consumer_tag=tag)
            state.consume(queue, consumer)
        elif name == "basic.cancel":
            cancelled = channel.consumers.pop(args["consumer_tag"], None)
            if cancelled is not None:
                state.cancel(cancelled)
            if not args["no_wait"]:
                self.send(n, "basic.cancel-ok", consumer_tag=args["consumer_tag"])
        elif name == "basic.get":
            queue = state.queue(args["queue"], cid)
            if not queue.messages:
                self.send(n, "basic.get-empty")
                return
            message = queue.messages.popleft()
            tag = channel._track(None, message)
            props = state.delivered(queue, message)
            if args["no_ack"]:
                channel.unacked.pop(tag, None)
            self.send(
                n,
                "basic.get-ok",
                delivery_tag=tag,
                redelivered=message.redelivered,
                exchange=message.exchange,
                routing_key=message.routing_key,
                message_count=len(queue.messages),
            )
            self.send_content(n, props, message.body)
        elif name == "basic.ack":
            channel.settle(args["delivery_tag"], args["multiple"], False)
        elif name == "basic.nack":
            channel.settle(args["delivery_tag"], args["multiple"], args["requeue"], dead=True)
        elif name == "basic.reject":
            channel.settle(args["delivery_tag"], False, args["requeue"], dead=True, failed=True)
        elif name == "basic.recover":
            channel.settle(0, True, True)
            self.send(n, "basic.recover-ok")
        else:
            raise ConnectionError(540, f"NOT_IMPLEMENTED - {name} is not implemented by txmsg.testing")

    def _consume_replies(self, channel: _Channel, args: dict[str, Any]) -> None:
        """
        Direct reply-to: the channel consumes its own pseudo-queue, without acks.
        """
        if not args["no_ack"]:
            raise ChannelError(406, "PRECONDITION_FAILED - reply consumer cannot acknowledge")
        tag = args["consumer_tag"] or f"amq.ctag-{next(_ids)}"
        pseudo = Queue(DIRECT_REPLY_TO, False, self.connection_id, True, {})
        channel.reply_consumer = Consumer(tag, pseudo, channel, True, 0)
        channel.reply_token = f"{self.connection_id}.{channel.number}.{next(_ids)}"
        self.state.reply_channels[channel.reply_token] = channel
        if not args["no_wait"]:
            self.send(channel.number, "basic.consume-ok", consumer_tag=tag)

    def _publish(self, channel: _Channel, args: dict[str, Any], props: dict[str, Any], body: bytes) -> None:
        state = self.state
        if len(body) > state.max_message_size:
            raise ChannelError(
                406,
                f"PRECONDITION_FAILED - message size {len(body)} is larger than configured max size "
                f"{state.max_message_size}",
            )
        if channel.confirming:
            channel.published += 1
        if props.get("reply_to") == DIRECT_REPLY_TO:
            if channel.reply_token is None:
                raise ChannelError(406, "PRECONDITION_FAILED - fast reply consumer does not exist")
            props = dict(props, reply_to=f"{DIRECT_REPLY_TO}.{channel.reply_token}")
        key = args["routing_key"]
        if args["exchange"] == "" and key.startswith(DIRECT_REPLY_TO + "."):
            target = state.reply_channels.get(key[len(DIRECT_REPLY_TO) + 1 :])
            if target is not None and target.reply_consumer is not None:
                target.deliver(target.reply_consumer, Stored("", key, dict(props), body))
                if channel.confirming:
                    self.send(channel.number, "basic.ack", delivery_tag=channel.published, multiple=False)
                return
        queues = state.route(args["exchange"], args["routing_key"], props.get("headers") or {})
        if not queues and args["mandatory"]:
            self.send(
                channel.number,
                "basic.return",
                reply_code=312,
                reply_text="NO_ROUTE",
                exchange=args["exchange"],
                routing_key=args["routing_key"],
            )
            self.send_content(channel.number, props, body)
        refused = False
        for queue in queues:
            stored = Stored(args["exchange"], args["routing_key"], dict(props), body, queue.name)
            if not state.accept(queue, stored):
                refused = True
        if channel.confirming:
            if refused:  # a full queue with x-overflow reject-publish
                self.send(
                    channel.number,
                    "basic.nack",
                    delivery_tag=channel.published,
                    multiple=False,
                    requeue=False,
                )
            else:
                self.send(channel.number, "basic.ack", delivery_tag=channel.published, multiple=False)
