"""
The exceptions txmsg raises.  All derive from L{TxmsgError}.
"""

from __future__ import annotations


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
