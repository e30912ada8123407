"""python -m tests.sim --seeds 1000 --start 0 [--jobs 2]   |   --seed S --trace (replay one)."""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Iterator

from .cluster import Cluster, SimFailure, SimResult


def _run(seed: int) -> SimResult | SimFailure:
    try:
        return Cluster(seed).run()
    except SimFailure as e:
        return e


def _results(seeds: range, jobs: int) -> Iterator[SimResult | SimFailure]:
    if jobs <= 1:
        yield from map(_run, seeds)
        return
    with multiprocessing.Pool(jobs) as pool:
        yield from pool.imap(_run, seeds, chunksize=8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sim")
    p.add_argument("--seeds", type=int, default=100, help="how many seeds")
    p.add_argument("--start", type=int, default=0, help="first seed")
    p.add_argument("--jobs", type=int, default=1, help="processes")
    p.add_argument("--seed", type=int, help="run one seed and print its result")
    p.add_argument("--trace", action="store_true", help="with --seed: print its event trace")
    p.add_argument("--keep-going", action="store_true", help="do not stop at the first failure")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    if a.seed is not None:
        c = Cluster(a.seed)
        if a.trace:
            c.trace = []
        try:
            print(c.run())
            return 0
        except SimFailure as e:
            print(f"FAIL {e}")
            return 1
        finally:
            if c.trace:
                print("\n".join(c.trace[-300:]))
    faults: Counter = Counter()
    ops: Counter = Counter()
    lin: Counter = Counter()
    effects: Counter = Counter()
    failures: list[SimFailure] = []
    n = 0
    for r in _results(range(a.start, a.start + a.seeds), a.jobs):
        n += 1
        if isinstance(r, SimFailure):
            failures.append(r)
            print(f"FAIL {r}", flush=True)
            if not a.keep_going:
                break
            continue
        faults.update(r.faults)
        ops.update(r.ops)
        lin[r.lincheck] += 1
        effects.update(r.effects)
    print(summary(n, faults, ops, len(failures), time.monotonic() - t0))
    print(f"lincheck outcomes: {dict(lin)}; effects: {dict(effects)}")
    return 1 if failures else 0


def summary(seeds: int, faults: Counter, ops: Counter, anomalies: int, wall: float) -> str:
    checked = sum(v for k, v in ops.items() if k not in ("get:failed", "get:pending"))
    return (
        f"sim: {seeds} seeds, {sum(faults.values())} faults injected "
        f"({', '.join(f'{k} {v}' for k, v in sorted(faults.items()))}), "
        f"{checked} client ops checked ({', '.join(f'{k} {v}' for k, v in sorted(ops.items()))}), "
        f"{anomalies} anomalies, {wall:.1f}s wall"
    )


if __name__ == "__main__":
    sys.exit(main())
