#!/usr/bin/env python3
"""Where the slow requests of `shop_load --trace DIR` fall.

For each kind of phase (`no`, `unhit`, `three`, `native`): the share of its requests above the
unarmed phases' pooled p99, split by what else ran in a fixed window of 5 ms either side of each
request's send time (the shop's agent thread, `sonde server`; a fixed window, not the request's
span, which a slow request would make longer); the agent thread's CPU per second and its bursts
(5 ms samples in which it ran); and the slow requests by send time modulo one second, which shows
whether they come with something periodic (status reports, the budget's window).

    target/release/examples/shop_load --rate 5000 --seconds 6 --rounds 16 --no-native \\
        --control --trace /tmp/shop-trace
    ops/shop_tails.py /tmp/shop-trace [more dirs]

`--bursts N` also lists the first N samples of the first armed phase in which the agent thread or
the server ran, with how much.
"""

import argparse
import bisect
import csv
import glob
import os
import statistics
from collections import defaultdict

WINDOW_US = 5_000


def load(stem):
    with open(stem + ".requests.csv") as f:
        requests = [(int(a), int(b)) for a, b in list(csv.reader(f))[1:]]
    with open(stem + ".cpu.csv") as f:
        cpu = [tuple(int(x) for x in row) for row in list(csv.reader(f))[1:]]
    return requests, cpu


def quantile(xs, q):
    xs = sorted(xs)
    return xs[round(q * (len(xs) - 1))]


def summary(kind, phases, p99):
    n = slow = 0
    by = defaultdict(lambda: [0, 0])  # (agent ran, server ran) -> [requests, slow ones]
    bins = [0] * 20
    for requests, cpu in phases:
        at = [c[0] for c in cpu]
        for sent, latency in requests:
            i = max(bisect.bisect_right(at, sent - WINDOW_US) - 1, 0)
            j = min(bisect.bisect_left(at, sent + WINDOW_US), len(cpu) - 1)
            key = (cpu[j][1] > cpu[i][1], cpu[j][3] > cpu[i][3])
            by[key][0] += 1
            n += 1
            if latency > p99:
                by[key][1] += 1
                slow += 1
                bins[(sent % 1_000_000) * 20 // 1_000_000] += 1
    bursts = [c[k][1] - c[k - 1][1] for _, c in phases for k in range(1, len(c)) if c[k][1] > c[k - 1][1]]
    seconds = sum(c[-1][0] for _, c in phases) / 1e6
    agent = sum(c[-1][1] for _, c in phases) / seconds / 1e3
    burst = (
        f"{len(bursts) / seconds:.1f}/s of {statistics.mean(bursts) / 1e3:.1f} µs (max {max(bursts) / 1e3:.0f})"
        if bursts
        else "none"
    )
    print(f"  {kind:6} {n:7} requests, {slow / n * 100:5.2f}% above; agent thread {agent:.0f} µs/s, bursts {burst}")
    for key in sorted(by):
        total, above = by[key]
        print(
            f"      agent {'ran' if key[0] else '-  '} server {'ran' if key[1] else '-  '}: "
            f"{total:7} requests ({total / n * 100:5.1f}%), {above / max(total, 1) * 100:5.2f}% above"
        )
    print("      above, by send time mod 1 s (50 ms bins):", " ".join(map(str, bins)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--bursts", type=int, default=0)
    args = parser.parse_args()
    for d in args.dirs:
        stems = sorted({f[: -len(".requests.csv")] for f in glob.glob(os.path.join(d, "*.requests.csv"))})
        kinds = defaultdict(list)
        for stem in stems:
            kinds[os.path.basename(stem).split("-", 1)[1]].append(load(stem))
        if not kinds.get("no"):
            raise SystemExit(f"{d}: no unarmed phase (NN-no.requests.csv)")
        p99 = quantile([lat for requests, _ in kinds["no"] for _, lat in requests], 0.99)
        print(f"{d}: the unarmed phases' pooled p99 is {p99} µs; requests above it:")
        for kind, phases in kinds.items():
            summary(kind, phases, p99)
        armed = next((k for k in kinds if k != "no"), None)
        if args.bursts and armed:
            cpu = kinds[armed][0][1]
            shown = 0
            for a, b in zip(cpu, cpu[1:]):
                if (b[1] > a[1] or b[3] > a[3]) and shown < args.bursts:
                    print(f"    {armed} {b[0] / 1e3:8.1f} ms: agent {(b[1] - a[1]) / 1e3:6.1f} µs, server {(b[3] - a[3]) / 1e3:6.1f} µs")
                    shown += 1


if __name__ == "__main__":
    main()
