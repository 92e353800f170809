# shellcheck shell=bash
# Helpers shared by bench/compare and bench/scale (sourced). Stand-alone: needs bash, python3,
# util-linux (taskset, unshare), iproute2 (ip, ss), procps and the release binaries.
#
# Safety: the caller re-executes itself in a private network namespace (only `lo`), every
# process started is recorded by PID and stopped by PID on exit, every load is bounded in time.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
: "${EDGEPROXY:=$ROOT/target/release/edgeproxy}"
: "${EDGEBENCH:=$ROOT/target/release/edgebench}"
: "${TARGET_CPU:=0}"   # the measured server (hub or peer)
: "${LOAD_CPU:=1}"     # load generator and backends
HOST=127.0.0.1
CLK_TCK="$(getconf CLK_TCK)"

log()  { echo "[$(date +%H:%M:%S)] $*" >&2; }
warn() { echo "[$(date +%H:%M:%S)] WARN: $*" >&2; }
die()  { echo "ERROR: $*" >&2; exit 1; }

# in_netns "$@": re-exec the calling script inside a fresh network namespace with only `lo`.
in_netns() {
  if [ -z "${EDGE_BENCH_NETNS:-}" ]; then
    export EDGE_BENCH_NETNS=1
    # In the new namespace (these sysctls are per namespace): connection-rate runs open
    # ~10,000 connections a second, more than the default ephemeral range holds in TIME_WAIT.
    # (Every port the benchmarks listen on is below 20000.)
    # Congestion control: Linux's own default, cubic, unless CONGESTION names another
    # (CONGESTION=system keeps the host's). A namespace inherits the host's choice, and this
    # machine's is bbr, which without the fq qdisc paces every socket with timers: over
    # loopback that idles the forwarding pipeline (TCP bulk through the hub 19 against 29-33
    # Gbit/s with cubic, HAProxy alike; direct unchanged). See bench/README.md.
    local cc="${CONGESTION:-cubic}"
    [ "$cc" = system ] && cc=""
    export CONGESTION_SET="$cc"
    exec unshare --net -- bash -c 'ip link set lo up &&
      sysctl -qw net.ipv4.ip_local_port_range="20000 65535" net.ipv4.tcp_tw_reuse=1 &&
      { [ -z "$CONGESTION_SET" ] || sysctl -qw net.ipv4.tcp_congestion_control="$CONGESTION_SET"; } &&
      exec bash "$0" "$@"' "$BENCH_SCRIPT" "$@"
  fi
}

PIDS=()
# spawn CPU LOG CMD...: start CMD pinned to CPU in the background; sets PID.
spawn() {
  local cpu="$1" logf="$2"; shift 2
  taskset -c "$cpu" "$@" >"$logf" 2>&1 &
  PID=$!
  PIDS+=("$PID")
}
tree() {  # PID and all its descendants
  local p="$1" c
  echo "$p"
  for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do tree "$c"; done
}
stop() {  # stop PID: TERM, then KILL after 5 s; its descendants too. Never by name.
  local pid="$1" kids i c
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kids="$(tree "$pid" | tail -n +2)"
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  for c in $kids; do kill -KILL "$c" 2>/dev/null; done
  wait "$pid" 2>/dev/null
  return 0
}
stop_all() {
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop "${PIDS[$i]}"; done
  PIDS=()
}
trap 'stop_all' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_listen() {  # wait_listen tcp|udp PORT: up to 15 s, without connecting
  local flag=-Hltn i
  [ "$1" = udp ] && flag=-Hlun
  for ((i = 0; i < 150; i++)); do
    ss $flag "sport = :$2" 2>/dev/null | grep -q . && return 0
    sleep 0.1
  done
  return 1
}

# proc_sample PID: "cpu_ticks runq_wait_ns" summed over PID, its descendants and all threads.
proc_sample() {
  local p t ticks=0 wait=0 s rest a b c
  for p in $(tree "$1"); do
    s="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
    rest="${s##*) }"
    # shellcheck disable=SC2086
    set -- $rest
    ticks=$((ticks + ${12} + ${13}))
    for t in /proc/"$p"/task/*/schedstat; do
      read -r a b c < "$t" 2>/dev/null || continue
      wait=$((wait + b))
    done
  done
  echo "$ticks $wait"
}
rss_kb() { local p kb=0 v; for p in $(tree "$1"); do v=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null); kb=$((kb + ${v:-0})); done; echo "$kb"; }
now() { date +%s.%N; }

# hub_start LOGDIR [extra args...]: our hub, one shard on TARGET_CPU; sets HUB_PID.
# Ports: TCP 18080, API 18081, DNS 15353 (UDP+TCP). Active health checks are off
# (HUB_HEALTH_CHECK=tcp to turn them on): the DNS runs register addresses nothing listens on,
# which checks would take down mid-run.
hub_start() {
  local dir="$1"; shift
  mkdir -p "$dir/state"
  spawn "$TARGET_CPU" "$dir/hub.log" env EDGEPROXY_LISTEN_ADDR=$HOST:18080 \
    EDGEPROXY_API_LISTEN_ADDR=$HOST:18081 EDGEPROXY_DNS_LISTEN_ADDR=$HOST:15353 \
    EDGEPROXY_STATE_DIR="$dir/state" EDGEPROXY_REGION=sa \
    EDGEPROXY_HEALTH_CHECK="${HUB_HEALTH_CHECK:-none}" \
    "$EDGEPROXY" --shards 1 --cpu-offset "$TARGET_CPU" "$@"
  HUB_PID=$PID
  wait_listen tcp 18081 || die "hub did not listen (see $dir/hub.log)"
}
# register ID APP IP PORT: one backend through the hub's API (no heartbeat needed: ttl 0).
register() {
  curl -fsS --max-time 5 -X POST "http://$HOST:18081/api/v1/register" \
    -H 'Content-Type: application/json' \
    -d "{\"id\":\"$1\",\"app\":\"$2\",\"region\":\"sa\",\"ip\":\"$3\",\"port\":$4,\"ttl_secs\":0}" \
    >/dev/null
}

# The ten DNS names every DNS server answers: <pop>.pop.internal -> 127.50.0.N
POPS="gru iad ord lax lhr fra cdg nrt sin syd"
