"""python -m tests.sim --seeds 1000 --start 0   (or --seed S --trace to replay one)."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from .cluster import Cluster, SimFailure, run_seed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sim")
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--seed", type=int, help="run one seed")
    p.add_argument("--trace", action="store_true", help="print the seed's event trace")
    p.add_argument("--keep-going", action="store_true")
    a = p.parse_args(argv)
    seeds = [a.seed] if a.seed is not None else range(a.start, a.start + a.seeds)
    t0 = time.monotonic()
    faults: Counter = Counter()
    ops: Counter = Counter()
    failures = []
    for s in seeds:
        c = Cluster(s)
        if a.trace:
            c.trace = []
        try:
            r = c.run()
        except SimFailure as e:
            failures.append(e)
            print(f"FAIL {e}", flush=True)
            if a.trace and c.trace:
                print("\n".join(c.trace[-200:]))
            if not a.keep_going:
                break
            continue
        faults.update(r.faults)
        ops.update(r.ops)
        if a.seed is not None:
            print(r)
    wall = time.monotonic() - t0
    n = len(seeds) if a.keep_going or not failures else len(failures) + (
        list(seeds).index(failures[-1].seed) if failures else 0)
    print(summary(n, faults, ops, len(failures), wall))
    return 1 if failures else 0


def summary(seeds: int, faults: Counter, ops: Counter, anomalies: int, wall: float) -> str:
    checked = sum(v for k, v in ops.items() if not k.endswith(":failed"))
    return (
        f"sim: {seeds} seeds, {sum(faults.values())} faults injected "
        f"({', '.join(f'{k} {v}' for k, v in sorted(faults.items()))}), "
        f"{checked} client ops checked ({', '.join(f'{k} {v}' for k, v in sorted(ops.items()))}), "
        f"{anomalies} anomalies, {wall:.1f}s wall"
    )


if __name__ == "__main__":
    sys.exit(main())
