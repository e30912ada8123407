"""Two revisions of doozer side by side, in ABBA order.

    python bench/abba.py REV_A REV_B [--pairs 6] [--workload seq-set]
                         [-c CONNS] [-d 5] [--settle 5]

For each run a fresh three-member durable cluster is started from one
revision's tree (exported with `git archive`), left to settle (a new node
fills its spare log segment in its first seconds), measured with that
revision's `doozer bench` (requests spread over the members, leader first)
and stopped. The order alternates A B, B A, A B, ...: on this machine,
running the new code always second once made noise look like a 3 % gain
(docs/architecture.md, "Measured and not kept"). Prints every run, then the
medians per revision and B/A.
"""

from __future__ import annotations

import argparse
import atexit
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare import ROOT, DoozerCluster, Procs, install_signal_exit  # noqa: E402


def export(rev: str, into: Path) -> Path:
    """The tree of `rev`, as committed, in `into`."""
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    env = {**os.environ, "PYTHONPATH": str(into)}
    got = subprocess.run(
        [sys.executable, "-P", "-c", "import doozer; print(doozer.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    ).stdout.strip()
    if not got.startswith(str(into)):
        raise SystemExit(f"{rev}: python imports doozer from {got!r}, not from {into}")
    return into


def measure(tree: Path, workdir: Path, procs: Procs, args: argparse.Namespace) -> dict[str, Any]:
    cl = DoozerCluster(procs, workdir, root=tree)
    workdir.mkdir(parents=True)
    cl.start()
    try:
        cl.probe()
        time.sleep(args.settle)
        argv = [sys.executable, "-P", "-m", "doozer", "bench", args.workload]
        argv += ["-a", ",".join(cl.leader_first()), "-p", "1", "-d", str(args.duration)]
        argv += ["--warmup", "1", "-c", str(args.conns), "--json"]
        p = subprocess.run(
            argv,
            capture_output=True,
            timeout=args.duration + 120,
            env={**os.environ, "PYTHONPATH": str(tree)},
        )
        if p.returncode != 0:
            raise RuntimeError(f"bench exited {p.returncode}: {p.stderr.decode()[-2000:]}")
        return orjson.loads(p.stdout)["results"][0]
    finally:
        cl.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # 3 x 128 MiB of segments


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev_a")
    ap.add_argument("rev_b")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--workload", default="seq-set", help="a doozer bench workload (seq-set)")
    ap.add_argument("-c", "--conns", type=int, default=64, help="clients (seq-set: always 1)")
    ap.add_argument("-d", "--duration", type=float, default=5.0, help="seconds measured per run")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after start-up")
    args = ap.parse_args()
    install_signal_exit()
    procs = Procs()
    atexit.register(procs.stop_all)
    work = Path(tempfile.mkdtemp(prefix="doozer-abba-"))
    atexit.register(shutil.rmtree, work, True)
    trees = {"A": export(args.rev_a, work / "A"), "B": export(args.rev_b, work / "B")}
    print(f"A = {args.rev_a}, B = {args.rev_b}; {args.workload}, {args.pairs} pairs, ABBA order")
    rows: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    for i in range(args.pairs):
        for side in ("A", "B") if i % 2 == 0 else ("B", "A"):
            r = measure(trees[side], work / f"run{i}{side}", procs, args)
            rows[side].append(r)
            lat = r["latency_ms"]
            print(
                f"pair {i + 1} {side}: {r['ops_per_s']:>10,.0f} ops/s  p50 {lat['p50']:.3f}"
                f"  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f} ms  errors {r['errors']}",
                flush=True,
            )

    def med(side: str, pick: Any) -> float:
        return statistics.median(pick(r) for r in rows[side])

    print("\nmedians     A           B           B/A")
    for label, pick in (
        ("ops/s", lambda r: r["ops_per_s"]),
        ("p50 ms", lambda r: r["latency_ms"]["p50"]),
        ("p90 ms", lambda r: r["latency_ms"]["p90"]),
        ("p99 ms", lambda r: r["latency_ms"]["p99"]),
    ):
        a, b = med("A", pick), med("B", pick)
        print(f"{label:8s} {a:11.3f} {b:11.3f} {b / a:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
