"""The floor under a sequential replicated write on this machine, in Python.

    python bench/floor.py [-n 4000] [--spin US] [--dir DIR]

Two processes on uvloop do the least a replicated write needs, and nothing
else: a leader takes a JSON request line, sends the accept to a voter,
appends it to its own file and fdatasyncs; the voter appends it, fdatasyncs
and answers; the leader then replies. A blocking client sends N requests
one at a time and prints the latency percentiles. `--spin US` burns that
many microseconds on each side before its fsync, standing in for the work a
real node does there.

What it shows: how much of doozer's sequential SET latency is the machine
(wake-ups, loopback, two overlapping fsyncs) and how much is doozer's own
code. Measured here: 0.28-0.33 ms p50, against 0.52-0.64 ms for a
three-node doozer cluster with the same client (`--target HOST:PORT`
times a running doozer node with the same client instead).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import orjson


def spin(us: int) -> None:
    end = time.perf_counter_ns() + us * 1000
    while time.perf_counter_ns() < end:
        pass


class Log:
    """An append-only file, each append fdatasync'd: into zeros written
    ahead, as doozer's log segments are (no size or extent change to commit)."""

    SIZE = 16 << 20

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self.fd, bytes(self.SIZE), 0)
        os.fsync(self.fd)
        self.off = 0

    def put(self, data: bytes) -> None:
        if self.off + len(data) > self.SIZE:
            self.off = 0
        os.pwrite(self.fd, data, self.off)
        self.off += len(data)
        os.fdatasync(self.fd)


class Lines(asyncio.Protocol):
    """Newline-framed JSON in; `on_line(transport, message)` per line."""

    def __init__(self, on_line) -> None:  # type: ignore[no-untyped-def]
        self.on_line = on_line
        self.buf = b""
        self.t: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            assert self.t is not None
            self.on_line(self.t, line)


async def voter(port: int, log: Log, us: int) -> None:
    def on_accept(t: asyncio.Transport, line: bytes) -> None:
        m = orjson.loads(line)
        spin(us)
        log.put(line + b"\n")
        t.write(orjson.dumps({"t": "vote", "i": m["i"]}) + b"\n")

    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Lines(on_accept), "127.0.0.1", port)
    await asyncio.Event().wait()


async def leader(port: int, voter_port: int, log: Log, us: int) -> None:
    loop = asyncio.get_running_loop()
    waiting: dict[int, tuple[asyncio.Transport, object, str, str]] = {}
    store: dict[str, str] = {}  # "apply": one dict write
    next_i = [0]

    def on_vote(t: asyncio.Transport, line: bytes) -> None:
        m = orjson.loads(line)
        client, tag, path, value = waiting.pop(m["i"])
        store[path] = value
        client.write(orjson.dumps({"tag": tag, "rev": m["i"]}) + b"\n")

    vt, _ = await loop.create_connection(lambda: Lines(on_vote), "127.0.0.1", voter_port)

    def on_request(t: asyncio.Transport, line: bytes) -> None:
        req = orjson.loads(line)
        next_i[0] += 1
        i = next_i[0]
        waiting[i] = (t, req.get("tag"), req["path"], req["value"])
        accept = orjson.dumps({"t": "accept", "i": i, "v": [req["path"], req["value"]]}) + b"\n"
        vt.write(accept)
        spin(us)
        log.put(accept)

    await loop.create_server(lambda: Lines(on_request), "127.0.0.1", port)
    await asyncio.Event().wait()


def serve(role: str, port: int, peer: int, path: str, us: int) -> None:
    import uvloop

    log = Log(Path(path))
    coro = voter(port, log, us) if role == "voter" else leader(port, peer, log, us)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(coro)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, limit: float = 10.0) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {limit}s")


def measure(host: str, port: int, n: int, warm: int = 500) -> list[float]:
    """Latencies in ms of n sequential SETs (after `warm` unmeasured ones)."""
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    value = "x" * 100
    out: list[float] = []
    try:
        for i in range(n + warm):
            req = {"verb": "SET", "tag": i, "path": f"/bench/k{i % 1000}", "value": value}
            t = time.perf_counter_ns()
            s.sendall(orjson.dumps(req) + b"\n")
            line = f.readline()
            if not line or b"err_code" in line:
                raise SystemExit(f"request {i}: {line!r}")
            if i >= warm:
                out.append((time.perf_counter_ns() - t) / 1e6)
    finally:
        s.close()
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="floor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", type=int, default=4000, help="measured writes (4000)")
    ap.add_argument("--spin", type=int, default=0, metavar="US", help="work per side (0 us)")
    ap.add_argument("--dir", default=None, help="where the two logs go (default: a temp dir)")
    ap.add_argument("--target", default=None, metavar="HOST:PORT", help="time this node instead")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--peer", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.role:
        serve(a.role, a.port, a.peer, a.log, a.spin)
        return 0
    if a.target:
        host, _, port = a.target.rpartition(":")
        lat = measure(host or "127.0.0.1", int(port), a.n)
        print(
            f"{a.target}: p50 {lat[len(lat) // 2]:.3f} ms  p99 {lat[int(len(lat) * 0.99)]:.3f} ms"
        )
        return 0
    work = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="doozer-floor-"))
    work.mkdir(parents=True, exist_ok=True)
    vport, lport = free_port(), free_port()
    me = [sys.executable, os.path.abspath(__file__), "--spin", str(a.spin)]
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> None:
        procs.append(subprocess.Popen([*me, *args]))

    try:
        start("--role", "voter", "--port", str(vport), "--log", str(work / "v"))
        wait_port(vport)
        start(
            "--role", "leader", "--port", str(lport), "--peer", str(vport), "--log", str(work / "l")
        )
        wait_port(lport)
        lat = measure("127.0.0.1", lport, a.n)
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
        if not a.dir:
            for name in ("v", "l"):
                (work / name).unlink(missing_ok=True)
            work.rmdir()
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
    print(f"floor (spin {a.spin} us per side): p50 {p50:.3f} ms  p99 {p99:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
