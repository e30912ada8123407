"""Memory and speed of the store: N files of B bytes, then a history window of overwrites.

    python bench/store_mem.py [--files 100000] [--size 100] [--hist 2000]

Prints RSS (VmRSS from /proc/self/status) and the time per SET and per GET
(at the current rev and at an old rev), before and after the history window
fills with overwrites. Times include building the Mutation, as the node does.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doozer.mutation import SET, Mutation
from doozer.store import Store

_CHUNK = 2000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def path_of(i: int) -> str:
    # 1000 directories of ~100 files, three levels deep.
    return f"/bench/d{i % 1000:03d}/f{i:07d}"


def value_of(i: int, size: int) -> bytes:
    return (i.to_bytes(8, "big") * (size // 8 + 1))[:size]


def time_sets(s: Store, idx: list[int], size: int, gen: int) -> float:
    """Mean µs per SET; inputs are built in small chunks, outside the timing, so
    that they neither count in the time nor leave garbage in the RSS."""
    total = 0.0
    for k in range(0, len(idx), _CHUNK):
        chunk = idx[k : k + _CHUNK]
        paths = [path_of(i) for i in chunk]
        vals = [value_of(i + gen, size) for i in chunk]
        t = time.perf_counter()
        for p, v in zip(paths, vals, strict=True):
            s.apply(Mutation(SET, p, -1, v))
        total += time.perf_counter() - t
    return total / len(idx) * 1e6


def time_gets(s: Store, idx: list[int], rev: int | None) -> float:
    total = 0.0
    get = s.get
    for k in range(0, len(idx), _CHUNK):
        paths = [path_of(i) for i in idx[k : k + _CHUNK]]
        t = time.perf_counter()
        for p in paths:
            get(p, rev)
        total += time.perf_counter() - t
    return total / len(idx) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--hist", type=int, default=2000)
    ap.add_argument("--reads", type=int, default=200_000)
    a = ap.parse_args()
    rnd = random.Random(1)
    gc.collect()
    base = rss_mb()
    s = Store(hist=a.hist)

    fill_us = time_sets(s, list(range(a.files)), a.size, 0)
    gc.collect()
    after_fill = rss_mb()

    reads = [rnd.randrange(a.files) for _ in range(a.reads)]
    get_cur = time_gets(s, reads, None)
    old = max(s.oldest, s.rev - a.hist // 2)
    get_old = time_gets(s, reads, old)

    # Fill the window with overwrites of existing files: every rev in it now
    # supersedes a value that only history holds.
    over = [rnd.randrange(a.files) for _ in range(a.hist)]
    set_over = time_sets(s, over, a.size, 1)
    gc.collect()
    after_hist = rss_mb()
    get_cur2 = time_gets(s, reads, None)
    old = max(s.oldest, s.rev - a.hist // 2)
    get_old_hot = time_gets(s, over * (a.reads // len(over) or 1), old)
    get_old2 = time_gets(s, reads, old)
    # Keep overwriting in steady state: each SET also trims one rev.
    steady = [rnd.randrange(a.files) for _ in range(a.reads)]
    set_steady = time_sets(s, steady, a.size, 2)
    gc.collect()
    after_steady = rss_mb()

    print(f"store: {a.files} files x {a.size} B, hist {a.hist}; Python {sys.version.split()[0]}")
    print(f"RSS before store                  {base:8.1f} MB")
    print(f"RSS after fill                    {after_fill:8.1f} MB")
    print(f"RSS with window full of overwrites{after_hist:8.1f} MB")
    print(f"RSS after {a.reads} more overwrites {after_steady:8.1f} MB")
    print(f"SET new file (fill)               {fill_us:8.2f} us")
    print(f"SET overwrite (window filling)    {set_over:8.2f} us")
    print(f"SET overwrite (steady, trimming)  {set_steady:8.2f} us")
    print(f"GET current rev                   {get_cur:8.2f} us  (window full: {get_cur2:.2f})")
    print(f"GET old rev, untouched file       {get_old:8.2f} us  (window full: {get_old2:.2f})")
    print(f"GET old rev, overwritten file     {get_old_hot:8.2f} us")
    print(
        f"history bytes held                {s.history_bytes:8d}  (oldest {s.oldest}, rev {s.rev})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
