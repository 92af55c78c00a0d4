"""
The methods of AMQP 0-9-1, compiled from the spec file (C{amqp0-9-1.xml}, with
RabbitMQ's extensions, read by txAMQP's loader): each method once into an
encoder and a decoder, so that a frame costs a few C{struct} calls and no
per-frame objects beyond the decoded arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from txmsg._amqp import spec as _spec
from txmsg._amqp.codec import (
    _B,
    _H,
    _HH,
    _L,
    _Q,
    Buf,
    check_property_order,
    decode_table,
    encode_longstr,
    encode_shortstr,
    encode_table,
)


class MethodSpec:
    """
    One AMQP method compiled from the spec: its ids, argument names, and codec.
    """

    __slots__ = (
        "_defaults",
        "_ops",
        "arg_names",
        "class_id",
        "content",
        "key",
        "known_args",
        "method_id",
        "name",
        "prefix",
        "responses",
        "synchronous",
    )

    def __init__(self, method: Any) -> None:
        self.class_id: int = method.klass.id
        self.method_id: int = method.id
        self.name: str = f"{method.klass.name}.{method.name}"
        self.key = (self.class_id, self.method_id)
        self.arg_names: tuple[str, ...] = tuple(_spec._txspec.pythonize(f.name) for f in method.fields)
        self.synchronous: bool = bool(method.synchronous)
        self.content: bool = bool(method.content)
        self.responses: tuple[tuple[int, int], ...] = tuple((r.klass.id, r.id) for r in method.responses)
        self._ops: tuple[str, ...] = tuple(f.type for f in method.fields)
        self._defaults = {
            "bit": False,
            "octet": 0,
            "short": 0,
            "long": 0,
            "longlong": 0,
            "timestamp": 0,
            "shortstr": "",
            "longstr": b"",
            "table": None,
        }
        self.prefix = _HH.pack(self.class_id, self.method_id)
        self.known_args = frozenset(self.arg_names)

    def __repr__(self) -> str:
        return f"<MethodSpec {self.name}>"

    def encode(self, kwargs: dict[str, Any]) -> bytes:
        """
        Encode this method's payload from keyword arguments (missing ones default).
        """
        out = [self.prefix]
        bits: list[bool] = []
        for name, op in zip(self.arg_names, self._ops, strict=True):
            value: Any = kwargs.get(name)
            if value is None:
                value = self._defaults[op]
            if op == "bit":
                bits.append(bool(value))
                continue
            if bits:
                out.append(_pack_bits(bits))
                bits = []
            if op == "shortstr":
                out.append(encode_shortstr(value))
            elif op == "short":
                out.append(_H.pack(value))
            elif op == "long":
                out.append(_L.pack(value))
            elif op in ("longlong", "timestamp"):
                out.append(_Q.pack(value))
            elif op == "octet":
                out.append(_B.pack(value))
            elif op == "table":
                out.append(encode_table(value))
            elif op == "longstr":
                out.append(encode_longstr(value))
            else:  # pragma: no cover - the spec has no other types
                raise ValueError(op)
        if bits:
            out.append(_pack_bits(bits))
        return b"".join(out)

    def decode(self, buf: Buf, off: int) -> dict[str, Any]:
        """
        Decode this method's arguments, starting after the class and method ids.
        """
        args: dict[str, Any] = {}
        bitbyte = 0
        bitpos = 8
        for name, op in zip(self.arg_names, self._ops, strict=True):
            if op == "bit":
                if bitpos == 8:
                    bitbyte = buf[off]
                    off += 1
                    bitpos = 0
                args[name] = bool(bitbyte >> bitpos & 1)
                bitpos += 1
                continue
            bitpos = 8
            if op == "shortstr":
                n = buf[off]
                args[name] = buf[off + 1 : off + 1 + n].decode("utf-8", "surrogateescape")
                off += 1 + n
            elif op == "short":
                args[name] = _H.unpack_from(buf, off)[0]
                off += 2
            elif op == "long":
                args[name] = _L.unpack_from(buf, off)[0]
                off += 4
            elif op in ("longlong", "timestamp"):
                args[name] = _Q.unpack_from(buf, off)[0]
                off += 8
            elif op == "octet":
                args[name] = buf[off]
                off += 1
            elif op == "table":
                args[name], off = decode_table(buf, off)
            elif op == "longstr":
                (n,) = _L.unpack_from(buf, off)
                args[name] = bytes(buf[off + 4 : off + 4 + n])
                off += 4 + n
        return args


def _pack_bits(bits: Sequence[bool]) -> bytes:
    out = bytearray()
    for i, bit in enumerate(bits):
        if i % 8 == 0:
            out.append(0)
        if bit:
            out[-1] |= 1 << (i % 8)
    return bytes(out)


class _Methods:
    """
    Every method of the spec, by C{"class.method"} name and by (class id, method id).
    """

    def __init__(self) -> None:
        self.by_key: dict[tuple[int, int], MethodSpec] = {}
        self.by_name: dict[str, MethodSpec] = {}
        for klass in _spec.load_spec().classes:
            for meth in klass.methods:
                ms = MethodSpec(meth)
                self.by_key[ms.key] = ms
                self.by_name[ms.name] = ms

    def __getitem__(self, name: str) -> MethodSpec:
        return self.by_name[name]


_methods: _Methods | None = None


def methods() -> _Methods:
    """
    The compiled method table, built once per process.
    """
    global _methods
    if _methods is None:
        check_property_order()
        _methods = _Methods()
    return _methods
