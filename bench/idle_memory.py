#!/usr/bin/env python3
"""Memory per idle proxied connection: the hub's RSS before and after N connections that each
moved a few KiB both ways and then went idle.

usage: bench/idle_memory.py [N=2000] [--splice=MODE]
"""
import os, selectors, socket, subprocess, sys, urllib.request, json, resource

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
EXTRA = sys.argv[2:]
BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "edgeproxy")
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(4096)
ls.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(ls, selectors.EVENT_READ)
held = []

hub = subprocess.Popen([BIN, "--shards", "1", "--listen-addr=127.0.0.1:0",
                        "--api-listen-addr=127.0.0.1:0", "--dns-enabled=false", "--persist=false", *EXTRA],
                       stderr=subprocess.PIPE, text=True)
for line in hub.stderr:
    if " ready: " in line:
        f = dict(w.split("=", 1) for w in line.split() if "=" in w)
        break
proxy = f["proxy"].rsplit(":", 1)
body = json.dumps({"id": "m", "app": "m", "region": "sa", "ip": "127.0.0.1",
                   "port": ls.getsockname()[1]}).encode()
urllib.request.urlopen(urllib.request.Request(f"http://{f['api']}/api/v1/register", data=body,
                       headers={"Content-Type": "application/json"})).read()


def pump_backend(want):
    """Accepts, echoes what arrives, until `want` backend connections exist."""
    while True:
        for key, _ in sel.select(timeout=0.01):
            if key.fileobj is ls:
                try:
                    c, _ = ls.accept()
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ)
                    held.append(c)
                except BlockingIOError:
                    pass
            else:
                try:
                    d = key.fileobj.recv(65536)
                    if d:
                        key.fileobj.send(d)
                except BlockingIOError:
                    pass
        if len(held) >= want:
            return


before = rss_kib(hub.pid)
clients = []
payload = b"y" * 4096
for i in range(N):
    c = socket.create_connection((proxy[0], int(proxy[1])))
    c.sendall(payload)
    clients.append(c)
    if i % 100 == 99:
        pump_backend(i + 1)
pump_backend(N)
for c in clients:  # read the echoes: every connection moved 4 KiB each way, then idles
    got = 0
    while got < len(payload):
        try:
            c.settimeout(0.01)
            got += len(c.recv(65536))
        except socket.timeout:
            pump_backend(N)
after = rss_kib(hub.pid)
print(f"{' '.join(EXTRA) or 'default'}: {N} idle proxied connections: hub RSS {before} KiB -> {after} KiB, "
      f"{(after - before) * 1024 / N:.0f} bytes per connection")
hub.terminate()
