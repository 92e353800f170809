#!/usr/bin/env bash
# Failover time: a backend killed while clients loop connects through the hub.
#
# Runs tests/health.rs's killing_a_backend_mid_traffic_fails_no_client_and_ejects_it (release
# build) RUNS times and summarizes the figure it prints: the time from the backend's death (its
# listener closed, so connects are refused) to the last connection the hub sent to it, read from
# the hub's own record (GET /api/v1/backends/{id} -> health.last_connect_failure_unix_ms).
# Each run also asserts that no client connection failed.
#
#   bench/health_failover.sh            # 20 runs
#   RUNS=50 bench/health_failover.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-20}
ulimit -l unlimited 2>/dev/null || true
ulimit -n 65536 2>/dev/null || true
cargo test --release --test health --no-run -q 2>/dev/null
out=()
for i in $(seq 1 "$RUNS"); do
    line=$(cargo test --release -q --test health killing_a_backend -- --nocapture 2>&1 |
        grep '^failover:' || true)
    [ -n "$line" ] || { echo "run $i: no figure (test failed?)" >&2; exit 1; }
    echo "run $i: $line"
    out+=("$(sed -E 's/.*dead backend: ([0-9]+) ms; ([0-9]+) connects.*, ([0-9]+) failed;.*/\1 \2 \3/' <<<"$line")")
done
printf '%s\n' "${out[@]}" | python3 -c '
import sys, statistics as st
rows = [list(map(int, l.split())) for l in sys.stdin if l.strip()]
ms = sorted(r[0] for r in rows); tried = sorted(r[1] for r in rows); failed = sum(r[2] for r in rows)
print(f"{len(rows)} runs: death -> last connection sent to it: min {ms[0]} ms, median {st.median(ms)} ms, max {ms[-1]} ms")
print(f"connects tried on the dead backend: min {tried[0]}, median {st.median(tried)}, max {tried[-1]}; failed client connections: {failed}")
'
