"""
The package's layering, as the README's "Architecture" section draws it:
every import in txmsg points down (engine -> connection -> message/topology
-> producer/consumer -> patterns -> services -> tap/cli), only the connection
layer sees the engine, only the engine sees txAMQP, and no module is longer
than about 600 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "txmsg"

#: module (or package prefix) -> layer; a module may import its own layer and those below
LAYERS: dict[str, int] = {
    "txmsg._version": 0,
    "txmsg.errors": 0,
    "txmsg.exits": 0,
    "txmsg.url": 0,
    "txmsg._properties": 0,
    "txmsg._url_syntax": 0,
    "txmsg._tls": 0,
    "txmsg._amqp": 1,
    "txmsg._guard": 2,
    "txmsg._cluster": 2,
    "txmsg._replay": 2,
    "txmsg.connection": 2,
    "txmsg.message": 3,
    "txmsg.topology": 3,
    "txmsg._render": 3,
    "txmsg._outcome": 3,
    "txmsg._acks": 4,
    "txmsg.producer": 4,
    "txmsg.consumer": 4,
    "txmsg._deliveries": 4,
    "txmsg.retry": 4,
    "txmsg._declaring_service": 5,
    "txmsg.rpc": 5,
    "txmsg._rpc_wire": 5,
    "txmsg._rpc_client": 5,
    "txmsg.peers": 5,
    "txmsg.jobs": 5,
    "txmsg.metrics": 6,
    "txmsg.web": 6,
    "txmsg.tap": 7,
    "txmsg._startup": 7,
    "txmsg._twistd": 7,
    "txmsg.cli": 7,
    "txmsg.testing": 7,
    "txmsg": 7,
}
#: the only modules outside the engine that may import it: the connection
#: layer, and the in-memory broker's wire server (a broker, not a client)
ENGINE_USERS = {"txmsg.connection", "txmsg.testing._server"}
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _layer(module: str) -> int:
    best = max((name for name in LAYERS if module == name or module.startswith(name + ".")), key=len)
    return LAYERS[best]


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


MODULES = _modules()


def _known(name: str) -> bool:
    return name in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module: str) -> None:
    """
    A module imports only modules of its own layer or the layers below.
    """
    mine = _layer(module)
    upward = sorted(
        name
        for name in _imports(MODULES[module], module)
        if _known(name) and not name.startswith(module + ".") and _layer(name) > mine
    )
    assert not upward, f"{module} (layer {mine}) imports from above: {upward}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_connection_layer_sees_the_engine_and_only_the_engine_sees_txamqp(module: str) -> None:
    """
    C{txmsg._amqp} is imported by C{txmsg.connection} (and the in-memory
    broker's wire server) only; C{txamqp} by the engine only.
    """
    imported = _imports(MODULES[module], module)
    in_engine = module == "txmsg._amqp" or module.startswith("txmsg._amqp.")
    if not in_engine and module not in ENGINE_USERS:
        assert not {n for n in imported if n == "txmsg._amqp" or n.startswith("txmsg._amqp.")}, module
    if not in_engine:
        assert not {n for n in imported if n == "txamqp" or n.startswith("txamqp.")}, module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_600_lines(module: str) -> None:
    """
    Small modules with one job each.
    """
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines"


def test_every_module_has_a_layer() -> None:
    """
    A new module is placed in the layering on purpose (add it to LAYERS and the README).
    """
    unplaced = [
        m for m in MODULES if not any(m == n or m.startswith(n + ".") for n in LAYERS if n != "txmsg")
    ]
    assert unplaced == ["txmsg"], unplaced


def test_the_readmes_architecture_table_is_this_layering() -> None:
    """
    The README's "Architecture" table names every module of LAYERS in its layer, and no other.
    """
    import re

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    placed: dict[str, int] = {}
    for row in re.findall(r"^\| (\d) [^|]+\| ([^|]+)\|", section, flags=re.M):
        layer, modules = int(row[0]), row[1]
        for name in re.findall(
            r"`([^`]+)`", modules.split("(")[0] if modules.startswith("`_amqp/`") else modules
        ):
            name = name.rstrip("/")
            module = "txmsg" if name == "txmsg/__init__" else f"txmsg.{name}"
            placed[module] = layer
    expected = {name: layer for name, layer in LAYERS.items()}
    assert placed == expected, (sorted(set(placed.items()) ^ set(expected.items())),)
