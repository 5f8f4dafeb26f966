#!/usr/bin/env bash
# A throwaway Klav cluster for benchmarks: one private PostgreSQL 15 and N klav
# nodes on it, each on its own port, all with the same JWT secret and the raised
# limits of the benchmark server in docs/performance.md.
#
#   bench/cluster.sh start N    start PostgreSQL and N nodes, wait for every /health,
#                               print the --addr list, return (they keep running)
#   bench/cluster.sh run N      the same, then wait: Ctrl-C stops everything
#   bench/cluster.sh stop       stop the nodes and PostgreSQL, remove the directory
#   bench/cluster.sh status     what runs, and the --addr list
#
# Ctrl-C during `start` also stops whatever was started. Nodes listen on PORT =
# KLAV_BASE_PORT + i (5001..500N by default), are named node1..nodeN
# (KLAV_NODE_NAME) and share DATABASE_URL=postgresql://postgres@127.0.0.1:<pgport>/klav.
#
# Settings (environment):
#   KLAV_CLUSTER_DIR   state directory: database, logs, pid files (default /tmp/klav-cluster)
#   KLAV_BIN           the server binary (default <repo>/target/release/klav)
#   KLAV_BASE_PORT     node i listens on KLAV_BASE_PORT + i (default 5000)
#   KLAV_PG_BIN        PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#   KLAV_PG_PORT       PostgreSQL port (default: the first free one from 15432, below
#                      the usual ephemeral range so client connections do not take it)
#   KLAV_PG_OPTS       more server options, e.g. "-c synchronous_commit=off"
#   JWT_SECRET         shared by every node (default: the bench secret of docs/performance.md)
#   KLAV_DB_WORKERS    passed to the nodes; sizes max_connections (default 4)
#   any other KLAV_*   passed to every node as is. The raised limits
#                      (KLAV_RATE_PER_SEC, KLAV_RATE_BURST, KLAV_REGISTER_PER_ADDR,
#                      KLAV_MAX_CONNS_PER_USER, KLAV_MAX_CONNS_PER_ADDR,
#                      KLAV_ROOMS_CREATED_PER_HOUR, KLAV_WS_OPENS_PER_USER_PER_MIN:
#                      1000000 each) are defaults
#                      that the environment overrides.
#
# As root, PostgreSQL (which refuses to run as root) runs as the `postgres` user in
# a directory that user owns; as any other user, it runs as that user.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${KLAV_CLUSTER_DIR:-/tmp/klav-cluster}"
KLAV_BIN="${KLAV_BIN:-$ROOT/target/release/klav}"
BASE_PORT="${KLAV_BASE_PORT:-5000}"
PG_BIN="${KLAV_PG_BIN:-/usr/lib/postgresql/15/bin}"
DB_WORKERS="${KLAV_DB_WORKERS:-4}"
export JWT_SECRET="${JWT_SECRET:-benchsecret-0123456789abcdef0123456789}"

# PostgreSQL commands run from the cluster directory: as root they run as
# `postgres`, which may not be allowed into the caller's working directory.
if [ "$(id -u)" -eq 0 ]; then
    PG_USER=postgres
    as_pg() { (cd "$DIR" && exec 9>&- runuser -u postgres -- "$@"); }
else
    PG_USER="$(id -un)"
    as_pg() { (cd "$DIR" && exec 9>&- "$@"); }
fi

# Messages go to the caller's stderr, kept as fd 9: a trap may run while a
# command's output is redirected to a log.
exec 9>&2
say() { echo "cluster: $*" >&9; }
die() {
    say "$*"
    exit 1
}

# Whether something listens on a TCP port.
port_listening() {
    if command -v ss >/dev/null; then
        [ -n "$(ss -Hltn "( sport = :$1 )" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# Whether any socket uses a TCP port as its local port: a listener, or also e.g. a
# client connection lingering in TIME-WAIT, which can make bind() fail there.
port_used() {
    if command -v ss >/dev/null; then
        [ -n "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]
    else
        port_listening "$1"
    fi
}

# The pid in a pid file, if that process is still the one we started (its command
# line holds `expect`).
live_pid() {
    local file="$1" expect="$2" pid
    [ -f "$file" ] || return 1
    pid="$(cat "$file")"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$expect" || return 1
    echo "$pid"
}

addr_list() {
    local n="$1" i list=""
    for i in $(seq 1 "$n"); do
        list="${list:+$list,}127.0.0.1:$((BASE_PORT + i))"
    done
    echo "$list"
}

stop_all() {
    [ -d "$DIR" ] || {
        say "nothing to stop ($DIR does not exist)"
        return 0
    }
    [ -e "$DIR/.klav-cluster" ] || die "$DIR was not made by this script: not touching it"
    local f pid pids=()
    for f in "$DIR"/node*.pid; do
        [ -e "$f" ] || continue
        if pid="$(live_pid "$f" "$KLAV_BIN")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    # Graceful shutdown takes up to KLAV_SHUTDOWN_SECS (10 s by default).
    local waited=0
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 150 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "node pid $pid did not stop in time: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if [ "${#pids[@]}" -gt 0 ]; then say "stopped ${#pids[@]} node(s)"; fi
    if [ -f "$DIR/pg/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg" -m fast -w stop >/dev/null 2>&1 ||
            say "pg_ctl stop failed (see $DIR/pg.log)"
        say "stopped PostgreSQL"
    fi
    rm -rf "$DIR"
    say "removed $DIR"
}

start_all() {
    local n="$1"
    case "$n" in
    '' | *[!0-9]*) die "usage: $0 start N (N nodes, at least 1)" ;;
    esac
    [ "$n" -ge 1 ] || die "at least one node"
    [ -x "$KLAV_BIN" ] || die "no server binary at $KLAV_BIN: run 'cargo build --release' first"
    [ -x "$PG_BIN/initdb" ] || die "no PostgreSQL binaries in $PG_BIN (set KLAV_PG_BIN)"
    [ -e "$DIR" ] && die "$DIR exists: a cluster is running or was not stopped; run '$0 stop' first"
    local i
    for i in $(seq 1 "$n"); do
        port_listening $((BASE_PORT + i)) && die "port $((BASE_PORT + i)) is in use (set KLAV_BASE_PORT)"
    done

    # From here on, an error or Ctrl-C undoes what was started.
    trap 'trap - EXIT; say "interrupted: cleaning up"; stop_all; exit 130' INT TERM
    trap 'rc=$?; if [ $rc -ne 0 ]; then say "start failed: cleaning up"; stop_all; fi' EXIT

    mkdir -m 755 "$DIR"
    touch "$DIR/.klav-cluster"
    mkdir -m 700 "$DIR/pg" "$DIR/sock"
    chown "$PG_USER" "$DIR/pg" "$DIR/sock"
    touch "$DIR/pg.log"
    chown "$PG_USER" "$DIR/pg.log"

    local pg_port="${KLAV_PG_PORT:-15432}" tries=0
    # Each node holds KLAV_DB_WORKERS + the ordered writer + a few (listener,
    # housekeeping); the margin covers psql/createdb and PostgreSQL's reserved slots.
    local max_conns=$((n * (DB_WORKERS + 6) + 20))
    [ "$max_conns" -ge 100 ] || max_conns=100

    say "PostgreSQL: initdb in $DIR/pg (max_connections $max_conns)"
    as_pg "$PG_BIN/initdb" -D "$DIR/pg" -U postgres --auth=trust -E UTF8 --no-instructions \
        >"$DIR/initdb.log" 2>&1 || {
        tail -n 20 "$DIR/initdb.log" >&9 || true
        die "initdb failed"
    }
    # The first free port from KLAV_PG_PORT; a port taken between the check and
    # PostgreSQL's bind() is retried on the next one.
    while :; do
        if [ -z "${KLAV_PG_PORT:-}" ]; then
            while port_used "$pg_port"; do pg_port=$((pg_port + 1)); done
        fi
        say "PostgreSQL: starting on port $pg_port"
        if as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg" -l "$DIR/pg.log" -w -t 60 \
            -o "-p $pg_port -k $DIR/sock -c listen_addresses=127.0.0.1 -c max_connections=$max_conns ${KLAV_PG_OPTS:-}" \
            start >/dev/null; then
            break
        fi
        tries=$((tries + 1))
        if [ -z "${KLAV_PG_PORT:-}" ] && [ "$tries" -lt 5 ] &&
            grep -q "could not bind\|could not create any TCP/IP sockets" "$DIR/pg.log"; then
            pg_port=$((pg_port + 1))
            continue
        fi
        tail -n 20 "$DIR/pg.log" >&9 || true
        die "PostgreSQL did not start"
    done
    as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres klav ||
        die "createdb failed"
    echo "$pg_port" >"$DIR/pg.port"

    local url="postgresql://postgres@127.0.0.1:$pg_port/klav"
    # Node 1 first: every node applies the schema at start, and the first one on an
    # empty database should do it alone.
    start_node 1 "$url"
    wait_healthy 1
    for i in $(seq 2 "$n"); do start_node "$i" "$url"; done
    for i in $(seq 2 "$n"); do wait_healthy "$i"; done
    echo "$n" >"$DIR/nodes"

    trap - INT TERM EXIT
    local addrs
    addrs="$(addr_list "$n")"
    say "$n node(s) up on one database ($url); logs in $DIR/node*.log"
    say "benchmark with:"
    say "  target/release/klav-bench chat --addr $addrs --jwt-secret $JWT_SECRET \\"
    say "      --rooms 100 --members 10 --senders $n --rate 10000 --duration 20"
    say "stop with: $0 stop"
    # The --addr list alone on stdout, for scripts: ADDRS=$(bench/cluster.sh start 3)
    echo "$addrs"
}

start_node() {
    local i="$1" url="$2"
    local port=$((BASE_PORT + i))
    mkdir -p "$DIR/node$i"
    # Its own working directory (klav reads a .env there) and data directory.
    (
        cd "$DIR/node$i"
        # Outlive the terminal that started it: `stop` ends it.
        trap '' HUP
        exec env \
            DATABASE_URL="$url" \
            PORT="$port" \
            KLAV_NODE_NAME="node$i" \
            KLAV_DATA_DIR="$DIR/node$i" \
            JWT_SECRET="$JWT_SECRET" \
            KLAV_DB_WORKERS="$DB_WORKERS" \
            KLAV_RATE_PER_SEC="${KLAV_RATE_PER_SEC:-1000000}" \
            KLAV_RATE_BURST="${KLAV_RATE_BURST:-1000000}" \
            KLAV_REGISTER_PER_ADDR="${KLAV_REGISTER_PER_ADDR:-1000000}" \
            KLAV_MAX_CONNS_PER_USER="${KLAV_MAX_CONNS_PER_USER:-1000000}" \
            KLAV_MAX_CONNS_PER_ADDR="${KLAV_MAX_CONNS_PER_ADDR:-1000000}" \
            KLAV_ROOMS_CREATED_PER_HOUR="${KLAV_ROOMS_CREATED_PER_HOUR:-1000000}" \
            KLAV_WS_OPENS_PER_USER_PER_MIN="${KLAV_WS_OPENS_PER_USER_PER_MIN:-1000000}" \
            "$KLAV_BIN" </dev/null >"$DIR/node$i.log" 2>&1 9>&-
    ) &
    echo $! >"$DIR/node$i.pid"
    say "node$i: pid $(cat "$DIR/node$i.pid"), port $port"
}

wait_healthy() {
    local i="$1" port=$((BASE_PORT + $1)) tries=0
    local pid
    pid="$(cat "$DIR/node$i.pid")"
    while ! curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/health" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$DIR/node$i.log" >&9 || true
            die "node$i exited"
        fi
        tries=$((tries + 1))
        if [ "$tries" -ge 300 ]; then
            tail -n 20 "$DIR/node$i.log" >&9 || true
            die "node$i: no /health after 30 s"
        fi
        sleep 0.1
    done
    say "node$i: healthy"
}

status() {
    [ -d "$DIR" ] || {
        say "not running ($DIR does not exist)"
        return 1
    }
    local n f pid
    n="$(cat "$DIR/nodes" 2>/dev/null || echo 0)"
    say "PostgreSQL on port $(cat "$DIR/pg.port" 2>/dev/null || echo '?')"
    for f in "$DIR"/node*.pid; do
        [ -e "$f" ] || continue
        if pid="$(live_pid "$f" "$KLAV_BIN")"; then
            say "$(basename "$f" .pid): pid $pid running"
        else
            say "$(basename "$f" .pid): not running"
        fi
    done
    addr_list "$n"
}

case "${1:-}" in
start) start_all "${2:-}" ;;
run)
    start_all "${2:-}"
    trap 'echo >&2; stop_all; exit 0' INT TERM
    say "running; Ctrl-C stops everything"
    # Until Ctrl-C, or until `stop` from elsewhere removed the directory.
    while [ -d "$DIR" ]; do
        sleep 1 &
        wait $! || true
    done
    ;;
stop) stop_all ;;
status) status ;;
*)
    sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
