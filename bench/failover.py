"""Time from kill -9 of the leader until a write succeeds again.

    python bench/failover.py [--rounds 5] [--election-timeout 1.0] [--mem]

Each round starts a fresh three-member cluster, writes continuously through
a non-leader, kills the leader's process group, and measures the gap between
the last write acknowledged before the kill and the first one after it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodeproc import NodeProc, Raw, call, free_port, wait_three_members


def one_round(et: float, mem: bool, tmp: Path) -> float:
    nodes: list[NodeProc] = []

    def start(i: int, *extra: str) -> NodeProc:
        flags = ["--election-timeout", str(et), *extra]
        if not mem:
            flags += ["-d", str(tmp / f"n{i}")]
        n = NodeProc(*flags, port=free_port(), mem=mem).start()
        nodes.append(n)
        return n

    try:
        first = start(0, "--cals=3")
        start(1, "-a", first.addr)
        start(2, "-a", first.addr)
        wait_three_members(nodes)
        leader = next(n for n in nodes if call(n.addr, {"verb": "SELF"})["role"] == "leader")
        other = next(n for n in nodes if n is not leader)
        with Raw(other.addr, timeout=10) as r:
            for i in range(20):
                assert "rev" in r.call({"verb": "SET", "path": f"/w/{i}", "value": "x"})
            last_ok = time.monotonic()
            leader.kill()
            for i in range(100_000):
                resp = r.call({"verb": "SET", "path": f"/after/{i}", "value": "x", "timeout": 1})
                if "rev" in resp:
                    return time.monotonic() - last_ok
        raise RuntimeError("no write succeeded after the kill")
    finally:
        for n in nodes:
            n.stop(5)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--election-timeout", type=float, default=1.0)
    ap.add_argument("--mem", action="store_true")
    a = ap.parse_args()
    gaps = []
    with tempfile.TemporaryDirectory() as d:
        for k in range(a.rounds):
            gaps.append(one_round(a.election_timeout, a.mem, Path(d) / f"r{k}"))
            print(f"round {k}: writes resumed {gaps[-1]:.3f} s after kill -9 of the leader")
    print(
        f"election timeout {a.election_timeout} s: failover median {statistics.median(gaps):.3f} s,"
        f" max {max(gaps):.3f} s over {a.rounds} rounds"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
