#!/usr/bin/env bash
# The disk's own limits, to read benchmark figures against (issue 6): on a
# virtual disk they vary from machine to machine and from hour to hour.
#
#   bash bench/disk.sh            # in a temp dir under /tmp (the disk the benchmarks use)
#   DIR=/var/lib/quorumq bash bench/disk.sh
#
# Prints: a 4 KiB write + O_DSYNC (1000 of them, one writer: the latency of
# one durable append), growing a new file and then over its written blocks;
# then 1 GiB written sequentially and fdatasynced, once
# into a new file and once more over the same file (a thin-provisioned disk
# is slower on blocks never written before). Writes about 1 GiB, removed on
# exit; bounded by the sizes and by a 5-minute timeout per step.
set -euo pipefail
dir=$(mktemp -d "${DIR:-/tmp}/quorumq-disk-XXXXXX")
trap 'rm -rf "$dir"' EXIT

rate() { tail -1 | sed -E 's/.*copied, ([0-9.]+) s, (.*)$/\1 s, \2/'; }

out=$(timeout 300 dd if=/dev/zero of="$dir/dsync" bs=4k count=1000 oflag=dsync 2>&1 | rate)
secs=${out%% s,*}
echo "4 KiB write + O_DSYNC, 1000 in a row: $(awk -v s="$secs" 'BEGIN { printf "%.3f ms each", s }')"
# The same writes over the blocks just written: no file growth for the
# journal to commit (what the log's zeroes ahead of its records buy).
out=$(timeout 300 dd if=/dev/zero of="$dir/dsync" bs=4k count=1000 oflag=dsync conv=notrunc 2>&1 | rate)
secs=${out%% s,*}
echo "the same, over the written blocks:     $(awk -v s="$secs" 'BEGIN { printf "%.3f ms each", s }')"
echo "1 GiB sequential, new file, fdatasync: $(timeout 300 dd if=/dev/zero of="$dir/seq" bs=1M count=1024 conv=fdatasync 2>&1 | rate)"
echo "1 GiB sequential, same file again:     $(timeout 300 dd if=/dev/zero of="$dir/seq" bs=1M count=1024 conv=fdatasync,notrunc 2>&1 | rate)"
