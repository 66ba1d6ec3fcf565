#!/usr/bin/env python3
"""Per-kernel time of the last forward step in an ncu CSV (`ncu --csv --section SpeedOfLight`).

A step begins at each `embed` launch; the last one is a decode step when ds4-bench ran with
-n ≥ 2. Prints each kernel's launches, total and mean duration (ncu's gpu__time_duration: the
kernel alone, without launch gaps), and the sum, which the caller compares with the replayed
step's wall time.
"""
import csv
import sys
from collections import OrderedDict

rows = list(csv.reader(open(sys.argv[1], errors="replace")))
head = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
cols = rows[head]
k_id, k_name = cols.index("ID"), cols.index("Kernel Name")
m_name, m_unit, m_val = cols.index("Metric Name"), cols.index("Metric Unit"), cols.index("Metric Value")
launches = OrderedDict()
for r in rows[head + 1:]:
    if len(r) <= m_val or r[m_name] != "Duration":
        continue
    v = float(r[m_val].replace(",", ""))
    v = {"ns": v / 1000.0, "nsecond": v / 1000.0, "us": v, "usecond": v, "ms": v * 1000.0, "msecond": v * 1000.0}.get(r[m_unit], v)
    launches[int(r[k_id])] = (r[k_name].split("(")[0].strip(), v)
seq = [launches[i] for i in sorted(launches)]
starts = [i for i, (n, _) in enumerate(seq) if n == "embed"]
if not starts:
    sys.exit("no embed launch in the CSV")
step = seq[starts[-1]:]
if len(starts) >= 2:
    step = seq[starts[-2]:starts[-1]] if len(seq) - starts[-1] < starts[-1] - starts[-2] else step
agg = OrderedDict()
for n, v in step:
    c, t = agg.get(n, (0, 0.0))
    agg[n] = (c + 1, t + v)
total = sum(t for _, t in agg.values())
print(f"one step: {len(step)} launches, {total:.1f} us of kernel time (ncu durations)")
print(f"{'kernel':<18}{'launches':>9}{'us':>10}{'us/launch':>11}")
for n, (c, t) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
    print(f"{n:<18}{c:>9}{t:>10.1f}{t / c:>11.2f}")
