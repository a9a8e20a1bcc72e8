#!/usr/bin/env bash
# PUBACK latency of a steady QoS 1 publisher while the write-ahead log compacts (issue 13).
# One shard, durability `sync`, a small `wal_max_bytes` so that compactions come every
# second or so, and offline persistent subscribers whose queues make each snapshot a few
# MiB. Run from the repository root after
#   cargo build --locked --release -p cutie-broker -p cutie-bench
# Prints p50/p99/max PUBACK latency and the number of compactions during the measured
# period; the broker's log goes to $OUT/cutie-ack-latency.log. Results: bench/README.md.
set -eu
OUT=${OUT:-/tmp}
PORT=${PORT:-18940}
ADMIN=${ADMIN:-18941}
WAL_MAX_BYTES=${WAL_MAX_BYTES:-4194304}
MAX_QUEUED=${MAX_QUEUED:-10000}
RATE=${RATE:-2000}
DURATION=${DURATION:-20s}
OFFLINE=${OFFLINE:-8}
D=$(mktemp -d)
CUTIE=${CUTIE:-target/release/cutie}
CUTIE_PERSISTENCE__WAL_MAX_BYTES=$WAL_MAX_BYTES \
CUTIE_LIMITS__MAX_QUEUED_MESSAGES=$MAX_QUEUED \
    "$CUTIE" --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" --shards 1 \
    --data-dir "$D" > "$OUT/cutie-ack-latency.log" 2>&1 &
P=$!
trap 'kill $P 2>/dev/null; wait $P 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 300); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 $P 2>/dev/null || { cat "$OUT/cutie-ack-latency.log"; exit 1; }
  sleep 0.1
done
echo "== wal_max_bytes $WAL_MAX_BYTES, max_queued_messages $MAX_QUEUED, rate $RATE/s, $DURATION, $OFFLINE offline subscribers"
target/release/cutie-bench --port "$PORT" ack-latency --admin "127.0.0.1:$ADMIN" \
    --rate "$RATE" --duration "$DURATION" --subscribers 2 --offline-subscribers "$OFFLINE" \
    --payload-bytes 256
