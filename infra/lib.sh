# shellcheck shell=bash
# Shared helpers for infra/up, infra/down and infra/services.sh.
#
# Sourced, never executed. Everything lives under $RUN_DIR (infra/.run, git-ignored):
#   logs/NAME.log        stdout+stderr of component NAME
#   pids/NAME.pid        its PID (one line)
#   pids/NAME.start      its kernel start time, so a recycled PID is never taken for ours
#   pids/order           names in start order; infra/down stops them in reverse
#                        (services are started last, so they are stopped first)
#
# Processes are started with setsid so they survive the calling script and get
# their own process group (PGID == PID), which lets infra/down stop a component
# and any children it spawned without ever matching processes by name.

INFRA_DIR="${INFRA_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
REPO_DIR="${REPO_DIR:-$(cd "$INFRA_DIR/.." && pwd)}"
RUN_DIR="${INFRA_RUN_DIR:-$INFRA_DIR/.run}"
# Certificates, keys and passwords infra/up generates (mode 0600), never committed or logged.
SECRETS_DIR="$RUN_DIR/secrets"
# Downloads and tools built once (Cassandra's jars, nats-server, helm...), outside the repository.
TRADING_CACHE="${TRADING_CACHE:-$HOME/.cache/trading-backend}"
LOG_DIR="$RUN_DIR/logs"
PID_DIR="$RUN_DIR/pids"
# Configuration templates (Cassandra, NATS, Redis, the Maven POM) that `render` fills in.
CONF_DIR="$INFRA_DIR/conf"
# Everything we start listens here only; never 0.0.0.0.
# shellcheck disable=SC2034  # used by the scripts that source this file
LOOPBACK="127.0.0.1"

# Progress output must never abort the work: a closed stdout (e.g. `infra/down |
# head`) would otherwise stop infra/down half way and leave servers running.
log() { printf '[infra %s] %s\n' "$(date +%H:%M:%S)" "$*" 2>/dev/null || true; }
warn() { printf '[infra %s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2 2>/dev/null || true; }
step() { log "==> $*"; }
die() {
    printf '[infra %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2
    exit 1
}

# render TEMPLATE OUT: writes infra/conf/TEMPLATE to OUT with each ${NAME} replaced by the shell
# variable NAME (set in the caller or given as NAME=value before the call). Only the names the
# template uses are substituted, and a name left unset is an error, never an empty string.
render() {
    local template="$CONF_DIR/$1" out=$2 name
    local -a names
    mapfile -t names < <(grep -o '\${[A-Z_]*}' "$template" | tr -d '${}' | sort -u)
    (
        # Rendered configurations may hold passwords: readable by this user only.
        umask 077
        for name in "${names[@]}"; do
            [[ -n ${!name+set} ]] || die "render $1: \$$name is not set"
            export "${name?}"
        done
        envsubst "$(printf '${%s}' "${names[@]}")" <"$template" >"$out.tmp"
    ) && mv "$out.tmp" "$out"
}

ensure_run_dirs() { mkdir -p "$LOG_DIR" "$PID_DIR"; }

# --- process bookkeeping ---------------------------------------------------

# Kernel start time (field 22 of /proc/PID/stat) of PID; empty if gone.
# The comm field may contain spaces, so parse after the last ')'.
proc_starttime() {
    local pid=$1 stat rest
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    rest=${stat##*) }
    # shellcheck disable=SC2086  # deliberate word splitting of the stat fields
    set -- $rest
    # $1 is field 3 (state); field 22 is $20.
    # A zombie is dead for our purposes (our servers are reparented to PID 1,
    # which may reap them late) -- but only if no other thread is left: a JVM's
    # main thread shows Z while its other threads still run the shutdown.
    if [[ $1 == Z || $1 == X ]]; then
        local tasks
        tasks=$(find "/proc/$pid/task" -mindepth 1 -maxdepth 1 ! -name "$pid" 2>/dev/null | head -n1)
        [[ -n $tasks ]] || return 1
    fi
    printf '%s\n' "${20}"
}

# Process group id of PID.
proc_pgid() {
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${stat##*) }
    # shellcheck disable=SC2086
    set -- $rest
    printf '%s\n' "$3"
}

# PID recorded for NAME, or nothing.
component_pid() {
    local f="$PID_DIR/$1.pid"
    [[ -s $f ]] && head -n1 "$f"
}

# True when NAME's recorded PID is alive and is still the very process we started.
component_alive() {
    local name=$1 pid start now
    pid=$(component_pid "$name") || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    now=$(proc_starttime "$pid") || return 1
    start=$(cat "$PID_DIR/$name.start" 2>/dev/null) || return 1
    [[ $now == "$start" ]]
}

forget_component() { rm -f "$PID_DIR/$1.pid" "$PID_DIR/$1.start"; }

record_component() {
    local name=$1 pid=$2 start
    start=$(proc_starttime "$pid") || start=""
    printf '%s\n' "$pid" >"$PID_DIR/$name.pid"
    printf '%s\n' "$start" >"$PID_DIR/$name.start"
    touch "$PID_DIR/order"
    grep -qxF "$name" "$PID_DIR/order" || printf '%s\n' "$name" >>"$PID_DIR/order"
}

# --- Cassandra JVM flags ----------------------------------------------------

# The JPMS (--add-exports/--add-opens) and Netty lines of Cassandra 5.0's
# conf/jvm17-server.options. Every JVM that loads cassandra-all on JDK 17 needs
# them (the daemon and infra/nodetool); without them startup dies with
# InaccessibleObjectException / IllegalAccessException.
# shellcheck disable=SC2034  # used by infra/up and infra/nodetool
CASSANDRA_JPMS_FLAGS=(
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
)

# --- probes ----------------------------------------------------------------

# Something accepts TCP connections on HOST:PORT (bash /dev/tcp: no netcat needed).
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# Who listens on PORT, for error messages (best effort).
port_owner() {
    if command -v ss >/dev/null 2>&1; then
        ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:(\(.*\))$/\1/p' | head -n1
    fi
}

# Cassandra: send a CQL v4 OPTIONS frame, expect a SUPPORTED (opcode 0x06) response
# frame (version byte 0x84). Proves the native transport really serves CQL, not
# just that the port is bound.
cql_ready() {
    local host=$1 port=$2 reply
    # shellcheck disable=SC2016  # $0/$1 expand in the inner bash
    reply=$(timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "\x04\x00\x00\x00\x05\x00\x00\x00\x00" >&3
        head -c 5 <&3 | od -An -tx1' "$host" "$port" 2>/dev/null) || return 1
    reply=$(printf '%s' "$reply" | tr -s ' \n' ' ')
    [[ $reply == *"84 00 00 00 06"* ]]
}

redis_ready() {
    [[ $(REDISCLI_AUTH="$(cat "$SECRETS_DIR/redis-admin.password")" timeout 3 redis-cli --user admin -h "$1" -p "$2" ping 2>/dev/null) == PONG ]]
}

# NATS monitor: JetStream healthy.
nats_ready() {
    curl -fsS --max-time 3 "http://$1:$2/healthz?js-enabled-only=true" 2>/dev/null | grep -q '"ok"'
}

# NATS monitor: number of leaf node connections is at least N.
nats_leafs_at_least() {
    local host=$1 port=$2 want=$3 n
    n=$(curl -fsS --max-time 3 "http://$host:$port/leafz" 2>/dev/null |
        sed -n 's/.*"leafnodes": *\([0-9][0-9]*\).*/\1/p' | head -n1)
    [[ -n $n && $n -ge $want ]]
}

# toxiproxy: its API answers and both leaf links' proxies exist.
link_proxies_ready() {
    local proxies
    proxies=$(curl -fsS --max-time 3 "http://$1:$2/proxies" 2>/dev/null) || return 1
    [[ $proxies == *'"leaf-eu"'* && $proxies == *'"leaf-ap"'* ]]
}

# --- starting components ------------------------------------------------------

# Print NAME's problem and the tail of its log, then exit non-zero.
fail_component() {
    local name=$1 msg=$2 logf="$LOG_DIR/$1.log"
    printf '[infra %s] ERROR: %s: %s\n' "$(date +%H:%M:%S)" "$name" "$msg" >&2
    if [[ -f $logf ]]; then
        printf -- '----- last 40 lines of %s -----\n' "$logf" >&2
        tail -n 40 "$logf" >&2
        printf -- '----- end of %s -----\n' "$logf" >&2
    fi
    exit 1
}

# Fail fast if HOST:PORT answers but NAME is not running as ours.
ensure_port_free() {
    local name=$1 host=$2 port=$3 owner
    component_alive "$name" && return 0
    if port_open "$host" "$port"; then
        owner=$(port_owner "$port")
        die "$name: port $host:$port is already in use by a process that is not ours${owner:+ ($owner)}; stop it or change the port, then re-run infra/up"
    fi
}

# launch_component NAME HOST PORT -- CMD...
# Starts CMD detached (setsid, stdin </dev/null, output appended to logs/NAME.log)
# unless NAME is already running as ours. Sets COMPONENT_STATE to "started" or
# "running". Does not wait; see await_component.
launch_component() {
    local name=$1 host=$2 port=$3 pid
    shift 3
    [[ ${1:-} == -- ]] && shift
    ensure_run_dirs
    if component_alive "$name"; then
        COMPONENT_STATE=running
        return 0
    fi
    forget_component "$name"
    ensure_port_free "$name" "$host" "$port"
    # One log per run (the previous one kept as NAME.log.prev), so a failure's
    # log tail shows this run only.
    [[ -f $LOG_DIR/$name.log ]] && mv -f "$LOG_DIR/$name.log" "$LOG_DIR/$name.log.prev"
    {
        printf '\n===== %s: starting %s at %s =====\n' "$name" "$1" "$(date -Is)"
    } >>"$LOG_DIR/$name.log"
    # Not a job-control shell, so the background child is no group leader and
    # setsid execs in place: $! is the real server PID.
    setsid "$@" </dev/null >>"$LOG_DIR/$name.log" 2>&1 &
    pid=$!
    record_component "$name" "$pid"
    COMPONENT_STATE=started
}

# await_component NAME TIMEOUT_SECONDS CHECK_CMD...
# Polls CHECK_CMD until it succeeds; fails (name + log tail) on timeout or if the
# process dies meanwhile.
await_component() {
    local name=$1 timeout=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    while ! "$@"; do
        if ! component_alive "$name"; then
            forget_component "$name"
            fail_component "$name" "process exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            fail_component "$name" "did not become ready within ${timeout}s (check: $*)"
        fi
        sleep 0.5
    done
}

# start_component NAME HOST PORT TIMEOUT CHECK_CMD... -- CMD...
# The reusable one-shot: skip if already running (reporting "already running"),
# otherwise start detached and wait for CHECK_CMD.
#   start_component write-region 127.0.0.1 50051 60 port_open 127.0.0.1 50051 \
#       -- "$REPO_DIR/target/debug/write-region" --listen 127.0.0.1:50051
start_component() {
    local name=$1 host=$2 port=$3 timeout=$4 t0=$SECONDS
    shift 4
    local -a check=()
    while [[ $# -gt 0 && $1 != -- ]]; do
        check+=("$1")
        shift
    done
    [[ ${1:-} == -- ]] || die "start_component $name: missing -- before the command"
    shift
    ((${#check[@]} > 0)) || die "start_component $name: missing check command"
    launch_component "$name" "$host" "$port" -- "$@"
    if [[ $COMPONENT_STATE == running ]] && "${check[@]}"; then
        log "$name: already running (pid $(component_pid "$name"), $host:$port)"
        return 0
    fi
    await_component "$name" "$timeout" "${check[@]}"
    log "$name: ready on $host:$port (pid $(component_pid "$name"), $((SECONDS - t0))s)"
}

# --- stopping ------------------------------------------------------------------

# stop_component NAME: SIGTERM (to its process group when it leads one), wait up to
# STOP_TIMEOUT (30 s), then SIGKILL. Only the recorded PID, checked against its
# recorded start time, is ever signalled.
stop_component() {
    local name=$1 pid target i timeout=${STOP_TIMEOUT:-30}
    if ! component_alive "$name"; then
        if [[ -f $PID_DIR/$name.pid ]]; then
            log "$name: not running (stale pid file removed)"
            forget_component "$name"
        fi
        return 0
    fi
    pid=$(component_pid "$name")
    target=$pid
    [[ $(proc_pgid "$pid") == "$pid" ]] && target=-$pid
    log "$name: stopping pid $pid"
    kill -TERM -- "$target" 2>/dev/null || true
    for ((i = 0; i < timeout * 5; i++)); do
        component_alive "$name" || break
        sleep 0.2
    done
    if component_alive "$name"; then
        warn "$name: still alive after ${timeout}s, sending SIGKILL"
        kill -KILL -- "$target" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            component_alive "$name" || break
            sleep 0.2
        done
    fi
    if component_alive "$name"; then
        warn "$name: pid $pid survived SIGKILL"
        return 1
    fi
    forget_component "$name"
    log "$name: stopped"
}
