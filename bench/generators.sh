#!/usr/bin/env bash
# generators.sh: is edgebench at least as capable a load generator as the standard tools?
#
# Runs edgebench and the standard tool alternately against the SAME target instance, target
# pinned to $PROXY_CPU (0), generator to $LOAD_CPU (1), and prints RESULT lines:
#   dns   : dnsperf vs `edgebench dns`           -> knot, ours (hub, --shards 1, 10 names)
#   http  : wrk vs `edgebench tcp-rr --http`      -> nginx (100-byte file), kept-alive
#   conn  : wrk -H 'Connection: close' vs `edgebench tcp-connect --http` -> nginx
# For each run: answered rate, latency, target CPU %, generator CPU % and the run-queue wait
# of both (the share of time they were runnable but another process held their core: other
# builds on this machine). A generator that is at 100% CPU while the target is not is the
# bottleneck.
#
# Reuses the peers harness (network namespace with only `lo`, pinning, PID bookkeeping,
# bounded runs): PEERS_DIR (default /work/shared/peers).
#
# usage: bench/generators.sh [dns] [http] [conn]     (default: all three)
#   env: EDGEBENCH (default target/release/edgebench), OURS_BIN (target/release/edgeproxy),
#        DUR (seconds per run, 10), REPEAT (runs per generator, 2), DNS_TARGETS ("knot ours")
set -uo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
: "${PEERS_DIR:=/work/shared/peers}"
: "${EDGEBENCH:=$HERE/target/release/edgebench}"
: "${OURS_BIN:=$HERE/target/release/edgeproxy}"
: "${DUR:=10}"
: "${REPEAT:=2}"
: "${DNS_TARGETS:=knot ours}"
: "${DNS_CONC:=200}"
: "${HTTP_CONNS:=64}"
export PEERS_DIR EDGEBENCH OURS_BIN DUR REPEAT
# shellcheck disable=SC1091
source "$PEERS_DIR/lib/common.sh"
# shellcheck disable=SC1091
source "$PEERS_DIR/lib/backends.sh"
[ -x "$EDGEBENCH" ] || die "build first: cargo build --release -p edgebench ($EDGEBENCH)"

# gen_sample PID FILE: every 0.2 s, the generator's CPU ns and run-queue wait ns summed over
# its threads (/proc/PID/task/*/schedstat); the last line is within 0.2 s of its exit.
gen_sample() {
  local pid="$1" out="$2" t a b c run wait
  while kill -0 "$pid" 2>/dev/null; do
    run=0; wait=0
    for t in /proc/"$pid"/task/*/schedstat; do
      read -r a b c < "$t" 2>/dev/null || continue
      run=$((run + a)); wait=$((wait + b))
    done
    [ "$run" -gt 0 ] && echo "$(now_s) $run $wait" >> "$out"
    sleep 0.2
  done
}

# run_gen NAME LOGFILE CMD...: runs a generator pinned to LOAD_CPU (bounded), samples it and
# the target; sets G_CPU_PCT G_RUNQ_PCT and the measure_* variables.
run_gen() {
  local name="$1" logf="$2"; shift 2
  local samples="$logf.sched" t0
  : > "$samples"
  measure_begin
  t0=$(now_s)
  spawn "$name" "$LOAD_CPU" "$logf" timeout -k 5 $((DUR + 30)) "$@"
  local pid=$SPAWNED_PID
  # `timeout` forks the generator: sample its child (wait up to 1 s for it to appear).
  local child="" i
  for ((i = 0; i < 20; i++)); do
    child="$(ps -o pid= --ppid "$pid" | head -1 | tr -d ' ')"
    [ -n "$child" ] && break
    sleep 0.05
  done
  [ -n "$child" ] || warn "$name: no child process of timeout found; sampling timeout itself"
  gen_sample "${child:-$pid}" "$samples" &
  local sampler=$!
  wait "$pid" || warn "$name exited non-zero (see $logf)"
  unregister_pid "$pid"
  wait "$sampler" 2>/dev/null
  measure_end
  read -r G_CPU_PCT G_RUNQ_PCT < <(python3 - "$samples" "$t0" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
if not rows: print("nan nan"); sys.exit()
t, run, wait = float(rows[-1][0]) - float(sys.argv[2]), int(rows[-1][1]), int(rows[-1][2])
print(round(run / 1e7 / t, 1), round(wait / 1e7 / t, 1))
EOF
)
}

emit_common() {  # SCEN TARGET GEN RUN
  result "$1" "$2" "$4" "gen=$3" target_cpu_pct "$(python3 -c "print(round(100*$M_CPU_S/$M_WALL,1))")"
  result "$1" "$2" "$4" "gen=$3" target_runq_wait_pct "$M_RUNQ_PCT"
  result "$1" "$2" "$4" "gen=$3" gen_cpu_pct "$G_CPU_PCT"
  result "$1" "$2" "$4" "gen=$3" gen_runq_wait_pct "$G_RUNQ_PCT"
  result "$1" "$2" "$4" "gen=$3" core${LOAD_CPU}_busy_pct "$M_CORE1"
}

edgebench_results() {  # SCEN TARGET RUN JSON
  local k v
  while read -r k v; do result "$1" "$2" "$3" "gen=edgebench" "$k" "$v"; done < <(python3 - "$4" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print("rate", s["rate"])
print("p50_us", s["latency_us"]["p50"])
print("p99_us", s["latency_us"]["p99"])
print("avg_lat_us", s["latency_us"]["mean"])
print("errors", s["counts"]["errors"])
for k, v in s["outcomes"].items(): print("outcome_" + k.replace(" ", "_"), v)
EOF
)
}

dns_body() {
  local dir="$TARGET_RUN_DIR" r host port
  target_start dns
  if declare -F target_dns_setup >/dev/null; then target_dns_setup; fi
  host="${TARGET_ADDR%:*}"; port="${TARGET_ADDR##*:}"
  dns_records | awk '{print $1, "A"}' > "$dir/queries.txt"
  for ((r = 1; r <= REPEAT; r++)); do
    declare -A R=()
    run_gen dnsperf "$dir/dnsperf-$r.out" dnsperf -s "$host" -p "$port" -d "$dir/queries.txt" \
      -l "$DUR" -c 4 -q "$DNS_CONC" -t 1 -O suppress=timeout
    if parse_into R dnsperf "$dir/dnsperf-$r.out"; then
      result dns "$TARGET_NAME" "$r" gen=dnsperf rate "${R[qps]}"
      result dns "$TARGET_NAME" "$r" gen=dnsperf avg_lat_us "${R[avg_lat_us]}"
      result dns "$TARGET_NAME" "$r" gen=dnsperf lost_pct "${R[lost_pct]}"
    fi
    emit_common dns "$TARGET_NAME" dnsperf "$r"
    run_gen edgebench "$dir/edgebench-$r.out" "$EDGEBENCH" dns -t "$TARGET_ADDR" \
      -f "$dir/queries.txt" -c "$DNS_CONC" -d "${DUR}s" --timeout 1s -q \
      --json "$dir/edgebench-$r.json"
    edgebench_results dns "$TARGET_NAME" "$r" "$dir/edgebench-$r.json"
    emit_common dns "$TARGET_NAME" edgebench "$r"
  done
  target_stop
}

http_body() {  # $1 = keepalive | close
  local mode="$1" dir="$TARGET_RUN_DIR" r url scen sub hdr=()
  [ "$mode" = close ] && { scen=conn; sub=tcp-connect; hdr=(-H 'Connection: close'); } \
                      || { scen=http; sub=tcp-rr; }
  BACKEND_CPU="$PROXY_CPU" start_http_backend "$dir"
  TARGET_PID=$BACKEND_PID
  url="http://$BACKEND_ADDR$BACKEND_PATH"
  for ((r = 1; r <= REPEAT; r++)); do
    declare -A R=()
    run_gen wrk "$dir/wrk-$r.out" wrk -t1 -c"$HTTP_CONNS" -d"${DUR}s" --timeout 5s --latency \
      "${hdr[@]}" "$url"
    if parse_into R wrk "$dir/wrk-$r.out"; then
      result "$scen" nginx "$r" gen=wrk rate "${R[rps]}"
      result "$scen" nginx "$r" gen=wrk p50_us "${R[p50_us]}"
      result "$scen" nginx "$r" gen=wrk p99_us "${R[p99_us]}"
      result "$scen" nginx "$r" gen=wrk errors "$(( ${R[errors]} + ${R[non2xx]} ))"
    fi
    emit_common "$scen" nginx wrk "$r"
    run_gen edgebench "$dir/edgebench-$r.out" "$EDGEBENCH" "$sub" -t "$BACKEND_ADDR" \
      --http "$BACKEND_PATH" -c "$HTTP_CONNS" -d "${DUR}s" --timeout 5s -q \
      --json "$dir/edgebench-$r.json"
    edgebench_results "$scen" nginx "$r" "$dir/edgebench-$r.json"
    emit_common "$scen" nginx edgebench "$r"
  done
  stop_pid "$BACKEND_PID"
}

modes=("$@"); [ ${#modes[@]} -gt 0 ] || modes=(dns http conn)
for m in "${modes[@]}"; do
  case "$m" in
    dns)
      for t in $DNS_TARGETS; do
        TARGET_RUN_DIR="$RUN_DIR/dns/$t"; mkdir -p "$TARGET_RUN_DIR"
        run_isolated "dns-$t" _matrix_body "$t" dns_body || warn "dns/$t failed"
      done ;;
    http) TARGET_RUN_DIR="$RUN_DIR/http"; mkdir -p "$TARGET_RUN_DIR"
          run_isolated http http_body keepalive || warn "http failed" ;;
    conn) TARGET_RUN_DIR="$RUN_DIR/conn"; mkdir -p "$TARGET_RUN_DIR"
          run_isolated conn http_body close || warn "conn failed" ;;
    *) die "unknown mode $m (dns, http, conn)" ;;
  esac
done
log "results: $RESULTS_FILE"
