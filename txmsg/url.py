"""
RabbitMQ connection URLs: C{amqp://} and C{amqps://}, parsed into
L{ConnectionParameters}.

The syntax is RabbitMQ's "URI specification"::

    amqp[s]://[user[:password]@]host[:port][/vhost][?name=value&...]

following its rules and its examples (appendix A):

  - the user name, password, host and vhost are percent-decoded and read as
    UTF-8, so the vhost C{/} is written C{%2F} and a password holding C{@},
    C{:}, C{/}, C{?} or C{#} percent-encodes them;
  - an absent component takes the default: user C{guest}, password C{guest}
    (also when only the user is given, as RabbitMQ's Erlang client does), host
    C{localhost} (a zero-length host counts as absent), port 5672 for
    C{amqp} and 5671 for C{amqps};
  - the vhost is absent when no C{/} follows the host (C{amqp://host} gets the
    default vhost C{/}), but C{amqp://host/} names the I{empty} vhost C{""}:
    the specification says that an absent vhost is not a zero-length one;
  - the vhost is a single path segment: C{amqp://host/a/b} is an error;
  - an IPv6 literal is written in brackets, C{amqp://[::1]:5672/}.

The query parameters are those of RabbitMQ's "URI query parameters" page that
txmsg acts on; any other parameter is an error that names it, so that a typo
never silently falls back to a default:

  - C{heartbeat}: seconds, an integer 0..65535; 0 asks for no heartbeats.
  - C{connection_timeout}: B{seconds} to wait for the TCP connection, a number
    greater than 0 (C{2.5} is allowed).  Note that RabbitMQ's Erlang client
    reads this parameter as I{milliseconds}; txmsg uses seconds, like the rest
    of Twisted.  Values above 3600 are refused, so that a URL written for
    milliseconds fails loudly instead of waiting for hours.
  - C{channel_max}: 0..65535; 0 accepts the broker's limit.
  - C{frame_max}: 0, or 4096..2**32-1 bytes; 0 accepts the broker's limit
    (RabbitMQ's default is 131072).
  - C{amqps} only: C{cacertfile} (C{cafile} is accepted as another name for
    it), C{certfile}, C{keyfile}, C{server_name_indication}, and C{verify},
    which is C{verify_peer} (the default) or C{verify_none}.  C{certfile}
    without C{keyfile} means the certificate file holds the key as well.

Parameter values are percent-decoded; a C{+} is kept as it is.

A password must never be shown: L{ConnectionParameters.safe_url}, C{str()},
C{repr()} and the message of L{InvalidURL} all replace it with C{***}.

Nothing here imports the global reactor: L{ConnectionParameters.endpoint} is
given the reactor to use.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import quote

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IStreamClientEndpoint,
)

from txmsg._url_syntax import (
    _MAX_SHORT,
    Problem,
    _check_int,
    _decode,
    _parse_host_and_port,
    _parse_query,
    is_ip_address,
)
from txmsg.errors import TxmsgError

if TYPE_CHECKING:
    pass

__all__ = [
    "DEFAULT_URL",
    "URL_ENV_VAR",
    "ConnectionParameters",
    "InvalidURL",
    "default_urls",
    "parse_url",
    "parse_urls",
    "redact_url",
    "split_urls",
]

#: The URL used when none is given and C{TXMSG_URL} is not set.
DEFAULT_URL: Final = "amqp://guest:guest@localhost:5672/%2F"

#: The environment variable holding the broker URL(s).
URL_ENV_VAR: Final = "TXMSG_URL"

_DEFAULT_PORTS: Final = {"amqp": 5672, "amqps": 5671}

_MIN_FRAME_MAX: Final = 4096
_MAX_FRAME_MAX: Final = 2**32 - 1

_MAX_CONNECTION_TIMEOUT: Final = 3600
_PASSWORD_MASK: Final = "***"  # noqa: S105 - the mask, not a password

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_URL_SEPARATORS = re.compile(r"[\s,]+")


class InvalidURL(TxmsgError, ValueError):
    """
    A broker URL, or a L{ConnectionParameters} built by hand, is not valid.

    The message is one line naming the problem, after the URL with its
    password replaced by C{***}, e.g. C{invalid AMQP URL
    amqp://guest:***@host:99999/: port 99999 out of range 1-65535}.

    @ivar reason: what is wrong, without the URL.
    @ivar url: the offending URL with its password masked (L{redact_url}), or
        C{None} when there was no single URL to blame.
    """

    def __init__(self, reason: str, url: str | None = None) -> None:
        """
        @param reason: what is wrong with the URL.
        @param url: the offending URL; it is masked here, so it may be given
            with its password.
        """
        self.reason = reason
        self.url = None if url is None else redact_url(url)
        if self.url is None:
            message = f"invalid AMQP URL: {reason}"
        else:
            shown = self.url if self.url.isprintable() else repr(self.url)
            message = f"invalid AMQP URL {shown}: {reason}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[InvalidURL], tuple[str, str | None]]:
        """
        Pickle by reason and masked URL, so that the copy reads the same.
        """
        return (type(self), (self.reason, self.url))


def redact_url(url: str) -> str:
    """
    C{url} with the password, if it holds one, replaced by C{***}.

    This works on malformed URLs too: when it cannot tell where the password
    ends it masks more rather than less, so that the result is safe to log.

    @param url: any string meant as a broker URL.
    @return: the same string with its password masked.
    """
    found = _SCHEME.match(url)
    start = found.end() if found else 0
    end = len(url)
    for delimiter in "/?#":
        position = url.find(delimiter, start)
        if position != -1:
            end = min(end, position)
    at = url.rfind("@", start, end)
    if at == -1:
        # An '@' after the authority means the password holds an unencoded
        # '/', '?' or '#': mask up to the last '@' of the whole string.
        at = url.rfind("@", start)
        if at == -1:
            return url
    colon = url.find(":", start, at)
    if colon == -1:
        return url
    return f"{url[: colon + 1]}{_PASSWORD_MASK}{url[at:]}"


@dataclass(frozen=True, kw_only=True)
class ConnectionParameters:
    """
    Where and how to connect to one RabbitMQ node; usually made by
    L{parse_url}.

    Built by hand, every field has a default and is checked as a URL would be
    (L{InvalidURL} on a bad value); C{port=0} means the scheme's default port
    and C{tls} is derived from the scheme.

    @ivar scheme: C{"amqp"} or C{"amqps"}.
    @ivar host: host name or IP address (an IPv6 address without brackets).
    @ivar port: TCP port.
    @ivar vhost: the virtual host, decoded (C{"/"} for RabbitMQ's default).
    @ivar username: the user name for SASL PLAIN.
    @ivar password: the password; never shown by C{repr}, C{str} or
        L{safe_url}.
    @ivar heartbeat: heartbeat interval to ask for, in seconds; 0 disables.
    @ivar connection_timeout: seconds to wait for the TCP connection.
    @ivar channel_max: highest channel number to ask for; 0 accepts the
        broker's.
    @ivar frame_max: largest frame size to ask for; 0 accepts the broker's.
    @ivar tls: whether the connection uses TLS (C{scheme == "amqps"}).
    @ivar cafile: PEM file of the certificate authorities to trust; C{None}
        trusts the platform's.
    @ivar certfile: PEM file of the client certificate (and of its key, when
        C{keyfile} is C{None}).
    @ivar keyfile: PEM file of the client certificate's private key.
    @ivar server_name_indication: the name to send in SNI and to check the
        server's certificate against; C{None} uses C{host}.
    @ivar verify: whether to check the server's certificate (C{verify_peer});
        C{False} is C{verify_none}.
    """

    scheme: str = "amqp"
    host: str = "localhost"
    port: int = 0
    vhost: str = "/"
    username: str = "guest"
    password: str = field(default="guest", repr=False)
    heartbeat: int = 60
    connection_timeout: float = 10.0
    channel_max: int = 0
    frame_max: int = 0
    tls: bool = field(init=False)
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    server_name_indication: str | None = None
    verify: bool = True

    def __post_init__(self) -> None:
        """
        Normalise the scheme, host and port, derive C{tls}, and check every
        field.

        @raise InvalidURL: when a field is out of range or inconsistent.
        """
        try:
            self._normalise_and_check()
        except Problem as problem:
            raise InvalidURL(problem.reason, self._url(_PASSWORD_MASK)) from None

    def _normalise_and_check(self) -> None:
        """
        The body of L{__post_init__}, raising L{Problem}.
        """
        if not isinstance(self.scheme, str) or self.scheme.lower() not in _DEFAULT_PORTS:
            object.__setattr__(self, "tls", False)
            raise Problem(f"unsupported scheme {self.scheme!r}; expected amqp or amqps")
        scheme = self.scheme.lower()
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "tls", scheme == "amqps")
        _check_int("port", self.port, 0, _MAX_SHORT)
        if self.port == 0:
            object.__setattr__(self, "port", _DEFAULT_PORTS[scheme])
        if isinstance(self.host, str) and self.host.startswith("[") and self.host.endswith("]"):
            object.__setattr__(self, "host", self.host[1:-1])
        for name in ("host", "vhost", "username", "password"):
            if not isinstance(getattr(self, name), str):
                raise Problem(f"{name} must be a string")
        if not self.host:
            raise Problem("host is empty")
        if not self.host.isprintable() or any(c in self.host for c in " /?#@[]"):
            raise Problem(f"invalid host {self.host!r}")
        if ":" in self.host and not is_ip_address(self.host):
            raise Problem(f"invalid IPv6 address {self.host!r}")
        _check_int("heartbeat", self.heartbeat, 0, _MAX_SHORT)
        _check_int("channel_max", self.channel_max, 0, _MAX_SHORT)
        _check_int("frame_max", self.frame_max, 0, _MAX_FRAME_MAX)
        if 0 < self.frame_max < _MIN_FRAME_MAX:
            raise Problem(
                f"frame_max {self.frame_max} too small; use 0 (the broker's)"
                f" or {_MIN_FRAME_MAX}-{_MAX_FRAME_MAX}"
            )
        timeout = self.connection_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise Problem(f"connection_timeout must be a number of seconds > 0, got {timeout!r}")
        if timeout > _MAX_CONNECTION_TIMEOUT:
            raise Problem(
                f"connection_timeout {timeout:g} is over {_MAX_CONNECTION_TIMEOUT} s: txmsg reads it in "
                "seconds, not milliseconds as RabbitMQ's Erlang client does"
            )
        object.__setattr__(self, "connection_timeout", float(timeout))
        if not isinstance(self.verify, bool):
            raise Problem(f"verify must be a bool, got {self.verify!r}")
        for name in ("cafile", "certfile", "keyfile", "server_name_indication"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise Problem(f"{name} must be a non-empty string or None")
        if not self.tls:
            for name in ("cafile", "certfile", "keyfile", "server_name_indication"):
                if getattr(self, name) is not None:
                    raise Problem(f"{name} is only valid with amqps://")
            if not self.verify:
                raise Problem("verify=verify_none is only valid with amqps://")
        if self.keyfile is not None and self.certfile is None:
            raise Problem("keyfile requires certfile")

    @property
    def safe_url(self) -> str:
        """
        The URL of these parameters with the password shown as C{***}: fit
        for logs and messages.  It names the port and vhost explicitly and
        every query parameter that differs from its default.
        """
        return self._url(_PASSWORD_MASK)

    def __str__(self) -> str:
        """
        L{safe_url}.
        """
        return self.safe_url

    def _url(self, password: str) -> str:
        """
        The URL of these parameters, with C{password} in place of the
        password (already encoded as it is to appear).
        """
        host = str(self.host)
        if ":" in host:
            host = f"[{quote(host, safe=':')}]"
        else:
            host = quote(host, safe="")
        url = (
            f"{self.scheme}://{quote(str(self.username), safe='')}:{password}@"
            f"{host}:{self.port}/{quote(str(self.vhost), safe='')}"
        )
        query = self._query()
        return f"{url}?{query}" if query else url

    def _query(self) -> str:
        """
        The query string for the parameters that differ from their defaults.
        """
        pairs: list[tuple[str, str]] = []
        if self.heartbeat != 60:
            pairs.append(("heartbeat", str(self.heartbeat)))
        if self.connection_timeout != 10.0:
            timeout = self.connection_timeout
            if isinstance(timeout, float) and timeout.is_integer():
                pairs.append(("connection_timeout", str(int(timeout))))
            else:
                pairs.append(("connection_timeout", repr(timeout)))
        if self.channel_max != 0:
            pairs.append(("channel_max", str(self.channel_max)))
        if self.frame_max != 0:
            pairs.append(("frame_max", str(self.frame_max)))
        for name, value in (
            ("cacertfile", self.cafile),
            ("certfile", self.certfile),
            ("keyfile", self.keyfile),
            ("server_name_indication", self.server_name_indication),
        ):
            if value is not None:
                pairs.append((name, str(value)))
        if not self.verify:
            pairs.append(("verify", "verify_none"))
        return "&".join(f"{name}={quote(value, safe='/')}" for name, value in pairs)

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        """
        A Twisted client endpoint that connects to this node.

        Both schemes connect with C{HostnameEndpoint} (which resolves the name
        and tries each address) using C{connection_timeout}; C{amqps} wraps it
        in TLS with C{wrapClientTLS}.  With C{verify_peer} the server's
        certificate must chain to C{cafile} (or to the platform's trust store
        when there is none) and match C{server_name_indication} or C{host};
        with C{verify_none} it is not checked, though the name is still sent
        by SNI.  The certificate files are read now, at each call, so renewed
        files are picked up by the next connection.

        @param reactor: provider of C{IReactorTCP}, C{IReactorTime} and
            C{IReactorPluggableNameResolver}.
        @return: an endpoint; its C{connect} gives the protocol the AMQP
            bytes, in clear or through TLS.
        @raise OSError: a certificate file cannot be read.
        @raise ValueError: a certificate file does not hold what it should.
        @raise NotImplementedError: C{amqps} without pyOpenSSL installed.
        """
        # The casts are for mypy without a zope.interface plugin.
        tcp = cast(
            IStreamClientEndpoint,
            HostnameEndpoint(reactor, self.host, self.port, timeout=self.connection_timeout),
        )
        if not self.tls:
            return tcp
        from txmsg._tls import wrap_client_tls

        return wrap_client_tls(self, tcp, reactor)


def parse_url(url: str) -> ConnectionParameters:
    """
    Parse one RabbitMQ URL (see the module docstring for the syntax).

    Whitespace around the URL is ignored.

    @param url: e.g. C{"amqps://user:secret@rabbit.example/prod?heartbeat=30"}.
    @return: the parameters it names, defaults filled in.
    @raise InvalidURL: the URL is malformed, has an unknown query parameter
        or a value out of range; the message masks the password.
    """
    if not isinstance(url, str):
        raise TypeError(f"an AMQP URL must be a str, not {type(url).__name__}")
    text = url.strip()
    if not text:
        raise InvalidURL("empty URL")
    try:
        return _parse(text)
    except (Problem, InvalidURL) as problem:
        raise InvalidURL(problem.reason, url) from None


def split_urls(text: str) -> list[str]:
    """
    The URLs in C{text}, separated by commas and/or whitespace.

    A comma or whitespace inside a URL must therefore be percent-encoded
    (C{%2C}, C{%20}).
    """
    return [part for part in _URL_SEPARATORS.split(text) if part]


def default_urls(environ: Mapping[str, str] | None = None) -> list[str]:
    """
    The broker URLs to use when none is given: those in the C{TXMSG_URL}
    environment variable (several, separated by commas or whitespace, name
    the nodes of a cluster), else C{[DEFAULT_URL]}.  An empty C{TXMSG_URL}
    counts as unset.

    @param environ: the environment to read; C{None} reads C{os.environ} at
        call time.  (Not C{os.environ} as the default value: documentation
        tools would print the whole environment, passwords included, in the
        signature.)
    @return: one or more URLs, not yet parsed.
    """
    if environ is None:
        environ = os.environ
    return split_urls(environ.get(URL_ENV_VAR, "")) or [DEFAULT_URL]


def parse_urls(urls: str | Iterable[str] | None) -> list[ConnectionParameters]:
    """
    Parse one or more broker URLs, e.g. the nodes of a cluster.

    @param urls: a URL; several in one string separated by commas or
        whitespace; an iterable of URLs (each item one URL, not split); or
        C{None} for L{default_urls} from the environment.
    @return: the parameters of each URL, in order.
    @raise InvalidURL: a URL is invalid, or none was given.
    """
    if urls is None:
        texts = default_urls()
    elif isinstance(urls, str):
        texts = split_urls(urls)
    else:
        texts = list(urls)
    if not texts:
        raise InvalidURL("no URL given")
    return [parse_url(text) for text in texts]


def _parse(text: str) -> ConnectionParameters:
    """
    The body of L{parse_url}, raising L{Problem} or L{InvalidURL}.
    """
    if not text.isprintable() or any(c.isspace() for c in text):
        raise Problem("whitespace or control character in the URL; percent-encode it")
    found = _SCHEME.match(text)
    if found is None:
        raise Problem("expected amqp:// or amqps:// at the start")
    scheme = found.group(1).lower()
    if scheme not in _DEFAULT_PORTS:
        raise Problem(f"unsupported scheme {found.group(1)!r}; expected amqp or amqps")
    rest = text[found.end() :]
    if "#" in rest:
        raise Problem("the URL has a fragment ('#'); percent-encode '#' as %23")
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in path or "@" in query:
        raise Problem(
            "'@' after the host; percent-encode '@' as %40 in a vhost or parameter,"
            " and '/', '?' and '#' in a user name or password"
        )

    username, password = "guest", "guest"
    userinfo, at, hostport = authority.rpartition("@")
    if at:
        raw_user, colon, raw_password = userinfo.partition(":")
        username = _decode(raw_user, "user name")
        if colon:
            password = _decode(raw_password, "password")

    host, port = _parse_host_and_port(hostport)

    vhost = "/"
    if slash:
        if "/" in path:
            raise Problem("the vhost must be one path segment; percent-encode '/' as %2F")
        vhost = _decode(path, "vhost")

    options = _parse_query(query, scheme)
    return ConnectionParameters(
        scheme=scheme,
        host=host,
        port=port,
        vhost=vhost,
        username=username,
        password=password,
        **options,
    )
