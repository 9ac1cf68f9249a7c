#!/usr/bin/env bash
# The bounded fault-injection run that CI does (tests/run.sh): about a minute
# for each nemesis family (kill, pause, partition, restart, membership) on the
# local backend, then the proof that the harness catches a broken build.
# Every run stops by itself.
#
#   bash jepsen/smoke.sh                 # TIME_LIMIT=45 per family, random seed
#   SEED=7 TIME_LIMIT=30 bash jepsen/smoke.sh
#
# Partitions need network namespaces, hence root; without root the local
# backend runs on loopback and the partition family is skipped (said so).
set -euo pipefail
cd "$(dirname "$0")/.."

time_limit=${TIME_LIMIT:-45}
seed=${SEED:-$(( $(date +%s) % 100000 ))}
store=${STORE:-store}

cargo build --release --locked -p quorumq -p quorumq-jepsen
cargo build --release --locked -p quorumq-tests --features fault-injection --bin quorumq-fault-injection
jepsen=target/release/quorumq-jepsen

net=namespaces
families="kill pause partition restart membership"
if [ "$(id -u)" != 0 ]; then
    echo "jepsen smoke: not root: loopback networking, partition family SKIPPED"
    net=loopback
    families="kill pause restart membership"
fi

for nemesis in $families; do
    echo
    echo "=== jepsen smoke: nemesis $nemesis, ${time_limit}s, seed $seed"
    "$jepsen" test --net "$net" --nemesis "$nemesis" --time-limit "$time_limit" --rate 100 --seed "$seed" --store "$store"
done

echo
echo "=== jepsen smoke: a build that acknowledges before its log is durable must be caught losing messages"
"$jepsen" test --net loopback --nemesis kill-all --consumers 0 --time-limit 15 --rate 200 \
    --fault-interval 2..3 --fault-duration 1..2 --seed "$seed" \
    --binary target/release/quorumq-fault-injection --broken-ack-before-fsync --expect-loss --store "$store"
