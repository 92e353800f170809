#!/usr/bin/env python3
"""Renders bench/RESULTS.md from the stored results of the three benchmark kinds.

  report.py --compare RUN_DIR   store RUN_DIR/results.jsonl + machine.json as results/compare.json
  report.py --scale RUN_DIR     store RUN_DIR/scale.jsonl + machine.json as results/scale.json
  report.py --micro CRIT_DIR    store criterion's estimates (target/criterion) as results/micro.json
  report.py                     just re-render

Each run replaces only its own part; RESULTS.md is always rendered from all three, so the
latest output of each is what it shows.
"""
import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STORE = os.path.join(HERE, "results")


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def store(kind, data):
    os.makedirs(STORE, exist_ok=True)
    with open(os.path.join(STORE, kind + ".json"), "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")


def stored(kind):
    p = os.path.join(STORE, kind + ".json")
    return json.load(open(p)) if os.path.exists(p) else None


def med(rows, key):
    # a negative wait means the process had already exited at the second sample: unknown
    vals = [r[key] for r in rows if r.get(key) is not None and not (key.endswith("runq_pct") and r[key] < 0)]
    return statistics.median(vals) if vals else None


def fmt(v, digits=None):
    if v is None:
        return "–"
    if digits is None:
        digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2
    return f"{v:,.{digits}f}"


def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "–"


# per scenario: (unit of rate, how to show rate, CPU unit label, CPU per unit function)
def per_unit(scen, r):
    """The target's CPU per unit of work for one aggregated row."""
    if r.get("cpu_pct") is None or not r.get("rate"):
        return None
    busy = r["cpu_pct"] / 100.0
    if scen in BULK:
        return busy / (r["bytes_per_s"] / 1e9) if r.get("bytes_per_s") else None
    return busy / r["rate"] * 1e6


SCEN = {
    "tcp-bulk": ("TCP bulk", "Gbit/s", "CPU s/GB"),
    "tcp-rr": ("TCP request/response (kept-alive)", "req/s", "CPU µs/req"),
    "tcp-connect": ("TCP connection rate", "conn/s", "CPU µs/conn"),
    "dns": ("DNS over UDP", "answers/s", "CPU µs/query"),
    "tls": ("TLS full handshakes (terminating)", "handshakes/s", "CPU µs/handshake"),
    "tls-bulk": ("TLS bulk (terminating)", "Gbit/s", "CPU s/GB"),
    "api-register": ("API: durable registrations", "registrations/s", "CPU µs/registration"),
    "publish-latency": ("API: registration → answered by DNS", "publishes/s", "CPU µs/publish"),
}
BASE = {"tcp-bulk": "direct", "tcp-rr": "direct", "tcp-connect": "direct", "dns": "nsd", "tls": "haproxy",
        "tls-bulk": "haproxy"}
# Scenarios whose rate is bytes: Gbit/s and CPU seconds per GB.
BULK = ("tcp-bulk", "tls-bulk")


def aggregate(results):
    """{scenario: {(target, params): aggregated row}} with medians over runs."""
    out = {}
    groups = {}
    for r in results:
        groups.setdefault((r["scenario"], r["target"], r["params"]), []).append(r)
    for (scen, target, params), rows in groups.items():
        agg = {k: med(rows, k) for k in
               ("rate", "bytes_per_s", "p50_us", "p99_us", "p999_us", "cpu_pct", "runq_pct", "gen_runq_pct", "rss_kb")}
        agg["runs"] = len(rows)
        agg["errors"] = sum(r.get("errors", 0) for r in rows)
        agg["runq_max"] = max((r.get("runq_pct") or 0) for r in rows) if rows[0].get("runq_pct") is not None else None
        agg["per_unit"] = per_unit(scen, agg)
        out.setdefault(scen, {})[(target, params)] = agg
    return out


def show_rate(scen, a):
    if scen in BULK:
        return fmt(a["bytes_per_s"] * 8 / 1e9 if a.get("bytes_per_s") else None)
    return fmt(a["rate"])


def machine_line(m):
    return (f"{m.get('cpu', '?')}, {m.get('nproc', '?')} CPUs, kernel {m.get('kernel', '?')}; "
            f"{m.get('date', '?')}, commit `{m.get('commit', '?')}`; load average before: {m.get('loadavg', '?')}")


def render_compare(c):
    m = c["machine"]
    agg = aggregate(c["results"])
    L = ["## Side by side (`bench/compare`)", "",
         f"Machine: {machine_line(m)}. Peers: HAProxy {m.get('haproxy')}, nginx {m.get('nginx')}, "
         f"Knot {m.get('knot')}, NSD {m.get('nsd')}. TCP congestion control in the benchmark's "
         f"namespace: {m.get('congestion') or 'not recorded (the host default)'}. "
         f"{m.get('repeat')} run(s) of {m.get('dur')} s "
         f"(+{m.get('warm')} s warm-up) per target, interleaved; cells are medians over runs.", "",
         "Every target has core 0 to itself; edgebench and the backends share core 1. *CPU* is the "
         "target's utime+stime (process tree, all threads) over the measured window; *run-queue "
         "wait* is the share of that window the target was runnable while something else held its "
         "core (other builds on this machine): above ~5 % the figures of that row are disturbed "
         "(such runs were run again once and the quieter attempt kept; ⚠ marks rows still above 5 %); *edgebench wait* is the same for the generator on core 1. Note that `direct` puts the client and the backend on the same core (1), so for request/response and connection scenarios it is not an upper bound: there a proxy adds a core. `direct` is the "
         "client talking to the backend with no proxy: the physical limit. Ratios compare medians.", ""]
    if m.get("note"):
        L += [f"Note: {m['note']}", ""]
    for scen, (title, unit, cpu_unit) in SCEN.items():
        rows = agg.get(scen)
        if not rows:
            continue
        L += [f"### {title}", ""]
        params = sorted({p for (_, p) in rows})
        ours = {p: rows.get(("ours", p)) for p in params}
        base = BASE.get(scen)
        head = f"| target | load | {unit} | p50 µs | p99 µs | {cpu_unit} | target CPU % | run-queue wait % | edgebench wait % |"
        sep = "|---|---|---|---|---|---|---|---|---|"
        if base:
            head += f" × {base} |"
            sep += "---|"
        head += " ours ÷ this: rate | ours ÷ this: CPU/unit |"
        sep += "---|---|"
        L += [head, sep]
        order = ["direct", "haproxy", "nginx", "knot", "nsd", "ours"]
        for (t, p), a in sorted(rows.items(), key=lambda kv: (kv[0][1], order.index(kv[0][0]) if kv[0][0] in order else 99)):
            b = rows.get((base, p)) if base else None
            o = ours.get(p)
            rate_of = (lambda x: x.get("bytes_per_s")) if scen in BULK else (lambda x: x.get("rate"))
            errs = f" ({a['errors']:,} errors)" if a["errors"] else ""
            line = (f"| {t} | {p}{errs} | {show_rate(scen, a)} | {fmt(a['p50_us'])} | {fmt(a['p99_us'])} | "
                    f"{fmt(a['per_unit'], 2 if scen in BULK else None)} | {fmt(a['cpu_pct'])} | "
                    f"{fmt(a['runq_pct'])}{' (max ' + fmt(a['runq_max']) + ')' if a['runs'] > 1 and a.get('runq_max') is not None else ''}"
                    f"{' ⚠' if (a.get('runq_pct') or 0) > 5 else ''} | {fmt(a.get('gen_runq_pct'))}"
                    f"{' ⚠' if (a.get('gen_runq_pct') or 0) > 5 else ''} |")
            if base:
                line += f" {ratio(rate_of(a), rate_of(b)) if b else '–'} |"
            if o and t != "ours":
                line += f" {ratio(rate_of(o), rate_of(a))} | {ratio(o['per_unit'], a['per_unit'])} |"
            else:
                line += " | |"
            L.append(line)
        if scen == "tls" and m.get("tls_ours"):
            L += ["", f"**{m['tls_ours']}**: only the HAProxy baseline was measured."]
        L.append("")
    L += render_targets(agg, m)
    # Why a target is missed (profiles, experiments): kept by hand beside the figures, since a
    # profile is not something a benchmark run can write.
    why = os.path.join(HERE, "results", "compare-why.md")
    if os.path.exists(why):
        L += [open(why).read().rstrip(), ""]
    return L


def find(agg, scen, target, params_prefix=""):
    for (t, p), a in agg.get(scen, {}).items():
        if t == target and p.startswith(params_prefix):
            return a
    return None


def verdict(value, target, le):
    if value is None:
        return "not measured"
    ok = value <= target if le else value >= target
    if ok:
        return "**met**"
    off = (value / target - 1) * 100 if le else (1 - value / target) * 100
    return f"missed by {off:.0f} %"


def render_targets(agg, m):
    L = ["### Targets (one shard vs one-thread peers)", "",
         "| target | measured | verdict |", "|---|---|---|"]
    o = find(agg, "tcp-bulk", "ours"); d = find(agg, "tcp-bulk", "direct")
    if o:
        L.append(f"| TCP bulk ≤ 0.40 CPU s/GB | {fmt(o['per_unit'], 2)} | {verdict(o['per_unit'], 0.40, True)} |")
        if d and d.get("bytes_per_s"):
            x = o["bytes_per_s"] / d["bytes_per_s"]
            L.append(f"| TCP bulk ≥ 0.6× direct | {x:.2f}× | {verdict(x, 0.6, False)} |")
    o = find(agg, "tcp-rr", "ours"); h = find(agg, "tcp-rr", "haproxy")
    if o:
        L.append(f"| tcp_rr ≤ 14 µs CPU/req | {fmt(o['per_unit'])} | {verdict(o['per_unit'], 14, True)} |")
        if h:
            L.append(f"| tcp_rr p99 ≤ HAProxy's ({fmt(h['p99_us'])} µs) | {fmt(o['p99_us'])} µs | {verdict(o['p99_us'], h['p99_us'], True)} |")
    o = find(agg, "tcp-connect", "ours")
    if o:
        L.append(f"| connect ≤ 48 µs CPU/conn | {fmt(o['per_unit'])} | {verdict(o['per_unit'], 48, True)} |")
    o = find(agg, "dns", "ours"); n = find(agg, "dns", "nsd")
    if o:
        if n:
            L.append(f"| DNS ≥ NSD's rate ({fmt(n['rate'])}/s) | {fmt(o['rate'])}/s | {verdict(o['rate'], n['rate'], False)} |")
        L.append(f"| DNS ≤ 4.0 µs CPU/query | {fmt(o['per_unit'])} | {verdict(o['per_unit'], 4.0, True)} |")
    o = find(agg, "tls", "ours"); h = find(agg, "tls", "haproxy")
    if o and h:
        # Judged by CPU per handshake, as the issue asks on this 2-core machine: the generator
        # (whose client side of a handshake costs more than the server's) saturates first.
        x = h["per_unit"] / o["per_unit"] if o.get("per_unit") and h.get("per_unit") else None
        r = o["rate"] / h["rate"]
        shown = f"{x:.2f}× per CPU second (rate {r:.2f}×; target CPU {fmt(o['cpu_pct'])} %)" if x else "–"
        L.append(f"| TLS ≥ 1.5× HAProxy handshakes | {shown} | {verdict(x, 1.5, False)} |")
    elif h:
        L.append(f"| TLS ≥ 1.5× HAProxy handshakes | HAProxy {fmt(h['rate'])}/s, {fmt(h['per_unit'])} µs CPU each | {m.get('tls_ours') or 'ours not measured'} |")
    o = find(agg, "tls-bulk", "ours"); h = find(agg, "tls-bulk", "haproxy")
    if o and h and o.get("bytes_per_s") and h.get("bytes_per_s"):
        r = o["bytes_per_s"] / h["bytes_per_s"]
        L.append(f"| TLS bulk ≥ HAProxy's | {r:.2f}× the rate, {fmt(o['per_unit'], 2)} vs {fmt(h['per_unit'], 2)} CPU s/GB | {verdict(r, 1.0, False)} |")
    o = find(agg, "api-register", "ours")
    if o:
        L.append(f"| API ≥ 20,000 durable registrations/s | {fmt(o['rate'])}/s | {verdict(o['rate'], 20000, False)} |")
    big = [(p, a) for (t, p), a in agg.get("publish-latency", {}).items() if not p.startswith("10 backends")]
    if big:
        p, a = big[0]
        L.append(f"| publish latency p99 < 1 ms at 10,000 backends | {fmt(a['p99_us'])} µs ({p}) | {verdict(a['p99_us'], 1000, True)} |")
    s = stored("scale")
    if s:
        mem = [r for r in s["results"] if r.get("kind") == "idle-connections"]
        if mem:
            kib = mem[-1]["rss_per_conn_kib"]
            L.append(f"| memory per idle proxied connection < 16 KiB | {kib:.1f} KiB (hub RSS, see Scale) | {verdict(kib, 16, True)} |")
    L.append("")
    return L


def render_micro(mi):
    L = ["## Micro-benchmarks (`cargo bench --bench hot`)", "",
         f"criterion, release profile; {machine_line(mi['machine'])}. Mean time per call "
         "(95 % interval); the machine is shared, so treat differences under ~10 % as noise.", "",
         "| group | case | mean | interval |", "|---|---|---|---|"]
    for b in sorted(mi["benches"], key=lambda b: (b["group"], b["order"])):
        L.append(f"| {b['group']} | {b['case']} | {ns(b['mean_ns'])} | {ns(b['lo_ns'])} – {ns(b['hi_ns'])} |")
    L += ["", "Reading: `registry_publish/one_change/*` is one re-registration plus the publish "
          "it triggers. Only the changed app's group is rebuilt, so the cost grows with the size "
          "of that app, but the new snapshot's app table is rebuilt too, so it also grows with the "
          "number of apps (compare `one_change/N_apps_x1` across N). `full_build` is every app "
          "dirty at once (a restore). `select_pick/app_of_N` is the two-level rendezvous (256 "
          "groups, then one group's members): it grows with N only through the group size, "
          "while `flat_reference/app_of_N` (every backend scored, the selector before) grows "
          "linearly; `loaded/*` has every backend carrying connections (the bounded-load cap "
          "at work). `dns_respond/1_app_x1000` lists every address of a large app.", ""]
    return L


def ns(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f} ms"
    if v >= 1e3:
        return f"{v / 1e3:.2f} µs"
    return f"{v:.0f} ns"


def render_scale(s):
    L = ["## Scale (`bench/scale`)", "", f"Machine: {machine_line(s['machine'])}.", ""]
    dns = [r for r in s["results"] if r.get("kind") == "dns"]
    pub = [r for r in s["results"] if r.get("kind") == "publish"]
    if dns or pub:
        L += ["| backends registered | DNS answers/s | DNS CPU µs/query | DNS p99 µs | run-queue wait % | publish p50 µs | publish p99 µs | hub RSS MiB |",
              "|---|---|---|---|---|---|---|---|"]
        for n in sorted({r["backends"] for r in dns + pub}):
            d = next((r for r in dns if r["backends"] == n), {})
            p = next((r for r in pub if r["backends"] == n), {})
            L.append(f"| {n:,} | {fmt(d.get('rate'))} | {fmt(d.get('cpu_us'))} | {fmt(d.get('p99_us'))} | "
                     f"{fmt(d.get('runq_pct'))} | {fmt(p.get('p50_us'))} | {fmt(p.get('p99_us'))} | {fmt(d.get('rss_mib'))} |")
        L.append("")
    for r in s["results"]:
        if r.get("kind") == "idle-connections":
            if r["held"] < r["wanted"]:
                L += [f"**Not {r['wanted']:,} connections**: the open-files hard limit here is "
                      f"{s['machine'].get('nofile', '?')} and cannot be raised in this container (no "
                      "CAP_SYS_RESOURCE); the hub needs two descriptors per connection, so the run "
                      "holds what fits. Memory per connection is the slope, so it carries over.", ""]
            L += [f"Idle proxied connections held open: **{r['held']:,}** of {r['wanted']:,} wanted "
                  f"(client sockets bound to {r['sources']} source addresses 127.0.0.2–…, a backend "
                  f"that accepts and holds). Hub RSS {r['rss0_mib']:.1f} → {r['rss1_mib']:.1f} MiB: "
                  f"**{r['rss_per_conn_kib']:.1f} KiB per connection** (target < 16 KiB; HAProxy ~50 KiB). "
                  f"Kernel slab {r['slab0_mib']:.0f} → {r['slab1_mib']:.0f} MiB: {r['slab_per_conn_kib']:.1f} KiB "
                  f"per proxied connection (both of its sockets and the client's and backend's: four "
                  f"sockets in this one kernel).", ""]
    return L


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compare")
    ap.add_argument("--scale")
    ap.add_argument("--micro")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    a = ap.parse_args()
    if a.compare:
        store("compare", {"machine": json.load(open(os.path.join(a.compare, "machine.json"))),
                          "results": load_jsonl(os.path.join(a.compare, "results.jsonl"))})
    if a.scale:
        store("scale", {"machine": json.load(open(os.path.join(a.scale, "machine.json"))),
                        "results": load_jsonl(os.path.join(a.scale, "scale.jsonl"))})
    if a.micro:
        benches = []
        for root, _, files in os.walk(a.micro):
            if os.path.basename(root) == "new" and "estimates.json" in files and "benchmark.json" in files:
                b = json.load(open(os.path.join(root, "benchmark.json")))
                e = json.load(open(os.path.join(root, "estimates.json")))["mean"]
                benches.append({"group": b["group_id"], "case": b.get("function_id") or b.get("value_str") or "",
                                "mean_ns": e["point_estimate"], "lo_ns": e["confidence_interval"]["lower_bound"],
                                "hi_ns": e["confidence_interval"]["upper_bound"],
                                "order": b.get("function_id") or ""})
        m = {"date": os.popen("date -Is").read().strip(), "nproc": os.cpu_count(),
             "kernel": os.uname().release,
             "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
             "commit": os.popen(f"git -C {HERE} rev-parse --short HEAD").read().strip(),
             "loadavg": open("/proc/loadavg").read().split()[:3]}
        m["loadavg"] = " ".join(m["loadavg"])
        store("micro", {"machine": m, "benches": benches})
    L = ["# Benchmark results", "",
         "Generated by `bench/report.py` from `bench/results/*.json` (and `*.md`): the latest output of "
         "`bench/compare`, `bench/scale`, `cargo bench --bench hot` and `bench/cluster.py` (see `bench/README.md`). "
         "Do not edit by hand.", ""]
    c, s, mi = stored("compare"), stored("scale"), stored("micro")
    if c:
        L += render_compare(c)
    if s:
        L += render_scale(s)
    if mi:
        L += render_micro(mi)
    # Sections measured by other scripts (e.g. bench/cluster.py), kept as Markdown.
    results = os.path.join(HERE, "results")
    for name in sorted(os.listdir(results)):
        if name.endswith(".md") and not name.startswith("compare"):
            L += [open(os.path.join(results, name)).read().rstrip(), ""]
    with open(a.out, "w") as f:
        f.write("\n".join(L).rstrip() + "\n")


if __name__ == "__main__":
    sys.exit(main())
