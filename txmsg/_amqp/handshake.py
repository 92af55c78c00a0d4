"""
The parts of the AMQP connection handshake that are data rather than state:
what txmsg says about itself (client properties and capabilities), how tune
values are negotiated, and how a failed TLS handshake is worded.
"""

from __future__ import annotations

import platform
from typing import Any

from twisted.python.failure import Failure

from txmsg._version import __version__

CAPABILITIES = {
    "publisher_confirms": True,
    "consumer_cancel_notify": True,
    "basic.nack": True,
    "connection.blocked": True,
    "exchange_exchange_bindings": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
}


def client_properties(connection_name: str | None = None) -> dict[str, Any]:
    """
    The client_properties txmsg sends in connection.start-ok.
    """
    import twisted

    props: dict[str, Any] = {
        "product": "txmsg",
        "version": __version__,
        "platform": f"Python {platform.python_version()} / Twisted {twisted.__version__}",
        "information": "Twisted-native messaging for RabbitMQ",
        "capabilities": dict(CAPABILITIES),
    }
    if connection_name:
        props["connection_name"] = connection_name
    return props


def negotiate(client: int, server: int) -> int:
    """
    The value both sides accept: the smaller, where 0 (no limit) yields to the other.
    """
    if client == 0 or server == 0:
        return client or server
    return min(client, server)


def is_tls_error(reason: Failure) -> bool:
    try:
        from OpenSSL import SSL
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover
        return False
    return reason.check(SSL.Error, VerificationError) is not None


def tls_text(reason: Failure) -> str:
    value = reason.value
    mismatched = [getattr(e, "mismatched_id", None) for e in getattr(value, "errors", ())]
    names = []
    for m in mismatched:
        name = getattr(m, "hostname", None) or getattr(m, "ip", None)
        if name is not None:
            names.append(name.decode("idna") if isinstance(name, bytes) else str(name))
    if names:
        return f"its certificate is not valid for {', '.join(names)}"
    args: Any = getattr(value, "args", ())
    try:
        text = "; ".join(str(x[2]) for x in args[0]) or str(value)
    except (IndexError, TypeError):
        text = str(value)
    if "certificate verify failed" in text:
        text += " (its certificate is not signed by a CA the client trusts: see cacertfile)"
    return text
