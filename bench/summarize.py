#!/usr/bin/env python3
"""Table of generators.sh RESULT lines: one row per (scenario, target, generator, run)."""
import re
import sys
from collections import OrderedDict

rows = OrderedDict()
for line in open(sys.argv[1]):
    if not line.startswith("RESULT"):
        continue
    kv = dict(re.findall(r"(\w+)=(\S+)", line))
    key = (kv["scenario"], kv["target"], kv.get("gen", "-"), kv["run"])
    rows.setdefault(key, {})[kv["metric"]] = kv["value"]

cols = ["rate", "avg_lat_us", "p99_us", "errors", "target_cpu_pct", "target_runq_wait_pct",
        "gen_cpu_pct", "gen_runq_wait_pct", "gen_cpu_us_per_op"]
print("| scenario | target | generator | run | " + " | ".join(cols) + " |")
print("|" + "---|" * (4 + len(cols)))
for (scen, target, gen, run), m in rows.items():
    try:
        m["gen_cpu_us_per_op"] = str(round(float(m["gen_cpu_pct"]) * 1e4 / float(m["rate"]), 2))
    except (KeyError, ValueError, ZeroDivisionError):
        m["gen_cpu_us_per_op"] = "-"
    print(f"| {scen} | {target} | {gen} | {run} | " + " | ".join(m.get(c, "-") for c in cols) + " |")
