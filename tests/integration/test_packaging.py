"""
Packaging: what a user gets from C{pip install txmsg} -- a wheel installed into
a fresh virtualenv, used from outside the source tree.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC_NAME = "amqp0-9-1.xml"

# Left out of the copy the wheel is built from: VCS data, virtualenvs, the
# broker's state and earlier build output (which could leak stale files).
_COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".venv-*",
    ".txmsg",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "dropin.cache",
)


@dataclass
class InstalledWheel:
    wheel: Path
    venv: Path
    python: Path
    workdir: Path
    env: dict[str, str]

    def run(self, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """
        Run a command with the venv's executables first on PATH, from a
        directory outside the repository, so the source tree can't be imported.
        """
        return subprocess.run(
            [str(a) for a in args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _clean_env(venv_dir: Path) -> dict[str, str]:
    dropped = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "PYTHONUSERBASE", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["VIRTUAL_ENV"] = str(venv_dir)
    env["PATH"] = os.pathsep.join([str(venv_dir / "bin"), env.get("PATH", "")])
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _check(proc: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, (
        f"{what} failed (exit {proc.returncode}):\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledWheel]:
    """
    Build a wheel from a copy of the working tree (so the tree is left clean),
    and install it into a fresh virtualenv without system site-packages.
    """
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=_COPY_IGNORE)
    dist = base / "dist"
    _check(
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(src)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=base,
        ),
        "building the wheel",
    )
    wheels = sorted(dist.glob("txmsg-*.whl"))
    assert len(wheels) == 1, f"expected one txmsg wheel, found {wheels}"

    venv_dir = base / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(venv_dir)
    workdir = base / "elsewhere"
    workdir.mkdir()
    installed = InstalledWheel(
        wheel=wheels[0],
        venv=venv_dir,
        python=venv_dir / "bin" / "python",
        workdir=workdir,
        env=_clean_env(venv_dir),
    )
    _check(
        installed.run(installed.python, "-m", "pip", "install", "--quiet", str(wheels[0]), timeout=900),
        "installing the wheel into a fresh virtualenv",
    )
    yield installed


@pytest.mark.slow
def test_wheel_has_no_twisted_package_markers(installed_wheel: InstalledWheel) -> None:
    """
    The wheel ships the twistd plugin as a bare module in Twisted's
    C{twisted/plugins} namespace: it must not contain C{twisted/__init__.py} or
    C{twisted/plugins/__init__.py} (which would shadow or clobber Twisted's own),
    and installing it must not record either of them as txmsg's files.
    """
    names = set(zipfile.ZipFile(installed_wheel.wheel).namelist())
    assert "twisted/plugins/txmsg_plugin.py" in names
    assert f"txmsg/{SPEC_NAME}" in names
    assert "txmsg/testing/__init__.py" in names  # the in-memory broker for users' tests
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names

    proc = _check(
        installed_wheel.run(
            installed_wheel.python,
            "-c",
            "import importlib.metadata as m; print('\\n'.join(str(f) for f in m.files('txmsg')))",
        ),
        "listing the installed files of txmsg",
    )
    files = set(proc.stdout.split())
    assert "twisted/plugins/txmsg_plugin.py" in files
    assert "twisted/__init__.py" not in files
    assert "twisted/plugins/__init__.py" not in files


@pytest.mark.slow
def test_twistd_lists_txmsg_plugin(installed_wheel: InstalledWheel) -> None:
    """
    In a virtualenv holding only the installed wheel (and its dependencies),
    C{twistd --help} lists the C{txmsg} plugin.
    """
    proc = _check(installed_wheel.run(installed_wheel.venv / "bin" / "twistd", "--help"), "twistd --help")
    # The plugins are listed after "Commands:", each as "    name   description".
    listing = proc.stdout.partition("Commands:")[2]
    commands = set(re.findall(r"^ {1,8}(\S+) ", listing, flags=re.MULTILINE))
    assert "txmsg" in commands, proc.stdout


@pytest.mark.slow
def test_installed_package_ships_and_loads_the_spec(installed_wheel: InstalledWheel) -> None:
    """
    The AMQP spec is read from inside the installed package: the resource
    C{txmsg/amqp0-9-1.xml} exists in the virtualenv's site-packages with the
    same bytes as the repository's top-level C{amqp0-9-1.xml}, and
    C{txmsg._amqp.spec.load_spec()} (run outside the source tree) returns a spec
    that has RabbitMQ's C{confirm} class.
    """
    script = textwrap.dedent(
        """
        import importlib.resources, json, sys, sysconfig
        import txmsg, txmsg._amqp.spec
        res = importlib.resources.files("txmsg").joinpath("amqp0-9-1.xml")
        spec = txmsg._amqp.spec.load_spec()
        json.dump({
            "package": txmsg.__file__,
            "purelib": sysconfig.get_paths()["purelib"],
            "resource": str(res),
            "resource_is_file": res.is_file(),
            "has_confirm": "confirm" in spec.classes.byname,
            "confirm_select": "select" in spec.classes.byname["confirm"].methods.byname,
        }, sys.stdout)
        """
    )
    proc = _check(
        installed_wheel.run(installed_wheel.python, "-c", script),
        "loading the spec from the installed package",
    )
    info = json.loads(proc.stdout)
    purelib = Path(info["purelib"]).resolve()
    assert purelib.is_relative_to(installed_wheel.venv.resolve())
    assert Path(info["package"]).resolve().is_relative_to(purelib), info
    resource = Path(info["resource"]).resolve()
    assert info["resource_is_file"] and resource.is_relative_to(purelib), info
    assert resource.read_bytes() == (REPO / SPEC_NAME).read_bytes()
    assert info["has_confirm"] and info["confirm_select"], info


def test_top_level_spec_is_the_packaged_spec() -> None:
    """
    The repository's top-level C{amqp0-9-1.xml} and the packaged
    C{txmsg/amqp0-9-1.xml} are one file: a symlink to it, or identical bytes.
    """
    top = REPO / SPEC_NAME
    packaged = REPO / "txmsg" / SPEC_NAME
    assert packaged.is_file(), "txmsg/amqp0-9-1.xml is missing"
    assert not packaged.is_symlink(), "txmsg/amqp0-9-1.xml must be a real file: it is the one packaged"
    assert top.exists(), "top-level amqp0-9-1.xml is missing"
    if top.is_symlink():
        assert top.resolve() == packaged.resolve()
    else:
        assert filecmp.cmp(top, packaged, shallow=False)
