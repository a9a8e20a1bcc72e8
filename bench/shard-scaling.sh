#!/usr/bin/env bash
# How throughput scales with shards: cutie alone, 1/2/4/8 shards, three scenarios, the
# harness on the same machine with 8 threads. Run from the repository root after
# `cargo build --release -p cutie-broker -p cutie-bench`; writes broker logs to $OUT
# (default /tmp). Results of 2026-11-25 on a 16-core machine are in bench/README.md.
set -u
OUT=${OUT:-/tmp}
B=target/release/cutie-bench
for S in 1 2 4 8; do
  D=$(mktemp -d)
  CUTIE_ADMIN__ENABLED=false target/release/cutie --listen 127.0.0.1:18930 --shards "$S" \
      --data-dir "$D" > "$OUT/cutie-$S.log" 2>&1 &
  P=$!
  sleep 1
  for SC in "p2p --pairs 64 --qos 0" "p2p --pairs 64 --qos 1" "fan-out --subscribers 64 --qos 0"; do
    echo "== shards $S: $SC"
    # shellcheck disable=SC2086
    timeout 60 $B -q --port 18930 --pid $P $SC --warmup 1s --duration 5s --drain 2s --threads 8 \
        2>&1 | grep -E "received|lost |broker"
  done
  kill $P; wait $P 2>/dev/null
done
