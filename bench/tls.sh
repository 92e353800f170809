#!/usr/bin/env bash
# TLS termination: full handshakes per second and CPU per handshake (openssl s_time -new), and
# bulk throughput (curl downloading 1 GiB), edgeproxy --shards 1 beside HAProxy nbthread 1, both
# pinned to core 0 with the same ECDSA P-256 certificate; the load runs on core 1.
#
# usage: bench/tls.sh [SECONDS=10]   (needs target/release/edgeproxy, /usr/sbin/haproxy, openssl, curl)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
BIN=${EDGEPROXY_BIN:-target/release/edgeproxy}
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.pop.internal \
  -addext subjectAltName=DNS:bench.pop.internal -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
cat "$W/cert.pem" "$W/key.pem" > "$W/both.pem"
head -c $((1<<30)) /dev/zero > "$W/blob"
# Backend: HTTP/1.1, answers every request with the 1 GiB blob by sendfile (or closes at once).
cat > "$W/backend.py" <<'PY'
import os, socket, sys, threading
blob = sys.argv[2]; size = os.path.getsize(blob)
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen(4096)
def serve(c):
    try:
        if c.recv(4096).startswith(b"GET /blob"):
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
            with open(blob, "rb") as f: c.sendfile(f)
    except OSError: pass
    finally: c.close()
while True:
    c, _ = l.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
taskset -c 1 python3 "$W/backend.py" 18990 "$W/blob" & sleep 0.3
taskset -c 0 "$BIN" --shards=1 --listen-addr=127.0.0.1:18080 --api-listen-addr=127.0.0.1:18081 \
  --dns-enabled=false --persist=false --tls-listen-addr=127.0.0.1:18443 \
  --tls-cert="$W/cert.pem" --tls-key="$W/key.pem" --tls-default-app=bench.pop --log-level=warn &
HUB=$!
cat > "$W/haproxy.cfg" <<CFG
global
  nbthread 1
  tune.ssl.default-dh-param 2048
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend tls
  bind 127.0.0.1:18444 ssl crt $W/both.pem alpn h2,http/1.1
  default_backend b
backend b
  server s1 127.0.0.1:18990
CFG
taskset -c 0 /usr/sbin/haproxy -f "$W/haproxy.cfg" -db & HAP=$!
sleep 0.5
curl -sf -o /dev/null -X POST -H 'Content-Type: application/json' http://127.0.0.1:18081/api/v1/register \
  -d '{"id":"bench-1","app":"bench.pop","region":"sa","ip":"127.0.0.1","port":18990}'
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
HZ=$(getconf CLK_TCK)
for t in "edgeproxy $HUB 18443" "haproxy $HAP 18444"; do
  set -- $t
  for v in -tls1_3 -tls1_2; do
    before=$(ticks $2)
    out=$(taskset -c 1 openssl s_time -connect 127.0.0.1:$3 -new $v -time "$SECS" 2>/dev/null | grep "connections in" | head -1)
    after=$(ticks $2)
    n=$(echo "$out" | awk '{print $1}')
    echo "$1 $v: $out; CPU per handshake $(( (after-before) * 1000000 / HZ / (n>0?n:1) )) us"
  done
  before=$(ticks $2)
  speed=$(taskset -c 1 curl -sSk --http1.1 -o /dev/null -w '%{speed_download}' \
    --resolve bench.pop.internal:$3:127.0.0.1 https://bench.pop.internal:$3/blob || echo 0)
  after=$(ticks $2)
  echo "$1 bulk 1 GiB: $(awk -v s="$speed" 'BEGIN{printf "%.0f MB/s", s/1e6}'), CPU $(( (after-before) * 1000 / HZ )) ms"
done
