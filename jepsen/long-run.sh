#!/usr/bin/env bash
# The long fault-injection runs whose results go into jepsen/RESULTS.md:
# every nemesis family (and all of them mixed, membership included) for TIME_LIMIT seconds each,
# on 3 and 5 nodes, on the local backend and on the Docker Compose cluster.
# With the defaults (600 s) this takes about four hours. It prints one
# summary line per run and appends a Markdown table row for each to
# $STORE/long-run-results.md.
#
#   bash jepsen/long-run.sh
#   TIME_LIMIT=300 NODES="3" BACKENDS="local" bash jepsen/long-run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

time_limit=${TIME_LIMIT:-600}
nodes_list=${NODES:-"3 5"}
backends=${BACKENDS:-"local compose"}
families=${FAMILIES:-"kill pause partition restart membership kill,pause,partition,restart,membership"}
store=${STORE:-store}
rate=${RATE:-200}

cargo build --release --locked -p quorumq -p quorumq-jepsen
if [[ " $backends " == *" compose "* ]]; then
    bash deploy/docker/build-image.sh
fi
mkdir -p "$store"
table="$store/long-run-results.md"
[ -f "$table" ] || echo "| date | backend | nodes | nemesis | seconds | sent | acked | lost | unexpected | duplicated | longest send gap (s) | verdict |" > "$table"

status=0
for backend in $backends; do
    for nodes in $nodes_list; do
        for nemesis in $families; do
            seed=$(( RANDOM * 32768 + RANDOM ))
            echo "=== $backend, $nodes nodes, nemesis $nemesis, ${time_limit}s, seed $seed"
            if target/release/quorumq-jepsen test --backend "$backend" --nodes "$nodes" --nemesis "$nemesis" \
                --time-limit "$time_limit" --rate "$rate" --seed "$seed" --store "$store" | tee /tmp/quorumq-long-run.out; then
                verdict=valid
            else
                verdict=INVALID
                status=1
            fi
            results=$(ls -td "$store"/quorumq-"$backend"-"$nodes"n-"${nemesis//,/+}"/*/ | head -1)results.json
            python3 - "$results" "$backend" "$nodes" "$nemesis" "$time_limit" "$verdict" >> "$table" <<'PY'
import json, sys, datetime
path, backend, nodes, nemesis, seconds, verdict = sys.argv[1:]
try:
    r = json.load(open(path))["results"]
    c = r["counts"]
    gap = r["availability"]["longest_send_gap"]
    gap_s = f"{gap['ms'] / 1000:.1f}" if gap else "-"
    print(f"| {datetime.date.today()} | {backend} | {nodes} | {nemesis} | {seconds} | {c['attempted']} | {c['acked']} "
          f"| {r['lost']['count']} | {r['unexpected']['count']} | {r['duplicated']['count']} | {gap_s} | {verdict} |")
except Exception as e:
    print(f"| {datetime.date.today()} | {backend} | {nodes} | {nemesis} | {seconds} | run failed: {e} | | | | | | {verdict} |")
PY
        done
    done
done
echo "results table: $table"
exit $status
