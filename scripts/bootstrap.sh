#!/usr/bin/env bash
# Set up everything txmsg needs to run its demo and its test suite:
#
#   1. a virtualenv in .venv (Python 3.11, or python3 if it is >= 3.10);
#   2. the project installed into it NON-editable, with the "test" extras,
#      reinstalled whenever the working tree changed so the installed copy
#      always reflects the sources;
#   3. an AMQP broker on localhost (scripts/ensure-broker.sh).
#
# TXMSG_VENV=DIR puts the virtualenv elsewhere, and TXMSG_TWISTED=VERSION
# installs that Twisted instead of the latest (make test-twisted-lowest).
#
# Usage: scripts/bootstrap.sh [--no-broker]
# Idempotent: a second run with nothing changed only checks and returns.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${TXMSG_VENV:-$ROOT/.venv}"
TWISTED_PIN="${TXMSG_TWISTED:+Twisted[tls]==$TXMSG_TWISTED}"
VPY="$VENV/bin/python"
DEPS_STAMP="$VENV/.txmsg-deps.sha256"
SRC_STAMP="$VENV/.txmsg-src.sha256"

want_broker=1
for arg in "$@"; do
    case "$arg" in
        --no-broker) want_broker=0 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "bootstrap: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

say() { echo "bootstrap: $*"; }
die() { echo "bootstrap: ERROR: $*" >&2; exit 1; }

# Run a command as root: directly if we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' (not root and no sudo)"
    fi
}

# --- 1. pick an interpreter -------------------------------------------------
pick_python() {
    if command -v python3.11 >/dev/null 2>&1 && python3.11 -c 'import sys' >/dev/null 2>&1; then
        echo python3.11
        return
    fi
    if command -v python3 >/dev/null 2>&1 &&
        python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' >/dev/null 2>&1; then
        echo python3
        return
    fi
    return 1
}

venv_ok() {
    [ -x "$VPY" ] && "$VPY" -c 'import sys, pip; sys.exit(0 if sys.version_info >= (3, 10) else 1)' >/dev/null 2>&1
}

if ! venv_ok; then
    PY="$(pick_python)" || die "Python 3.11 (or python3 >= 3.10) is required; install it with: apt-get install python3 python3-venv"
    if [ -e "$VENV" ]; then
        say "removing broken virtualenv $VENV"
        rm -rf "$VENV"
    fi
    say "creating virtualenv .venv with $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
    if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian ships venv/ensurepip separately (python3-venv / python3.X-venv).
        rm -rf "$VENV"
        command -v apt-get >/dev/null 2>&1 ||
            die "'$PY -m venv' failed and apt-get is not available to install the venv module"
        pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        say "'$PY -m venv' failed; installing python3-venv / python$pyver-venv with apt-get"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv "python$pyver-venv" ||
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        "$PY" -m venv "$VENV" || die "could not create the virtualenv $VENV with $PY"
    fi
    venv_ok || die "the new virtualenv $VENV does not work"
    rm -f "$DEPS_STAMP" "$SRC_STAMP"
    say "upgrading pip"
    "$VPY" -m pip install --quiet --upgrade pip
fi

# --- 2. install the project (non-editable) ----------------------------------
# Fingerprint of what decides the dependencies, and of everything that ends up
# in (or describes) the built distribution.  Paths are NUL-separated so odd
# file names are safe.
fingerprint() {
    local f
    {
        for f in "$@"; do
            if [ -d "$f" ]; then
                find "$f" -type f ! -path '*/__pycache__/*' ! -name '*.py[co]' ! -name dropin.cache -print0
            elif [ -e "$f" ]; then
                printf '%s\0' "$f"
            fi
        done
    } | LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -d' ' -f1
}

META_FILES=(pyproject.toml setup.cfg setup.py MANIFEST.in)
deps_fp="$(fingerprint "${META_FILES[@]}")${TWISTED_PIN:+-$TWISTED_PIN}"
src_fp="$(fingerprint "${META_FILES[@]}" README.md LICENSE amqp0-9-1.xml txmsg twisted)"

installed() { "$VPY" -m pip show --quiet txmsg >/dev/null 2>&1; }
stamp_is() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# setuptools builds in-tree and never cleans build/: a module deleted from
# txmsg/ would otherwise survive in build/lib and be reinstalled. Start clean.
clean_build_dirs() { rm -rf "$ROOT/build" "$ROOT"/*.egg-info; }

if ! stamp_is "$DEPS_STAMP" "$deps_fp" || ! installed; then
    say "installing txmsg and its dependencies (.[test]${TWISTED_PIN:+, $TWISTED_PIN}) into $VENV"
    clean_build_dirs
    rm -f "$SRC_STAMP"
    # pip always rebuilds and reinstalls a project given as a local directory,
    # so this also installs the current working tree of txmsg itself.
    "$VPY" -m pip install --quiet ".[test]" ${TWISTED_PIN:+"$TWISTED_PIN"}
    clean_build_dirs
    echo "$deps_fp" >"$DEPS_STAMP"
    # The fingerprint was taken before the build: a file edited meanwhile
    # makes the next run reinstall, never the other way round.
    echo "$src_fp" >"$SRC_STAMP"
elif ! stamp_is "$SRC_STAMP" "$src_fp"; then
    say "(re)installing txmsg from the working tree"
    clean_build_dirs
    "$VPY" -m pip install --quiet --no-deps --force-reinstall .
    clean_build_dirs
    echo "$src_fp" >"$SRC_STAMP"
else
    say "txmsg in .venv is up to date with the working tree"
fi

# --- 3. the broker ----------------------------------------------------------
if [ "$want_broker" -eq 1 ]; then
    bash "$ROOT/scripts/ensure-broker.sh"
fi
