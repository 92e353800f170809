#!/usr/bin/env bash
# CPU per GB forwarded by the hub on loopback: copy (--splice never) vs splice (always) vs auto,
# with a direct connection (no hub) as the throughput reference. The hub runs one shard pinned
# to CPU 0; iperf3 (client and server) runs on CPU 1. The hub's CPU is the on-CPU time of its
# threads from /proc/PID/task/*/schedstat around each run. Modes are interleaved, REPEAT rounds; medians at the end.
#
# usage: [REPEAT=5] [MODES="never always auto"] bench/splice_cpu.sh [BYTES=4G] [iperf3 args...]
#   a mode may name a pipe size: MODES="never always:65536 always:262144 always:1048576"
#   e.g. bench/splice_cpu.sh 4G -R      (backend → client)
#        bench/splice_cpu.sh 4G -P 8    (8 parallel connections)
# needs: iperf3, curl, python3, a release build (cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/edgeproxy
BYTES=${1:-4G}
shift || true
EXTRA=("$@")
REPEAT=${REPEAT:-5}
MODES=${MODES:-never always auto}
# Every port comes from the OS (other hubs may run on this machine).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND_PORT=$(free_port)
RESULTS=$(mktemp)

taskset -c 1 iperf3 -s -p $BACKEND_PORT >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -f "$RESULTS"' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$BACKEND_PORT) 2>/dev/null && break; sleep 0.1; done

# On-CPU nanoseconds of every thread of $1 (schedstat is exact; utime/stime are 10 ms ticks).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%d", s}'; }

run_client() { # $1 = port; prints "Gbit/s GB"
  taskset -c 1 iperf3 -c 127.0.0.1 -p "$1" -n "$BYTES" -J "${EXTRA[@]}" |
    python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]; s=e.get("sum_received") or e["sum"]; print("%.2f %.4f" % (s["bits_per_second"]/1e9, s["bytes"]/1e9))'
}

for round in $(seq "$REPEAT"); do
  read -r gbps gb < <(run_client $BACKEND_PORT)
  echo "direct $gbps $gb 0" | tee -a "$RESULTS"
  for spec in $MODES; do
    mode=${spec%%:*}
    pipe=262144
    [[ $spec == *:* ]] && pipe=${spec#*:}
    LOG=$(mktemp)
    taskset -c 0 $BIN --shards 1 --persist=false --listen-addr 127.0.0.1:0 --api-listen-addr 127.0.0.1:0 \
      --dns-enabled false --splice "$mode" --splice-pipe-size "$pipe" 2>"$LOG" &
    HUB=$!
    for _ in $(seq 100); do grep -q ' ready: ' "$LOG" && break; sleep 0.05; done
    PROXY=$(grep -o 'ready: proxy=[^ ]*' "$LOG" | cut -d= -f2)
    API=$(grep -o ' api=[^ ]*' "$LOG" | head -1 | cut -d= -f2)
    rm -f "$LOG"
    curl -sf -o /dev/null -X POST "http://$API/api/v1/register" \
      -H 'Content-Type: application/json' \
      -d "{\"id\":\"b1\",\"app\":\"bulk\",\"region\":\"sa\",\"ip\":\"127.0.0.1\",\"port\":$BACKEND_PORT}"
    t0=$(cpu_ns $HUB)
    read -r gbps gb < <(run_client "${PROXY##*:}")
    t1=$(cpu_ns $HUB)
    kill $HUB
    wait $HUB 2>/dev/null || true
    echo "$spec $gbps $gb $(( t1 - t0 ))" | tee -a "$RESULTS"
  done
done

python3 - "$RESULTS" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
print("\nmode     median Gbit/s   median hub CPU-s/GB   (min-max CPU-s/GB, n)")
for mode in dict.fromkeys(r[0] for r in rows):
    rs = [r for r in rows if r[0] == mode]
    gbps = st.median(float(r[1]) for r in rs)
    if mode == "direct":
        print(f"{mode:8} {gbps:10.1f}")
        continue
    per = [int(r[3]) / 1e9 / float(r[2]) for r in rs]
    print(f"{mode:8} {gbps:10.1f}   {st.median(per):14.3f}        ({min(per):.3f}-{max(per):.3f}, {len(per)})")
PY
