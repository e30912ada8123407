"""Scale figures for doozer: memory and join time by tree size, watch fan-out,
and SET throughput by cluster size.

    python bench/scale.py [--quick] [--files 100000,1000000] [--watchers 1000]
                          [--members 1,3,5] [--waiters 10000] [-d 5]
                          [--only tree,watch,members,waiters] [--json FILE] [--keep]

1. Tree size. A durable one-member cluster (--cals 1, --hist 2000) is filled
   through its client port with pipelined SETs of distinct files (100-byte
   values, /scale/dNNN/fNNNNNNN: 1000 directories), so that the tree, its
   history window and its data dir are exactly what real writes leave. Then
   the node's RSS (and peak RSS) is read from /proc, and a second node is
   started with `-a FIRST` and timed from its start until it serves a stale
   GET of the last file written (it joins as a follower: the one slot is
   taken). The sizes are filled in increasing order on the same node.
2. Watch fan-out: W watchers (WATCH of one glob) spread over a three-member
   cluster, one writer on the leader (`doozer bench watch`), once with one
   write in flight and once with 16; deliveries/s and delivery latency.
3. Throughput by cluster size: `doozer bench set` (64 clients, one request
   in flight each) against fresh durable clusters of 1, 3 and 5 members,
   clients spread over all members.
4. Idle waiters: N one-shot WAITs on paths of their own per node (the lock
   and per-worker-config pattern: 100 connections per node, N/100 WAITs
   each, on paths no write touches), then `doozer bench set` (16 clients)
   on a three-member cluster: SET/s and latency with and without them.

Every node runs durably (no --mem) in a work dir on the same disk; every
process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import (
    ROOT,
    CpuSampler,
    DoozerCluster,
    Procs,
    doozer_call,
    free_ports,
    install_signal_exit,
    proc_rss_kb,
    serving_doozer,
)

VALUE_SIZE = 100
HIST = 2000


def path_of(i: int) -> str:
    return f"/scale/d{i % 1000:03d}/f{i:07d}"


def value_of(i: int) -> str:
    return f"{i:010d}".ljust(VALUE_SIZE, "v")


# --- filling a node ---------------------------------------------------------------------


class _Filler(asyncio.Protocol):
    """One connection's share of the fill: keeps `depth` tagged SETs in flight."""

    def __init__(self, todo: range, depth: int, done: asyncio.Future[int]) -> None:
        self.todo = iter(todo)
        self.depth = depth
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.outstanding = 0
        self.acked = 0
        self.exhausted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send(self.depth)

    def _send(self, n: int) -> None:
        lines = []
        for _ in range(n):
            i = next(self.todo, None)
            if i is None:
                self.exhausted = True
                break
            lines.append(
                orjson.dumps(
                    {"tag": i, "verb": "SET", "path": path_of(i), "value": value_of(i)},
                    option=orjson.OPT_APPEND_NEWLINE,
                )
            )
        if lines:
            self.outstanding += len(lines)
            assert self.transport is not None
            self.transport.write(b"".join(lines))

    def data_received(self, data: bytes) -> None:
        data = self.buf + data
        lines = data.split(b"\n")
        self.buf = lines.pop()
        n = 0
        for line in lines:
            if not line:
                continue
            if b"err_code" in line:
                if not self.done.done():
                    self.done.set_exception(RuntimeError(f"fill SET failed: {line[:300]!r}"))
                return
            n += 1
        self.outstanding -= n
        self.acked += n
        if not self.exhausted:
            self._send(n)
        if self.exhausted and self.outstanding == 0 and not self.done.done():
            self.done.set_result(self.acked)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(f"fill connection lost: {exc!r}"))


async def _fill(addr: str, lo: int, hi: int, conns: int, depth: int) -> int:
    loop = asyncio.get_running_loop()
    host, port = addr.rsplit(":", 1)
    futs = []
    transports = []
    for c in range(conns):
        fut: asyncio.Future[int] = loop.create_future()
        t, _ = await loop.create_connection(
            lambda fut=fut, c=c: _Filler(range(lo + c, hi, conns), depth, fut), host, int(port)
        )
        futs.append(fut)
        transports.append(t)
    try:
        return sum(await asyncio.gather(*futs))
    finally:
        for t in transports:
            t.close()


def fill(addr: str, lo: int, hi: int, conns: int = 4, depth: int = 256) -> float:
    """SET files lo..hi-1; returns the rate in SETs per second."""
    import uvloop

    t = time.perf_counter()
    n = uvloop.run(_fill(addr, lo, hi, conns, depth))
    return n / max(time.perf_counter() - t, 1e-9)


def peak_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def du_mb(path: Path) -> float:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total / 1e6


def snapshot_size(addr: str, timeout: float = 120.0) -> dict[str, Any]:
    """Bytes and seconds of the node's SNAPSHOT answer (what a joiner fetches)."""
    host, port = addr.rsplit(":", 1)
    n = 0
    t = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(b'{"verb":"SNAPSHOT","stale":true}\n')
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                return {"snapshot_mb": round(n / 1e6, 1), "snapshot_error": "connection dropped"}
            n += len(chunk)
            if chunk.endswith(b"\n"):
                return {
                    "snapshot_mb": round(n / 1e6, 1),
                    "snapshot_s": round(time.monotonic() - t, 2),
                }


def time_join(
    procs: Procs,
    workdir: Path,
    name: str,
    attach: str,
    last: int,
    deadline: float,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Start a node with -a ATTACH; seconds until it listens and until it
    serves a stale GET of file `last` with the right value."""
    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "doozer", "serve", "-l", addr, "-w", "off", "-d", str(d)]
    argv += ["--election-timeout", "0.5", "--hist", str(HIST), *extra, "-a", attach]
    want = value_of(last)
    t0 = time.monotonic()
    p = procs.start(argv, workdir / f"{name}.log", env={"PYTHONPATH": str(ROOT)})
    listening: float | None = None
    end = t0 + deadline
    sock: socket.socket | None = None
    buf = b""
    try:
        while time.monotonic() < end:
            if p.poll() is not None:
                raise RuntimeError(f"joiner exited with {p.returncode}: see {workdir}/{name}.log")
            if sock is None:
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
                    listening = time.monotonic() - t0
                except OSError:
                    time.sleep(0.01)
                    continue
            # A joiner may accept before it answers (loading, catching up).
            sock.settimeout(max(0.1, end - time.monotonic()))
            req = {"verb": "GET", "path": path_of(last), "stale": True}
            sock.sendall(orjson.dumps(req) + b"\n")
            while b"\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("joiner closed the connection")
                buf += chunk
            line, _, buf = buf.partition(b"\n")
            r = orjson.loads(line)
            if r.get("value") == want:
                ready = time.monotonic() - t0
                return {
                    "listen_s": round(listening or ready, 3),
                    "join_s": round(ready, 3),
                    "rss_mb": round(proc_rss_kb(p.pid) / 1024, 1),
                    "peak_rss_mb": round(peak_rss_kb(p.pid) / 1024, 1),
                    "proc": p,
                }
            time.sleep(0.01)
        raise TimeoutError(f"joiner not serving the last file within {deadline:g} s")
    except BaseException as e:
        # A joiner that keeps retrying would load the filled node from now on.
        procs.stop(p)
        log = (workdir / f"{name}.log").read_text(errors="replace").strip().splitlines()
        if isinstance(e, (RuntimeError, TimeoutError)) and log:
            raise type(e)(f"{e}; its log ends: {log[-1][:300]}") from e
        raise
    finally:
        if sock is not None:
            sock.close()


def tree_size(
    procs: Procs, workdir: Path, sizes: list[int], args: argparse.Namespace
) -> list[dict]:
    out = []
    extra = ["--hist", str(HIST), *args.serve_flags.split()]
    cl = DoozerCluster(procs, workdir, n=1, extra=extra, name="big").start()
    addr, pid = cl.addrs[0], cl.pids[0]
    base_rss = proc_rss_kb(pid) / 1024
    have = 0
    for n in sorted(sizes):
        print(f"  filling to {n:,} files ...", flush=True)
        rate = fill(addr, have, n, conns=args.fill_conns, depth=args.fill_depth)
        have = n
        rev = doozer_call(addr, {"verb": "REV"}, 30)["rev"]
        row: dict[str, Any] = {
            "files": n,
            "fill_sets_per_s": round(rate),
            "rev": rev,
            "rss_mb": round(proc_rss_kb(pid) / 1024, 1),
            "peak_rss_mb": round(peak_rss_kb(pid) / 1024, 1),
            "empty_rss_mb": round(base_rss, 1),
            "data_dir_mb": round(du_mb(workdir / "big0"), 1),
        }
        try:
            row.update(snapshot_size(addr))
        except OSError as e:
            row.update(snapshot_mb=0.0, snapshot_error=str(e))
        print(
            f"  {n:,} files: fill {rate:,.0f} SET/s, RSS {row['rss_mb']} MB"
            f" (peak {row['peak_rss_mb']}), data dir {row['data_dir_mb']} MB,"
            f" SNAPSHOT answer {row['snapshot_mb']} MB {row.get('snapshot_error', '')}",
            flush=True,
        )
        try:
            joiner_flags = tuple(extra[2:])
            j = time_join(procs, workdir, f"join{n}", addr, n - 1, args.join_deadline, joiner_flags)
            proc = j.pop("proc")
            row.update({f"joiner_{k}" if "rss" in k else k: v for k, v in j.items()})
            procs.stop(proc)
            print(
                f"  join: listening after {j['listen_s']} s, serving the last file after"
                f" {j['join_s']} s, joiner RSS {j['rss_mb']} MB",
                flush=True,
            )
        except (RuntimeError, TimeoutError) as e:
            row["join_error"] = str(e)
            print(f"  join FAILED: {e}", flush=True)
        out.append(row)
    for p in cl.nodes:
        procs.stop(p)
    return out


def run_bench(argv: list[str], pids: list[int], duration: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "doozer", "bench", *argv, "--json"]
    with CpuSampler(pids) as cpu:
        p = subprocess.run(
            cmd,
            capture_output=True,
            timeout=duration + 180,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.decode(errors='replace')[-1500:]}")
    row = orjson.loads(p.stdout)["results"][0]
    head = max(0.0, cpu.samples[-1][0] - cpu.samples[0][0] - duration - 1.0)
    row["server_cores"], row["machine_cores"] = cpu.cores(head, 1.0)
    return row


def fan_out(procs: Procs, workdir: Path, args: argparse.Namespace) -> list[dict]:
    cl = serving_doozer(procs, workdir / "watch", ["--hist", str(HIST), *args.serve_flags.split()])
    addrs = cl.leader_first()
    out = []
    try:
        for depth in (1, 16):
            argv = ["watch", "-a", ",".join(addrs), "--watchers", str(args.watchers)]
            argv += ["-c", "1", "-p", str(depth), "--procs", str(args.procs)]
            argv += ["-d", str(args.duration), "--warmup", "1"]
            r = run_bench(argv, cl.pids, args.duration)
            r["writer_depth"] = depth
            out.append(r)
            lat = r["latency_ms"]
            print(
                f"  {args.watchers} watchers, writer depth {depth}: {r['writes_per_s']:,.0f}"
                f" writes/s, {r['ops_per_s']:,.0f} deliveries/s, p50 {lat['p50']:.2f} ms,"
                f" p99 {lat['p99']:.2f} ms, lost {r['lost']}, errors {r['errors']}",
                flush=True,
            )
    finally:
        for p in cl.nodes:
            procs.stop(p)
    return out


def by_members(procs: Procs, workdir: Path, args: argparse.Namespace) -> list[dict]:
    out = []
    for n in args.members:
        cl = serving_doozer(procs, workdir / f"members{n}", args.serve_flags.split(), n=n)
        try:
            addrs = cl.leader_first()
            for conns, depth in ((64, 1), (16, 16)):
                r = set_load(addrs, conns, depth, cl.pids, args)
                r["members"] = n
                out.append(r)
                lat = r["latency_ms"]
                print(
                    f"  {n} member(s), {conns} clients x {depth}: {r['ops_per_s']:,.0f} SET/s,"
                    f" p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms,"
                    f" servers {r['server_cores']} cores, errors {r['errors']}",
                    flush=True,
                )
        finally:
            for p in cl.nodes:
                procs.stop(p)
    return out


def set_load(
    addrs: list[str], conns: int, depth: int, pids: list[int], args: argparse.Namespace
) -> dict:
    """`doozer bench set` over `addrs`, conns x depth, for --duration."""
    argv = ["set", "-a", ",".join(addrs), "-c", str(conns), "-p", str(depth)]
    argv += ["--procs", str(args.procs), "-d", str(args.duration), "--warmup", "1"]
    return run_bench(argv, pids, args.duration)


def hold_waits(addr: str, n: int, tag: str) -> list[socket.socket]:
    """100 connections to `addr` holding n one-shot WAITs between them, each
    on a path of its own that no write touches."""
    host, port = addr.rsplit(":", 1)
    socks = []
    for c in range(100):
        s = socket.create_connection((host, int(port)), timeout=60)
        lines = [
            b'{"tag":%d,"verb":"WAIT","path":"/wait/%s/c%d/k%d"}\n' % (i, tag.encode(), c, i)
            for i in range(n // 100)
        ]
        # WAITs register in request order: once the REV after them is
        # answered, they are all in place (none of them is ever answered)
        s.sendall(b"".join(lines) + b'{"tag":"in","verb":"REV"}\n')
        socks.append(s)
    for s in socks:
        got = b""
        while b'"in"' not in got:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError(f"{addr} closed a waiting connection")
            got += chunk
    return socks


def waiters(procs: Procs, workdir: Path, args: argparse.Namespace) -> list[dict]:
    cl = serving_doozer(procs, workdir / "waiters", args.serve_flags.split())
    addrs = cl.leader_first()
    out = []
    held: list[socket.socket] = []
    try:
        for n in (0, args.waiters):
            for i, a in enumerate(addrs if n else ()):
                held += hold_waits(a, n, f"n{i}")
            r = set_load(addrs, 16, 1, cl.pids, args)
            r["waiters_per_node"] = n
            out.append(r)
            lat = r["latency_ms"]
            print(
                f"  {n:,} WAITs per node: {r['ops_per_s']:,.0f} SET/s, p50 {lat['p50']:.2f} ms,"
                f" p99 {lat['p99']:.2f} ms, servers {r['server_cores']} cores",
                flush=True,
            )
    finally:
        for s in held:
            s.close()
        for p in cl.nodes:
            procs.stop(p)
    return out


def format_tables(res: dict[str, Any]) -> str:
    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.rjust(w[i]) for i, c in enumerate(head))]
        lines.append("  ".join("-" * x for x in w))
        lines += ["  ".join(c.rjust(w[i]) for i, c in enumerate(r)) for r in rows]
        return lines

    out: list[str] = []
    if res.get("tree"):
        out.append(f"tree size (100 B values, --hist {HIST}; RSS of the filled node, MB):")
        rows = []
        for r in res["tree"]:
            rows.append(
                [
                    f"{r['files']:,}",
                    f"{r['fill_sets_per_s']:,}",
                    f"{r['rss_mb']}",
                    f"{r['peak_rss_mb']}",
                    f"{r['data_dir_mb']}",
                    f"{r['snapshot_mb']}" + (" (dropped)" if r.get("snapshot_error") else ""),
                    f"{r.get('join_s', 'FAILED')}",
                    f"{r.get('joiner_rss_mb', '-')}",
                ]
            )
        out += table(
            [
                "files",
                "fill SET/s",
                "RSS",
                "peak RSS",
                "data dir MB",
                "snapshot MB",
                "join s",
                "joiner RSS",
            ],
            rows,
        )
        out.append("")
    if res.get("watch"):
        out.append("watch fan-out (three members, watchers spread over them):")
        rows = [
            [
                str(r["watchers"]),
                str(r["writer_depth"]),
                f"{r['writes_per_s']:,.0f}",
                f"{r['ops_per_s']:,.0f}",
                f"{r['latency_ms']['p50']:.2f}",
                f"{r['latency_ms']['p99']:.2f}",
                str(r["lost"]),
                f"{r['client_cpu']:.2f}",
            ]
            for r in res["watch"]
        ]
        out += table(
            ["watchers", "depth", "writes/s", "deliveries/s", "p50 ms", "p99 ms", "lost", "cli"],
            rows,
        )
        out.append("")
    if res.get("members"):
        out.append("SET throughput by cluster size (durable, clients spread over members):")
        rows = [
            [
                str(r["members"]),
                f"{r['conns']}x{r['depth']}",
                f"{r['ops_per_s']:,.0f}",
                f"{r['latency_ms']['p50']:.2f}",
                f"{r['latency_ms']['p99']:.2f}",
                f"{r['server_cores']:.2f}",
                f"{r['client_cpu']:.2f}",
                str(r["errors"]),
            ]
            for r in res["members"]
        ]
        out += table(
            ["members", "clients", "SET/s", "p50 ms", "p99 ms", "srv cores", "cli", "errors"],
            rows,
        )
    if res.get("waiters"):
        out.append("")
        out.append("SET/s with idle WAITs on paths of their own (three members, 16 clients):")
        rows = [
            [
                f"{r['waiters_per_node']:,}",
                f"{r['ops_per_s']:,.0f}",
                f"{r['latency_ms']['p50']:.2f}",
                f"{r['latency_ms']['p99']:.2f}",
                f"{r['server_cores']:.2f}",
                str(r["errors"]),
            ]
            for r in res["waiters"]
        ]
        out += table(["WAITs/node", "SET/s", "p50 ms", "p99 ms", "srv cores", "errors"], rows)
    return "\n".join(out)


def _ints(s: str) -> list[int]:
    return [int(x.replace("_", "")) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="10k files, 100 watchers, 2 s runs")
    ap.add_argument("--files", type=_ints, default=None, help="tree sizes (100000,1000000)")
    ap.add_argument("--watchers", type=int, default=None, help="watch fan-out (1000)")
    ap.add_argument("--members", type=_ints, default=[1, 3, 5], help="cluster sizes (1,3,5)")
    ap.add_argument("-d", "--duration", type=float, default=None, help="seconds per bench (5)")
    ap.add_argument("--procs", type=int, default=2, help="bench generator processes (2)")
    ap.add_argument("--fill-conns", type=int, default=4)
    ap.add_argument("--fill-depth", type=int, default=256)
    ap.add_argument("--join-deadline", type=float, default=120.0)
    ap.add_argument("--waiters", type=int, default=None, help="idle WAITs per node (10000)")
    ap.add_argument("--only", default="tree,watch,members,waiters", help="sections to run")
    ap.add_argument("--serve-flags", default="", help="extra `doozer serve` flags for every node")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=None, metavar="FILE")
    args = ap.parse_args(argv)
    if args.files is None:
        args.files = [10_000] if args.quick else [100_000, 1_000_000]
    if args.watchers is None:
        args.watchers = 100 if args.quick else 1000
    if args.waiters is None:
        args.waiters = 1000 if args.quick else 10_000
    if args.duration is None:
        args.duration = 2.0 if args.quick else 5.0
    sections = {s.strip() for s in args.only.split(",")}

    # Each watcher is a connection on some node and in some generator.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.watchers + 400 + 1024))  # + the waiters' 300
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="doozer-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Procs()
    atexit.register(procs.stop_all)
    install_signal_exit()
    res: dict[str, Any] = {"args": {k: v for k, v in vars(args).items()}}
    try:
        print(f"work dir {workdir}; load average {os.getloadavg()[0]:.2f}", flush=True)
        if "tree" in sections:
            print("tree size:", flush=True)
            res["tree"] = tree_size(procs, workdir, args.files, args)
        if "watch" in sections:
            print("watch fan-out:", flush=True)
            res["watch"] = fan_out(procs, workdir, args)
        if "members" in sections:
            print("throughput by members:", flush=True)
            res["members"] = by_members(procs, workdir, args)
        if "waiters" in sections:
            print("idle waiters:", flush=True)
            res["waiters"] = waiters(procs, workdir, args)
        print()
        print(format_tables(res))
        if args.json:
            Path(args.json).write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
        return 0
    except KeyboardInterrupt:
        print("scale: interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
