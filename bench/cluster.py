#!/usr/bin/env python3
"""Cluster figures through the release binary, in a private network namespace (only `lo`).

1. Gossip bandwidth at rest: 3 hubs (LAN preset, a cluster key) on 127.0.0.1/.2/.3; bytes in
   and out of each hub's gossip port over REST seconds, from edgeproxy_cluster_bytes_total.
2. Detection time with the LAN preset: kill -9 one hub; time until both others show it down.
3. Registration latency (edgebench api-register, open loop, persistence off to isolate the
   cluster's effect) on one hub: replication off; in the 3-hub cluster at rest; and in the
   cluster while FLOOD authentic-looking datagrams a second hit its gossip port (sealed with
   the cluster key, so each is decrypted and handed to foca, which refuses the payload).

Usage: cargo build --release --workspace && python3 bench/cluster.py
Env: REST=30 (s), RATE=300 (registrations/s), DUR=10s, FLOOD=20000 (datagrams/s).
Every process started is stopped by its PID; nothing leaves the namespace.
"""
import hashlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EDGEPROXY = os.environ.get("EDGEPROXY", os.path.join(ROOT, "target/release/edgeproxy"))
EDGEBENCH = os.environ.get("EDGEBENCH", os.path.join(ROOT, "target/release/edgebench"))
REST = float(os.environ.get("REST", "30"))
RATE = os.environ.get("RATE", "300")
DUR = os.environ.get("DUR", "10s")
FLOOD = int(os.environ.get("FLOOD", "20000"))
KEY = bytes([7] * 32)
KEY_B64 = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="

if not os.environ.get("EDGE_CLUSTER_NETNS"):
    os.environ["EDGE_CLUSTER_NETNS"] = "1"
    os.execvp("unshare", ["unshare", "--net", "--", "sh", "-c",
                          'ip link set lo up && exec python3 "$0" "$@"', __file__] + sys.argv[1:])

PROCS = []


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def start(node, ip, peers=(), extra=(), gossip_port=0):
    args = [EDGEPROXY, "--shards=1", "--persist=false", f"--node-id={node}",
            f"--listen-addr={ip}:0", f"--api-listen-addr={ip}:0", f"--dns-listen-addr={ip}:0",
            f"--tls-listen-addr={ip}:0", f"--gossip-addr={ip}:{gossip_port}",
            f"--sync-addr={ip}:0", f"--cluster-key={KEY_B64}", "--log-level=warn"]
    if peers:
        args.append("--bootstrap-peers=" + ",".join(peers))
    args += list(extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    env["RUST_LOG"] = "info,edgeproxy::api::routes=warn"
    p = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    PROCS.append(p)
    deadline = time.time() + 10
    for line in p.stderr:
        if " ready: " in line:
            f = dict(re.findall(r"(\w+)=(\S+)", line))
            threading.Thread(target=lambda: [sys.stderr.write("HUB " + l) for l in p.stderr], daemon=True).start()
            return p, f
        if time.time() > deadline:
            break
    raise SystemExit(f"hub {node} did not start")


def get(api, path):
    with urllib.request.urlopen(f"http://{api}{path}", timeout=5) as r:
        return r.read().decode()


def states(api):
    return {m["id"]: m["state"] for m in json.loads(get(api, "/api/v1/cluster"))["members"]}


def gossip_bytes(api):
    """(bytes, datagrams) in+out of the gossip port so far."""
    total, count = 0.0, 0.0
    for line in get(api, "/metrics").splitlines():
        if 'port="gossip"' not in line:
            continue
        if line.startswith("edgeproxy_cluster_bytes_total"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("edgeproxy_cluster_datagrams_total"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def wait(what, cond, within=30.0):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > within:
            raise SystemExit(f"timeout: {what}")
        time.sleep(0.01)
    return time.time() - t0


def register_latency(api, label):
    out = f"/tmp/edgeproxy-cluster-bench-{label}.json"
    subprocess.run([EDGEBENCH, "api-register", "-t", api, "--rate", RATE, "-c", "16",
                    "-d", DUR, "-w", "2s", "-q", "--json", out], check=True,
                   stdout=subprocess.DEVNULL)
    r = json.load(open(out))
    lat = r["latency_us"]
    log(f"register latency [{label}]: ok={r['counts']['ok']} errors={r['counts']['errors']} "
        f"p50={lat['p50']}us p99={lat['p99']}us p99.9={lat['p99_9']}us max={lat['max']}us")
    return lat


def flood(target, rate, stop):
    """Envelopes sealed with KEY from 'flooder' (own sequence numbers, never replays)."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    aead = ChaCha20Poly1305(KEY)
    fp = hashlib.sha256(b"edgeproxy cluster key\0" + KEY).digest()[:4]
    cluster = hashlib.sha256(b"edgeproxy cluster name\0edgeproxy").digest()[:4]
    sender = b"flooder"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host, port = target.rsplit(":", 1)
    seq, sent, t0 = 0, 0, time.time()
    payload = b"\x00" * 200
    while not stop.is_set():
        seq += 1
        header = bytes([1, 1, 1, len(sender)]) + fp + cluster + struct.pack(">QQ", 1, seq) + sender
        nonce = hashlib.sha256(header).digest()[:12]
        s.sendto(header + aead.encrypt(nonce, payload, header), (host, int(port)))
        sent += 1
        ahead = sent / rate - (time.time() - t0)
        if ahead > 0:
            time.sleep(ahead)
    log(f"flood: {sent} datagrams in {time.time() - t0:.1f}s")


def main():
    try:
        a, fa = start("hub-a", "127.0.0.1")
        b, fb = start("hub-b", "127.0.0.2", [fa["gossip"]])
        c, fc = start("hub-c", "127.0.0.3", [fa["gossip"]])
        apis = [fa["api"], fb["api"], fc["api"]]
        t = wait("3 hubs alive", lambda: all(
            len(states(x)) == 2 and all(s == "alive" for s in states(x).values()) for x in apis))
        log(f"3 hubs joined in {t:.2f}s (LAN preset)")
        before = [gossip_bytes(x) for x in apis]
        t0 = time.time()
        time.sleep(REST)
        after = [gossip_bytes(x) for x in apis]
        el = time.time() - t0
        for name, (b0, n0), (b1, n1) in zip("abc", before, after):
            rate = (n1 - n0) / el
            log(f"gossip at rest, hub-{name}: {(b1 - b0) / el:.0f} B/s in+out of UDP payload, "
                f"{rate:.1f} datagrams/s, {(b1 - b0) / el + 28 * rate:.0f} B/s with IPv4+UDP headers")

        lat_rest = register_latency(fa["api"], "cluster-at-rest")
        stop = threading.Event()
        th = threading.Thread(target=flood, args=(fa["gossip"], FLOOD, stop))
        th.start()
        try:
            lat_flood = register_latency(fa["api"], f"cluster-flood-{FLOOD}")
        finally:
            stop.set()
            th.join()
        m = get(fa["api"], "/metrics")
        drops = [l for l in m.splitlines() if l.startswith("edgeproxy_cluster_dropped_total")
                 and 'port="gossip"' in l]
        log("hub-a gossip drops after the flood: " + "; ".join(drops))

        c.send_signal(signal.SIGKILL)
        c.wait()
        killed = time.time()
        wait("a and b mark hub-c down",
             lambda: states(fa["api"]).get("hub-c") == "down" and states(fb["api"]).get("hub-c") == "down",
             within=60)
        log(f"kill -9 detected (down on both others) in {time.time() - killed:.2f}s (LAN preset)")

        solo, fs = start("solo", "127.0.0.4", extra=["--replication-enabled=false"])
        lat_off = register_latency(fs["api"], "replication-off")
        print(json.dumps({"latency_us": {"replication_off": lat_off, "cluster_at_rest": lat_rest,
                                         f"cluster_flood_{FLOOD}": lat_flood}}, indent=1))
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
                p.wait()


main()
