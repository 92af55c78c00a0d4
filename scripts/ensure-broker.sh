#!/usr/bin/env bash
# Make sure an AMQP 0-9-1 broker answers on localhost:$TXMSG_BROKER_PORT.
#
#   * If something already speaks AMQP there (the system's RabbitMQ, a
#     container, a node started earlier by this script), use it.
#   * Otherwise install rabbitmq-server with apt-get if it is missing, and
#     start a PRIVATE RabbitMQ node whose data, logs and Erlang cookie live
#     under .txmsg/ in the project.  The node is left running; stop it with
#     scripts/broker-stop.sh (make broker-stop).  The system's broker is never
#     started, stopped or reconfigured.
#
# Environment:
#   TXMSG_BROKER_PORT       AMQP port (default 5672)
#   TXMSG_BROKER_DIST_PORT  Erlang distribution port of the private node
#                           (default: port + 20001, i.e. 25673; the next free
#                           one is taken if it is in use)
#   TXMSG_BROKER_WAIT       seconds to wait for AMQP once the node is up (60)
#
# Prints one line saying which broker is used; exits non-zero with one
# readable line if there is none.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# ---------------------------------------------------------------------------
# Settings and helpers, shared with scripts/broker-stop.sh (which sources this
# file; everything below the "sourced" guard only runs when it is executed).
# ---------------------------------------------------------------------------
TXMSG_BROKER_PORT="${TXMSG_BROKER_PORT:-5672}"
case "$TXMSG_BROKER_PORT" in
    '' | *[!0-9]*) echo "TXMSG_BROKER_PORT must be a port number, not '$TXMSG_BROKER_PORT'" >&2; exit 2 ;;
esac
TXMSG_BROKER_DIST_PORT="${TXMSG_BROKER_DIST_PORT:-$((TXMSG_BROKER_PORT + 20001))}"
if [ "$TXMSG_BROKER_PORT" = 5672 ]; then
    TXMSG_NODENAME="txmsg@localhost"
    TXMSG_RMQ_BASE="$ROOT/.txmsg/rabbitmq"
else
    TXMSG_NODENAME="txmsg-$TXMSG_BROKER_PORT@localhost"
    TXMSG_RMQ_BASE="$ROOT/.txmsg/rabbitmq-$TXMSG_BROKER_PORT"
fi
TXMSG_PID_FILE="$TXMSG_RMQ_BASE/rabbitmq.pid"
TXMSG_MARKER="$TXMSG_RMQ_BASE/started-by-txmsg"
TXMSG_CTL_WRAPPER="$TXMSG_RMQ_BASE/bin/rabbitmqctl"
AMQP_WAIT="${TXMSG_BROKER_WAIT:-60}"
# Called directly: the /usr/sbin wrappers switch to the rabbitmq user and
# log into the system node's files.
RMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
RMQ_CTL=/usr/lib/rabbitmq/bin/rabbitmqctl

if command -v python3 >/dev/null 2>&1; then
    PROBE_PY=python3
else
    PROBE_PY="$ROOT/.venv/bin/python"
fi

# Exit 0 iff an AMQP 0-9-1 server answers on localhost:$TXMSG_BROKER_PORT:
# send the protocol header, expect a connection.start method frame back.
amqp_probe() {
    "$PROBE_PY" - "$TXMSG_BROKER_PORT" <<'PY'
import socket, sys
port = int(sys.argv[1])
try:
    with socket.create_connection(("localhost", port), timeout=3) as s:
        s.settimeout(5)
        s.sendall(b"AMQP\x00\x00\x09\x01")
        data = b""
        while len(data) < 11:
            chunk = s.recv(64)
            if not chunk:
                break
            data += chunk
except OSError:
    sys.exit(1)
# frame type 1 (method), channel 0, 4-byte size, class 10 method 10 (connection.start)
ok = len(data) >= 11 and data[0] == 1 and data[1:3] == b"\0\0" and data[7:11] == b"\x00\x0a\x00\x0a"
sys.exit(0 if ok else 1)
PY
}

# Exit 0 iff something accepts TCP connections on localhost:$1 (any protocol).
port_in_use() {
    "$PROBE_PY" - "$1" <<'PY'
import socket, sys
port = int(sys.argv[1])
for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            if s.connect_ex((addr, port)) == 0:
                sys.exit(0)
    except OSError:
        pass
sys.exit(1)
PY
}

# Is PID $1 the beam process of THIS project's private node?  Checked through
# /proc, so a recycled PID or the system's node can never match.
is_private_node_pid() {
    local pid="$1" comm=""
    case "$pid" in '' | *[!0-9]*) return 1 ;; esac
    { read -r comm <"/proc/$pid/comm"; } 2>/dev/null || return 1
    [ "$comm" = beam.smp ] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qx start_sasl || return 1
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "RABBITMQ_MNESIA_BASE=$TXMSG_RMQ_BASE/mnesia"
}

# Print the PID of this project's private node if it runs; exit 1 otherwise.
private_node_pid() {
    local pid p
    if [ -s "$TXMSG_PID_FILE" ]; then
        pid="$(tr -dc '0-9' <"$TXMSG_PID_FILE")"
        if is_private_node_pid "$pid"; then
            echo "$pid"
            return 0
        fi
    fi
    # No (valid) pid file yet, e.g. still booting: look for it.
    for p in /proc/[0-9]*; do
        pid="${p#/proc/}"
        if is_private_node_pid "$pid"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

private_node_alive() { private_node_pid >/dev/null; }

# Export the environment of the private node (call in a subshell).
# $1: Erlang distribution port.
rmq_env() {
    export HOME="$TXMSG_RMQ_BASE/home"
    export RABBITMQ_NODENAME="$TXMSG_NODENAME"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$TXMSG_BROKER_PORT"
    export RABBITMQ_DIST_PORT="$1"
    export RABBITMQ_MNESIA_BASE="$TXMSG_RMQ_BASE/mnesia"
    export RABBITMQ_LOG_BASE="$TXMSG_RMQ_BASE/log"
    export RABBITMQ_PID_FILE="$TXMSG_PID_FILE"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$TXMSG_RMQ_BASE/enabled_plugins"
    export RABBITMQ_CONF_ENV_FILE="$TXMSG_RMQ_BASE/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$TXMSG_RMQ_BASE/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$TXMSG_RMQ_BASE/advanced.config"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_CRASH_DUMP="$TXMSG_RMQ_BASE/log/erl_crash.dump"
    unset RABBITMQ_USE_LONGNAME RABBITMQ_LOGS RABBITMQ_CONFIG_FILES || true
}

# A 'rabbitmqctl' that talks to the private node (its node name, its cookie).
# 'make test' and 'make demo' put its directory first on PATH, so tests that
# run rabbitmqctl reach the broker they are using.  Removed whenever another
# broker is in use.  $1: the node's Erlang distribution port.
write_ctl_wrapper() {
    mkdir -p "$(dirname "$TXMSG_CTL_WRAPPER")"
    cat >"$TXMSG_CTL_WRAPPER.tmp" <<EOF
#!/usr/bin/env bash
# Generated by scripts/ensure-broker.sh: rabbitmqctl for the project's private
# RabbitMQ node $TXMSG_NODENAME (localhost:$TXMSG_BROKER_PORT).
set -euo pipefail
export TXMSG_BROKER_PORT=$TXMSG_BROKER_PORT
. $(printf '%q' "$ROOT/scripts/ensure-broker.sh")
rmq_env $1
exec "\$RMQ_CTL" -n "\$TXMSG_NODENAME" "\$@"
EOF
    chmod +x "$TXMSG_CTL_WRAPPER.tmp"
    mv -f "$TXMSG_CTL_WRAPPER.tmp" "$TXMSG_CTL_WRAPPER"
}

# The distribution port the private node was started with.
recorded_dist_port() {
    local p=""
    if [ -f "$TXMSG_MARKER" ]; then
        p="$(sed -n 's/^TXMSG_DIST_PORT=\([0-9][0-9]*\)$/\1/p' "$TXMSG_MARKER")"
    fi
    echo "${p:-$TXMSG_BROKER_DIST_PORT}"
}

[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

fail() {
    echo "ensure-broker: ERROR: $*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        fail "rabbitmq-server is not installed and installing it needs root (not root, no sudo): run 'apt-get install rabbitmq-server' as root"
    fi
}

# Poll the AMQP probe for up to $1 seconds.
wait_for_amqp() {
    local deadline=$((SECONDS + $1))
    while :; do
        amqp_probe && return 0
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 1
    done
}

# Any process of the 'rabbitmq' system user (i.e. the system's broker, just
# started by the package's postinst)?
system_broker_running() {
    id rabbitmq >/dev/null 2>&1 || return 1
    find /proc -maxdepth 1 -name '[0-9]*' -user rabbitmq 2>/dev/null | grep -q .
}

# --- 1. something already answers? ------------------------------------------
if amqp_probe; then
    if private_node_alive; then
        write_ctl_wrapper "$(recorded_dist_port)"
        echo "ensure-broker: using the project's private RabbitMQ node $TXMSG_NODENAME on localhost:$TXMSG_BROKER_PORT"
    else
        rm -f "$TXMSG_CTL_WRAPPER"
        echo "ensure-broker: using the AMQP broker already listening on localhost:$TXMSG_BROKER_PORT"
    fi
    exit 0
fi
rm -f "$TXMSG_CTL_WRAPPER"

# Our own node may be alive but still booting (e.g. a previous run timed out).
if private_node_alive; then
    if wait_for_amqp "$AMQP_WAIT"; then
        write_ctl_wrapper "$(recorded_dist_port)"
        echo "ensure-broker: using the project's private RabbitMQ node $TXMSG_NODENAME on localhost:$TXMSG_BROKER_PORT"
        exit 0
    fi
    fail "the project's RabbitMQ node $TXMSG_NODENAME (pid $(private_node_pid)) runs but does not answer AMQP on localhost:$TXMSG_BROKER_PORT; see $TXMSG_RMQ_BASE/log/ or run scripts/broker-stop.sh"
fi

if port_in_use "$TXMSG_BROKER_PORT"; then
    fail "localhost:$TXMSG_BROKER_PORT is in use by something that does not speak AMQP 0-9-1; free the port or set TXMSG_BROKER_PORT"
fi

# --- 2. install RabbitMQ if needed -------------------------------------------
if [ ! -x "$RMQ_SERVER" ]; then
    command -v apt-get >/dev/null 2>&1 ||
        fail "no AMQP broker on localhost:$TXMSG_BROKER_PORT and rabbitmq-server is not installed (no apt-get to install it); start a RabbitMQ broker on that port"
    echo "ensure-broker: installing rabbitmq-server with apt-get (this takes a minute)"
    as_root apt-get update -qq ||
        fail "'apt-get update' failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null ||
        fail "'apt-get install rabbitmq-server' failed"
    [ -x "$RMQ_SERVER" ] || fail "rabbitmq-server was installed but $RMQ_SERVER is missing"
    # On a machine with a working init system the package starts the system's
    # broker itself; if that one comes up on our port, use it rather than race it.
    if [ "$TXMSG_BROKER_PORT" = 5672 ] && system_broker_running; then
        if wait_for_amqp 60; then
            echo "ensure-broker: using the system's RabbitMQ broker (just installed) on localhost:$TXMSG_BROKER_PORT"
            exit 0
        fi
        port_in_use "$TXMSG_BROKER_PORT" &&
            fail "the system's RabbitMQ broker (just installed) holds localhost:$TXMSG_BROKER_PORT but does not answer AMQP; see /var/log/rabbitmq/"
    fi
fi

# --- 3. start the private node -----------------------------------------------
mkdir -p "$TXMSG_RMQ_BASE"/{home,mnesia,log}
chmod 700 "$TXMSG_RMQ_BASE/home"
# Its own Erlang cookie, so it has nothing to do with the system node's.
if [ ! -s "$TXMSG_RMQ_BASE/home/.erlang.cookie" ]; then
    (
        umask 077
        python3 -c 'import secrets; print(secrets.token_hex(20).upper(), end="")' \
            >"$TXMSG_RMQ_BASE/home/.erlang.cookie"
    )
fi
chmod 400 "$TXMSG_RMQ_BASE/home/.erlang.cookie"
echo '[].' >"$TXMSG_RMQ_BASE/enabled_plugins"
: >"$TXMSG_RMQ_BASE/rabbitmq-env.conf"
# guest/guest from localhost works by default; nothing else to configure.
echo '# txmsg private node: defaults only (guest/guest from localhost)' >"$TXMSG_RMQ_BASE/rabbitmq.conf"
echo '[].' >"$TXMSG_RMQ_BASE/advanced.config" # (an empty file does not parse)
rm -f "$TXMSG_PID_FILE" "$TXMSG_MARKER" "$TXMSG_RMQ_BASE/log/erl_crash.dump"

# Distribution port: the requested/default one, or the next free one.
dist_port="$TXMSG_BROKER_DIST_PORT"
tries=0
while port_in_use "$dist_port"; do
    tries=$((tries + 1))
    [ "$tries" -le 50 ] || fail "no free Erlang distribution port in $TXMSG_BROKER_DIST_PORT..$dist_port"
    dist_port=$((dist_port + 1))
done

# The marker records how the node was started, so broker-stop.sh can stop
# exactly this node (and nothing else) later.
cat >"$TXMSG_MARKER" <<EOF
# Written by scripts/ensure-broker.sh: a private RabbitMQ node started by txmsg.
TXMSG_NODENAME=$TXMSG_NODENAME
TXMSG_BROKER_PORT=$TXMSG_BROKER_PORT
TXMSG_DIST_PORT=$dist_port
EOF

echo "ensure-broker: no broker on localhost:$TXMSG_BROKER_PORT; starting a private RabbitMQ node $TXMSG_NODENAME (data and logs in ${TXMSG_RMQ_BASE#"$ROOT"/})"
start_log="$TXMSG_RMQ_BASE/log/start.log"
if ! (rmq_env "$dist_port" && cd "$TXMSG_RMQ_BASE" && "$RMQ_SERVER" -detached) >"$start_log" 2>&1; then
    fail "could not start RabbitMQ ($RMQ_SERVER -detached failed; see $start_log)"
fi

# Why the node died, in one line, if it left a crash dump.
crash_reason() {
    local dump="$TXMSG_RMQ_BASE/log/erl_crash.dump"
    [ -f "$dump" ] && sed -n 's/^Slogan: //p;/^Slogan: /q' "$dump" | cut -c1-300
}

# 'rabbitmqctl wait' returns once the node has booted, but only notices a
# node that died during boot at its timeout: watch the process meanwhile.
(rmq_env "$dist_port" && cd "$TXMSG_RMQ_BASE" && exec timeout -k 5 150 "$RMQ_CTL" -n "$TXMSG_NODENAME" wait "$TXMSG_PID_FILE" --timeout 120) >>"$start_log" 2>&1 &
wait_pid=$!
gone=0
while kill -0 "$wait_pid" 2>/dev/null; do
    sleep 1
    if private_node_alive; then
        gone=0
    else
        gone=$((gone + 1))
    fi
    if [ "$gone" -ge 5 ]; then
        kill "$wait_pid" 2>/dev/null || true
        wait "$wait_pid" 2>/dev/null || true
        reason="$(crash_reason || true)"
        fail "the private RabbitMQ node $TXMSG_NODENAME died while starting${reason:+: $reason}; see $TXMSG_RMQ_BASE/log/"
    fi
done
if ! wait "$wait_pid"; then
    reason="$(crash_reason || true)"
    fail "the private RabbitMQ node $TXMSG_NODENAME did not start within 120 s${reason:+ ($reason)}; see $start_log and $TXMSG_RMQ_BASE/log/"
fi
if ! wait_for_amqp "$AMQP_WAIT"; then
    fail "the private RabbitMQ node $TXMSG_NODENAME started but does not answer AMQP on localhost:$TXMSG_BROKER_PORT after ${AMQP_WAIT} s; see $TXMSG_RMQ_BASE/log/"
fi
write_ctl_wrapper "$dist_port"
if [ "$TXMSG_BROKER_PORT" = 5672 ]; then
    stop_cmd="make broker-stop"
else
    stop_cmd="TXMSG_BROKER_PORT=$TXMSG_BROKER_PORT make broker-stop"
fi
echo "ensure-broker: started the project's private RabbitMQ node $TXMSG_NODENAME (pid $(private_node_pid)) on localhost:$TXMSG_BROKER_PORT; stop it with '$stop_cmd'"
