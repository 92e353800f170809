#!/usr/bin/env python3
"""Small request/response traffic through the hub: CPU per round trip, copy vs splice vs auto.

Starts a 64-byte echo backend (a thread per connection), then for each mode starts the release
hub with one shard pinned to CPU 0, registers the backend, and runs CONNS connections doing
ROUNDS round trips of SIZE bytes each (client and backend on CPU 1). The hub's CPU is the
on-CPU time of its threads from /proc/PID/task/*/schedstat.

usage: bench/pingpong.py [REPEAT] [MODES...]   e.g. bench/pingpong.py 3 never always auto
"""
import glob, json, os, socket, statistics, subprocess, sys, threading, time, urllib.request

SIZE, ROUNDS, CONNS = 64, 5000, 4
BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "edgeproxy")


def echo_server():
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)

    def serve(c):
        with c:
            while True:
                d = c.recv(65536)
                if not d:
                    return
                c.sendall(d)

    def accept():
        while True:
            c, _ = ls.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return ls.getsockname()[1]


def cpu_ns(pid):
    return sum(int(open(f).read().split()[0]) for f in glob.glob(f"/proc/{pid}/task/*/schedstat"))


def run_mode(mode, backend_port):
    # Ports from the OS: other hubs may run on this machine.
    hub = subprocess.Popen(
        ["taskset", "-c", "0", BIN, "--shards", "1", "--listen-addr=127.0.0.1:0",
         "--api-listen-addr=127.0.0.1:0", "--dns-enabled=false", "--persist=false", f"--splice={mode}"],
        stderr=subprocess.PIPE, text=True)
    try:
        for line in hub.stderr:
            if " ready: " in line:
                fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
                proxy, api = fields["proxy"], fields["api"]
                break
        PROXY = int(proxy.rsplit(":", 1)[1])
        API = api
        body = json.dumps({"id": "pp", "app": "pp", "region": "sa", "ip": "127.0.0.1",
                           "port": backend_port}).encode()
        req = urllib.request.Request(f"http://{API}/api/v1/register", data=body,
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()
        msg = b"x" * SIZE
        t0, w0 = cpu_ns(hub.pid), time.monotonic()
        for _ in range(CONNS):
            with socket.create_connection(("127.0.0.1", PROXY)) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for _ in range(ROUNDS):
                    s.sendall(msg)
                    got = 0
                    while got < SIZE:
                        got += len(s.recv(SIZE - got))
        t1, w1 = cpu_ns(hub.pid), time.monotonic()
        n = ROUNDS * CONNS
        return (t1 - t0) / n / 1000, n / (w1 - w0)
    finally:
        hub.terminate()
        hub.wait()


def main():
    os.sched_setaffinity(0, {1})
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    modes = sys.argv[2:] or ["never", "always", "auto"]
    port = echo_server()
    res = {m: [] for m in modes}
    for _ in range(repeat):
        for m in modes:
            us, rps = run_mode(m, port)
            res[m].append((us, rps))
            print(f"{m:8} {us:6.2f} hub CPU-us/round trip  {rps:8.0f} round trips/s", flush=True)
    print("\nmode     median hub CPU-us per round trip (min-max)   median round trips/s")
    for m, r in res.items():
        us = [x[0] for x in r]
        print(f"{m:8} {statistics.median(us):6.2f} ({min(us):.2f}-{max(us):.2f})"
              f"          {statistics.median(x[1] for x in r):8.0f}")


if __name__ == "__main__":
    main()
