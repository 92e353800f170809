#!/usr/bin/env bash
# Registrations per second with durability on and off, replication on and off, and the store's
# fsyncs per 1,000 registrations (from /metrics: edgeproxy_store_syncs_total / edgeproxy_backends).
# Hub: one shard on CPU 0; edgebench api-register on CPU 1 (unique ids, one app).
#
#   cargo build --release --workspace && bench/api_durability.sh [CONCURRENCY] [RUNS]
#   (EDGEPROXY=path/to/binary to measure another build)
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
B="$ROOT/target/release"
EDGEPROXY="${EDGEPROXY:-$B/edgeproxy}"
CONC="${1:-64}"
RUNS="${2:-2}"
PORT=28081
run() {
  local label="$1"; shift
  local dir; dir=$(mktemp -d)
  taskset -c 0 "$EDGEPROXY" --shards=1 --listen-addr=127.0.0.1:0 --api-listen-addr=127.0.0.1:$PORT \
    --dns-listen-addr=127.0.0.1:0 --tls-enabled=false --health-check=none \
    --gossip-addr=127.0.0.1:0 --sync-addr=127.0.0.1:0 --state-dir="$dir" "$@" > "$dir/hub.log" 2>&1 &
  local pid=$!
  for _ in $(seq 50); do grep -q "ready:" "$dir/hub.log" && break; sleep 0.1; done
  "$B/edgebench" api-register -t 127.0.0.1:$PORT -c "$CONC" -d 8s -w 2s --cpus 1 -q --json "$dir/eb.json" > /dev/null 2>&1
  local m; m=$(curl -s 127.0.0.1:$PORT/metrics)
  local syncs; syncs=$(echo "$m" | awk '/^edgeproxy_store_syncs_total/{print $2}')
  local regs; regs=$(echo "$m" | awk '/^edgeproxy_backends /{print $2}')
  python3 - "$label" "$dir/eb.json" "${syncs:-0}" "${regs:-0}" <<'PY'
import json, sys
label, path, syncs, regs = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
d = json.load(open(path))
lat = d["latency_us"]
per = 1000 * syncs / regs if regs else 0
print(f"| {label} | {d['rate']:,.0f} | {lat['p50']:,} | {lat['p99']:,} | {d['counts']['errors']} | {per:.1f} |")
PY
  kill "$pid"; wait "$pid" 2>/dev/null; rm -rf "$dir"
}
echo "| hub (concurrency $CONC) | registrations/s | p50 µs | p99 µs | errors | fsyncs per 1,000 |"
echo "|---|---|---|---|---|---|"
for _ in $(seq "$RUNS"); do
  run "durable, replication on (default)"
  run "in memory, replication on" --persist=false
  run "durable, replication off" --replication-enabled=false
  run "in memory, replication off" --persist=false --replication-enabled=false
done
