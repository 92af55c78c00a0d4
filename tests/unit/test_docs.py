"""
The API reference as a user browses it: pydoctor builds it from the
epytext docstrings with no warning (C{make docs} treats one as an error),
every name C{txmsg} exports has a page or an anchor, no link between the
pages is broken, and every public module, class and method has a docstring.
(Building takes some seconds; no network or broker is used.)
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import txmsg

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    shutil.which("pydoctor") is None and not (Path(sys.executable).parent / "pydoctor").exists(),
    reason="pydoctor is not installed",
)


def _public_modules() -> list[str]:
    names = ["txmsg"]
    for info in pkgutil.walk_packages(txmsg.__path__, "txmsg."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return names


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("api")
    pydoctor = Path(sys.executable).parent / "pydoctor"
    done = subprocess.run(
        [
            str(pydoctor if pydoctor.exists() else "pydoctor"),
            "--quiet",
            "--warnings-as-errors",
            "--docformat=epytext",
            "--project-name=txmsg",
            f"--project-base-dir={ROOT}",
            f"--html-output={out}",
            str(ROOT / "txmsg"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_every_exported_name_has_a_page_or_an_anchor(built: Path) -> None:
    """
    Each name in C{txmsg.__all__} is documented: its own page (classes) or an
    anchor in its module's page (functions, constants).
    """
    pages = {page.name: page.read_text(encoding="utf-8") for page in built.glob("txmsg*.html")}

    def documented(name: str) -> bool:
        return any(page.endswith(f".{name}.html") for page in pages) or any(
            f'id="{name}"' in text or f'name="{name}"' in text for text in pages.values()
        )

    missing = [name for name in txmsg.__all__ if not documented(name)]
    assert not missing, missing


def test_no_link_between_the_pages_is_broken(built: Path) -> None:
    """
    Every local href of every page names a file that was built.
    """
    broken = []
    for page in built.glob("*.html"):
        for href in re.findall(r'href="([^"#?]+)(?:[#?][^"]*)?"', page.read_text(encoding="utf-8")):
            if href.startswith(("http:", "https:", "mailto:", "//")):
                continue
            if not (built / href).exists():
                broken.append(f"{page.name} -> {href}")
    assert not broken, broken[:20]


@pytest.mark.parametrize("module", _public_modules())
def test_every_public_name_has_a_docstring(module: str) -> None:
    """
    A public module, each class and function it exports, and each public
    method and property of those classes say what they are.
    """
    mod = importlib.import_module(module)
    missing = [] if inspect.getdoc(mod) else [module]
    for name in getattr(mod, "__all__", []):
        obj = getattr(mod, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not (obj.__doc__ or "").strip():
            missing.append(f"{module}.{name}")
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_") or not (inspect.isfunction(value) or isinstance(value, property)):
                    continue
                if not (value.__doc__ or "").strip():
                    missing.append(f"{module}.{name}.{attr}")
    assert not missing, missing
