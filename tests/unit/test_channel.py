"""
The engine's channel as the layers above use it: typed methods that send
exactly the spec's method with the spec's argument names, and the narrow
view of the connection a channel offers (may it send, why is it blocked).
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from txmsg._amqp import Channel
from txmsg._amqp.methods import methods

#: each typed method and the AMQP method it sends
TYPED = {
    "basic_qos": "basic.qos",
    "basic_consume": "basic.consume",
    "basic_cancel": "basic.cancel",
    "basic_get": "basic.get",
    "confirm_select": "confirm.select",
    "queue_declare": "queue.declare",
    "queue_delete": "queue.delete",
    "queue_purge": "queue.purge",
    "queue_bind": "queue.bind",
    "queue_unbind": "queue.unbind",
    "exchange_declare": "exchange.declare",
    "exchange_delete": "exchange.delete",
    "exchange_bind": "exchange.bind",
}


class _Link:
    """A connection with room to write, that records what is written."""

    frame_max = 131072
    clock: Any = None
    is_open = True
    writable = True
    blocked: str | None = None

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def write_sequence(self, parts: list[bytes | memoryview]) -> None:
        self.written.extend(bytes(p) for p in parts)

    def call_after_read(self, f: Any) -> bool:
        return False

    def channel_closed(self, channel: Channel) -> None:
        pass


class _Recording(Channel):
    def __init__(self) -> None:
        super().__init__(_Link(), 1)
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def call(self, name: str, **kwargs: Any) -> Any:  # type: ignore[override]
        self.sent.append((name, kwargs))
        return super().call(name, **kwargs)


@pytest.mark.parametrize(("typed", "amqp"), sorted(TYPED.items()))
def test_each_typed_method_sends_its_spec_method_with_the_spec_argument_names(typed: str, amqp: str) -> None:
    """
    Every parameter of a typed method is an argument of the spec's method
    (C{amqp0-9-1.xml}); calling it sends that method, with no unknown argument.
    """
    spec = methods().by_name[amqp]
    signature = inspect.signature(getattr(Channel, typed))
    params = [p for p in signature.parameters if p != "self"]
    assert set(params) <= set(spec.arg_names), (typed, set(params) - set(spec.arg_names))
    channel = _Recording()
    required = {
        p.name: ("x" if p.name not in ("prefetch_count",) else 1)
        for p in signature.parameters.values()
        if p.name != "self" and p.default is inspect.Parameter.empty
    }
    d = getattr(channel, typed)(**required)
    d.addErrback(lambda f: f.trap(Exception))  # no broker answers
    assert [name for name, _ in channel.sent] == [amqp]
    assert channel._link.written, "nothing was written"  # type: ignore[attr-defined]


def test_every_method_txmsg_sends_by_name_has_a_typed_method() -> None:
    """
    The layers above txmsg's engine call typed methods, never C{call("...")}
    by name: a typo is a mypy error, not a runtime one.
    """
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "txmsg"
    offenders = []
    for path in package.rglob("*.py"):
        if "_amqp" in path.parts or "testing" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ('.call("basic.', '.call("queue.', '.call("exchange.', '.call("confirm.'):
            if needle in text:
                offenders.append(f"{path.name}: {needle}")
    assert not offenders, offenders


def test_can_send_is_false_while_blocked_full_or_closed() -> None:
    """
    C{can_send} says whether a publish written now goes out now.
    """
    channel = _Recording()
    link: Any = channel._link
    assert channel.can_send
    link.blocked = "low on memory"
    assert not channel.can_send and channel.blocked == "low on memory"
    link.blocked = None
    link.writable = False
    assert not channel.can_send
    link.writable = True
    channel.is_open = False
    assert not channel.can_send
