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

import ipaddress
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import quote, unquote

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
)
from zope.interface import implementer

from txmsg.errors import TxmsgError

if TYPE_CHECKING:
    from OpenSSL.SSL import Connection, Context
    from twisted.internet.ssl import Certificate, PrivateCertificate
    from twisted.protocols.tls import TLSMemoryBIOProtocol

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

_MAX_SHORT: Final = 65535
_MIN_FRAME_MAX: Final = 4096
_MAX_FRAME_MAX: Final = 2**32 - 1

_MAX_CONNECTION_TIMEOUT: Final = 3600
_PASSWORD_MASK: Final = "***"  # noqa: S105 - the mask, not a password

_INTEGER = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_URL_SEPARATORS = re.compile(r"[\s,]+")
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)

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


class InvalidURL(TxmsgError, ValueError):
    """
    A broker URL, or a L{ConnectionParameters} built by hand, is not valid.

    The message is one line naming the problem, after the URL with its
    password replaced by C{***}, e.g. C{invalid AMQP URL
    amqp://guest:***@host:99999/: port 99999 out of range 1-65535}.

    @ivar reason: what is wrong, without the URL.
    @ivar url: the offending URL with its password masked (L{redact_url}), or
        L{None} when there was no single URL to blame.
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


class _Problem(Exception):
    """
    Raised inside the parser; L{parse_url} turns it into L{InvalidURL}.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """
    Client TLS that does not check the server's certificate (C{verify_none})
    but still sends the server name (SNI), which proxies may route on.
    """

    def __init__(self, hostname: str, context: Context) -> None:
        """
        @param hostname: the name to send in SNI; an IP address sends none.
        @param context: the OpenSSL context, with verification off.
        """
        self._context = context
        self._server_name: bytes | None = None
        if not _is_ip_address(hostname):
            self._server_name = hostname.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> Connection:
        """
        A new OpenSSL connection for C{tlsProtocol}.
        """
        from OpenSSL.SSL import Connection

        connection = Connection(self._context, None)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


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
    @ivar cafile: PEM file of the certificate authorities to trust; L{None}
        trusts the platform's.
    @ivar certfile: PEM file of the client certificate (and of its key, when
        C{keyfile} is L{None}).
    @ivar keyfile: PEM file of the client certificate's private key.
    @ivar server_name_indication: the name to send in SNI and to check the
        server's certificate against; L{None} uses C{host}.
    @ivar verify: whether to check the server's certificate (C{verify_peer});
        L{False} is C{verify_none}.
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
        except _Problem as problem:
            raise InvalidURL(problem.reason, self._url(_PASSWORD_MASK)) from None

    def _normalise_and_check(self) -> None:
        """
        The body of L{__post_init__}, raising L{_Problem}.
        """
        if not isinstance(self.scheme, str) or self.scheme.lower() not in _DEFAULT_PORTS:
            object.__setattr__(self, "tls", False)
            raise _Problem(f"unsupported scheme {self.scheme!r}; expected amqp or amqps")
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
                raise _Problem(f"{name} must be a string")
        if not self.host:
            raise _Problem("host is empty")
        if not self.host.isprintable() or any(c in self.host for c in " /?#@[]"):
            raise _Problem(f"invalid host {self.host!r}")
        if ":" in self.host and not _is_ip_address(self.host):
            raise _Problem(f"invalid IPv6 address {self.host!r}")
        _check_int("heartbeat", self.heartbeat, 0, _MAX_SHORT)
        _check_int("channel_max", self.channel_max, 0, _MAX_SHORT)
        _check_int("frame_max", self.frame_max, 0, _MAX_FRAME_MAX)
        if 0 < self.frame_max < _MIN_FRAME_MAX:
            raise _Problem(
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
            raise _Problem(f"connection_timeout must be a number of seconds > 0, got {timeout!r}")
        if timeout > _MAX_CONNECTION_TIMEOUT:
            raise _Problem(
                f"connection_timeout {timeout:g} is over {_MAX_CONNECTION_TIMEOUT} s: txmsg reads it in "
                "seconds, not milliseconds as RabbitMQ's Erlang client does"
            )
        object.__setattr__(self, "connection_timeout", float(timeout))
        if not isinstance(self.verify, bool):
            raise _Problem(f"verify must be a bool, got {self.verify!r}")
        for name in ("cafile", "certfile", "keyfile", "server_name_indication"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise _Problem(f"{name} must be a non-empty string or None")
        if not self.tls:
            for name in ("cafile", "certfile", "keyfile", "server_name_indication"):
                if getattr(self, name) is not None:
                    raise _Problem(f"{name} is only valid with amqps://")
            if not self.verify:
                raise _Problem("verify=verify_none is only valid with amqps://")
        if self.keyfile is not None and self.certfile is None:
            raise _Problem("keyfile requires certfile")

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

        Both schemes connect with L{HostnameEndpoint} (which resolves the name
        and tries each address) using C{connection_timeout}; C{amqps} wraps it
        in TLS with L{wrapClientTLS}.  With C{verify_peer} the server's
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
        return wrapClientTLS(self._tls_connection_creator(), tcp, clock=reactor)

    def _tls_connection_creator(self) -> IOpenSSLClientConnectionCreator:
        """
        The TLS client configuration for C{amqps}.
        """
        try:
            from twisted.internet import ssl
        except ImportError as exc:  # pragma: no cover - depends on installation
            raise NotImplementedError(
                "amqps:// needs pyOpenSSL and service_identity: pip install twisted[tls]"
            ) from exc

        hostname = self.server_name_indication or self.host
        client_certificate = self._client_certificate()
        if self.verify:
            trust_root = None
            if self.cafile is not None:
                trust_root = ssl.trustRootFromCertificates(_load_ca_certificates(self.cafile))
            return ssl.optionsForClientTLS(
                hostname, trustRoot=trust_root, clientCertificate=client_certificate
            )
        if client_certificate is None:
            options = ssl.CertificateOptions(verify=False)
        else:
            options = ssl.CertificateOptions(
                privateKey=client_certificate.privateKey.original,
                certificate=client_certificate.original,
                verify=False,
            )
        return cast(
            IOpenSSLClientConnectionCreator,
            _UnverifiedClientTLS(hostname, options.getContext()),
        )

    def _client_certificate(self) -> PrivateCertificate | None:
        """
        The client certificate and key from C{certfile} and C{keyfile}, if
        any.
        """
        if self.certfile is None:
            return None
        from twisted.internet.ssl import PrivateCertificate

        pem = _read_file(self.certfile)
        source = f"certfile {self.certfile}"
        if self.keyfile is not None:
            pem = pem + b"\n" + _read_file(self.keyfile)
            source = f"{source} and keyfile {self.keyfile}"
        try:
            certificate: PrivateCertificate = PrivateCertificate.loadPEM(pem)
        except Exception as exc:  # noqa: BLE001 - OpenSSL raises several kinds
            raise ValueError(
                f"cannot load a client certificate and private key from {source}: {exc}"
            ) from None
        return certificate


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
    except (_Problem, InvalidURL) as problem:
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

    @param environ: the environment to read; L{None} reads C{os.environ} at
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
        L{None} for L{default_urls} from the environment.
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
    The body of L{parse_url}, raising L{_Problem} or L{InvalidURL}.
    """
    if not text.isprintable() or any(c.isspace() for c in text):
        raise _Problem("whitespace or control character in the URL; percent-encode it")
    found = _SCHEME.match(text)
    if found is None:
        raise _Problem("expected amqp:// or amqps:// at the start")
    scheme = found.group(1).lower()
    if scheme not in _DEFAULT_PORTS:
        raise _Problem(f"unsupported scheme {found.group(1)!r}; expected amqp or amqps")
    rest = text[found.end() :]
    if "#" in rest:
        raise _Problem("the URL has a fragment ('#'); percent-encode '#' as %23")
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in path or "@" in query:
        raise _Problem(
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
            raise _Problem("the vhost must be one path segment; percent-encode '/' as %2F")
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


def _parse_host_and_port(hostport: str) -> tuple[str, int]:
    """
    The host and port of C{host[:port]}; a missing host is C{localhost} and
    a missing port is 0 (the scheme's default).
    """
    raw_port: str | None
    if hostport.startswith("["):
        close = hostport.find("]")
        if close == -1:
            raise _Problem("'[' without ']' around an IPv6 address")
        host = _decode(hostport[1:close], "host")
        after = hostport[close + 1 :]
        if after and not after.startswith(":"):
            raise _Problem(f"unexpected {after!r} after the IPv6 address")
        raw_port = after[1:] if after else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Problem(f"invalid IPv6 address [{host}]") from None
    else:
        if hostport.count(":") > 1:
            raise _Problem("an IPv6 address must be written in brackets, e.g. [::1]")
        raw_host, colon, raw_port = hostport.partition(":")
        if not colon:
            raw_port = None
        host = _decode(raw_host, "host") or "localhost"
        if any(c in host for c in ":/?#@[]") or not host.isprintable() or " " in host:
            raise _Problem(f"invalid host {host!r}")
    if not raw_port:
        return host, 0
    if not _INTEGER.fullmatch(raw_port):
        raise _Problem(f"port {raw_port!r} is not a number")
    port = int(raw_port)
    if not 1 <= port <= _MAX_SHORT:
        raise _Problem(f"port {port} out of range 1-{_MAX_SHORT}")
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
            raise _Problem(f"unknown query parameter {name!r} (supported: {supported})")
        if canonical in given:
            if given[canonical] == name:
                raise _Problem(f"query parameter {name!r} given more than once")
            raise _Problem(f"query parameters {given[canonical]!r} and {name!r} both given")
        if not equals:
            raise _Problem(f"query parameter {name!r} has no value")
        if canonical in _TLS_QUERY_NAMES and scheme != "amqps":
            raise _Problem(f"query parameter {name!r} is only valid with amqps://")
        given[canonical] = name
        values[canonical] = _decode(raw_value, f"value of {name}")

    options: dict[str, Any] = {}
    for name in ("heartbeat", "channel_max", "frame_max"):
        if name in values:
            options[name] = _parse_int(name, values[name])
    if "connection_timeout" in values:
        value = values["connection_timeout"]
        if not _DECIMAL.fullmatch(value):
            raise _Problem(f"connection_timeout {value!r} is not a number of seconds")
        options["connection_timeout"] = float(value)
    for name, field_name in (
        ("cacertfile", "cafile"),
        ("certfile", "certfile"),
        ("keyfile", "keyfile"),
        ("server_name_indication", "server_name_indication"),
    ):
        if name in values:
            if not values[name]:
                raise _Problem(f"query parameter {given[name]!r} is empty")
            options[field_name] = values[name]
    if options.get("server_name_indication") == "disable":
        raise _Problem("server_name_indication=disable is not supported")
    if "verify" in values:
        verify = _VERIFY_VALUES.get(values["verify"])
        if verify is None:
            raise _Problem(f"verify must be verify_peer or verify_none, not {values['verify']!r}")
        options["verify"] = verify
    return options


def _parse_int(name: str, value: str) -> int:
    """
    The non-negative decimal integer C{value} of query parameter C{name}.
    """
    if not _INTEGER.fullmatch(value):
        raise _Problem(f"{name} {value!r} is not a non-negative integer")
    try:
        return int(value)
    except ValueError:  # more digits than int() converts
        raise _Problem(f"{name} out of range") from None


def _check_int(name: str, value: object, low: int, high: int) -> None:
    """
    Raise L{_Problem} unless C{value} is an int in C{low..high}.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Problem(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise _Problem(f"{name} {value} out of range {low}-{high}")


def _decode(raw: str, what: str) -> str:
    """
    Percent-decode C{raw} as UTF-8.  The message of a failure names C{what}
    but never shows the text, which may be a password.
    """
    if _BAD_PERCENT.search(raw):
        raise _Problem(f"malformed percent-encoding in the {what}; write '%' as %25")
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise _Problem(f"the {what} is not UTF-8 once percent-decoded") from None


def _is_ip_address(host: str) -> bool:
    """
    Whether C{host} is an IPv4 or IPv6 address rather than a name.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _read_file(path: str) -> bytes:
    """
    The bytes of the file at C{path}.
    """
    with open(path, "rb") as file:
        return file.read()


def _load_ca_certificates(path: str) -> list[Certificate]:
    """
    Every certificate in the PEM file C{path}.

    @raise ValueError: the file holds no certificate, or a bad one.
    """
    from twisted.internet.ssl import Certificate

    blocks = _PEM_CERTIFICATE.findall(_read_file(path))
    if not blocks:
        raise ValueError(f"cacertfile {path} holds no PEM certificate")
    try:
        return [Certificate.loadPEM(block) for block in blocks]
    except Exception as exc:  # noqa: BLE001 - OpenSSL raises several kinds
        raise ValueError(f"cannot load the certificates in cacertfile {path}: {exc}") from None
