"""
The message model: payload encoding by type, decoding by content type, the
fourteen properties, pickle only on opt-in, and undecodable bodies refused.
"""

from __future__ import annotations

import datetime as dt
import pickle

import pytest

from txmsg import Message, UndecodableMessage
from txmsg.message import encode_payload


@pytest.mark.parametrize(
    "payload, body, content_type",
    [
        ({"a": [1, 2]}, b'{"a":[1,2]}', "application/json"),
        ([1, "x"], b'[1,"x"]', "application/json"),
        ("héllo", "héllo".encode(), "text/plain"),
        (b"\x00\xff", b"\x00\xff", None),
        (None, b"null", "application/json"),
    ],
)
def test_payload_encoding_by_type(payload: object, body: bytes, content_type: str | None) -> None:
    """
    dicts and lists encode as JSON, str as UTF-8 text, bytes raw.
    """
    assert encode_payload(payload) == (body, content_type)


def test_explicit_content_type_chooses_the_encoding() -> None:
    """
    An explicit text charset encodes in that charset; a +json type encodes JSON.
    """
    assert encode_payload("é", "text/plain; charset=latin-1") == (b"\xe9", "text/plain; charset=latin-1")
    assert encode_payload({"k": 1}, "application/vnd.x+json")[0] == b'{"k":1}'


def test_unencodable_payload_is_a_type_error() -> None:
    """
    A payload with no obvious encoding is refused rather than pickled silently.
    """
    with pytest.raises(TypeError):
        Message.create(object())
    with pytest.raises(TypeError):
        Message.create({"x": object()})


def test_create_sets_properties_under_pythonic_names() -> None:
    """
    persistent, expiration in ms, timestamp and the other properties map to
    their wire values; unknown property names are refused.
    """
    when = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    m = Message.create(
        {"x": 1},
        persistent=True,
        expiration=1500,
        timestamp=when,
        priority=4,
        correlation_id="c",
        reply_to="r",
        message_id="m",
        type="t",
        user_id="guest",
        app_id="a",
        content_encoding="identity",
        headers={"h": 1},
        cluster_id="cl",
    )
    props = m.properties()
    assert props["delivery_mode"] == 2 and m.persistent
    assert props["expiration"] == "1500"
    assert props["timestamp"] == int(when.timestamp())
    assert props["content_type"] == "application/json"
    assert len(props) == 14
    with pytest.raises(TypeError, match="colour"):
        Message.create(b"", colour="red")


def test_delivered_message_decodes_properties_and_facts() -> None:
    """
    A delivery builds a Message with its delivery facts and a datetime timestamp.
    """
    m = Message.from_delivery(
        b'{"n": 1}',
        {"content_type": "application/json", "timestamp": 0},
        {"exchange": "x", "routing_key": "rk", "redelivered": True, "delivery_tag": 9, "consumer_tag": "c"},
    )
    assert m.payload == {"n": 1}
    assert (m.exchange, m.routing_key, m.redelivered, m.delivery_tag) == ("x", "rk", True, 9)
    assert m.timestamp == dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    "body, content_type",
    [(b"{not json", "application/json"), (b"\xff\xfe", "text/plain"), (b"\xff", "application/json")],
)
def test_undecodable_bodies_raise(body: bytes, content_type: str) -> None:
    """
    Bad JSON and bad UTF-8 raise UndecodableMessage instead of yielding garbage.
    """
    m = Message.from_delivery(body, {"content_type": content_type}, {})
    with pytest.raises(UndecodableMessage):
        m.payload


def test_pickle_is_never_unpickled_without_opt_in() -> None:
    """
    A pickled body is refused unless the consumer opted in; with the opt-in it
    decodes.
    """

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (pytest.fail, ("unpickled without opt-in",))

    body = pickle.dumps(Boom())
    refused = Message.from_delivery(body, {"content_type": "application/python-pickle"}, {})
    with pytest.raises(UndecodableMessage, match="opt in"):
        refused.payload
    allowed = Message.from_delivery(
        pickle.dumps({"k": 1}), {"content_type": "application/python-pickle"}, {}, allow_pickle=True
    )
    assert allowed.payload == {"k": 1}


def test_unknown_content_type_gives_bytes() -> None:
    """
    Without a content type, or with an unknown one, the payload is the raw body.
    """
    assert Message.from_delivery(b"raw", {}, {}).payload == b"raw"
    assert Message.from_delivery(b"raw", {"content_type": "image/png"}, {}).payload == b"raw"


def test_repr_shows_properties_and_truncates_long_bodies() -> None:
    """
    A message's repr is readable: properties set, body truncated.
    """
    r = repr(Message.create(b"x" * 1000, message_id="m1"))
    assert "message_id='m1'" in r and len(r) < 200
