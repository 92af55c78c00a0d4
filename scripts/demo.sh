#!/usr/bin/env bash
# The main job, as `make demo` runs it: a `twistd txmsg` consumer fed by
# `txmsg publish`, its output on screen, then stopped cleanly with SIGTERM.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=.venv/bin
QUEUE=${TXMSG_DEMO_QUEUE:-txmsg-demo}
LOG=$(mktemp)
PID=
cleanup() {
    # whatever happened, the consumer does not outlive the demo
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -TERM "$PID"; wait "$PID" || true; fi
    rm -f "$LOG"
}
trap cleanup EXIT

echo "== starting: twistd -n txmsg --role consumer --queue $QUEUE"
"$BIN/twistd" -n --pidfile= txmsg --role consumer --queue "$QUEUE" >"$LOG" 2>&1 &
PID=$!

for _ in $(seq 1 200); do
    grep -q "consuming $QUEUE" "$LOG" && break
    if ! kill -0 "$PID" 2>/dev/null; then cat "$LOG"; echo "demo: the consumer did not start" >&2; exit 1; fi
    sleep 0.1
done
grep -q "consuming $QUEUE" "$LOG" || { cat "$LOG"; echo "demo: the consumer did not start" >&2; exit 1; }

echo "== feeding it: txmsg publish -k $QUEUE ..."
"$BIN/txmsg" publish -k "$QUEUE" "Hello from txmsg!" "Every message is confirmed by the broker before it counts."
printf '%s\n' '{"order": 1, "items": ["tea", "scones"]}' '{"order": 2, "items": ["coffee"]}' \
    | "$BIN/txmsg" publish -k "$QUEUE" --json

for _ in $(seq 1 100); do
    [ "$(grep -c "/$QUEUE: " "$LOG" || true)" -ge 4 ] && break
    sleep 0.1
done

echo "== what the consumer logged:"
grep "/$QUEUE: " "$LOG" | sed 's/^[^ ]* \[[^]]*\] /  /'

echo "== stopping it with SIGTERM"
kill -TERM "$PID"
wait "$PID" || true
PID=
grep -q "Server Shut Down" "$LOG" && echo "== stopped cleanly"
