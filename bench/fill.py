#!/usr/bin/env python3
"""Registers N backends through the hub's API, PER_APP backends per app (apps fill-<k>),
over 8 kept-alive connections, each pipelining 32 requests at a time.

usage: fill.py HOST:PORT N PER_APP
"""
import json
import socket
import sys
import threading

host, port = sys.argv[1].rsplit(":", 1)
N, PER_APP = int(sys.argv[2]), int(sys.argv[3])
CONNS, DEPTH = 8, 32
errors = []


def request(i):
    body = json.dumps({"id": f"fill-{i}", "app": f"fill-{i // PER_APP}", "region": "sa",
                       "ip": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                       "port": 8080, "ttl_secs": 0}).encode()
    return (f"POST /api/v1/register HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def read_responses(f, n):
    for _ in range(n):
        status = f.readline().split()
        length = 0
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        f.read(length)
        if len(status) < 2 or status[1] not in (b"200", b"201"):
            errors.append(status)


def worker(ids):
    s = socket.create_connection((host, int(port)), timeout=30)
    f = s.makefile("rb")
    for k in range(0, len(ids), DEPTH):
        batch = ids[k:k + DEPTH]
        s.sendall(b"".join(request(i) for i in batch))
        read_responses(f, len(batch))
    s.close()


threads = [threading.Thread(target=worker, args=(list(range(c, N, CONNS)),)) for c in range(CONNS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    print(f"fill: {len(errors)} refused, first: {errors[0]}", file=sys.stderr)
    sys.exit(1)
print(f"fill: registered {N}")
