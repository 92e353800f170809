#!/usr/bin/env bash
# CPU per request / per connection of one proxy, with an optional profiler attached: the
# set-up of the peers harness's tcp_rr and tcp_connrate, by hand, in a private network
# namespace (nothing leaves the box). Used for docs/perf-proxy.md.
#
#   bench/proxy_cpu.sh BIN|haproxy [rr|conn] [SECONDS] [none|perf|strace|stat]
#
# nginx serves a 100-byte file on 127.0.0.1:19080 (CPU 1); the proxy listens on
# 127.0.0.1:18080 (CPU 0; ours with one shard, the backend registered through its API);
# wrk -t1 -c64 on CPU 1 (`conn`: a new connection per request). Prints requests, the proxy's
# on-CPU µs per request (/proc/PID/task/*/schedstat) and nstat segment counts per request.
# perf: perf.data in $OUT; strace: strace.out (-c -f); stat: syscall and io_uring counts.
set -euo pipefail
if [ "${IN_NETNS:-0}" != 1 ]; then
  IN_NETNS=1 exec unshare -n "$0" "$@"
fi
BIN=${1:?usage: proxy_cpu.sh BIN|haproxy [rr|conn] [SECONDS] [none|perf|strace|stat]}
MODE=${2:-rr}
SECS=${3:-6}
TOOL=${4:-none}
OUT=${OUT:-/tmp/proxy_cpu}
mkdir -p "$OUT/www" "$OUT/tmp" && rm -rf "$OUT/state"
head -c 100 /dev/zero | tr '\0' x >"$OUT/www/r100"
ip link set lo up

cat >"$OUT/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $OUT/nginx.pid;
error_log $OUT/nginx.err warn;
events { worker_connections 16384; multi_accept on; }
http {
  access_log off; sendfile on; tcp_nodelay on;
  keepalive_timeout 120s; keepalive_requests 100000000;
  client_body_temp_path $OUT/tmp; proxy_temp_path $OUT/tmp; fastcgi_temp_path $OUT/tmp;
  uwsgi_temp_path $OUT/tmp; scgi_temp_path $OUT/tmp;
  server { listen 127.0.0.1:19080 backlog=4096; root $OUT/www; location / { } }
}
EOF
cat >"$OUT/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4000
    tune.maxaccept 64
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    option splice-auto
frontend fe
    bind 127.0.0.1:18080
    default_backend be
backend be
    server s1 127.0.0.1:19080
EOF

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
taskset -c 1 nginx -p "$OUT" -c "$OUT/nginx.conf" &
PIDS+=($!)
if [ "$BIN" = haproxy ]; then
  taskset -c 0 haproxy -db -f "$OUT/haproxy.cfg" >"$OUT/proxy.log" 2>&1 &
  HUB=$!
else
  EDGEPROXY_LISTEN_ADDR=127.0.0.1:18080 EDGEPROXY_API_LISTEN_ADDR=127.0.0.1:18081 \
    EDGEPROXY_STATE_DIR="$OUT/state" EDGEPROXY_REGION=sa \
    taskset -c 0 "$BIN" --shards 1 --persist=false >"$OUT/proxy.log" 2>&1 &
  HUB=$!
fi
PIDS+=("$HUB")
sleep 1
if [ "$BIN" != haproxy ]; then
  curl -fsS -X POST http://127.0.0.1:18081/api/v1/register -H 'Content-Type: application/json' \
    -d '{"id":"b","app":"bench","region":"sa","ip":"127.0.0.1","port":19080,"ttl_secs":0}' >/dev/null
fi
[ "$(curl -sS -o /dev/null -w '%{http_code} %{size_download}' http://127.0.0.1:18080/r100)" = "200 100" ] ||
  { echo "smoke GET through the proxy failed" >&2; exit 1; }

H=()
[ "$MODE" = conn ] && H=(-H "Connection: close")
oncpu() { awk '{s += $1} END {print s}' /proc/"$HUB"/task/*/schedstat; }
nstat -n
c0=$(oncpu)
taskset -c 1 wrk -t1 -c64 -d"${SECS}s" "${H[@]}" http://127.0.0.1:18080/r100 >"$OUT/wrk.out" &
W=$!
sleep 1
win=$((SECS > 3 ? SECS - 2 : 1))
case "$TOOL" in
  perf) perf record -F 4999 -g -p "$HUB" -o "$OUT/perf.data" -- sleep "$win" >/dev/null 2>&1 ;;
  strace) timeout "$win" strace -c -f -p "$HUB" -o "$OUT/strace.out" || true ;;
  stat) perf stat -e 'syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,io_uring:io_uring_submit_req' \
          -p "$HUB" -o "$OUT/stat.out" -- sleep "$win" >/dev/null 2>&1 ;;
  none) ;;
esac
wait "$W"
c1=$(oncpu)
req=$(grep -o '[0-9]* requests' "$OUT/wrk.out" | cut -d' ' -f1)
nstat | awk -v r="$req" '/TcpInSegs|TcpOutSegs|TcpExtTCPOrigDataSent|TcpExtTCPPureAcks/ {printf "%s %.2f/req  ", $1, $2 / r} END {print ""}'
echo "$BIN $MODE tool=$TOOL requests=$req rps=$((req / SECS)) cpu_us_per_req=$(python3 -c "print(round(($c1 - $c0) / 1e3 / $req, 2))")"
grep -i "errors" "$OUT/wrk.out" || true
