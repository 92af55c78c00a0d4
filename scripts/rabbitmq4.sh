#!/usr/bin/env bash
# RabbitMQ 4 beside the system's broker, for the test suite and for trying
# txmsg on the RabbitMQ people run today.
#
# Debian 12 ships RabbitMQ 3.10; Debian's unstable branch (sid) carries 4.3
# with Erlang 29.  This script keeps a minimal sid root made with debootstrap
# under .txmsg/sid (about 400 MB, made once and reused) and runs RabbitMQ
# nodes inside it with chroot.  Each command inside the root runs in a mount
# namespace of its own (unshare), where /proc and /dev are mounted for it:
# nothing is mounted on the host, so removing .txmsg/ is always safe, and the
# mounts vanish with the last process that uses them.  The root's nodes find
# each other through an epmd of the root's own, on its own port.
#
# Usage:
#   scripts/rabbitmq4.sh root          make sure the root exists; print its path
#   scripts/rabbitmq4.sh version       the RabbitMQ version installed in the root
#   scripts/rabbitmq4.sh run CMD...    run CMD inside the root (environment kept)
#   scripts/rabbitmq4.sh epmd          make sure the root's epmd listens; print its port
#   scripts/rabbitmq4.sh start         (re)start the test node, from an empty data dir
#   scripts/rabbitmq4.sh stop          stop the test node (and the root's epmd when no
#                                      node of the root is left)
#   scripts/rabbitmq4.sh status        say whether the test node runs (exit 1 if not)
#   scripts/rabbitmq4.sh ctl ARG...    rabbitmqctl for the test node
#   scripts/rabbitmq4.sh env           the test node's settings as shell assignments
#                                      (TXMSG_TEST_URL, TXMSG_TEST_RABBITMQCTL, ...)
#   scripts/rabbitmq4.sh deprecated    the deprecated features the test node's log says
#                                      clients used or were refused, one per line
#
# The test node is configured as upstream RabbitMQ 4.3 ships: transient
# non-exclusive queues and global QoS denied, max_message_size 16 MiB.
#
# Environment:
#   TXMSG_RABBITMQ4_ROOT       the sid root (default .txmsg/sid); another
#                              checkout's root can be shared this way
#   TXMSG_RABBITMQ4_PORT       the test node's AMQP port (default 5673)
#   TXMSG_RABBITMQ4_EPMD_PORT  the root's epmd port (default 4371)
#   TXMSG_DEBIAN_MIRROR        where debootstrap gets sid (http://deb.debian.org/debian)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SID="${TXMSG_RABBITMQ4_ROOT:-$ROOT/.txmsg/sid}"
PORT="${TXMSG_RABBITMQ4_PORT:-5673}"
EPMD_PORT="${TXMSG_RABBITMQ4_EPMD_PORT:-4371}"
MIRROR="${TXMSG_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
NODENAME="txmsg4@localhost"
# the test node's directory, as the node sees it and as the host sees it
NODE_DIR=/txmsg/nodes/main
HOST_NODE_DIR="$SID$NODE_DIR"
RMQ_LIB=/usr/lib/rabbitmq/bin
CTL_WRAPPER="$ROOT/.txmsg/rabbitmq4/bin/rabbitmqctl"

for p in "$PORT" "$EPMD_PORT"; do
    case "$p" in '' | *[!0-9]*) echo "rabbitmq4: a port must be a number, not '$p'" >&2; exit 2 ;; esac
done

say() { echo "rabbitmq4: $*"; }
fail() { echo "rabbitmq4: ERROR: $*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo --preserve-env "$@"
    else
        fail "running RabbitMQ 4 in a chroot needs root (not root, no sudo)"
    fi
}

# Exit 0 iff something accepts TCP connections on 127.0.0.1:$1.
port_in_use() {
    python3 - "$1" <<'PY'
import socket, sys
with socket.socket() as s:
    s.settimeout(2)
    sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
}

root_ok() { [ -x "$SID$RMQ_LIB/rabbitmq-server" ] && [ -f "$SID/.txmsg-root" ]; }

# --- the root ---------------------------------------------------------------
ensure_root() {
    root_ok && return 0
    command -v debootstrap >/dev/null 2>&1 || {
        command -v apt-get >/dev/null 2>&1 || fail "debootstrap is missing and there is no apt-get to install it"
        say "installing debootstrap with apt-get"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 || {
            as_root apt-get update -qq
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
        } || fail "'apt-get install debootstrap' failed"
    }
    local partial="$SID.partial" started=$SECONDS
    mkdir -p "$(dirname "$SID")"
    rm -rf --one-file-system "$partial"
    say "making a Debian sid root with RabbitMQ in ${SID#"$ROOT"/} (debootstrap from $MIRROR; about 400 MB, once)"
    if ! as_root debootstrap --variant=minbase --include=rabbitmq-server sid "$partial" "$MIRROR" \
        >"$(dirname "$SID")/debootstrap.log" 2>&1; then
        tail -5 "$(dirname "$SID")/debootstrap.log" >&2 || true
        fail "debootstrap failed; see $(dirname "$SID")/debootstrap.log"
    fi
    [ -x "$partial$RMQ_LIB/rabbitmq-server" ] || fail "debootstrap did not install rabbitmq-server"
    # epmd and the node resolve localhost through the root's own /etc/hosts
    cp /etc/hosts "$partial/etc/hosts"
    # apt-get inside the root, should anyone need it: the snapshot's sid
    # Release file may be past its Valid-Until date
    echo 'Acquire::Check-Valid-Until "false";' >"$partial/etc/apt/apt.conf.d/99txmsg"
    mkdir -p "$partial/txmsg/nodes"
    rm -rf --one-file-system "$SID"
    mv "$partial" "$SID"
    echo "made by scripts/rabbitmq4.sh from $MIRROR on $(date -u +%F)" >"$SID/.txmsg-root"
    say "the root is ready ($(rmq_version)) after $((SECONDS - started)) s"
}

rmq_version() {
    sed -n 's/^Version: //p' <(awk '/^Package: rabbitmq-server$/,/^$/' "$SID/var/lib/dpkg/status") | head -1
}

# Run "$@" inside the root: a private mount namespace with /proc and /dev
# mounted inside the root, then chroot.  The environment is kept.
in_root() {
    as_root unshare --mount --propagation private -- /bin/sh -c '
        r=$1; shift
        mount -t proc proc "$r/proc" && mount --bind /dev "$r/dev" && exec chroot "$r" "$@"
    ' sh "$SID" "$@"
}

# The root's epmd, on its own port (Erlang 29 does not start one by itself here).
ensure_epmd() {
    port_in_use "$EPMD_PORT" && return 0
    in_root /usr/bin/epmd -port "$EPMD_PORT" -address 127.0.0.1 -daemon
    for _ in $(seq 50); do
        port_in_use "$EPMD_PORT" && return 0
        sleep 0.1
    done
    fail "the root's epmd did not start on port $EPMD_PORT"
}

# PIDs of the processes whose root directory is the sid root, by name ($1).
root_pids() {
    local p pid comm
    for p in /proc/[0-9]*; do
        pid="${p#/proc/}"
        [ "$(readlink "$p/root" 2>/dev/null)" = "$SID" ] || continue
        { read -r comm <"$p/comm"; } 2>/dev/null || continue
        [ "$comm" = "$1" ] && echo "$pid"
    done
    return 0
}

# --- the test node ----------------------------------------------------------
# The node's environment, inside the root (a clean one: only what it needs).
node_env() {
    cat <<EOF
HOME=$NODE_DIR/home
LANG=C.UTF-8
PATH=/usr/sbin:/usr/bin:/sbin:/bin
RABBITMQ_NODENAME=$NODENAME
RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
RABBITMQ_NODE_PORT=$PORT
RABBITMQ_DIST_PORT=$(node_dist_port)
RABBITMQ_MNESIA_BASE=$NODE_DIR/mnesia
RABBITMQ_LOG_BASE=$NODE_DIR/log
RABBITMQ_PID_FILE=$NODE_DIR/rabbit.pid
RABBITMQ_ENABLED_PLUGINS_FILE=$NODE_DIR/enabled_plugins
RABBITMQ_CONF_ENV_FILE=$NODE_DIR/rabbitmq-env.conf
RABBITMQ_CONFIG_FILE=$NODE_DIR/rabbitmq.conf
RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}
ERL_EPMD_PORT=$EPMD_PORT
ERL_EPMD_ADDRESS=127.0.0.1
ERL_CRASH_DUMP=$NODE_DIR/log/erl_crash.dump
EOF
}

node_dist_port() { cat "$HOST_NODE_DIR/dist_port" 2>/dev/null || echo 25690; }

in_node_env() {
    local -a vars=()
    while IFS= read -r line; do vars+=("$line"); done < <(node_env)
    in_root /usr/bin/env -i "${vars[@]}" "$@"
}

node_pid() {
    local pid
    pid="$(tr -dc '0-9' 2>/dev/null <"$HOST_NODE_DIR/rabbit.pid")" || return 1
    [ -n "$pid" ] && [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$SID" ] || return 1
    echo "$pid"
}

write_ctl_wrapper() {
    mkdir -p "$(dirname "$CTL_WRAPPER")"
    cat >"$CTL_WRAPPER.tmp" <<EOF
#!/usr/bin/env bash
# Generated by scripts/rabbitmq4.sh: rabbitmqctl for the RabbitMQ 4 test node
# $NODENAME (localhost:$PORT), run inside the sid root.
export TXMSG_RABBITMQ4_ROOT=$(printf '%q' "$SID") TXMSG_RABBITMQ4_PORT=$PORT TXMSG_RABBITMQ4_EPMD_PORT=$EPMD_PORT
exec bash $(printf '%q' "$ROOT/scripts/rabbitmq4.sh") ctl "\$@"
EOF
    chmod +x "$CTL_WRAPPER.tmp"
    mv -f "$CTL_WRAPPER.tmp" "$CTL_WRAPPER"
}

start_node() {
    ensure_root
    stop_node quiet
    if port_in_use "$PORT"; then
        fail "localhost:$PORT is in use by another program; set TXMSG_RABBITMQ4_PORT to a free port"
    fi
    ensure_epmd
    # private nodes of test runs that were killed left their files: with no
    # node of the root running, nothing uses them
    [ -n "$(root_pids beam.smp)" ] || rm -rf --one-file-system "$SID/txmsg/tests"
    # an empty data dir every time: a store that holds transient non-exclusive
    # queues would keep the node from starting with that feature denied
    rm -rf --one-file-system "$HOST_NODE_DIR"
    mkdir -p "$HOST_NODE_DIR"/{home,mnesia,log}
    chmod 700 "$HOST_NODE_DIR/home"
    (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(20).upper(), end="")' \
        >"$HOST_NODE_DIR/home/.erlang.cookie")
    chmod 400 "$HOST_NODE_DIR/home/.erlang.cookie"
    echo '[].' >"$HOST_NODE_DIR/enabled_plugins"
    : >"$HOST_NODE_DIR/rabbitmq-env.conf"
    cat >"$HOST_NODE_DIR/rabbitmq.conf" <<'EOF'
# The txmsg test node: RabbitMQ 4.3 as upstream ships it.
deprecated_features.permit.transient_nonexcl_queues = false
deprecated_features.permit.global_qos = false
max_message_size = 16777216
EOF
    local dist=25690
    while port_in_use "$dist"; do dist=$((dist + 1)); done
    echo "$dist" >"$HOST_NODE_DIR/dist_port"
    local started=$SECONDS
    if ! in_node_env "$RMQ_LIB/rabbitmq-server" -detached >"$HOST_NODE_DIR/log/start.log" 2>&1; then
        fail "could not start the RabbitMQ 4 node; see $HOST_NODE_DIR/log/start.log"
    fi
    if ! in_node_env timeout -k 5 150 "$RMQ_LIB/rabbitmqctl" -n "$NODENAME" wait "$NODE_DIR/rabbit.pid" \
        --timeout 120 >>"$HOST_NODE_DIR/log/start.log" 2>&1; then
        fail "the RabbitMQ 4 node did not start; see $HOST_NODE_DIR/log/"
    fi
    for _ in $(seq 300); do
        port_in_use "$PORT" && break
        sleep 0.1
    done
    port_in_use "$PORT" || fail "the RabbitMQ 4 node runs but does not listen on localhost:$PORT"
    write_ctl_wrapper
    say "started RabbitMQ $(rmq_version) node $NODENAME (pid $(node_pid)) on localhost:$PORT in $((SECONDS - started)) s"
}

stop_node() {
    local quiet="${1:-}" pid
    if pid="$(node_pid)"; then
        [ -n "$quiet" ] || say "stopping the RabbitMQ 4 node $NODENAME (pid $pid)"
        in_node_env timeout -k 5 60 "$RMQ_LIB/rabbitmqctl" -n "$NODENAME" stop "$NODE_DIR/rabbit.pid" \
            >>"$HOST_NODE_DIR/log/stop.log" 2>&1 || true
        for sig in TERM KILL; do
            [ -d "/proc/$pid" ] || break
            for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
            [ -d "/proc/$pid" ] && kill -s "$sig" "$pid" 2>/dev/null || true
        done
    fi
    rm -f "$CTL_WRAPPER"
    # the root's epmd goes when no node of the root is left
    if [ -z "$(root_pids beam.smp)" ]; then
        for pid in $(root_pids epmd); do kill "$pid" 2>/dev/null || true; done
    fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    root) ensure_root; echo "$SID" ;;
    version) root_ok || fail "no root at $SID (run: $0 root)"; rmq_version ;;
    run) root_ok || fail "no root at $SID (run: $0 root)"; in_root "$@" ;;
    epmd) root_ok || fail "no root at $SID (run: $0 root)"; ensure_epmd; echo "$EPMD_PORT" ;;
    start) start_node ;;
    stop) stop_node ;;
    status)
        if pid="$(node_pid)"; then
            say "RabbitMQ $(rmq_version) node $NODENAME (pid $pid) on localhost:$PORT"
        else
            say "the RabbitMQ 4 test node is not running"
            exit 1
        fi
        ;;
    ctl) node_pid >/dev/null || fail "the RabbitMQ 4 test node is not running (start it: $0 start)"
        in_node_env "$RMQ_LIB/rabbitmqctl" -n "$NODENAME" "$@" ;;
    env)
        cat <<EOF
TXMSG_TEST_URL=amqp://guest:guest@127.0.0.1:$PORT/%2F
TXMSG_TEST_RABBITMQCTL=$CTL_WRAPPER
TXMSG_RABBITMQ4_ROOT=$SID
TXMSG_RABBITMQ4_EPMD_PORT=$EPMD_PORT
TXMSG_TEST_NODES=rabbitmq4
EOF
        ;;
    deprecated)
        # RabbitMQ logs "Deprecated features: `name`: ..." once per feature
        sed -n 's/.*Deprecated features: `\([A-Za-z0-9_]*\)`.*/\1/p' "$HOST_NODE_DIR/log/$NODENAME.log" 2>/dev/null |
            sort -u
        ;;
    -h | --help | help) sed -n '2,38p' "$0" ;;
    *) echo "usage: $0 root|version|run|epmd|start|stop|status|ctl|env|deprecated (see --help)" >&2; exit 2 ;;
esac
