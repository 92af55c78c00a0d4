#!/usr/bin/env bash
# The whole test suite, against each broker of $TXMSG_BROKERS (make test):
#
#   local  the broker on localhost:5672 (scripts/ensure-broker.sh: the system's
#          RabbitMQ, else Debian's rabbitmq-server in a private node; RabbitMQ
#          3.10 on Debian 12); private nodes for fault tests use the host's
#          rabbitmq-server package
#   4.3    RabbitMQ 4 from Debian sid in a chroot (scripts/rabbitmq4.sh),
#          configured as upstream 4.3 ships; started for the run and stopped
#          after it; private nodes run in the same root
#
# The unit tests (no broker) run once, first; then tests/integration and
# tests/conformance run against each broker in turn.  Arguments go to every
# pytest run (make test PYTEST_ARGS="-k conformance").
#
# Usage: scripts/test.sh [PYTEST_ARGS...]
#        TXMSG_BROKERS=4.3 scripts/test.sh       one broker only
#        TXMSG_BROKERS= scripts/test.sh          unit tests only
#        TXMSG_VENV=DIR scripts/test.sh          with another virtualenv's Python
#        TXMSG_PACKAGING=skip scripts/test.sh    without the wheel test
#
# The wheel test (tests/integration/test_packaging.py) uses no broker and
# installs its wheel into a fresh virtualenv of its own: it runs with the
# first broker only.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${TXMSG_VENV:-$ROOT/.venv}/bin/python"
BROKERS="${TXMSG_BROKERS-local 4.3}"
RMQ_BIN="$ROOT/.txmsg/rabbitmq/bin"

results=()
status=0
started=$SECONDS

run() {  # run LABEL ENV... -- PYTEST ARGS...
    local label="$1"; shift
    local -a envs=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    local t0=$SECONDS rc
    echo "=== $label"
    env "${envs[@]}" "$PY" -m pytest -q "$@"
    rc=$?
    # 5: pytest collected nothing (e.g. -k matched no test of this part)
    [ "$rc" -eq 5 ] && rc=0
    results+=("$(printf '%-38s %s in %d s' "$label" "$([ "$rc" -eq 0 ] && echo passed || echo "FAILED ($rc)")" $((SECONDS - t0)))")
    [ "$rc" -eq 0 ] || status=1
}

# "${skip[@]}": what a broker run leaves out (the wheel test, after the first run)
no_wheel=(--ignore=tests/integration/test_packaging.py)
skip=()
[ "${TXMSG_PACKAGING:-}" = skip ] && skip=("${no_wheel[@]}")

run "unit tests (no broker)" TXMSG_TEST_NODES=host -- tests/unit "$@"

for broker in $BROKERS; do
    case "$broker" in
        local | 3.10)
            bash scripts/ensure-broker.sh || { results+=("local broker: could not start one"); status=1; continue; }
            version="$(PATH="$RMQ_BIN:$PATH" "$PY" -c 'from tests import broker; print(broker.version_string())' 2>/dev/null || echo '?')"
            run "RabbitMQ $version (localhost:5672)" PATH="$RMQ_BIN:$PATH" TXMSG_TEST_NODES=host -- \
                tests/integration tests/conformance "${skip[@]}" "$@"
            ;;
        4.3 | 4 | rabbitmq4)
            if ! bash scripts/rabbitmq4.sh start; then
                results+=("RabbitMQ 4.3: could not start the node (scripts/rabbitmq4.sh start)")
                status=1
                continue
            fi
            mapfile -t envs < <(bash scripts/rabbitmq4.sh env)
            version="$(env "${envs[@]}" "$PY" -c 'from tests import broker; print(broker.version_string())' 2>/dev/null || echo '?')"
            run "RabbitMQ $version (the sid root)" "${envs[@]}" -- tests/integration tests/conformance "${skip[@]}" "$@"
            # txmsg must use no deprecated feature; the tests ask for transient
            # shared queues on purpose (and are refused), nothing else
            used="$(bash scripts/rabbitmq4.sh deprecated | grep -vx transient_nonexcl_queues | tr '\n' ' ')"
            if [ -n "$used" ]; then
                results+=("RabbitMQ $version: deprecated features used: $used(see the node's log)")
                status=1
            fi
            [ -n "${TXMSG_KEEP_RABBITMQ4:-}" ] || bash scripts/rabbitmq4.sh stop
            ;;
        *)
            echo "test: unknown broker '$broker' in TXMSG_BROKERS (use: local, 4.3)" >&2
            exit 2
            ;;
    esac
    skip=("${no_wheel[@]}")
done

echo "=== summary ($((SECONDS - started)) s; $("$PY" -c 'import sys, twisted; print("Python %d.%d.%d" % sys.version_info[:3], "Twisted", twisted.__version__)'))"
printf '  %s\n' "${results[@]}"
exit "$status"
