#!/usr/bin/env python3
"""Idle connections for bench/scale: a backend that accepts and holds, and a client that opens
N connections (each sends 4 bytes, then stays idle) from several 127.0.0.x source addresses.

  hold.py backend HOST:PORT SECONDS          accept and hold until SECONDS pass; prints counts
  hold.py client HOST:PORT N SOURCES SECONDS connect N from 127.0.0.2.. (SOURCES addresses),
                                             print "held K" once done, hold until SECONDS pass
Both end by themselves after SECONDS.
"""
import os
import resource
import selectors
import socket
import sys
import time

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def addr(s):
    h, p = s.rsplit(":", 1)
    return h, int(p)


def backend(listen, seconds):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(addr(listen))
    ls.listen(65535)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ)
    held, end, last = [], time.monotonic() + seconds, 0
    print("ready", flush=True)
    while time.monotonic() < end:
        for _ in sel.select(timeout=0.5):
            while True:
                try:
                    c, _ = ls.accept()
                except BlockingIOError:
                    break
                held.append(c)
        if len(held) != last:
            last = len(held)
            print(f"accepted {last}", flush=True)


def client(target, n, sources, seconds):
    end = time.monotonic() + seconds
    dst = addr(target)
    held, failed, inflight = [], 0, 0
    sel = selectors.DefaultSelector()

    def reap():
        nonlocal failed, inflight
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            sel.unregister(s)
            inflight -= 1
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                try:
                    s.send(b"idle")
                    held.append(s)
                    continue
                except OSError:
                    pass
            failed += 1
            s.close()

    for i in range(n):
        if time.monotonic() > end:
            break
        s = socket.socket()
        try:
            s.bind((f"127.0.0.{2 + i % sources}", 0))
            s.setblocking(False)
            s.connect_ex(dst)
        except OSError:
            failed += 1
            s.close()
            continue
        sel.register(s, selectors.EVENT_WRITE)
        inflight += 1
        # at most 512 connects in flight: the hub's accept queue stays short
        while inflight > 512 and time.monotonic() < end:
            reap()
    while inflight > 0 and time.monotonic() < end:
        reap()
    print(f"held {len(held)} failed {failed}", flush=True)
    while time.monotonic() < end:
        time.sleep(0.5)


if __name__ == "__main__":
    if sys.argv[1] == "backend":
        backend(sys.argv[2], float(sys.argv[3]))
    else:
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
