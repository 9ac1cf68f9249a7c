#!/usr/bin/env bash
# Where the time goes in one workload (issue 6): a local 3-node quorumq
# cluster on loopback with /metrics, one workload of the peers harness
# (bench/peers) against it, then
#
#   - the workload's own figures (msgs/s, confirm latency) and the CPU the
#     three nodes used per message (steadier than msgs/s when the disk's
#     speed varies from run to run);
#   - per node, from /metrics: log fsyncs (count, mean, p50/p90/p99 from the
#     histogram buckets), entries per fsync, client commands per Raft entry;
#   - with PERF=1: a flat `perf` profile of the leader for PERF_SECS seconds,
#     started PERF_DELAY seconds after the workload (past a consume
#     workload's pre-fill), and the share of a core each node and the
#     client used; PERF=all profiles the whole machine instead (samples by
#     process, then by symbol); PERF=syscalls counts the leader's system
#     calls instead (`perf trace -s`, all its threads added up, with the
#     count per fdatasync: per Raft entry when each entry has its own).
#
#   bash bench/profile.sh consume            # consume + ack, prefetch 256, 100k pre-filled
#   bash bench/profile.sh one                # publish, 1 producer x 1 in flight, 15 s
#   bash bench/profile.sh many               # publish, 4 producers x 256 in flight
#   PERF=1 bash bench/profile.sh consume     # and a perf profile of the leader
#   PERF=all bash bench/profile.sh consume   # a profile of every process on the machine
#   PERF=syscalls bash bench/profile.sh one  # the leader's system calls per Raft entry
#
# Knobs: MESSAGES (100000), DURATION (seconds, 15), SIZE (1024), BASE_PORT
# (26100; gRPC BASE+1..3, HTTP BASE+11..13), PERF, PERF_DELAY (3), PERF_SECS (4),
# KEEP (keep the data, logs, metrics and perf.data under the temp dir),
# SKIP_BUILD, QUORUMQ (the server binary to run; default the one built
# here: a copy of an older build gives a before/after pair). Every process
# it starts is killed on exit; the workload is bounded by DURATION and
# MESSAGES, the whole run by a 10-minute timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

workload=${1:-consume}
messages=${MESSAGES:-100000}
duration=${DURATION:-15}
size=${SIZE:-1024}
base=${BASE_PORT:-26100}
dir=$(mktemp -d /tmp/quorumq-profile-XXXXXX)
pids=()

cleanup() {
    local rc=$?
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    { wait; } 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "[$(date +%T)] $*" >&2; }

case "$workload" in
consume) args=(consume --prefetch 256 --messages "$messages" --duration "$duration") ;;
one) args=(publish --producers 1 --inflight 1 --messages "$messages" --duration "$duration") ;;
many) args=(publish --producers 4 --inflight 256 --messages "$messages" --duration "$duration") ;;
*)
    echo "usage: bash bench/profile.sh consume|one|many" >&2
    exit 2
    ;;
esac
if [ -n "${PERF:-}" ] && ! command -v perf >/dev/null; then
    echo "PERF=1 needs perf (apt-get install linux-perf)" >&2
    exit 2
fi

if [ -z "${SKIP_BUILD:-}" ]; then
    log "building quorumq and bench/peers (release)"
    cargo build --release --locked -p quorumq >"$dir/build.log" 2>&1 || { cat "$dir/build.log" >&2; exit 1; }
    (cd bench/peers && cargo build --release --locked) >>"$dir/build.log" 2>&1 || { cat "$dir/build.log" >&2; exit 1; }
fi
q=${QUORUMQ:-$root/target/release/quorumq} # QUORUMQ: another build, for before/after runs
drv=$root/bench/peers/target/release/quorumq-bench-peers

peers="1=127.0.0.1:$((base + 1)),2=127.0.0.1:$((base + 2)),3=127.0.0.1:$((base + 3))"
addrs="127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
log "starting 3 nodes (gRPC $((base + 1))-$((base + 3)), HTTP $((base + 11))-$((base + 13)))"
for id in 1 2 3; do
    RUST_LOG=warn "$q" server --id "$id" --listen "127.0.0.1:$((base + id))" --data-dir "$dir/n$id" \
        --peers "$peers" --http "127.0.0.1:$((base + 10 + id))" >"$dir/node$id.log" 2>&1 &
    pids+=($!)
done
leader=""
for _ in $(seq 1 150); do
    leader=$(timeout 5 "$q" --cluster "$addrs" cluster status --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"] or "")' 2>/dev/null || true)
    [ -n "$leader" ] && break
    sleep 0.2
done
[ -n "$leader" ] || { log "no leader"; exit 1; }
log "leader: node $leader; workload: ${args[*]}"

# CPU ticks (user + system) of a process, 0 once it is gone.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
if [ -n "${PERF:-}" ]; then
    leader_pid=${pids[$((leader - 1))]}
    (
        sleep "${PERF_DELAY:-3}"
        drv_pid=$(pgrep -f -n "$drv" || echo 0)
        watched=("${pids[@]}" "$drv_pid")
        before=(); for pid in "${watched[@]}"; do before+=("$(ticks "$pid")"); done
        idle0=$(awk '/^cpu / {print $5 + $6}' /proc/stat)
        if [ "$PERF" = syscalls ]; then
            perf trace -s -p "$leader_pid" -o "$dir/trace.txt" -- sleep "${PERF_SECS:-4}" >/dev/null 2>&1
        elif [ "$PERF" = all ]; then
            # Every process on the machine: the three nodes and the client.
            perf record -F 499 -g -a -o "$dir/perf.data" -- sleep "${PERF_SECS:-4}" >/dev/null 2>&1
        else
            perf record -F 499 -g -p "$leader_pid" -o "$dir/perf.data" -- sleep "${PERF_SECS:-4}" >/dev/null 2>&1
        fi
        idle1=$(awk '/^cpu / {print $5 + $6}' /proc/stat)
        i=0
        for pid in "${watched[@]}"; do
            echo "$pid ${before[$i]} $(ticks "$pid")"
            i=$((i + 1))
        done >"$dir/ticks"
        echo "idle $idle0 $idle1" >>"$dir/ticks"
    ) &
    perf_job=$!
fi

node_ticks() { local t=0; for pid in "${pids[@]}"; do t=$((t + $(ticks "$pid"))); done; echo "$t"; }
ticks_before=$(node_ticks)
timeout 600 "$drv" "${args[@]}" --peer quorumq --addrs "$addrs" --size "$size" --json >"$dir/result.json"
echo "$ticks_before $(node_ticks) $(getconf CLK_TCK)" >"$dir/node_ticks"
[ -n "${PERF:-}" ] && wait "$perf_job"
for id in 1 2 3; do curl -fsS "http://127.0.0.1:$((base + 10 + id))/metrics" >"$dir/metrics$id"; done

python3 - "$dir" "$leader" <<'EOF'
import json, re, sys
d, leader = sys.argv[1], int(sys.argv[2])
r = json.load(open(f"{d}/result.json"))
print(f"workload: {r.get('workload')}  msgs/s: {r.get('msgs_per_sec', 0):.0f}", end="")
lat = r.get("confirm_latency")
if lat:
    print(f"  confirm p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, max {lat['max_ms']:.2f} ms", end="")
print()
# CPU of the three nodes together over the whole run (a consume run's
# pre-fill included) per message sent or acked: a figure that, unlike
# msgs/s, does not move with the disk's speed.
t0, t1, hz = (int(x) for x in open(f"{d}/node_ticks").read().split())
handled = r.get("confirmed", 0) + r.get("prefilled", 0) + r.get("acked", 0)
if handled:
    print(f"nodes' CPU: {(t1 - t0) / hz:.1f} s for {handled} messages sent or acked, "
          f"{1e6 * (t1 - t0) / hz / handled:.1f} us per message")

def metrics(path):
    out = {}
    for line in open(path):
        if line.startswith("#"):
            continue
        m = re.match(r'^(\w+)(\{[^}]*\})? ([-0-9.e+inf]+)$', line.strip())
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out

def quantile(m, name, q):
    buckets = sorted(((float(re.search(r'le="([^"]+)"', k[1]).group(1).replace("+Inf", "inf")), v)
                      for k, v in m.items() if k[0] == name + "_bucket"))
    total = buckets[-1][1] if buckets else 0
    for le, count in buckets:
        if total and count >= q * total:
            return le
    return float("nan")

for node in (1, 2, 3):
    m = metrics(f"{d}/metrics{node}")
    n = m.get(("quorumq_log_flush_seconds_count", ""), 0)
    s = m.get(("quorumq_log_flush_seconds_sum", ""), 0)
    entries = m.get(("quorumq_log_flush_entries_sum", ""), 0)
    cmds = m.get(("quorumq_raft_entry_commands_sum", ""), 0)
    cmd_entries = m.get(("quorumq_raft_entry_commands_count", ""), 0)
    role = "leader  " if node == leader else "follower"
    q = lambda p: quantile(m, "quorumq_log_flush_seconds", p) * 1000
    line = (f"node {node} {role}: {int(n)} fsyncs, mean {1000 * s / max(n, 1):.2f} ms, "
            f"p50 <= {q(0.5):g} ms, p90 <= {q(0.9):g} ms, p99 <= {q(0.99):g} ms; "
            f"{entries / max(n, 1):.2f} entries per fsync")
    if node == leader and cmd_entries:
        line += f"; {cmds / cmd_entries:.1f} commands per entry"
    print(line)
    if node == leader:
        for name, what in (("quorumq_log_append_seconds", "log write -> durable"),
                           ("quorumq_raft_entry_wait_seconds", "command waits for a free slot"),
                           ("quorumq_raft_entry_seconds", "entry proposed -> applied"),
                           ("quorumq_checkpoint_capture_seconds", "checkpoint capture (applies wait)")):
            n = m.get((name + "_count", ""), 0)
            s = m.get((name + "_sum", ""), 0)
            q = lambda p: quantile(m, name, p) * 1000
            print(f"  leader, {what}: mean {1000 * s / max(n, 1):.2f} ms, p50 <= {q(0.5):.3g} ms, "
                  f"p99 <= {q(0.99):.3g} ms ({int(n)})")
EOF

if [ -n "${PERF:-}" ]; then
    hz=$(getconf CLK_TCK)
    secs=${PERF_SECS:-4}
    # The share of a core each process used over the profile, and the
    # machine's idle share (from /proc/stat, all cores).
    python3 - "$dir/ticks" "$hz" "$secs" "$leader" "$(nproc)" <<'EOF'
import sys
path, hz, secs, leader, cores = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lines = [l.split() for l in open(path)]
names = [f"node {i}" + (" (leader)" if i == leader else "") for i in (1, 2, 3)] + ["client (bench/peers)"]
for name, (pid, t0, t1) in zip(names, lines[:4]):
    print(f"CPU {name}: {(int(t1) - int(t0)) / hz / secs:.2f} cores over the {secs:g} s profile")
_, i0, i1 = lines[4]
print(f"machine idle: {(int(i1) - int(i0)) / hz / secs:.2f} of {cores} cores")
EOF
    if [ "$PERF" = syscalls ]; then
        echo "the leader's system calls over the ${secs} s (all threads):"
        python3 - "$dir/trace.txt" <<'EOF'
import re, sys
calls = {}
for line in open(sys.argv[1]):
    m = re.match(r'^\s+(\w+)\s+(\d+)\s+\d+\s+[0-9.]+', line)
    if m:
        calls[m.group(1)] = calls.get(m.group(1), 0) + int(m.group(2))
syncs = calls.get("fdatasync", 0)
for name, n in sorted(calls.items(), key=lambda kv: -kv[1])[:12]:
    per = f", {n / syncs:.1f} per fdatasync" if syncs else ""
    print(f"  {name:<14} {n:>8}{per}")
EOF
    elif [ "$PERF" = all ]; then
        echo "share of all samples by process:"
        perf report -i "$dir/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null |
            grep -E '^ +[0-9.]+%' | head -12 | cut -c1-100
        echo "by symbol, every process:"
        perf report -i "$dir/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null |
            grep -E '^ +[0-9.]+%' | head -40 | cut -c1-120
    else
        perf report -i "$dir/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null |
            grep -E '^ +[0-9.]+%' | head -30 | cut -c1-120
    fi
fi
