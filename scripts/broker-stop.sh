#!/usr/bin/env bash
# Stop the private RabbitMQ node that scripts/ensure-broker.sh started for
# this project (data under .txmsg/), and nothing else: a broker the project
# did not start -- e.g. the system's RabbitMQ -- is never touched.
#
# Usage: scripts/broker-stop.sh          the node for $TXMSG_BROKER_PORT (default 5672)
#        scripts/broker-stop.sh --all    every node the project started (make clean)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ "${1:-}" = --all ]; then
    status=0
    found=0
    for dir in "$ROOT"/.txmsg/rabbitmq "$ROOT"/.txmsg/rabbitmq-[0-9]*; do
        [ -d "$dir" ] || continue
        found=1
        case "$dir" in
            */rabbitmq) port=5672 ;;
            *) port="${dir##*/rabbitmq-}" ;;
        esac
        TXMSG_BROKER_PORT="$port" bash "$0" || status=1
    done
    if [ "$found" -eq 0 ]; then
        echo "broker-stop: no RabbitMQ node was started by this project; nothing to stop. Any other broker is left alone."
    fi
    exit "$status"
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--all]" >&2
    exit 2
fi
# Settings and helpers (node name, paths, rmq_env, private_node_pid, ...).
# shellcheck source=scripts/ensure-broker.sh
. "$ROOT/scripts/ensure-broker.sh"

if [ ! -f "$TXMSG_MARKER" ] && ! private_node_alive; then
    echo "broker-stop: no RabbitMQ node was started by this project for port $TXMSG_BROKER_PORT (no ${TXMSG_MARKER#"$ROOT"/}); nothing to stop. Any other broker is left alone."
    exit 0
fi

if ! pid="$(private_node_pid)"; then
    rm -f "$TXMSG_MARKER" "$TXMSG_PID_FILE" "$TXMSG_CTL_WRAPPER"
    echo "broker-stop: the project's RabbitMQ node $TXMSG_NODENAME is not running; nothing to stop."
    exit 0
fi

dist_port="$(recorded_dist_port)"

# Identify the process by PID *and* start time, so that "still running"
# below means this very process (not a recycled PID), until it is really gone.
proc_fields() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null; }
start_time="$(proc_fields "$pid" | cut -d' ' -f20)"
still_running() {
    local fields
    fields="$(proc_fields "$pid")" || return 1
    [ -n "$fields" ] || return 1
    # shellcheck disable=SC2086
    set -- $fields
    [ "$1" != Z ] && [ "${20}" = "$start_time" ]
}

echo "broker-stop: stopping the project's RabbitMQ node $TXMSG_NODENAME (pid $pid)"
# 'stop PIDFILE' returns once the node's OS process has exited.  It can hang
# when it cannot talk to the node (e.g. a changed cookie): bound it.
(rmq_env "$dist_port" && cd "$TXMSG_RMQ_BASE" && exec timeout -k 5 60 "$RMQ_CTL" -n "$TXMSG_NODENAME" stop "$TXMSG_PID_FILE" --timeout 50) \
    >>"$TXMSG_RMQ_BASE/log/stop.log" 2>&1 || true

# Still there (rabbitmqctl could not reach it)?  Give it a moment to finish
# exiting, then signal that PID -- the very process identified above.
for sig in none TERM TERM KILL; do
    still_running || break
    [ "$sig" = none ] || kill -s "$sig" "$pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        still_running || break
        sleep 1
    done
done

if still_running; then
    echo "broker-stop: ERROR: the project's RabbitMQ node (pid $pid) is still running" >&2
    exit 1
fi
rm -f "$TXMSG_MARKER" "$TXMSG_PID_FILE" "$TXMSG_CTL_WRAPPER"
echo "broker-stop: stopped the project's RabbitMQ node $TXMSG_NODENAME"
