"""Summarizes the pause phase by phase over repeated migrations: reads the source's
--stats-json files given on the command line and prints a Markdown table with each phase's
median, minimum and maximum (ms), and the downtime's and the estimate's.

  python3 tests/bench/downtime_phases.py RESULTS/rdma-idle-src-*.json
"""

import json
import statistics
import sys


def main(paths):
    runs = []
    for p in paths:
        with open(p) as f:
            st = json.load(f)
        if st.get("status") == "completed" and "downtime_phases" in st:
            runs.append(st)
    if not runs:
        raise SystemExit("no completed runs with downtime_phases in " + " ".join(paths))
    order, values = [], {}
    for st in runs:
        for ph in st["downtime_phases"]["phases"]:
            name = ph["name"] + (" (concurrent)" if ph.get("concurrent") else "")
            if name not in values:
                order.append(name)
                values[name] = []
            if ph.get("ms") is not None:
                values[name].append(ph["ms"])
    rows = [("downtime", [st["downtime_ms"] for st in runs]),
            ("estimate", [st["downtime_estimate"]["total_ms"] for st in runs
                          if "downtime_estimate" in st]),
            ("estimate error (stated)", [st["downtime_estimate"]["error_ms"] for st in runs
                                         if "downtime_estimate" in st])]
    rows += [(n, values[n]) for n in order]
    print(f"{len(runs)} runs\n")
    print("| phase | median ms | min | max |")
    print("|---|---|---|---|")
    for name, v in rows:
        if v:
            print(f"| {name} | {statistics.median(v):.2f} | {min(v):.2f} | {max(v):.2f} |")
    print("\nper run (downtime / estimate +- error, ms): " + ", ".join(
        f"{st['downtime_ms']:.1f} / {st['downtime_estimate']['total_ms']:.1f} +- "
        f"{st['downtime_estimate']['error_ms']:.1f}" for st in runs if "downtime_estimate" in st))


if __name__ == "__main__":
    main(sys.argv[1:])
