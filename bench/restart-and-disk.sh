#!/usr/bin/env bash
# Restart time and disk use with a large backlog (issue 5), on a local
# 3-node cluster of `quorumq server` processes on loopback:
#
#   1. disk use of the empty cluster;
#   2. send MESSAGES messages of SIZE bytes (quorumq bench, batches of 100);
#   3. disk use with that backlog;
#   4. SIGKILL a follower, start it again: time until it has applied what
#      the leader had committed (it serves again);
#   5. SIGTERM every node, start them all: time until a receive returns a
#      message;
#   6. receive and ack everything, wait for a snapshot and the log purge:
#      disk use again.
#
#   bash bench/restart-and-disk.sh                   # 1,000,000 x 1 KiB
#   MESSAGES=100000 bash bench/restart-and-disk.sh   # quicker
#   SKIP_DRAIN=1 bash bench/restart-and-disk.sh      # restart figures only (the drain takes minutes)
#
# Prints one line per figure; results go into BENCHMARKS.md by hand, with
# the command, the machine and the date.
set -euo pipefail
cd "$(dirname "$0")/.."

messages=${MESSAGES:-1000000}
size=${SIZE:-1024}
base_port=${BASE_PORT:-7401}
snapshot_every=${SNAPSHOT_EVERY:-20000}
dir=$(mktemp -d /tmp/quorumq-restart-XXXXXX)

cargo build --release --locked -p quorumq >/dev/null 2>&1 || cargo build --release --locked -p quorumq
q=$PWD/target/release/quorumq

peers="1=127.0.0.1:$base_port,2=127.0.0.1:$((base_port + 1)),3=127.0.0.1:$((base_port + 2))"
cluster="127.0.0.1:$base_port,127.0.0.1:$((base_port + 1)),127.0.0.1:$((base_port + 2))"
declare -A pids

start_node() {
    local id=$1
    RUST_LOG=${RUST_LOG:-warn} "$q" server --id "$id" --listen "127.0.0.1:$((base_port + id - 1))" \
        --data-dir "$dir/node$id" --peers "$peers" --snapshot-every "$snapshot_every" \
        >>"$dir/node$id.log" 2>&1 &
    pids[$id]=$!
}

cleanup() {
    for id in "${!pids[@]}"; do kill -9 "${pids[$id]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -z "${KEEP:-}" ]; then rm -rf "$dir"; else echo "data kept in $dir"; fi
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
disk() { du -sb "$dir"/node1 "$dir"/node2 "$dir"/node3 | awk '{ printf "%s%.1f MiB", sep, $1 / 1048576; sep=", " }'; }
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

for id in 1 2 3; do start_node "$id"; done
wait_leader >/dev/null
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -sr); $(date -u +%F)"
"$q" --cluster "$cluster" queue create backlog >/dev/null
sleep 2
echo "empty cluster (one empty queue): disk $(disk)"

"$q" --cluster "$cluster" bench --queue backlog --producers 4 --inflight 4 --batch 100 --size "$size" \
    --messages "$messages" --duration 3600s --json > "$dir/bench.json"
echo "sent $messages x $size B: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["confirmed"], "confirmed,", round(r["send_msgs_per_sec"]), "msg/s")' "$dir/bench.json")"
ready=$("$q" --cluster "$cluster" queue stats backlog --json | field ready)
echo "backlog: $ready ready; disk $(disk)"

# A follower: SIGKILL, restart, time until it applied the leader's commit.
leader=$(wait_leader)
follower=$(( leader % 3 + 1 ))
committed=$(node_json "$leader" | field committed_index)
kill -9 "${pids[$follower]}"; wait "${pids[$follower]}" 2>/dev/null || true
t0=$(now_ms)
start_node "$follower"
while true; do
    applied=$(node_json "$follower" | field applied_index 2>/dev/null || echo 0)
    [ "${applied:-0}" -ge "$committed" ] && break
    sleep 0.02
done
echo "follower restart (SIGKILL, $ready queued): serving and caught up after $(( $(now_ms) - t0 )) ms"

# The whole cluster: SIGTERM all, start all, time to the first message.
for id in 1 2 3; do kill -TERM "${pids[$id]}"; done
for id in 1 2 3; do wait "${pids[$id]}" 2>/dev/null || true; done
t0=$(now_ms)
for id in 1 2 3; do start_node "$id"; done
until "$q" --cluster "$cluster" recv backlog --max 1 --wait 1s --visibility 1s --json 2>/dev/null | grep -q receipt; do
    sleep 0.02
done
echo "full cluster restart ($ready queued): first message received after $(( $(now_ms) - t0 )) ms"

[ -n "${SKIP_DRAIN:-}" ] && exit 0

# Drain, then let a snapshot and the purge happen.
t0=$(now_ms)
while [ "$("$q" --cluster "$cluster" queue stats backlog --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["ready"] + s["in_flight"])')" != 0 ]; do
    "$q" --cluster "$cluster" recv backlog --max 1000 --ack > /dev/null
done
echo "drained in $(( $(now_ms) - t0 )) ms"
# Small writes until every node has a snapshot taken after the drain and has
# purged its log behind it (concurrent sends share entries, so count the
# snapshots, not the writes).
drained=$(node_json "$(wait_leader)" | field committed_index)
for round in $(seq 1 20); do
    done_nodes=0
    for id in 1 2 3; do
        snap=$(node_json "$id" | field snapshot_index 2>/dev/null || echo 0)
        [ "${snap:-0}" -ge "$drained" ] && done_nodes=$((done_nodes + 1))
    done
    [ "$done_nodes" = 3 ] && break
    "$q" --cluster "$cluster" bench --queue filler --producers 4 --inflight 1 --batch 1 --size 16 \
        --messages "$snapshot_every" --consumers 2 --json > /dev/null
done
sleep 5
echo "after acking everything and a snapshot: disk $(disk)"
for id in 1 2 3; do
    echo "  node $id: $(du -sb "$dir/node$id"/* | awk '{ n=split($2, p, "/"); printf "%s%s %.1f MiB", sep, p[n], $1 / 1048576; sep=", " }')"
done
