"""
The pieces of RabbitMQ's URI syntax that L{txmsg.url} is parsed with:
host and port, query parameters, percent-decoding and range checks.  Each
raises L{Problem}, which L{txmsg.url.parse_url} turns into L{InvalidURL}.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Final
from urllib.parse import unquote

_MAX_SHORT: Final = 65535


_INTEGER = re.compile(r"[0-9]+")


_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


#: Query parameter names accepted, each with the name it stands for.
_QUERY_NAMES: Final = {
    "heartbeat": "heartbeat",
    "connection_timeout": "connection_timeout",
    "channel_max": "channel_max",
    "frame_max": "frame_max",
    "cacertfile": "cacertfile",
    "cafile": "cacertfile",
    "certfile": "certfile",
    "keyfile": "keyfile",
    "server_name_indication": "server_name_indication",
    "verify": "verify",
}


_TLS_QUERY_NAMES: Final = frozenset({"cacertfile", "certfile", "keyfile", "server_name_indication", "verify"})


_VERIFY_VALUES: Final = {"verify_peer": True, "verify_none": False}


class Problem(Exception):
    """
    Raised inside the parser; L{parse_url} turns it into L{InvalidURL}.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _parse_host_and_port(hostport: str) -> tuple[str, int]:
    """
    The host and port of C{host[:port]}; a missing host is C{localhost} and
    a missing port is 0 (the scheme's default).
    """
    raw_port: str | None
    if hostport.startswith("["):
        close = hostport.find("]")
        if close == -1:
            raise Problem("'[' without ']' around an IPv6 address")
        host = _decode(hostport[1:close], "host")
        after = hostport[close + 1 :]
        if after and not after.startswith(":"):
            raise Problem(f"unexpected {after!r} after the IPv6 address")
        raw_port = after[1:] if after else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Problem(f"invalid IPv6 address [{host}]") from None
    else:
        if hostport.count(":") > 1:
            raise Problem("an IPv6 address must be written in brackets, e.g. [::1]")
        raw_host, colon, raw_port = hostport.partition(":")
        if not colon:
            raw_port = None
        host = _decode(raw_host, "host") or "localhost"
        if any(c in host for c in ":/?#@[]") or not host.isprintable() or " " in host:
            raise Problem(f"invalid host {host!r}")
    if not raw_port:
        return host, 0
    if not _INTEGER.fullmatch(raw_port):
        raise Problem(f"port {raw_port!r} is not a number")
    port = int(raw_port)
    if not 1 <= port <= _MAX_SHORT:
        raise Problem(f"port {port} out of range 1-{_MAX_SHORT}")
    return host, port


def _parse_query(query: str, scheme: str) -> dict[str, Any]:
    """
    The L{ConnectionParameters} keyword arguments named by the query string.
    """
    given: dict[str, str] = {}
    values: dict[str, str] = {}
    for piece in query.split("&"):
        if not piece:
            continue
        raw_name, equals, raw_value = piece.partition("=")
        name = _decode(raw_name, "name of a query parameter")
        canonical = _QUERY_NAMES.get(name)
        if canonical is None:
            supported = ", ".join(sorted(_QUERY_NAMES))
            raise Problem(f"unknown query parameter {name!r} (supported: {supported})")
        if canonical in given:
            if given[canonical] == name:
                raise Problem(f"query parameter {name!r} given more than once")
            raise Problem(f"query parameters {given[canonical]!r} and {name!r} both given")
        if not equals:
            raise Problem(f"query parameter {name!r} has no value")
        if canonical in _TLS_QUERY_NAMES and scheme != "amqps":
            raise Problem(f"query parameter {name!r} is only valid with amqps://")
        given[canonical] = name
        values[canonical] = _decode(raw_value, f"value of {name}")

    options: dict[str, Any] = {}
    for name in ("heartbeat", "channel_max", "frame_max"):
        if name in values:
            options[name] = _parse_int(name, values[name])
    if "connection_timeout" in values:
        value = values["connection_timeout"]
        if not _DECIMAL.fullmatch(value):
            raise Problem(f"connection_timeout {value!r} is not a number of seconds")
        options["connection_timeout"] = float(value)
    for name, field_name in (
        ("cacertfile", "cafile"),
        ("certfile", "certfile"),
        ("keyfile", "keyfile"),
        ("server_name_indication", "server_name_indication"),
    ):
        if name in values:
            if not values[name]:
                raise Problem(f"query parameter {given[name]!r} is empty")
            options[field_name] = values[name]
    if options.get("server_name_indication") == "disable":
        raise Problem("server_name_indication=disable is not supported")
    if "verify" in values:
        verify = _VERIFY_VALUES.get(values["verify"])
        if verify is None:
            raise Problem(f"verify must be verify_peer or verify_none, not {values['verify']!r}")
        options["verify"] = verify
    return options


def _parse_int(name: str, value: str) -> int:
    """
    The non-negative decimal integer C{value} of query parameter C{name}.
    """
    if not _INTEGER.fullmatch(value):
        raise Problem(f"{name} {value!r} is not a non-negative integer")
    try:
        return int(value)
    except ValueError:  # more digits than int() converts
        raise Problem(f"{name} out of range") from None


def _check_int(name: str, value: object, low: int, high: int) -> None:
    """
    Raise L{Problem} unless C{value} is an int in C{low..high}.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise Problem(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise Problem(f"{name} {value} out of range {low}-{high}")


def _decode(raw: str, what: str) -> str:
    """
    Percent-decode C{raw} as UTF-8.  The message of a failure names C{what}
    but never shows the text, which may be a password.
    """
    if _BAD_PERCENT.search(raw):
        raise Problem(f"malformed percent-encoding in the {what}; write '%' as %25")
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise Problem(f"the {what} is not UTF-8 once percent-decoded") from None


def is_ip_address(host: str) -> bool:
    """
    Whether C{host} is an IPv4 or IPv6 address rather than a name.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
