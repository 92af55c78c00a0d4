"""
The exceptions txmsg raises.  All derive from L{TxmsgError}.
"""

from __future__ import annotations

import re


class TxmsgError(Exception):
    """
    Base class of every error txmsg raises.
    """


class AMQPError(TxmsgError):
    """
    The broker closed a channel or the connection with a reply code and text.

    @ivar reply_code: AMQP reply code, e.g. 404 or 406.
    @ivar reply_text: the broker's explanation.
    @ivar method: C{"class.method"} that caused it, when the broker said.
    """

    def __init__(self, reply_code: int, reply_text: str, method: str | None = None) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.method = method
        where = f" (on {method})" if method else ""
        super().__init__(f"{reply_code} {reply_text}{where}")


class ChannelError(AMQPError):
    """
    The broker closed a channel; the connection and its other channels live on.
    """


def names_exchange(reply_text: str, exchange: str) -> bool:
    """
    Whether a channel error's text names C{exchange} (RabbitMQ quotes it:
    "NOT_FOUND - no exchange 'x' in vhost '/'"); never the default exchange.
    """
    return bool(exchange) and f"'{exchange}'" in reply_text


class NotFound(ChannelError):
    """
    404 NOT_FOUND: the exchange or queue does not exist.
    """


class PreconditionFailed(ChannelError):
    """
    406 PRECONDITION_FAILED: e.g. a queue redeclared with different flags.
    """


_TOO_LARGE_TEXT = re.compile(r"message size (\d+) is larger than configured max size (\d+)")


def too_large(reply_text: str) -> tuple[int, int] | None:
    """
    (size, limit) if a channel close says a message was over the broker's
    C{max_message_size} (RabbitMQ: "message size 20971520 is larger than
    configured max size 16777216"), else None.
    """
    match = _TOO_LARGE_TEXT.search(reply_text)
    return (int(match.group(1)), int(match.group(2))) if match else None


class MessageTooLarge(PreconditionFailed):
    """
    A message body over the broker's C{max_message_size} (16 MiB by default
    since RabbitMQ 4.0, 128 MiB before).  Only that publish fails.

    @ivar size: the body's size in bytes.
    @ivar limit: the broker's limit in bytes.
    """

    def __init__(self, size: int, limit: int, reply_text: str = "") -> None:
        self.size = size
        self.limit = limit
        super().__init__(406, reply_text or f"message size {size} is larger than configured max size {limit}")

    def __str__(self) -> str:
        return (
            f"the message body of {self.size} bytes is over the broker's max_message_size of "
            f"{self.limit} bytes ({self.limit / 1048576:g} MiB)"
        )


class ResourceLocked(ChannelError):
    """
    405 RESOURCE_LOCKED: e.g. an exclusive queue owned by another connection.
    """


class AccessRefused(ChannelError):
    """
    403 ACCESS_REFUSED on a channel operation.
    """


class ConnectionClosed(AMQPError):
    """
    The broker closed the whole connection (a hard error or a forced close).
    """


#: RabbitMQ's deprecated features a client can run into: what each is, and how
#: to do without it
_DEPRECATED: dict[str, tuple[str, str]] = {
    "transient_nonexcl_queues": (
        "transient non-exclusive queues",
        "declare the queue durable (txmsg's default) or exclusive, or permit them on the broker "
        "(deprecated_features.permit.transient_nonexcl_queues = true)",
    ),
    "global_qos": (
        "global QoS (basic.qos with global set)",
        "use per-consumer prefetch, as txmsg does",
    ),
    "queue_master_locator": (
        "the x-queue-master-locator queue argument",
        "use x-queue-leader-locator instead",
    ),
    "classic_queue_mirroring": (
        "classic queue mirroring",
        "use quorum queues (Queue.quorum, --quorum)",
    ),
}

_DEPRECATED_TEXT = re.compile(r"Feature `([A-Za-z0-9_]+)` is deprecated")


def deprecated_feature(reply_text: str) -> str | None:
    """
    The name of the deprecated feature a broker's close text says it refused
    (RabbitMQ 3.13 and later: "Feature `transient_nonexcl_queues` is
    deprecated. ..."), or None.
    """
    match = _DEPRECATED_TEXT.search(reply_text)
    return match.group(1) if match else None


class DeprecatedFeature(ConnectionClosed):
    """
    The broker closed the connection (541) because a request used a feature it
    deprecated and does not permit, e.g. a transient non-exclusive queue on
    RabbitMQ 4.3.  Retrying cannot help: the request itself must change.

    @ivar feature: RabbitMQ's name of the feature (C{transient_nonexcl_queues}).
    @ivar subject: what was refused (C{"queue 'hello' (transient)"}),
        when txmsg knows.
    @ivar advice: how to do without it.
    """

    def __init__(
        self, reply_code: int, reply_text: str, method: str | None = None, subject: str = ""
    ) -> None:
        super().__init__(reply_code, reply_text, method)
        self.feature = deprecated_feature(reply_text) or "unknown"
        self.subject = subject
        what, self.advice = _DEPRECATED.get(
            self.feature,
            (
                f"the deprecated feature {self.feature}",
                f"see the broker's log; deprecated_features.permit.{self.feature} = true permits it",
            ),
        )
        refused = f" ({subject})" if subject else ""
        # one line, not the broker's multi-line text
        self.args = (f"the broker refuses {what}{refused}: {self.advice}",)

    def about(self, subject: str) -> DeprecatedFeature:
        """
        The same refusal, saying what was refused.
        """
        return DeprecatedFeature(self.reply_code, self.reply_text, self.method, subject)


class ConnectionLost(TxmsgError):
    """
    The connection went away while an operation was waiting on it.
    """


class ChannelClosed(TxmsgError):
    """
    The operation was attempted on a channel that is already closed.
    """


class FatalConnectionError(TxmsgError):
    """
    A connection problem that retrying cannot fix; the connection stops trying.
    """


class AuthenticationError(FatalConnectionError):
    """
    The broker refused the credentials (403 ACCESS_REFUSED during the handshake).
    """


class VhostNotFound(FatalConnectionError):
    """
    The virtual host does not exist or the user may not open it (530 NOT_ALLOWED).
    """


class TLSError(FatalConnectionError):
    """
    The TLS handshake failed (a refused or unverifiable certificate).
    """


class ProtocolError(FatalConnectionError):
    """
    The peer broke the AMQP framing rules or speaks another protocol.
    """


class UndecodableMessage(TxmsgError):
    """
    A message body does not decode as its content type says (bad JSON, bad UTF-8,
    or pickle that the consumer did not opt in to).
    """


_CHANNEL_ERRORS: dict[int, type[ChannelError]] = {
    403: AccessRefused,
    404: NotFound,
    405: ResourceLocked,
    406: PreconditionFailed,
}


def channel_error(reply_code: int, reply_text: str, method: str | None = None) -> ChannelError:
    """
    The most specific L{ChannelError} for a channel.close's reply code.
    """
    return _CHANNEL_ERRORS.get(reply_code, ChannelError)(reply_code, reply_text, method)
