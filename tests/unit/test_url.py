"""
Tests for L{txmsg.url}: parsing RabbitMQ URLs, masking passwords, reading
C{TXMSG_URL}, and building Twisted endpoints.
"""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from txmsg.errors import TxmsgError
from txmsg.url import (
    DEFAULT_URL,
    URL_ENV_VAR,
    ConnectionParameters,
    InvalidURL,
    default_urls,
    parse_url,
    parse_urls,
    redact_url,
    split_urls,
)

from ..tls import HAVE_TLS, TLSServer

needs_tls = pytest.mark.skipif(not HAVE_TLS, reason="needs twisted[tls]")

# Twisted's own TLS code still hands pyOpenSSL objects to pyOpenSSL.
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")

SECRET = "S3cr3t-Pw"


# --- the examples of RabbitMQ's URI specification, appendix A ---------------


@pytest.mark.parametrize(
    ("url", "username", "password", "host", "port", "vhost"),
    [
        ("amqp://user:pass@host:10000/vhost", "user", "pass", "host", 10000, "vhost"),
        (
            "amqp://user%61:%61pass@ho%61st:10000/v%2fhost",
            "usera",
            "apass",
            "hoast",
            10000,
            "v/host",
        ),
        ("amqp://", "guest", "guest", "localhost", 5672, "/"),
        ("amqp://:@/", "", "", "localhost", 5672, ""),
        ("amqp://user@", "user", "guest", "localhost", 5672, "/"),
        ("amqp://user:pass@", "user", "pass", "localhost", 5672, "/"),
        ("amqp://host", "guest", "guest", "host", 5672, "/"),
        ("amqp://:10000", "guest", "guest", "localhost", 10000, "/"),
        ("amqp:///vhost", "guest", "guest", "localhost", 5672, "vhost"),
        ("amqp://host/", "guest", "guest", "host", 5672, ""),
        ("amqp://host/%2f", "guest", "guest", "host", 5672, "/"),
        ("amqp://[::1]", "guest", "guest", "::1", 5672, "/"),
    ],
)
def test_rabbitmq_spec_examples(
    url: str, username: str, password: str, host: str, port: int, vhost: str
) -> None:
    """
    Every example of the RabbitMQ URI specification parses to the components
    the specification lists, absent ones replaced by txmsg's defaults (user
    and password guest, host localhost, port 5672, vhost "/").
    """
    params = parse_url(url)
    got = (params.username, params.password, params.host, params.port, params.vhost)
    assert got == (username, password, host, port, vhost)


# --- percent-decoding and the vhost -----------------------------------------


def test_vhost_percent_2f_is_slash() -> None:
    """
    C{%2F} (either case) decodes to the vhost C{/}, RabbitMQ's default vhost.
    """
    assert parse_url("amqp://host/%2F").vhost == "/"
    assert parse_url("amqp://host/%2f").vhost == "/"


def test_absent_vhost_is_default_but_trailing_slash_is_empty_vhost() -> None:
    """
    Without a C{/} after the host the vhost is absent and defaults to C{/};
    with a bare trailing C{/} it is the empty vhost, as RabbitMQ's
    specification says an absent vhost is not a zero-length one.
    """
    assert parse_url("amqp://host").vhost == "/"
    assert parse_url("amqp://host:5672").vhost == "/"
    assert parse_url("amqp://host/").vhost == ""
    assert parse_url("amqp://host:5672/?heartbeat=5").vhost == ""
    assert parse_url("amqp://host?heartbeat=5").vhost == "/"


def test_user_and_password_with_encoded_reserved_characters() -> None:
    """
    A user name and a password holding C{@}, C{:}, C{/}, C{?}, C{#} and C{%}
    are written percent-encoded and come out decoded.
    """
    params = parse_url("amqp://us%40er%3Aname:p%40ss%3Aw%2Fo%3Fr%23d%25@host/v")
    assert params.username == "us@er:name"
    assert params.password == "p@ss:w/o?r#d%"
    assert params.host == "host"
    assert params.vhost == "v"


def test_percent_decoding_is_utf8() -> None:
    """
    Percent-encoded octets are read as UTF-8 in the user name, password and
    vhost.
    """
    params = parse_url("amqp://j%C3%BCrgen:p%C3%A4ss@host/caf%C3%A9")
    assert params.username == "jürgen"
    assert params.password == "päss"
    assert params.vhost == "café"


def test_sub_delimiters_are_allowed_unencoded_in_the_password() -> None:
    """
    RFC 3986 sub-delimiters such as C{!$&'()*+,;=} may appear unencoded in
    the password, as the specification's grammar allows.
    """
    assert parse_url("amqp://u:a!$&'()*+,;=b@host").password == "a!$&'()*+,;=b"


# --- defaults ---------------------------------------------------------------


def test_defaults() -> None:
    """
    A URL that names only the host gets the documented defaults: guest/guest,
    port 5672, vhost C{/}, heartbeat 60 s, connection timeout 10 s,
    channel_max and frame_max 0 (the broker's), no TLS and verify on.
    """
    params = parse_url("amqp://rabbit.example")
    assert params == ConnectionParameters(host="rabbit.example")
    assert params.scheme == "amqp"
    assert params.username == "guest"
    assert params.password == "guest"
    assert params.port == 5672
    assert params.vhost == "/"
    assert params.heartbeat == 60
    assert params.connection_timeout == 10.0
    assert params.channel_max == 0
    assert params.frame_max == 0
    assert params.tls is False
    assert params.verify is True
    assert params.cafile is None
    assert params.certfile is None
    assert params.keyfile is None
    assert params.server_name_indication is None


def test_default_url_constant() -> None:
    """
    L{DEFAULT_URL} is guest@localhost:5672 on vhost C{/}, equal to
    C{ConnectionParameters()}.
    """
    assert DEFAULT_URL == "amqp://guest:guest@localhost:5672/%2F"
    assert parse_url(DEFAULT_URL) == ConnectionParameters()


def test_amqps_default_port_and_tls() -> None:
    """
    C{amqps} sets C{tls} and defaults the port to 5671; an explicit port
    wins.
    """
    params = parse_url("amqps://rabbit.example/")
    assert params.scheme == "amqps"
    assert params.tls is True
    assert params.port == 5671
    assert parse_url("amqps://rabbit.example:15671").port == 15671


def test_scheme_is_case_insensitive() -> None:
    """
    The scheme is matched without regard to case and stored lowercase.
    """
    params = parse_url("AMQPS://host")
    assert params.scheme == "amqps"
    assert params.tls is True


def test_surrounding_whitespace_is_ignored() -> None:
    """
    Whitespace around a URL, as in an environment variable with a trailing
    newline, is ignored.
    """
    assert parse_url("  amqp://host/v\n").vhost == "v"


# --- IPv6 --------------------------------------------------------------------


def test_ipv6_literal_host() -> None:
    """
    A bracketed IPv6 literal is the host, stored without brackets, with or
    without a port.
    """
    assert parse_url("amqp://[::1]").host == "::1"
    params = parse_url("amqp://u:p@[2001:db8::7]:5673/v")
    assert (params.host, params.port, params.vhost) == ("2001:db8::7", 5673, "v")
    assert params.safe_url == "amqp://u:***@[2001:db8::7]:5673/v"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqp://[::1", "'[' without ']'"),
        ("amqp://[not-an-ip]", "invalid IPv6 address"),
        ("amqp://[::1]x", "after the IPv6 address"),
        ("amqp://::1", "in brackets"),
    ],
)
def test_bad_ipv6(url: str, message: str) -> None:
    """
    Malformed or unbracketed IPv6 addresses are rejected with a message
    saying so.
    """
    with pytest.raises(InvalidURL, match=message.replace("[", r"\[")):
        parse_url(url)


# --- query parameters --------------------------------------------------------


def test_query_parameters() -> None:
    """
    heartbeat, connection_timeout, channel_max and frame_max are read from
    the query string.
    """
    params = parse_url("amqp://host/v?heartbeat=30&connection_timeout=5&channel_max=128&frame_max=8192")
    assert params.heartbeat == 30
    assert params.connection_timeout == 5.0
    assert isinstance(params.connection_timeout, float)
    assert params.channel_max == 128
    assert params.frame_max == 8192


def test_connection_timeout_is_seconds_and_may_be_fractional() -> None:
    """
    connection_timeout is in seconds and may have a fractional part.
    """
    assert parse_url("amqp://host?connection_timeout=2.5").connection_timeout == 2.5
    assert parse_url("amqp://host?connection_timeout=.5").connection_timeout == 0.5


def test_zero_values_and_range_limits_are_accepted() -> None:
    """
    heartbeat 0 (off) and the range limits (65535, 4096, 2**32-1) are valid.
    """
    params = parse_url("amqp://host?heartbeat=0&channel_max=65535&frame_max=4096")
    assert (params.heartbeat, params.channel_max, params.frame_max) == (0, 65535, 4096)
    params = parse_url("amqp://host?heartbeat=65535&frame_max=4294967295")
    assert (params.heartbeat, params.frame_max) == (65535, 2**32 - 1)


def test_empty_query_pieces_are_ignored() -> None:
    """
    Empty pieces between C{&}s, and an empty query, are ignored.
    """
    assert parse_url("amqp://host?&heartbeat=5&&").heartbeat == 5
    assert parse_url("amqp://host/?") == parse_url("amqp://host/")


def test_tls_query_parameters() -> None:
    """
    The TLS parameters of RabbitMQ's query-parameter page are read for
    amqps, with percent-decoding of their values.
    """
    params = parse_url(
        "amqps://host?cacertfile=/etc/ca.pem&certfile=/etc/c%20ert.pem"
        "&keyfile=/etc/key.pem&server_name_indication=rabbit.example"
        "&verify=verify_peer"
    )
    assert params.cafile == "/etc/ca.pem"
    assert params.certfile == "/etc/c ert.pem"
    assert params.keyfile == "/etc/key.pem"
    assert params.server_name_indication == "rabbit.example"
    assert params.verify is True


def test_cafile_is_another_name_for_cacertfile() -> None:
    """
    C{cafile} is accepted as a synonym of RabbitMQ's C{cacertfile}.
    """
    assert parse_url("amqps://host?cafile=/ca.pem").cafile == "/ca.pem"


def test_verify_none() -> None:
    """
    C{verify=verify_none} turns certificate verification off.
    """
    assert parse_url("amqps://host?verify=verify_none").verify is False


def test_certfile_alone_is_allowed() -> None:
    """
    A certfile without a keyfile is accepted (the file holds both).
    """
    params = parse_url("amqps://host?certfile=/both.pem")
    assert (params.certfile, params.keyfile) == ("/both.pem", None)


def test_plus_in_a_value_is_kept() -> None:
    """
    A C{+} in a query value is a plus sign, not a space.
    """
    assert parse_url("amqps://host?cacertfile=/a+b.pem").cafile == "/a+b.pem"


# --- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://host/", "unsupported scheme 'http'"),
        ("amqpx://host/", "unsupported scheme 'amqpx'"),
        ("host:5672", "expected amqp:// or amqps://"),
        ("amqp:host", "expected amqp:// or amqps://"),
        ("", "empty URL"),
        ("   ", "empty URL"),
        ("amqp://host:99999/", "port 99999 out of range 1-65535"),
        ("amqp://host:0/", "port 0 out of range 1-65535"),
        ("amqp://host:56x/", "port '56x' is not a number"),
        ("amqp://host/a/b", "one path segment"),
        ("amqp://host/?bogus=1", "unknown query parameter 'bogus'"),
        (
            "amqp://host/?auth_mechanism=plain",
            "unknown query parameter 'auth_mechanism'",
        ),
        ("amqp://host/?heartbeat=abc", "heartbeat 'abc' is not a non-negative integer"),
        ("amqp://host/?heartbeat=-1", "heartbeat '-1' is not a non-negative integer"),
        ("amqp://host/?heartbeat=1.5", "heartbeat '1.5' is not a non-negative integer"),
        ("amqp://host/?heartbeat=", "heartbeat '' is not"),
        ("amqp://host/?heartbeat=65536", "heartbeat 65536 out of range 0-65535"),
        ("amqp://host/?channel_max=65536", "channel_max 65536 out of range 0-65535"),
        ("amqp://host/?frame_max=4095", "frame_max 4095 too small"),
        ("amqp://host/?frame_max=4294967296", "frame_max 4294967296 out of range"),
        ("amqp://host/?connection_timeout=0", "connection_timeout must be"),
        (
            "amqp://host/?connection_timeout=-1",
            "connection_timeout '-1' is not a number",
        ),
        (
            "amqp://host/?connection_timeout=inf",
            "connection_timeout 'inf' is not a number",
        ),
        (
            "amqp://host/?connection_timeout=nan",
            "connection_timeout 'nan' is not a number",
        ),
        ("amqp://host/?heartbeat", "query parameter 'heartbeat' has no value"),
        ("amqp://host/?heartbeat=1&heartbeat=2", "'heartbeat' given more than once"),
        (
            "amqps://host/?cafile=/a&cacertfile=/b",
            "'cafile' and 'cacertfile' both given",
        ),
        ("amqp://host/?cacertfile=/ca.pem", "'cacertfile' is only valid with amqps://"),
        ("amqp://host/?verify=verify_peer", "'verify' is only valid with amqps://"),
        ("amqps://host/?verify=yes", "verify must be verify_peer or verify_none"),
        ("amqps://host/?keyfile=/k.pem", "keyfile requires certfile"),
        ("amqps://host/?cacertfile=", "'cacertfile' is empty"),
        ("amqps://host/?server_name_indication=disable", "disable is not supported"),
        ("amqp://host/v%zz", "malformed percent-encoding in the vhost"),
        ("amqp://host/v%ff", "vhost is not UTF-8"),
        ("amqp://ho st/", "whitespace"),
        ("amqp://host/v\x00", "control character"),
        ("amqp://host/#frag", "fragment"),
        ("amqp://host/a@b", "'@' after the host"),
        ("amqp://ho%2Fst/", "invalid host"),
    ],
)
def test_invalid_urls(url: str, message: str) -> None:
    """
    Each kind of invalid URL raises L{InvalidURL} whose message names the
    problem (and the offending parameter, where there is one).
    """
    with pytest.raises(InvalidURL) as caught:
        parse_url(url)
    assert message in str(caught.value)
    assert message in caught.value.reason
    assert str(caught.value).startswith("invalid AMQP URL")
    assert "\n" not in str(caught.value)


def test_invalid_url_is_a_value_error_and_a_txmsg_error() -> None:
    """
    L{InvalidURL} is both a C{ValueError} and a L{TxmsgError}, and can be
    subclassed.
    """
    assert issubclass(InvalidURL, ValueError)
    assert issubclass(InvalidURL, TxmsgError)

    class Mine(InvalidURL):
        pass

    error = Mine("bad", "amqp://u:pw@h")
    assert isinstance(error, ValueError)
    assert str(error) == "invalid AMQP URL amqp://u:***@h: bad"


def test_error_message_format() -> None:
    """
    The message reads C{invalid AMQP URL <url, password masked>: <reason>}
    and the exception keeps the masked URL and the reason apart.
    """
    with pytest.raises(InvalidURL) as caught:
        parse_url(f"amqp://guest:{SECRET}@host:99999/")
    error = caught.value
    assert str(error) == ("invalid AMQP URL amqp://guest:***@host:99999/: port 99999 out of range 1-65535")
    assert error.url == "amqp://guest:***@host:99999/"
    assert error.reason == "port 99999 out of range 1-65535"


def test_invalid_url_pickles() -> None:
    """
    An L{InvalidURL} survives pickling (e.g. across processes) unchanged.
    """
    error = InvalidURL("port 0 out of range 1-65535", f"amqp://u:{SECRET}@h:0/")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is InvalidURL
    assert (str(copy), copy.reason, copy.url) == (str(error), error.reason, error.url)
    assert SECRET not in pickle.dumps(error).decode("latin-1")


@pytest.mark.parametrize(
    "url",
    [
        f"amqp://user:{SECRET}@host:99999/",
        f"amqp://user:{SECRET}@host/?bogus=1",
        f"amqp://user:{SECRET}@host/a/b",
        f"amqp://user:{SECRET}@host/?heartbeat=x",
        f"amqp://user:{SECRET}%zz@host/",
        f"amqp://user:{SECRET}%ff@host/",
        f"amqp://user:{SECRET}/x@host/",
        f"amqp://user:x/{SECRET}@host/",
        f"amqp://user:{SECRET}?x@host/",
        f"amqp://user:{SECRET}#x@host/",
        f"amqp://user:{SECRET}@ho st/",
        f"amqp://user:{SECRET}@host:99999/v\n",
        f"http://user:{SECRET}@host/",
        f"user:{SECRET}@host",
        f"amqp:user:{SECRET}@host",
        f"amqp://user:{SECRET}@[::1/",
    ],
)
def test_password_never_in_error_messages(url: str) -> None:
    """
    Whatever is wrong with a URL, the error's message, its args, its C{url}
    and its chained exceptions never hold the password, not even when an
    unencoded C{/}, C{?} or C{#} in the password breaks the parse.
    """
    with pytest.raises(InvalidURL) as caught:
        parse_url(url)
    error = caught.value
    texts = [str(error), repr(error), str(error.url), *map(str, error.args)]
    assert not any(SECRET in text for text in texts)
    assert error.__cause__ is None
    assert error.__suppress_context__


# --- masking the password ----------------------------------------------------


def test_repr_str_and_safe_url_never_show_the_password() -> None:
    """
    C{repr()}, C{str()} and L{ConnectionParameters.safe_url} show C{***}
    where the password was.
    """
    params = parse_url(f"amqps://user:{SECRET}@host:5671/v?heartbeat=5")
    for text in (
        repr(params),
        str(params),
        params.safe_url,
        f"{params}",
        f"{params!r}",
    ):
        assert SECRET not in text
    assert params.safe_url == "amqps://user:***@host:5671/v?heartbeat=5"
    assert str(params) == params.safe_url
    assert "password" not in repr(params)


def test_safe_url_of_the_defaults() -> None:
    """
    L{ConnectionParameters.safe_url} names the port and vhost explicitly and
    masks even the default password.
    """
    assert ConnectionParameters().safe_url == "amqp://guest:***@localhost:5672/%2F"
    assert parse_url("amqp://host/").safe_url == "amqp://guest:***@host:5672/"


def test_safe_url_lists_non_default_parameters_and_round_trips() -> None:
    """
    L{ConnectionParameters.safe_url} encodes the user name and vhost, lists
    every parameter that differs from its default, and parses back to the
    same parameters except for the password.
    """
    params = parse_url(
        "amqps://us%40er:pw@host:1234/a%2Fb?heartbeat=0&connection_timeout=2.5"
        "&channel_max=7&frame_max=8192&cafile=/ca.pem&certfile=/c.pem&keyfile=/k.pem"
        "&server_name_indication=name.example&verify=verify_none"
    )
    assert params.safe_url == (
        "amqps://us%40er:***@host:1234/a%2Fb?heartbeat=0&connection_timeout=2.5"
        "&channel_max=7&frame_max=8192&cacertfile=/ca.pem&certfile=/c.pem"
        "&keyfile=/k.pem&server_name_indication=name.example&verify=verify_none"
    )
    again = parse_url(params.safe_url)
    assert again == dataclasses.replace(params, password="***")


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqp://user:pw@host/v", "amqp://user:***@host/v"),
        ("amqp://user@host/v", "amqp://user@host/v"),
        ("amqp://host:5672/v", "amqp://host:5672/v"),
        ("amqp://:pw@host", "amqp://:***@host"),
        ("amqp://user:p@w@host", "amqp://user:***@host"),
        ("amqp://user:p/w@host", "amqp://user:***@host"),
        ("amqp://user:p?w@host", "amqp://user:***@host"),
        ("user:pw@host", "user:***@host"),
        ("", ""),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    """
    L{redact_url} masks the password of well-formed and malformed URLs, and
    leaves URLs without a password alone.
    """
    assert redact_url(url) == redacted


# --- building ConnectionParameters by hand -----------------------------------


def test_direct_construction() -> None:
    """
    L{ConnectionParameters} can be built directly: port 0 (the default)
    becomes the scheme's port, C{tls} follows the scheme, brackets around an
    IPv6 host are dropped and an int timeout becomes a float.
    """
    params = ConnectionParameters(scheme="amqps", host="[::1]", connection_timeout=3)
    assert params.port == 5671
    assert params.tls is True
    assert params.host == "::1"
    assert params.connection_timeout == 3.0
    assert isinstance(params.connection_timeout, float)
    assert ConnectionParameters(port=15672).port == 15672


def test_direct_construction_is_validated() -> None:
    """
    A bad field given directly raises L{InvalidURL} whose message shows the
    URL of the parameters with the password masked.
    """
    with pytest.raises(InvalidURL) as caught:
        ConnectionParameters(port=99999, password=SECRET)
    assert str(caught.value) == (
        "invalid AMQP URL amqp://guest:***@localhost:99999/%2F: port 99999 out of range 0-65535"
    )
    for kwargs in (
        {"scheme": "http"},
        {"heartbeat": -1},
        {"heartbeat": True},
        {"channel_max": 70000},
        {"frame_max": 10},
        {"connection_timeout": 0},
        {"connection_timeout": float("nan")},
        {"cafile": "/ca.pem"},
        {"verify": False},
        {"scheme": "amqps", "keyfile": "/k.pem"},
        {"host": ""},
        {"host": "a/b"},
    ):
        with pytest.raises(InvalidURL):
            ConnectionParameters(**kwargs)


def test_parameters_are_frozen_and_hashable() -> None:
    """
    L{ConnectionParameters} is immutable and usable as a dict key.
    """
    params = parse_url("amqp://host")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.host = "other"  # type: ignore[misc]
    assert {params: 1}[parse_url("amqp://host")] == 1


# --- TXMSG_URL and several URLs ----------------------------------------------


def test_default_urls_without_the_variable() -> None:
    """
    Without C{TXMSG_URL}, or with it empty, the default URL is used.
    """
    assert URL_ENV_VAR == "TXMSG_URL"
    assert default_urls({}) == [DEFAULT_URL]
    assert default_urls({"TXMSG_URL": "  "}) == [DEFAULT_URL]


def test_default_urls_splits_a_cluster() -> None:
    """
    C{TXMSG_URL} may hold several URLs separated by commas and/or
    whitespace.
    """
    environ = {"TXMSG_URL": "amqp://a/x, amqp://b/y\n amqps://c/z,,amqp://d"}
    assert default_urls(environ) == [
        "amqp://a/x",
        "amqp://b/y",
        "amqps://c/z",
        "amqp://d",
    ]


def test_default_urls_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    By default L{default_urls} reads the process environment at call time.
    """
    monkeypatch.setenv("TXMSG_URL", "amqp://from-env/")
    assert default_urls() == ["amqp://from-env/"]
    assert default_urls(None) == ["amqp://from-env/"]
    monkeypatch.delenv("TXMSG_URL")
    assert default_urls() == [DEFAULT_URL]


def test_default_urls_signature_does_not_show_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    The signature of L{default_urls} (as help() and documentation tools show
    it) does not embed the environment, which may hold passwords.
    """
    monkeypatch.setenv("TXMSG_URL", f"amqp://u:{SECRET}@host/")
    assert SECRET not in str(inspect.signature(default_urls))


def test_parse_urls_none_uses_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    C{parse_urls(None)} parses the URLs of C{TXMSG_URL}, or the default.
    """
    monkeypatch.setenv("TXMSG_URL", "amqp://n1:5673/,amqp://n2:5674/")
    assert [(p.host, p.port) for p in parse_urls(None)] == [("n1", 5673), ("n2", 5674)]
    monkeypatch.delenv("TXMSG_URL")
    assert parse_urls(None) == [ConnectionParameters()]


def test_parse_urls_accepts_a_string_or_an_iterable() -> None:
    """
    C{parse_urls} takes one URL, several in one string (commas or
    whitespace), or an iterable of URLs.
    """
    assert [p.host for p in parse_urls("amqp://a")] == ["a"]
    assert [p.host for p in parse_urls("amqp://a, amqp://b amqp://c")] == [
        "a",
        "b",
        "c",
    ]
    assert [p.host for p in parse_urls(["amqp://a", "amqp://b"])] == ["a", "b"]
    assert [p.host for p in parse_urls(u for u in ("amqp://a", "amqp://b"))] == [
        "a",
        "b",
    ]


def test_parse_urls_does_not_split_items_of_a_list() -> None:
    """
    An item of a list is one URL: a comma in its password is kept.
    """
    [params] = parse_urls(["amqp://u:a,b@host"])
    assert params.password == "a,b"


def test_parse_urls_rejects_nothing_and_bad_members() -> None:
    """
    An empty string or list is an error, and so is any invalid member.
    """
    nothings: list[str | list[str]] = ["", " , ", []]
    for nothing in nothings:
        with pytest.raises(InvalidURL, match="no URL given"):
            parse_urls(nothing)
    with pytest.raises(InvalidURL, match="port 99999"):
        parse_urls(f"amqp://a, amqp://u:{SECRET}@b:99999")


def test_parse_url_rejects_non_strings() -> None:
    """
    C{parse_url} given something other than a str raises C{TypeError}.
    """
    with pytest.raises(TypeError):
        parse_url(b"amqp://host")  # type: ignore[arg-type]


def test_split_urls() -> None:
    """
    L{split_urls} splits on commas and whitespace and drops empty parts.
    """
    assert split_urls(" amqp://a ,\tamqp://b\n") == ["amqp://a", "amqp://b"]
    assert split_urls("") == []


# --- endpoints ----------------------------------------------------------------


@implementer(IHostResolution)
class _Resolution:
    """
    A finished name resolution.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        """
        Nothing to cancel: it finished at once.
        """


@implementer(IHostnameResolver)
class RecordingResolver:
    """
    A name resolver that records the names asked for and resolves each,
    at once, to C{address}.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.names: list[tuple[str, int]] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: object = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        self.names.append((hostName, portNumber))
        resolution: Any = _Resolution(hostName)
        receiver: Any = resolutionReceiver
        receiver.resolutionBegan(resolution)
        address_type = IPv6Address if ":" in self.address else IPv4Address
        receiver.addressResolved(address_type("TCP", self.address, portNumber))
        receiver.resolutionComplete()
        return resolution


def connect_in_memory(
    params: ConnectionParameters, address: str
) -> tuple[Any, MemoryReactorClock, list[tuple[str, int]]]:
    """
    Connect C{params.endpoint()} on a L{MemoryReactorClock} whose resolver
    answers C{address}; return the endpoint, the reactor and the names that
    were resolved.
    """
    reactor = MemoryReactorClock()
    resolver = RecordingResolver(address)
    if hasattr(reactor, "installNameResolver"):
        reactor.installNameResolver(resolver)  # type: ignore[arg-type]
    else:  # Twisted before 25.5: MemoryReactorClock is no pluggable resolver yet
        from twisted.internet.interfaces import IReactorPluggableNameResolver
        from zope.interface import alsoProvides

        alsoProvides(reactor, IReactorPluggableNameResolver)
        reactor.nameResolver = resolver  # type: ignore[attr-defined]
    endpoint: Any = params.endpoint(reactor)
    endpoint.connect(Factory.forProtocol(Protocol))
    reactor.advance(0)
    return endpoint, reactor, resolver.names


def test_amqp_endpoint() -> None:
    """
    For amqp, C{endpoint()} is a L{HostnameEndpoint} that resolves the host
    and connects over TCP to the port with C{connection_timeout}.
    """
    params = parse_url("amqp://rabbit.example:5673/?connection_timeout=2.5")
    endpoint, reactor, names = connect_in_memory(params, "192.0.2.10")
    assert isinstance(endpoint, HostnameEndpoint)
    assert names == [("rabbit.example", 5673)]
    [(host, port, _factory, timeout, _bind)] = reactor.tcpClients
    assert (host, port, timeout) == ("192.0.2.10", 5673, 2.5)


def test_amqp_endpoint_ipv6() -> None:
    """
    An IPv6 literal host is passed to the endpoint without brackets and
    connected to over IPv6.
    """
    params = parse_url("amqp://[::1]/")
    endpoint, reactor, names = connect_in_memory(params, "::1")
    assert isinstance(endpoint, HostnameEndpoint)
    assert names == [("::1", 5672)]
    [(host, port, _factory, timeout, _bind)] = reactor.tcpClients
    assert (host, port, timeout) == ("::1", 5672, 10.0)


@needs_tls
def test_amqps_endpoint_connects_tcp_to_the_host_and_port() -> None:
    """
    For amqps, C{endpoint()} wraps a L{HostnameEndpoint} in TLS: the TCP
    connection goes to the host and TLS port with C{connection_timeout}.
    """
    params = parse_url("amqps://rabbit.example/?connection_timeout=4")
    endpoint, reactor, names = connect_in_memory(params, "192.0.2.11")
    assert not isinstance(endpoint, HostnameEndpoint)
    assert names == [("rabbit.example", 5671)]
    [(host, port, _factory, timeout, _bind)] = reactor.tcpClients
    assert (host, port, timeout) == ("192.0.2.11", 5671, 4.0)


@needs_tls
def test_endpoint_reports_unreadable_certificate_files(tmp_path: Path) -> None:
    """
    A missing cacertfile raises C{OSError}, and files without the expected
    PEM contents raise C{ValueError}, when the endpoint is made.
    """
    reactor = MemoryReactorClock()
    missing = tmp_path / "missing.pem"
    with pytest.raises(OSError):
        parse_url(f"amqps://host?cacertfile={missing}").endpoint(reactor)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        parse_url(f"amqps://host?cacertfile={junk}").endpoint(reactor)
    with pytest.raises(ValueError, match="cannot load a client certificate"):
        parse_url(f"amqps://host?certfile={junk}").endpoint(reactor)


# --- TLS handshakes over loopback --------------------------------------------
# (with the pki and tls_server fixtures of tests/conftest.py, over tests/tls.py)


class _ClientProtocol(Protocol):
    """
    Sends a line and fires C{done} with the answer, or with the failure that
    closed the connection first.
    """

    def __init__(self) -> None:
        self.done: Deferred[bytes] = Deferred()
        self.buffer = b""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(b"hello\n")

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" in self.buffer and not self.done.called:
            self.done.callback(self.buffer.strip())
            transport: Any = self.transport
            transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            self.done.errback(reason)


async def _talk(params: ConnectionParameters, server: TLSServer) -> bytes:
    """
    Connect with C{params.endpoint()} on the real reactor and return the
    server's answer; raise what closed the connection instead.  Waits for the
    server side to close too.
    """
    from twisted.internet import reactor

    clock: Any = reactor
    client = _ClientProtocol()
    endpoint: Any = params.endpoint(reactor)
    try:
        await endpoint.connect(Factory.forProtocol(lambda: client))
        return await client.done.addTimeout(10, clock)
    finally:
        lost = [connection.lost for connection in server.connections]
        await DeferredList(lost).addTimeout(10, clock)


@needs_tls
@pytest_twisted.ensureDeferred
async def test_tls_verifies_against_cafile_and_sends_sni(tls_server: TLSServer, pki: dict[str, Path]) -> None:
    """
    With verify_peer and a cacertfile, a server whose certificate chains to
    that CA and matches server_name_indication is accepted, and the name is
    sent by SNI.
    """
    port = tls_server.start()
    params = parse_url(
        f"amqps://127.0.0.1:{port}/?cacertfile={pki['ca']}"
        "&server_name_indication=localhost&verify=verify_peer"
    )
    assert await _talk(params, tls_server) == b"sni=localhost client=-"


@needs_tls
@pytest_twisted.ensureDeferred
async def test_tls_cafile_may_hold_several_certificates(tls_server: TLSServer, pki: dict[str, Path]) -> None:
    """
    Every certificate of a cacertfile bundle is trusted, not only the first.
    """
    port = tls_server.start()
    params = parse_url(f"amqps://localhost:{port}/?cacertfile={pki['bundle']}")
    assert await _talk(params, tls_server) == b"sni=localhost client=-"


@needs_tls
@pytest_twisted.ensureDeferred
async def test_tls_rejects_an_untrusted_server(tls_server: TLSServer, pki: dict[str, Path]) -> None:
    """
    With verify_peer, a server certificate from a CA not in the cacertfile
    fails the handshake.
    """
    from OpenSSL.SSL import Error

    port = tls_server.start()
    params = parse_url(f"amqps://localhost:{port}/?cacertfile={pki['other_ca']}")
    with pytest.raises(Error):
        await _talk(params, tls_server)


@needs_tls
@pytest_twisted.ensureDeferred
async def test_tls_rejects_a_name_mismatch(tls_server: TLSServer, pki: dict[str, Path]) -> None:
    """
    With verify_peer, a server certificate that does not match the expected
    name (server_name_indication here) fails the handshake.
    """
    from service_identity import VerificationError

    port = tls_server.start()
    params = parse_url(
        f"amqps://127.0.0.1:{port}/?cacertfile={pki['ca']}&server_name_indication=other.example"
    )
    with pytest.raises(VerificationError):
        await _talk(params, tls_server)


@needs_tls
@pytest_twisted.ensureDeferred
async def test_tls_verify_none_accepts_any_certificate_and_sends_sni(
    tls_server: TLSServer,
) -> None:
    """
    With verify_none the server certificate is not checked (no cacertfile
    needed, the name need not match) but the name is still sent by SNI.
    """
    port = tls_server.start()
    params = parse_url(f"amqps://127.0.0.1:{port}/?verify=verify_none&server_name_indication=any.example")
    assert await _talk(params, tls_server) == b"sni=any.example client=-"


@needs_tls
@pytest.mark.parametrize("separate_key", [True, False])
@pytest_twisted.ensureDeferred
async def test_tls_client_certificate(
    tls_server: TLSServer, pki: dict[str, Path], separate_key: bool
) -> None:
    """
    certfile and keyfile (or a certfile holding both) present a client
    certificate that a server requiring one accepts, with verify_peer and
    with verify_none.
    """
    port = tls_server.start(require_client_certificate=True)
    if separate_key:
        files = f"certfile={pki['client_cert']}&keyfile={pki['client_key']}"
    else:
        files = f"certfile={pki['client_both']}"
    for verify in ("verify_peer", "verify_none"):
        params = parse_url(f"amqps://localhost:{port}/?cacertfile={pki['ca']}&{files}&verify={verify}")
        assert await _talk(params, tls_server) == b"sni=localhost client=txmsg-client"


def test_connection_timeout_in_milliseconds_is_refused() -> None:
    """
    A connection_timeout written in milliseconds (RabbitMQ's Erlang client
    convention) is refused with a hint rather than waiting for hours.
    """
    with pytest.raises(InvalidURL, match="seconds, not milliseconds"):
        parse_url("amqp://h/?connection_timeout=10000")
    assert parse_url("amqp://h/?connection_timeout=3600").connection_timeout == 3600.0
