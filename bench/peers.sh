#!/usr/bin/env bash
# quorumq, RabbitMQ quorum queues and NATS JetStream side by side (issue 6),
# in one run on this machine. Each peer runs as a 3-node cluster on
# loopback, alone (the others are stopped), and is driven by the same
# client harness (bench/peers, a bench-only crate outside the workspace:
# quorumq-client, lapin with publisher confirms, async-nats JetStream):
#
#   1. publish, 4 producers x 256 unconfirmed in flight (msgs/s, confirm p99);
#   2. publish, 1 producer x 1 in flight (msgs/s, confirm p50 and p99);
#   3. consume + ack with prefetch 256, after pre-filling MESSAGES (msgs/s);
#   4. failover: SIGKILL the leader (quorumq's Raft leader, the quorum
#      queue's leader node, the stream's leader server) while one producer
#      publishes; time from the kill to the first confirm of a publish sent
#      after it, TRIALS trials (the killed node is restarted between trials).
#
# 1 KiB bodies. Prints one table: workload | quorumq | RabbitMQ | NATS | ratios.
#
#   bash bench/peers.sh                          # MESSAGES=100000 DURATION=30 TRIALS=5
#   MESSAGES=2000 bash bench/peers.sh            # quick
#   SKIP_RABBIT=1 SKIP_NATS=1 bash bench/peers.sh   # quorumq only
#   SKIP_FAILOVER=1 KEEP=1 bash bench/peers.sh      # keep logs and JSON under the temp dir
#
# Knobs: MESSAGES (per publish run, and the pre-fill), DURATION (seconds, the
# bound of each publish and consume phase; a pre-fill may take up to 600 s),
# TRIALS (failover), SIZE (bytes),
# SKIP_QUORUMQ, SKIP_RABBIT, SKIP_NATS, SKIP_FAILOVER, KEEP, BASE_PORT, SKIP_BUILD
# (use the binaries already built), RESULTS (copy the JSON lines there).
# Ports BASE_PORT..BASE_PORT+99 (default 25100), plus epmd's 4369 (shared).
#
# Durability of each peer as run here:
# - quorumq: an ack (send confirm) only after the entry is fsynced on a
#   majority (the default; there is no other mode outside fault injection).
# - RabbitMQ 3.10 quorum queue: a publisher confirm only after the Raft
#   entry is in the WAL of a majority, fsynced (Ra's default).
# - NATS 2.9 JetStream, R3 file storage: the publish ack comes once a
#   majority has the entry written, NOT fsynced: the store fsyncs every
#   `sync_interval` (2 min by default, left as is here).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

messages=${MESSAGES:-100000}
duration=${DURATION:-30}
trials=${TRIALS:-5}
size=${SIZE:-1024}
base=${BASE_PORT:-25100}
dir=$(mktemp -d /tmp/quorumq-peers-XXXXXX)
results=$dir/results.jsonl
: >"$results"

declare -A pids=()
epmd_before=$(epmd -names >/dev/null 2>&1 && echo running || true)

cleanup() {
    local rc=$?
    for key in "${!pids[@]}"; do stop "${pids[$key]}"; done
    for f in "$dir"/rabbit*/pid; do [ -f "$f" ] && stop "$(cat "$f")"; done
    { wait; } 2>/dev/null || true
    # epmd, if this run started it: `epmd -kill` refuses while any node is registered.
    if [ -z "$epmd_before" ] && command -v epmd >/dev/null; then
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            epmd -names >/dev/null 2>&1 || break
            epmd -kill >/dev/null 2>&1 || true
            sleep 0.2
        done
    fi
    if [ -n "${KEEP:-}" ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[$(date +%T)] $*" >&2; }

# spawn PIDFILE LOGFILE COMMAND...: starts COMMAND detached (setsid -f: its
# own session and process group, not a job of this shell) and prints its pid.
spawn() {
    local pidfile=$1 logfile=$2
    shift 2
    rm -f "$pidfile"
    # shellcheck disable=SC2016
    setsid -f sh -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" >>"$logfile" 2>&1 </dev/null
    for _ in $(seq 1 250); do [ -s "$pidfile" ] && break; sleep 0.02; done
    cat "$pidfile"
}
# stop PID: SIGKILL its process group, then wait until it is gone.
stop() {
    kill -9 -- "-$1" "$1" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
}
now_ms() { date +%s%3N; }

# --- installs and builds ---------------------------------------------------

need=()
command -v /usr/lib/rabbitmq/bin/rabbitmq-server >/dev/null || [ -n "${SKIP_RABBIT:-}" ] || need+=(rabbitmq-server)
command -v nats-server >/dev/null || [ -n "${SKIP_NATS:-}" ] || need+=(nats-server)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} (apt-get)"
    # policy-rc.d 101: the packages' services are not started on install.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        remove_policy=1
    fi
    timeout 600 apt-get install -y --no-install-recommends "${need[@]}" >"$dir/apt.log" 2>&1 ||
        { apt-get update >/dev/null 2>&1 && timeout 600 apt-get install -y --no-install-recommends "${need[@]}" >"$dir/apt.log" 2>&1; }
    [ -n "${remove_policy:-}" ] && rm -f /usr/sbin/policy-rc.d
fi
# A packaged RabbitMQ service would hold ports and the rabbit@host name: stop it.
if [ -z "${SKIP_RABBIT:-}" ] && pgrep -u rabbitmq beam.smp >/dev/null 2>&1; then
    log "stopping the packaged rabbitmq-server service"
    timeout 60 service rabbitmq-server stop >/dev/null 2>&1 ||
        for pid in $(pgrep -u rabbitmq -x beam.smp); do kill -9 "$pid" 2>/dev/null || true; done
fi

if [ -z "${SKIP_BUILD:-}" ]; then
    log "building quorumq and bench/peers (release)"
    cargo build --release --locked -p quorumq >"$dir/build.log" 2>&1 || { cat "$dir/build.log" >&2; exit 1; }
    (cd bench/peers && cargo build --release --locked) >>"$dir/build.log" 2>&1 || { cat "$dir/build.log" >&2; exit 1; }
fi
q=$root/target/release/quorumq
drv=$root/bench/peers/target/release/quorumq-bench-peers

# Runs the driver, bounded in time; appends its JSON line to the results.
drive() {
    local limit=$1
    shift
    local line
    if line=$(timeout "$limit" "$drv" "$@" --json 2>>"$dir/driver.err"); then
        echo "$line" >>"$results"
        echo "$line" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("   ", {k: v for k, v in r.items() if k in ("peer","workload","msgs_per_sec","confirm_latency","recovered_ms","failed","errors")})' >&2
    else
        log "driver failed: $*"
        tail -3 "$dir/driver.err" >&2 || true
    fi
}

# The three common workloads against ADDRS for PEER.
workloads() {
    local peer=$1 addrs=$2
    local limit=$((${duration%.*} + 120))
    log "$peer: publish 4 x 256 in flight"
    drive "$limit" publish --peer "$peer" --addrs "$addrs" --producers 4 --inflight 256 --size "$size" \
        --messages "$messages" --duration "$duration"
    log "$peer: publish 1 x 1"
    drive "$limit" publish --peer "$peer" --addrs "$addrs" --producers 1 --inflight 1 --size "$size" \
        --messages "$messages" --duration "$duration"
    log "$peer: consume + ack, prefetch 256 (pre-fill $messages)"
    drive $((limit + 600)) consume --peer "$peer" --addrs "$addrs" --prefetch 256 --size "$size" \
        --messages "$messages" --duration "$duration"
}

# Addresses with the node at index $2 (0-based) of the array named $1 last,
# so that the failover producer starts on a node that survives.
leader_last() {
    local -n list=$1
    local skip=$2 out="" i
    for i in "${!list[@]}"; do [ "$i" != "$skip" ] && out+="${list[$i]},"; done
    echo "${out}${list[$skip]}"
}

# --- quorumq ---------------------------------------------------------------

run_quorumq() {
    local qaddrs=("127.0.0.1:$((base + 1))" "127.0.0.1:$((base + 2))" "127.0.0.1:$((base + 3))")
    local peers="1=${qaddrs[0]},2=${qaddrs[1]},3=${qaddrs[2]}"
    local cluster="${qaddrs[0]},${qaddrs[1]},${qaddrs[2]}"
    start_q() {
        pids[q$1]=$(spawn "$dir/quorumq$1.pid" "$dir/quorumq$1.log" env RUST_LOG=warn "$q" server --id "$1" \
            --listen "${qaddrs[$(($1 - 1))]}" --data-dir "$dir/quorumq$1" --peers "$peers")
    }
    q_leader() {
        timeout 10 "$q" --cluster "$cluster" cluster status --json 2>/dev/null |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"] or "")' 2>/dev/null || true
    }
    q_wait() {
        local l
        for _ in $(seq 1 300); do
            l=$(q_leader)
            if [ -n "$l" ] && [ "$(timeout 10 "$q" --cluster "$cluster" cluster status --json 2>/dev/null |
                python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin)["nodes"] if n["reachable"]))' 2>/dev/null)" = 3 ]; then
                echo "$l"
                return
            fi
            sleep 0.2
        done
        log "quorumq: no leader with 3 reachable nodes"
        return 1
    }
    log "quorumq: starting 3 nodes (ports $((base + 1))-$((base + 3)))"
    for id in 1 2 3; do start_q "$id"; done
    q_wait >/dev/null
    workloads quorumq "$cluster"
    if [ -z "${SKIP_FAILOVER:-}" ]; then
        for t in $(seq 1 "$trials"); do
            local leader
            leader=$(q_wait)
            log "quorumq: failover trial $t/$trials, SIGKILL node $leader (pid ${pids[q$leader]})"
            drive 60 failover --peer quorumq --addrs "$(leader_last qaddrs $((leader - 1)))" --size "$size" \
                --kill-pid "${pids[q$leader]}" --warmup 2 --timeout 30
            stop "${pids[q$leader]}"
            start_q "$leader"
        done
        q_wait >/dev/null || true
    fi
    for id in 1 2 3; do stop "${pids[q$id]}"; unset "pids[q$id]"; done
}

# --- RabbitMQ --------------------------------------------------------------

run_rabbit() {
    local rbin=/usr/lib/rabbitmq/bin
    local raddrs=("127.0.0.1:$((base + 21))" "127.0.0.1:$((base + 22))" "127.0.0.1:$((base + 23))")
    local home=$dir/rabbit-home
    mkdir -p "$home"
    # Our own cookie, in our own $HOME: neither the package's nor the user's.
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$home/.erlang.cookie"
    chmod 400 "$home/.erlang.cookie"
    : >"$dir/rabbit-env.conf"
    echo '[].' >"$dir/rabbit-plugins"
    renv() {
        local n=$1
        echo HOME="$home" RABBITMQ_CONF_ENV_FILE="$dir/rabbit-env.conf" \
            RABBITMQ_NODENAME="qqbench$n@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
            RABBITMQ_NODE_PORT=$((base + 20 + n)) RABBITMQ_DIST_PORT=$((base + 30 + n)) \
            RABBITMQ_CTL_DIST_PORT_MIN=$((base + 40)) RABBITMQ_CTL_DIST_PORT_MAX=$((base + 59)) \
            RABBITMQ_MNESIA_BASE="$dir/rabbit$n/mnesia" RABBITMQ_LOG_BASE="$dir/rabbit$n/log" \
            RABBITMQ_PID_FILE="$dir/rabbit$n/pid" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/rabbit-plugins" \
            RABBITMQ_CONFIG_FILE="$dir/rabbit$n/rabbitmq.conf"
    }
    ctl() {
        local n=$1
        shift
        # shellcheck disable=SC2046
        env $(renv "$n") timeout 150 "$rbin/rabbitmqctl" -n "qqbench$n@localhost" "$@"
    }
    start_r() {
        local n=$1
        mkdir -p "$dir/rabbit$n/log"
        printf 'loopback_users = none\nlog.console = false\nlog.file.level = warning\n' >"$dir/rabbit$n/rabbitmq.conf"
        rm -f "$dir/rabbit$n/pid"
        # shellcheck disable=SC2046
        # Its own process group: the script's shell, erl and beam die together.
        pids[r$n]=$(spawn "$dir/rabbit$n/shell.pid" "$dir/rabbit$n/stdout.log" env $(renv "$n") "$rbin/rabbitmq-server")
    }
    r_wait() {
        # Waits for the pid file, then for the broker to run.
        ctl "$1" wait "$dir/rabbit$1/pid" --timeout 120 >/dev/null
        pids[rbeam$1]=$(cat "$dir/rabbit$1/pid")
    }
    log "RabbitMQ: starting 3 nodes (AMQP ports $((base + 21))-$((base + 23)))"
    for n in 1 2 3; do start_r "$n"; done
    for n in 1 2 3; do r_wait "$n"; done
    for n in 2 3; do
        ctl "$n" stop_app >/dev/null
        ctl "$n" join_cluster qqbench1@localhost >/dev/null
        ctl "$n" start_app >/dev/null
    done
    ctl 1 cluster_status --formatter json | python3 -c 'import json,sys; r=json.load(sys.stdin); print("    running nodes:", r["running_nodes"])' >&2
    local rlist="${raddrs[0]},${raddrs[1]},${raddrs[2]}"
    workloads rabbitmq "$rlist"
    if [ -z "${SKIP_FAILOVER:-}" ]; then
        for t in $(seq 1 "$trials"); do
            local leader n
            leader=$(ctl 1 list_queues name leader --formatter json 2>/dev/null |
                python3 -c 'import json,sys; print(next(q["leader"] for q in json.load(sys.stdin) if q["name"] == "bench"))')
            n=${leader#qqbench}; n=${n%@*}
            log "RabbitMQ: failover trial $t/$trials, SIGKILL $leader (pid ${pids[rbeam$n]})"
            drive 60 failover --peer rabbitmq --addrs "$(leader_last raddrs $((n - 1)))" --size "$size" \
                --kill-pid "${pids[rbeam$n]}" --warmup 2 --timeout 30
            stop "${pids[r$n]}"
            start_r "$n"
            r_wait "$n"
            # Let the restarted member catch up before the next kill.
            for _ in $(seq 1 60); do
                [ "$(ctl 1 list_queues name online --formatter json 2>/dev/null |
                    python3 -c 'import json,sys; print(len(next(q["online"] for q in json.load(sys.stdin) if q["name"] == "bench")))' 2>/dev/null)" = 3 ] && break
                sleep 0.5
            done
        done
    fi
    for n in 1 2 3; do
        stop "${pids[r$n]}"
        stop "${pids[rbeam$n]}"
        unset "pids[rbeam$n]" "pids[r$n]"
    done
}

# --- NATS ------------------------------------------------------------------

run_nats() {
    local naddrs=("127.0.0.1:$((base + 61))" "127.0.0.1:$((base + 62))" "127.0.0.1:$((base + 63))")
    start_n() {
        local n=$1 routes="" m
        for m in 1 2 3; do [ "$m" != "$n" ] && routes+="nats-route://127.0.0.1:$((base + 70 + m)), "; done
        mkdir -p "$dir/nats$n"
        # sync_interval is not set: the default (acks before fsync; fsync every 2 min).
        cat >"$dir/nats$n.conf" <<EOF
server_name: n$n
listen: 127.0.0.1:$((base + 60 + n))
jetstream { store_dir: "$dir/nats$n" }
cluster {
  name: qqbench
  listen: 127.0.0.1:$((base + 70 + n))
  routes: [ ${routes%, } ]
}
EOF
        pids[n$n]=$(spawn "$dir/nats$n.pid" "$dir/nats$n.log" nats-server -c "$dir/nats$n.conf")
    }
    # Until the JetStream API answers (the stream may not exist yet: "none")
    # and, with --all-current, both stream followers are current.
    n_wait() {
        for _ in $(seq 1 300); do
            timeout 10 "$drv" nats-leader --peer nats --addrs "$nlist" "$@" >/dev/null 2>&1 && return
            sleep 0.2
        done
        log "NATS: JetStream not ready"
        return 1
    }
    local nlist="${naddrs[0]},${naddrs[1]},${naddrs[2]}"
    log "NATS: starting 3 servers (client ports $((base + 61))-$((base + 63)))"
    for n in 1 2 3; do start_n "$n"; done
    n_wait
    workloads nats "$nlist"
    if [ -z "${SKIP_FAILOVER:-}" ]; then
        for t in $(seq 1 "$trials"); do
            local leader="" n
            for _ in $(seq 1 100); do
                leader=$(timeout 10 "$drv" nats-leader --peer nats --addrs "$nlist" --all-current 2>/dev/null) && break
                sleep 0.2
            done
            n=${leader#n}
            log "NATS: failover trial $t/$trials, SIGKILL server $leader (pid ${pids[n$n]})"
            drive 60 failover --peer nats --addrs "$(leader_last naddrs $((n - 1)))" --size "$size" \
                --kill-pid "${pids[n$n]}" --warmup 2 --timeout 30
            stop "${pids[n$n]}"
            start_n "$n"
            n_wait --all-current
        done
    fi
    for n in 1 2 3; do stop "${pids[n$n]}"; unset "pids[n$n]"; done
}

# --- the run ---------------------------------------------------------------

started=$(now_ms)
log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr); MESSAGES=$messages DURATION=$duration TRIALS=$trials SIZE=$size"
[ -n "${SKIP_QUORUMQ:-}" ] || run_quorumq
[ -n "${SKIP_RABBIT:-}" ] || run_rabbit
[ -n "${SKIP_NATS:-}" ] || run_nats
log "done in $(( ($(now_ms) - started) / 1000 )) s"
[ -n "${RESULTS:-}" ] && cp "$results" "$RESULTS"

rabbit_version=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo "?")
nats_version=$(nats-server --version 2>/dev/null | sed 's/^nats-server: v//' || echo "?")
python3 - "$results" "$rabbit_version" "$nats_version" "$messages" "$duration" "$trials" "$size" <<'EOF'
import json, statistics, sys

path, rabbit_v, nats_v, messages, duration, trials, size = sys.argv[1:]
runs = [json.loads(line) for line in open(path) if line.strip()]

def pick(peer, workload, pred=lambda r: True):
    for r in runs:
        if r["peer"] == peer and r["workload"] == workload and pred(r):
            return r
    return None

def pub(peer, p, w):
    return pick(peer, "publish", lambda r: r["producers"] == p and r["inflight_per_producer"] == w)

def failover(peer):
    xs = [r["recovered_ms"] for r in runs if r["peer"] == peer and r["workload"] == "failover"]
    return xs

rows = []  # (label, unit, {peer: value}, higher_is_better)
def add(label, unit, get, higher):
    rows.append((label, unit, {p: get(p) for p in ("quorumq", "rabbitmq", "nats")}, higher))

def g(r, *keys):
    for k in keys:
        if r is None:
            return None
        r = r.get(k)
    return r

add("publish 4 x 256 in flight", "msgs/s", lambda p: g(pub(p, 4, 256), "msgs_per_sec"), True)
add("  confirm p99", "ms", lambda p: g(pub(p, 4, 256), "confirm_latency", "p99_ms"), False)
add("publish 1 x 1 in flight", "msgs/s", lambda p: g(pub(p, 1, 1), "msgs_per_sec"), True)
add("  confirm p50", "ms", lambda p: g(pub(p, 1, 1), "confirm_latency", "p50_ms"), False)
add("  confirm p99", "ms", lambda p: g(pub(p, 1, 1), "confirm_latency", "p99_ms"), False)
add("consume + ack, prefetch 256", "msgs/s", lambda p: g(pick(p, "consume"), "msgs_per_sec"), True)

def fo(p, f):
    xs = failover(p)
    if not xs:
        return None
    if any(x is None for x in xs):
        return float("inf")
    return f(xs)
add(f"unconfirmed after SIGKILL of leader, p50 ({trials} trials)", "ms", lambda p: fo(p, statistics.median), False)
add("  max", "ms", lambda p: fo(p, max), False)

def fmt(v, unit):
    if v is None:
        return "-"
    if v == float("inf"):
        return "timeout"
    if unit == "msgs/s":
        return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"
    return f"{v:.2f}" if v < 10 else f"{v:.0f}"

def ratio(a, b):
    if a is None or b is None or b == 0 or a == float("inf") or b == float("inf"):
        return "-"
    return f"{a / b:.2f}x"

hdr = ["workload", "unit", "quorumq (fsync, majority)", f"RabbitMQ {rabbit_v} quorum queue (fsync, majority)",
       f"NATS {nats_v} R3 (no fsync, majority)", "quorumq/RabbitMQ", "quorumq/NATS"]
table = [hdr]
for label, unit, v, _ in rows:
    table.append([label, unit, fmt(v["quorumq"], unit), fmt(v["rabbitmq"], unit), fmt(v["nats"], unit),
                  ratio(v["quorumq"], v["rabbitmq"]), ratio(v["quorumq"], v["nats"])])
widths = [max(len(r[i]) for r in table) for i in range(len(hdr))]
print()
print(f"3 nodes on loopback, {size} B bodies, MESSAGES={messages}, DURATION={duration}s, TRIALS={trials}")
print("| " + " | ".join(h.ljust(w) for h, w in zip(hdr, widths)) + " |")
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for r in table[1:]:
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
print()
print("Durability as run: quorumq: ack after fsync on a majority | RabbitMQ: quorum queue, confirm after")
print("the Raft entry is fsynced on a majority (Ra WAL) | NATS: JetStream R3 file store, ack after a majority")
print("has written it, before fsync (sync_interval default, 2 min).")
print("Ratios are quorumq / peer: above 1 is better for msgs/s, below 1 is better for ms.")
EOF
