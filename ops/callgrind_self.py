#!/usr/bin/env python3
"""Self cost per function from a callgrind out file, with every event it recorded.

callgrind_annotate (3.19) can print inclusive costs where self costs are wanted, and sorts by one
event; this reads the file itself. A function's self cost is the sum of the cost lines under its
`fn=` that do not follow a `calls=` line (those are the inclusive cost of the call). Names and
files are compressed as `(id) name` the first time and `(id)` after.

    valgrind --tool=callgrind --cache-sim=yes --toggle-collect='*checkout*' \\
        --callgrind-out-file=cg.out target/release/examples/cold_hits --only evaluated --hits 200
    ops/callgrind_self.py cg.out --per 201 --sort D1mr+D1mw --top 30

`--per N` divides every figure (per hit, per request); `--sort` takes an event or a sum of
events (`D1mr+D1mw`); `--group NAME=REGEX` (repeatable) sums the functions whose name or file
matches, the rest under `rest`.
"""

import argparse
import re
import sys
from collections import defaultdict


def parse(path):
    events = []
    names = {"fn": {}, "fl": {}}
    costs = defaultdict(lambda: None)
    fn = fl = None
    after_calls = False

    def expand(kind, value):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?$", value)
        if not m:
            return value
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1), value)

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            if line.startswith("events:"):
                events = line.split()[1:]
                continue
            head = line[0]
            if head.isdigit() or head in "+-*":
                if after_calls:
                    after_calls = False
                    continue
                if fn is None:
                    continue
                fields = line.split()[1:]
                acc = costs[(fn, fl)]
                if acc is None:
                    acc = costs[(fn, fl)] = [0] * len(events)
                for i, v in enumerate(fields[: len(events)]):
                    acc[i] += int(v)
                continue
            key, _, value = line.partition("=")
            if key == "fn":
                fn = expand("fn", value)
            elif key in ("fl", "fi", "fe"):
                name = expand("fl", value)
                if key == "fl":
                    fl = name
            elif key in ("cfn",):
                expand("fn", value)
            elif key in ("cfl", "cfi"):
                expand("fl", value)
            elif key == "calls":
                after_calls = True
    return events, {k: v for k, v in costs.items() if v is not None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("--per", type=float, default=1.0, help="divide every figure by this")
    ap.add_argument("--sort", default="Ir", help="an event, or events joined by +")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--group", action="append", default=[], metavar="NAME=REGEX")
    a = ap.parse_args()

    events, costs = parse(a.file)
    if not events:
        sys.exit(f"{a.file}: no 'events:' line; is it a callgrind out file?")
    try:
        keys = [events.index(e) for e in a.sort.split("+")]
    except ValueError:
        sys.exit(f"--sort {a.sort!r}: the file has the events {' '.join(events)}")

    def score(c):
        return sum(c[k] for k in keys)

    totals = [sum(c[i] for c in costs.values()) for i in range(len(events))]
    width = max(9, *(len(e) + 1 for e in events))
    header = "".join(f"{e:>{width}}" for e in events)

    def row(c):
        return "".join(f"{v / a.per:>{width}.1f}" for v in c)

    print(f"{header}  function (self cost{f', per {a.per:g}' if a.per != 1 else ''})")
    print(f"{row(totals)}  TOTAL")
    if a.group:
        groups = []
        for g in a.group:
            name, _, rx = g.partition("=")
            groups.append((name, re.compile(rx)))
        sums = defaultdict(lambda: [0] * len(events))
        for (fn, fl), c in costs.items():
            name = next((n for n, rx in groups if rx.search(fn) or rx.search(fl or "")), "rest")
            for i, v in enumerate(c):
                sums[name][i] += v
        for name, c in sorted(sums.items(), key=lambda kv: -score(kv[1])):
            print(f"{row(c)}  [{name}]")
        print()
    ranked = sorted(costs.items(), key=lambda kv: -score(kv[1]))
    for (fn, fl), c in ranked[: a.top]:
        print(f"{row(c)}  {fn[:140]}")


if __name__ == "__main__":
    main()
