"""Does heavy work on a big tree stall the cluster? Write latency around it.

    python bench/stall.py [--files 1000000] [--settle 5]

A durable three-member cluster is filled with N files (100-byte values,
/scale/dNNN/fNNNNNNN), while one client writes through a follower, one SET
at a time, and records each write's latency. Then, one after another, on
the leader: a SNAPSHOT (what a joiner or a backup fetches), a WALK `/**`
(every file, one line), a page of the web viewer loading the whole tree,
and a fourth node joining through the leader. For
each phase the script prints the writes' median and longest latency, and at
the end whether the leader changed. Members' own disk snapshots happen
during the fill (the first at 20k revs, then each once the log reaches half
the last snapshot's size).

A phase whose longest write is around a second or more, or a leader change,
means the node stalled: its heartbeats stopped for longer than the election
timeout allows.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import DoozerCluster, Procs, doozer_call, free_ports, install_signal_exit
from scale import fill, path_of


class ViewerCluster(DoozerCluster):
    """Each node with its web viewer on a port of its own."""

    def argv(self, addr: str, datadir: Path, attach: str | None) -> list[str]:
        argv = super().argv(addr, datadir, attach)
        port = int(addr.rsplit(":", 1)[1])
        argv[argv.index("-w") + 1] = f"127.0.0.1:{web_port(port)}"
        return argv


def web_port(port: int) -> int:
    return port + 10000 if port < 55000 else port - 10000


def page_load(addr: str) -> tuple[int, float]:
    """Open the leader's viewer as a page does and read its first load."""
    import asyncio

    import websockets

    url = f"ws://127.0.0.1:{web_port(int(addr.rsplit(':', 1)[1]))}/ws"

    async def load() -> tuple[int, float]:
        async with websockets.connect(url, max_size=None) as ws:
            await ws.recv()  # hello
            t = time.perf_counter()
            await ws.send('{"op":"sub"}')
            n = 0
            while True:
                m = orjson.loads(await ws.recv())
                if m["op"] == "files":
                    n += len(m["files"])
                elif m["op"] == "loaded":
                    return n, time.perf_counter() - t

    return asyncio.run(load())


class Writer(threading.Thread):
    """One connection, one SET at a time; latencies kept per phase."""

    def __init__(self, addr: str) -> None:
        super().__init__(daemon=True)
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.lat: list[float] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        f = self.sock.makefile("rb")
        i = 0
        while not self.stop.is_set():
            t = time.perf_counter()
            self.sock.sendall(b'{"verb":"SET","path":"/stall/w","value":"%d"}\n' % i)
            line = f.readline()
            if not line:
                return
            self.lat.append(time.perf_counter() - t)
            self.errors += b"err_code" in line
            i += 1

    def phase(self, name: str) -> None:
        lat, self.lat = sorted(self.lat), []
        if not lat:
            print(f"{name:24s} no writes completed")
            return
        print(
            f"{name:24s} writes {len(lat):6d}  p50 {lat[len(lat) // 2] * 1e3:6.2f} ms"
            f"  max {lat[-1] * 1e3:7.1f} ms"
        )


def timed_line(addr: str, req: dict, timeout: float = 300) -> tuple[int, float]:
    host, port = addr.rsplit(":", 1)
    t = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(orjson.dumps(req) + b"\n")
        n = 0
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise RuntimeError(f"{req['verb']}: connection closed after {n} bytes")
            n += len(chunk)
            if chunk.endswith(b"\n"):
                return n, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--settle", type=float, default=5.0, help="s of writes after the fill")
    args = ap.parse_args(argv)
    install_signal_exit()
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="doozer-stall-") as tmp:
        try:
            cluster = ViewerCluster(procs, Path(tmp), 3).start()
            leader_addr, follower = None, None
            for addr, me in cluster.selves().items():
                if me.get("role") == "leader":
                    leader_addr = addr
                elif follower is None:
                    follower = addr
            assert leader_addr and follower, "no leader"
            leader = doozer_call(leader_addr, {"verb": "SELF"}, 2)["value"]
            w = Writer(follower)
            w.start()
            rate = fill(leader_addr, 0, args.files)
            print(f"filled {args.files} files at {rate:,.0f} SET/s")
            w.phase("during the fill")
            time.sleep(args.settle)
            w.phase("after the fill")
            n, secs = timed_line(leader_addr, {"verb": "SNAPSHOT"})
            w.phase(f"SNAPSHOT {n / 1e6:.0f} MB, {secs:.1f} s")
            n, secs = timed_line(leader_addr, {"verb": "WALK", "path": "/**"})
            w.phase(f"WALK /** {n / 1e6:.0f} MB, {secs:.1f} s")
            n, secs = page_load(leader_addr)
            w.phase(f"web page load, {secs:.1f} s")
            t = time.perf_counter()
            cluster.start_node(3, free_ports(1)[0], leader_addr)  # its viewer: port ± 10000
            last = path_of(args.files - 1)
            while not doozer_call(
                cluster.addrs[3], {"verb": "GET", "path": last, "stale": True}, 5
            ).get("rev"):
                if time.perf_counter() - t > 600:
                    raise RuntimeError("the joiner never caught up")
                time.sleep(0.1)
            w.phase(f"join, {time.perf_counter() - t:.1f} s")
            w.stop.set()
            w.join(30)
            now = doozer_call(leader_addr, {"verb": "SELF"}, 2).get("leader")
            print(
                f"leader {'unchanged' if now == leader else f'changed: {leader} -> {now}'};"
                f" {w.errors} writes failed"
            )
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
