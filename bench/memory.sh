#!/usr/bin/env bash
# Memory per queued message (issues 5 and 6), on a local 3-node cluster of
# `quorumq server` processes on loopback:
#
#   1. RSS of each node with the cluster empty (one empty queue);
#   2. send MESSAGES messages of SIZE bytes (quorumq bench, batches of 100,
#      nobody receiving);
#   3. wait until every node has applied everything, then SETTLE seconds;
#   4. RSS (VmRSS) and peak RSS (VmHWM) of each node, RSS per queued
#      message (above the empty cluster's), disk use per node, and the
#      message ids the node remembers for deduplication (the gauge
#      `quorumq_remembered_ids`, from /metrics on BASE_PORT+11..13);
#   5. with IDLE=N: the same again after N more idle seconds (a queue's
#      deduplication window is 5 minutes: IDLE=330 shows what is left once
#      the ids of the sent messages are forgotten).
#
#   bash bench/memory.sh                      # 1,000,000 x 1 KiB
#   MESSAGES=100000 bash bench/memory.sh      # quicker
#   MESSAGES=10000000 SNAPSHOT_EVERY=1000000 bash bench/memory.sh
#                                             # the issue's 10M figure: ~21 GiB of disk per node
#                                             # (no snapshot during the run, so no third copy)
#   IDLE=330 bash bench/memory.sh             # also after the dedup window
#   IDLE=330 RESTART=1 bash bench/memory.sh   # and node 3 restarted: what a fresh process needs
#   QUORUMQ=/tmp/quorumq-old bash bench/memory.sh   # another binary (no build)
#   SERVER_ARGS='--cache-mb 64' bash bench/memory.sh  # extra server flags
#
# Prints one line per figure; results go into BENCHMARKS.md by hand, with
# the command, the machine and the date. Every process it starts is killed
# on exit; the bench is bounded by MESSAGES and by a one-hour duration.
set -euo pipefail
cd "$(dirname "$0")/.."

messages=${MESSAGES:-1000000}
size=${SIZE:-1024}
base_port=${BASE_PORT:-7501}
settle=${SETTLE:-10}
idle=${IDLE:-0}
extra_args=${SERVER_ARGS:-}
# Raft entries between snapshots (the server's --snapshot-every; its default
# is 20000). The bench sends batches of 100, so MESSAGES / 100 entries: a
# SNAPSHOT_EVERY above that means no snapshot, and no snapshot's copy of
# every queued body, during the run.
snapshot_every=${SNAPSHOT_EVERY:-20000}

if [ -n "${QUORUMQ:-}" ]; then
    q=$QUORUMQ # a binary built elsewhere (before/after comparisons)
else
    cargo build --release --locked -p quorumq >/dev/null 2>&1 || cargo build --release --locked -p quorumq
    q=$PWD/target/release/quorumq
fi
dir=$(mktemp -d /tmp/quorumq-memory-XXXXXX)

# Refuse a run that would fill the disk: each of the 3 nodes stores each
# body in its log entry and its record (about size + 100 bytes each, plus
# checkpoints), and a third time in a snapshot's copy once one is built.
copies=2
[ $((messages / 100)) -ge "$snapshot_every" ] && copies=3
need=$((messages * (size + 128) * copies * 3 / 1024 + 2097152))
free=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
if [ "$need" -gt "$free" ]; then
    echo "not enough disk under $dir: about $((need / 1048576)) GiB needed, $((free / 1048576)) GiB free" >&2
    rm -rf "$dir"
    exit 1
fi

peers="1=127.0.0.1:$base_port,2=127.0.0.1:$((base_port + 1)),3=127.0.0.1:$((base_port + 2))"
cluster="127.0.0.1:$base_port,127.0.0.1:$((base_port + 1)),127.0.0.1:$((base_port + 2))"
declare -A pids

start_node() {
    local id=$1
    # shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
    RUST_LOG=${RUST_LOG:-warn} "$q" server --id "$id" --listen "127.0.0.1:$((base_port + id - 1))" \
        --data-dir "$dir/node$id" --peers "$peers" --http "127.0.0.1:$((base_port + 10 + id))" --snapshot-every "$snapshot_every" $extra_args \
        >>"$dir/node$id.log" 2>&1 &
    pids[$id]=$!
}

cleanup() {
    for id in "${!pids[@]}"; do kill -9 "${pids[$id]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -z "${KEEP:-}" ]; then rm -rf "$dir"; else echo "data kept in $dir"; fi
}
trap cleanup EXIT

kib() { awk '/^'"$2"':/ { print $2 }' "/proc/${pids[$1]}/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
# The node's gauge of message ids held for deduplication (/metrics).
remembered() {
    curl -fsS "http://127.0.0.1:$((base_port + 10 + $1))/metrics" 2>/dev/null |
        awk '$1 == "quorumq_remembered_ids" { print $2 }'
}
disk() { du -sb "$dir/node$1" | awk '{ printf "%.0f", $1 / 1048576 }'; }
leader_id() {
    "$q" --cluster "$cluster" cluster status --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"] or "")'
}
node_json() { "$q" --cluster "$cluster" cluster node "127.0.0.1:$((base_port + $1 - 1))" --json 2>/dev/null; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
wait_leader() {
    for _ in $(seq 1 600); do
        l=$(leader_id || true)
        if [ -n "$l" ]; then echo "$l"; return; fi
        sleep 0.1
    done
    echo "no leader" >&2; exit 1
}
declare -A base_rss
report() {
    local label=$1 queued=$2
    for id in 1 2 3; do
        local rss hwm per=""
        rss=$(kib "$id" VmRSS); hwm=$(kib "$id" VmHWM)
        if [ "$queued" -gt 0 ]; then
            per=", $(awk -v r="$rss" -v b="${base_rss[$id]}" -v n="$queued" 'BEGIN { printf "%.0f", (r - b) * 1024 / n }') B of RSS per queued message"
        fi
        echo "$label node $id: RSS $(mib "$rss") MiB, peak $(mib "$hwm") MiB$per; disk $(disk "$id") MiB; remembered ids $(remembered "$id")"
    done
}

for id in 1 2 3; do start_node "$id"; done
wait_leader >/dev/null
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -sr); $(date -u +%F)"
echo "command: MESSAGES=$messages SIZE=$size SETTLE=$settle IDLE=$idle SNAPSHOT_EVERY=$snapshot_every SERVER_ARGS='$extra_args' bash bench/memory.sh"
"$q" --cluster "$cluster" queue create backlog >/dev/null
sleep 2
for id in 1 2 3; do base_rss[$id]=$(kib "$id" VmRSS); done
report "empty cluster:" 0

"$q" --cluster "$cluster" bench --queue backlog --producers 4 --inflight 4 --batch 100 --size "$size" \
    --messages "$messages" --duration 3600s --json > "$dir/bench.json"
echo "sent $messages x $size B: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["confirmed"], "confirmed,", round(r["send_msgs_per_sec"]), "msg/s")' "$dir/bench.json")"

# Settle: every node has applied the leader's commit, then a pause.
leader=$(wait_leader)
committed=$(node_json "$leader" | field committed_index)
for id in 1 2 3; do
    for _ in $(seq 1 3000); do
        applied=$(node_json "$id" | field applied_index 2>/dev/null || echo 0)
        [ "${applied:-0}" -ge "$committed" ] && break
        sleep 0.1
    done
done
sleep "$settle"
ready=$("$q" --cluster "$cluster" queue stats backlog --json | field ready)
echo "backlog: $ready ready"
report "after sending:" "$ready"

if [ "$idle" -gt 0 ]; then
    sleep "$idle"
    report "after $idle s idle:" "$ready"
fi

# RESTART=1: restart node 3 (SIGKILL, start again) and report once it has
# caught up: a fresh process holds the same state with freshly laid-out
# memory, so the difference from the line before is what the allocator of
# the long-running process keeps without the state needing it.
if [ -n "${RESTART:-}" ]; then
    kill -9 "${pids[3]}" 2>/dev/null || true
    wait "${pids[3]}" 2>/dev/null || true
    restart_at=$(date +%s.%N)
    start_node 3
    # Node 3 may have been the leader: ask until a live leader answers.
    committed=
    for _ in $(seq 1 600); do
        committed=$(node_json "$(wait_leader)" | field committed_index 2>/dev/null) && break
        sleep 0.1
    done
    [ -n "$committed" ] || { echo "no leader answers after the restart" >&2; exit 1; }
    for _ in $(seq 1 3000); do
        applied=$(node_json 3 | field applied_index 2>/dev/null || echo 0)
        [ "${applied:-0}" -ge "$committed" ] && break
        sleep 0.1
    done
    echo "node 3 caught up $(awk -v a="$restart_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s after it was started (polled every 0.1 s)"
    sleep "$settle"
    report "node 3 restarted:" "$ready"
fi
