"""
One AMQP channel on a live connection: synchronous calls matched to their
replies in order, content assembly for deliveries and returns, and the
asynchronous events the broker sends (deliveries, returns, confirms, cancels).

Channels are numbered by the protocol, never by the caller.  A channel sees
its connection only through L{Link}, the little it needs of it, and offers the
layers above what they need of the connection (whether it may write now, a
"writable again" callback, "after this read") beside typed methods for the
AMQP methods txmsg sends (L{Channel.queue_declare} and so on, checked against
the spec file by the test suite); L{Channel.call} sends any method by name.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmsg._amqp import codec as _codec
from txmsg._amqp.methods import MethodSpec, methods
from txmsg.errors import ChannelClosed, channel_error

#: (delivery args, properties, body)
DeliverCallback = Callable[[dict[str, Any], dict[str, Any], bytes], None]

_DELIVER = (60, 60)
_RETURN = (60, 50)
_GET_OK = (60, 71)
_ACK = (60, 80)
_NACK = (60, 120)
_CANCEL = (60, 30)
_CLOSE = (20, 40)
_FLOW = (20, 20)

#: content bodies at least this big are assembled in a buffer the channel keeps
#: for the next one: glibc gives blocks of 32 MB and more back to the kernel when
#: they are freed, and faulting a fresh 64 MB of pages in for every message costs
#: more than the copy out of a kept buffer (measured: 64 MB bodies 2,537 -> 2,133
#: CPU us/MB, a third fewer page faults)
KEEP_BUFFER = 16 << 20
#: ... and frees once no such body has come for this many seconds
KEEP_FOR = 2.0


def _method_name(class_id: int, method_id: int) -> str | None:
    ms = methods().by_key.get((class_id, method_id))
    return ms.name if ms else None


class Link(Protocol):
    """
    What a channel needs of its connection (the engine's protocol).
    """

    frame_max: int
    clock: IReactorTime
    is_open: bool
    writable: bool
    blocked: str | None

    def write(self, data: bytes) -> None: ...

    def write_sequence(self, parts: list[bytes | memoryview]) -> None: ...

    def call_after_read(self, f: Callable[[], None]) -> bool: ...

    def channel_closed(self, channel: Channel) -> None: ...


class Channel:
    """
    An open channel.  Obtain one from a connection (C{Connection.channel()},
    or the opener a ready hook is given).

    @ivar closed_reason: why the channel closed (a C{Failure}), once it has.
    @ivar on_writable: called when the connection may be written to again
        after its write buffer was full or the broker blocked publishing.
    """

    _log = Logger()

    def __init__(self, link: Link, channel_id: int) -> None:
        self._link = link
        self.id = channel_id
        self.is_open = True
        self.closed_reason: Failure | None = None
        self.on_writable: Callable[[], None] | None = None
        self._methods = methods()
        self._rpc: deque[tuple[tuple[tuple[int, int], ...], Deferred[Any], str]] = deque()
        self._content: tuple[Any, dict[str, Any]] | None = None
        self._props: dict[str, Any] = {}
        self._parts: list[bytes] = []
        self._remaining = 0
        #: the kept buffer of a big body (see L{KEEP_BUFFER}), the view being
        #: filled, how much of it is, and the call that frees the buffer
        self._big: bytearray | None = None
        self._into: memoryview | None = None
        self._filled = 0
        self._free_big: IDelayedCall | None = None
        self.consumers: dict[str, DeliverCallback] = {}
        self.on_return: Callable[[dict[str, Any], dict[str, Any], bytes], None] | None = None
        self.on_confirm: Callable[[bool, int, bool], None] | None = None
        self.on_cancel: Callable[[str], None] | None = None
        self._close_listeners: list[Callable[[Failure], None]] = []

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<Channel {self.id} {state}>"

    # ------------------------------------------------------------------
    # the connection, as the layers above see it

    @property
    def frame_max(self) -> int:
        """
        The largest frame the connection takes.
        """
        return self._link.frame_max

    @property
    def connection_open(self) -> bool:
        """
        Whether the connection this channel is on is still open.
        """
        return self._link.is_open

    @property
    def can_send(self) -> bool:
        """
        Whether a publish written now goes out now: the channel is open, the
        connection's write buffer has room and the broker does not block
        publishing.  When it becomes true again, L{on_writable} is called.
        """
        link = self._link
        return self.is_open and link.writable and link.blocked is None

    @property
    def blocked(self) -> str | None:
        """
        Why the broker blocks publishing on this connection (C{connection.blocked}), or C{None}.
        """
        return self._link.blocked

    def call_after_read(self, f: Callable[[], None]) -> bool:
        """
        Call C{f} once the frames of the read being handled are all handled
        (e.g. to send one ack for the deliveries it held); C{False}, and
        nothing done, when no read is being handled.
        """
        return self._link.call_after_read(f)

    @staticmethod
    def check_publish(exchange: str, routing_key: str, properties: dict[str, Any], frame_max: int) -> None:
        """
        Raise TypeError or ValueError if this publish could not be encoded
        on a connection with C{frame_max} (without encoding its body).
        """
        _codec.basic_publish_frame(0, exchange, routing_key, False)
        header = _codec.encode_properties(properties)
        if len(header) + 12 + _codec.FRAME_OVERHEAD > frame_max:
            raise ValueError(
                f"message properties take {len(header)} bytes, more than one frame holds "
                f"(frame_max {frame_max})"
            )

    # ------------------------------------------------------------------
    # sending

    def call(self, name: str, **kwargs: Any) -> Deferred[Any]:
        """
        Send method C{name} (e.g. C{"queue.declare"}); the Deferred fires with the
        reply's arguments (a dict) for a synchronous method, at once otherwise.
        A channel error fails it with the matching L{txmsg.errors.ChannelError}.
        """
        if not self.is_open:
            return fail(self.closed_reason or ChannelClosed(f"channel {self.id} is closed"))
        ms = self._methods.by_name[name]
        unknown = kwargs.keys() - ms.known_args
        if unknown:
            return fail(TypeError(f"{name} takes no argument {', '.join(sorted(unknown))}"))
        try:
            payload = ms.encode(kwargs)
        except (TypeError, ValueError, struct.error) as e:
            return fail(ValueError(f"{name}: {e}"))
        if len(payload) + _codec.FRAME_OVERHEAD > self._link.frame_max:
            return fail(ValueError(f"{name} takes {len(payload)} bytes, more than frame_max allows"))
        self._link.write(_codec.method_frame(self.id, payload))
        if ms.responses and not (kwargs.get("no_wait") or kwargs.get("nowait")):
            d: Deferred[Any] = Deferred()
            self._rpc.append((ms.responses, d, name))
            return d
        return succeed(None)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: dict[str, Any],
        mandatory: bool = False,
    ) -> None:
        """
        Write one basic.publish with its content; the body is split to C{frame_max}.
        """
        if not self.is_open:
            raise ChannelClosed(f"channel {self.id} is closed")
        data = _codec.publish_frames(
            self.id, exchange, routing_key, mandatory, properties, body, self._link.frame_max
        )
        if isinstance(data, bytes):
            self._link.write(data)
        else:
            self._link.write_sequence(data)

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        """
        Ack C{delivery_tag} (and every earlier one, with C{multiple}).
        """
        if self.is_open:
            self._link.write(_codec.basic_ack_frame(self.id, delivery_tag, multiple))

    def nack(self, delivery_tag: int, multiple: bool = False, requeue: bool = True) -> None:
        """
        Nack C{delivery_tag}: requeue it, or dead-letter it.
        """
        if self.is_open:
            self.call("basic.nack", delivery_tag=delivery_tag, multiple=multiple, requeue=requeue)

    def reject(self, delivery_tag: int, requeue: bool = True) -> None:
        """
        Reject C{delivery_tag}: requeue it, or dead-letter it.
        """
        if self.is_open:
            self.call("basic.reject", delivery_tag=delivery_tag, requeue=requeue)

    def close(self) -> Deferred[None]:
        """
        Close the channel politely; fires when the broker said close-ok.
        """
        if not self.is_open:
            return succeed(None)
        d = self.call("channel.close", reply_code=200, reply_text="bye", class_id=0, method_id=0)
        d.addCallback(lambda _: self._closed(Failure(ChannelClosed(f"channel {self.id} closed"))))
        return d

    # ------------------------------------------------------------------
    # the methods txmsg sends, typed (each is L{call} with the spec's
    # argument names; tests/unit/test_channel.py holds them to the spec)

    def basic_qos(
        self, prefetch_count: int, *, prefetch_size: int = 0, global_: bool = False
    ) -> Deferred[Any]:
        """
        Let at most C{prefetch_count} unacked messages come to this channel's consumers.
        """
        return self.call(
            "basic.qos", prefetch_size=prefetch_size, prefetch_count=prefetch_count, global_=global_
        )

    def basic_consume(
        self,
        queue: str,
        *,
        consumer_tag: str = "",
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> Deferred[dict[str, Any]]:
        """
        Fires with the reply's arguments (C{consumer_tag}, the broker's if none was given).
        """
        return self.call(
            "basic.consume",
            queue=queue,
            consumer_tag=consumer_tag,
            no_ack=no_ack,
            exclusive=exclusive,
            arguments=arguments,
        )

    def basic_cancel(self, consumer_tag: str) -> Deferred[Any]:
        """
        Stop the consumer C{consumer_tag}.
        """
        return self.call("basic.cancel", consumer_tag=consumer_tag)

    def basic_get(self, queue: str, *, no_ack: bool = False) -> Deferred[Any]:
        """
        Fires with (args, properties, body) of a message, or C{get-empty}'s arguments.
        """
        return self.call("basic.get", queue=queue, no_ack=no_ack)

    def confirm_select(self) -> Deferred[Any]:
        """
        Turn on publisher confirms on this channel.
        """
        return self.call("confirm.select")

    def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> Deferred[dict[str, Any]]:
        """
        Fires with C{queue} (the name, the broker's for C{""}), C{message_count}, C{consumer_count}.
        """
        return self.call(
            "queue.declare",
            queue=queue,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments,
        )

    def queue_delete(self, queue: str, *, if_unused: bool = False, if_empty: bool = False) -> Deferred[Any]:
        """
        Delete a queue; fires with how many messages it held.
        """
        return self.call("queue.delete", queue=queue, if_unused=if_unused, if_empty=if_empty)

    def queue_purge(self, queue: str) -> Deferred[Any]:
        """
        Delete a queue's ready messages; fires with how many.
        """
        return self.call("queue.purge", queue=queue)

    def queue_bind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: dict[str, Any] | None = None
    ) -> Deferred[Any]:
        """
        Bind a queue to an exchange.
        """
        return self.call(
            "queue.bind", queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments
        )

    def queue_unbind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: dict[str, Any] | None = None
    ) -> Deferred[Any]:
        """
        Remove a queue's binding.
        """
        return self.call(
            "queue.unbind", queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments
        )

    def exchange_declare(
        self,
        exchange: str,
        type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> Deferred[Any]:
        """
        Declare (or, C{passive}, check) an exchange.
        """
        return self.call(
            "exchange.declare",
            exchange=exchange,
            type=type,
            passive=passive,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
        )

    def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> Deferred[Any]:
        """
        Delete an exchange.
        """
        return self.call("exchange.delete", exchange=exchange, if_unused=if_unused)

    def exchange_bind(
        self, destination: str, source: str, routing_key: str = "", arguments: dict[str, Any] | None = None
    ) -> Deferred[Any]:
        """
        Route from exchange C{source} to exchange C{destination}.
        """
        return self.call(
            "exchange.bind",
            destination=destination,
            source=source,
            routing_key=routing_key,
            arguments=arguments,
        )

    def when_closed(self, listener: Callable[[Failure], None]) -> None:
        """
        Call C{listener} with the reason when this channel closes, for any reason.
        """
        if self.is_open:
            self._close_listeners.append(listener)
        else:
            assert self.closed_reason is not None
            listener(self.closed_reason)

    # ------------------------------------------------------------------
    # receiving (called by the protocol)

    def method_received(self, ms: MethodSpec, args: dict[str, Any]) -> None:
        """
        A method frame for this channel (called by the protocol).
        """
        if ms.content:
            self._content = (ms, args)
            return
        key = ms.key
        if self._rpc and key in self._rpc[0][0]:
            _, d, _ = self._rpc.popleft()
            d.callback(args)
        elif key == _ACK or key == _NACK:
            if self.on_confirm is not None:
                self.on_confirm(key == _ACK, args["delivery_tag"], args["multiple"])
        elif key == _CLOSE:
            self._link.write(
                _codec.method_frame(self.id, self._methods.by_name["channel.close-ok"].encode({}))
            )
            err = channel_error(
                args["reply_code"],
                args["reply_text"],
                _method_name(args["class_id"], args["method_id"]),
            )
            self._closed(Failure(err))
        elif key == _CANCEL:
            tag = args["consumer_tag"]
            self.consumers.pop(tag, None)
            if self.on_cancel is not None:
                self.on_cancel(tag)
        elif key == _FLOW:
            self.call("channel.flow-ok", active=args["active"])
        else:
            self._log.warn("channel {id}: unexpected {method}", id=self.id, method=ms.name)

    def header_received(self, size: int, props: dict[str, Any]) -> None:
        """
        A content header for this channel (called by the protocol).
        """
        if size == 0:
            self._content_complete(props, b"")
        else:
            self._props = props
            self._remaining = size
            self._parts = []
            if size >= KEEP_BUFFER:
                if self._free_big is not None:
                    self._free_big.cancel()
                    self._free_big = None
                if self._big is None or len(self._big) < size:
                    self._big = None  # the old one goes before the new one comes
                    self._big = bytearray(size)
                self._into = memoryview(self._big)[:size]
                self._filled = 0

    def body_received(self, chunk: bytes) -> None:
        """
        A piece of content body for this channel (called by the protocol).
        """
        into = self._into
        if into is not None:
            end = self._filled + len(chunk)
            if end < len(into):
                into[self._filled : end] = chunk
                self._filled = end
                return
            # the last chunk (a longer one, which a broker never sends, is cut to the size)
            into[self._filled :] = memoryview(chunk)[: len(into) - self._filled]
            self._into = None
            body = into.tobytes()
            into.release()
            self._free_big = self._link.clock.callLater(KEEP_FOR, self._drop_big)
            self._content_complete(self._props, body)
            return
        self._parts.append(chunk)
        self._remaining -= len(chunk)
        if self._remaining <= 0:
            parts = self._parts
            self._parts = []
            body = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
            self._content_complete(self._props, body)

    def _content_complete(self, props: dict[str, Any], body: bytes) -> None:
        content = self._content
        self._content = None
        if content is None:
            self._log.warn("channel {id}: content without a method", id=self.id)
            return
        ms, args = content
        key = ms.key
        if key == _DELIVER:
            callback = self.consumers.get(args["consumer_tag"])
            if callback is not None:
                callback(args, props, body)
            else:
                self._log.warn(
                    "channel {id}: delivery for unknown consumer {tag}", id=self.id, tag=args["consumer_tag"]
                )
        elif key == _RETURN:
            if self.on_return is not None:
                self.on_return(args, props, body)
        elif key == _GET_OK and self._rpc:
            _, d, _ = self._rpc.popleft()
            d.callback((args, props, body))

    def _drop_big(self) -> None:
        self._free_big = None
        self._big = None

    def _closed(self, reason: Failure) -> None:
        if not self.is_open:
            return
        self.is_open = False
        self.closed_reason = reason
        if self._free_big is not None:
            self._free_big.cancel()
        self._free_big = None
        if self._into is not None:
            self._into.release()
            self._into = None
        self._big = None
        self._link.channel_closed(self)
        rpc, self._rpc = self._rpc, deque()
        for _, d, _name in rpc:
            d.errback(reason)
        listeners, self._close_listeners = self._close_listeners, []
        for listener in listeners:
            listener(reason)
