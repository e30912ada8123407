"""RSS of a real node holding N files of B bytes with a full history window.

    python bench/node_rss.py [--files 100000] [--size 100] [--hist 2000] [--mem]

Starts `doozer serve`, fills it with pipelined SETs over one connection,
overwrites `hist` files so the history window is full, and prints the
node's VmRSS (from /proc) before and after.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodeproc import NodeProc, Raw


def fill(addr: str, paths: list[str], value: str, window: int = 2000) -> None:
    with Raw(addr, timeout=60) as r:
        for start in range(0, len(paths), window):
            chunk = paths[start : start + window]
            r.send(
                b"".join(
                    b'{"verb":"SET","path":"%s","value":"%s"}\n' % (p.encode(), value.encode())
                    for p in chunk
                )
            )
            for _ in chunk:
                resp = r.recv(60)
                if "rev" not in resp:
                    raise SystemExit(f"SET failed: {resp}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--hist", type=int, default=2000)
    ap.add_argument("--mem", action="store_true", help="run the node with --mem")
    a = ap.parse_args()
    extra = ["--hist", str(a.hist)]
    with tempfile.TemporaryDirectory() as d:
        if not a.mem:
            extra += ["-d", str(Path(d) / "data")]
        node = NodeProc(*extra, mem=a.mem).start()
        try:
            rss0 = node.rss_kb()
            t0 = time.monotonic()
            paths = [f"/f/{i // 1000}/{i}" for i in range(a.files)]
            fill(node.addr, paths, "v" * a.size)
            t_fill = time.monotonic() - t0
            fill(node.addr, paths[: a.hist], "w" * a.size)  # fills the history window
            rss = node.rss_kb()
        finally:
            node.stop()
    print(
        f"files={a.files} size={a.size}B hist={a.hist} durable={not a.mem}: "
        f"idle RSS {rss0 / 1024:.1f} MiB, full RSS {rss / 1024:.1f} MiB, "
        f"fill {a.files / t_fill:,.0f} SET/s pipelined"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
