"""doozer against etcd, side by side, on this machine: `bench/compare.sh` runs this.

    python bench/compare.py [-d 5] [--rounds 2] [--procs 1] [--cases LIST]
                            [--wait-quiet S] [--json FILE] [--keep]

Starts a three-member etcd cluster and a three-member doozer cluster on
loopback, runs the same workloads against each in turns (doozer, etcd,
doozer, etcd, ...), and prints the medians and doozer/etcd ratios.

How the comparison is kept fair (printed with the results):
  - same machine, same run, both clusters up throughout; the turns alternate
    so that drift in the machine's load hits both alike;
  - durable on both: etcd's default fsync of its WAL, doozer without --mem;
    both data dirs under one work dir on one disk;
  - same keys (/bench/k0../bench/k999), same 100-byte values, same number of
    concurrent clients (connections, one request in flight each), spread
    round-robin over the three members in the same order, leader first
    (sequential SETs and the watch writer go to the leader on both);
  - both load generators are raw keep-alive clients of the same design
    (`doozer bench`, and bench/etcdload.py on etcd's JSON gateway); each
    reports its CPU, and the servers' CPU is sampled from /proc.

etcd is driven through its HTTP/JSON gateway (the same gRPC service, reached
over HTTP/1.1), since Debian ships no gRPC load tool for it (its
`benchmark` tool is not packaged; `etcdctl check perf` is a fixed coarse
load). The gateway costs etcd some CPU per request that a Go gRPC client
would not.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- processes we start, and only those ---------------------------------------------


class Procs:
    """Every server this run starts, each in its own session (process group),
    so that stopping it stops all it spawned and nothing else."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Any] = []

    def start(
        self, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        f = open(log, "ab")  # noqa: SIM115 - closed in stop_all
        p = subprocess.Popen(
            argv,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self.procs.append(p)
        self.logs.append(f)
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 10.0) -> None:
        if p.poll() is None:
            _killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _killpg(p.pid, signal.SIGKILL)  # the group, even if the leader is gone
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                _killpg(p.pid, signal.SIGTERM)
        end = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(p.pid, signal.SIGKILL)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        for f in self.logs:
            f.close()
        self.logs.clear()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def install_signal_exit() -> None:
    """SIGTERM/SIGHUP end the run through the same `finally` as Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(cond: Callable[[], Any], deadline_s: float, what: str) -> Any:
    end = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            v = cond()
            if v:
                return v
        except (OSError, ValueError, KeyError) as e:
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not within {deadline_s:g} s (last error: {last!r})")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError):
        return 0.0


def proc_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_busy_s() -> float:
    """CPU seconds spent not idle, summed over cores (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / CLK_TCK


class CpuSampler:
    """Samples the CPU of some pids and of the whole machine while a run
    lasts; reports cores used over the middle of the run (the load's steady
    state, without start-up and drain)."""

    def __init__(self, pids: list[int], interval: float = 0.25) -> None:
        self.pids = pids
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        self.samples.append(
            (time.monotonic(), sum(proc_cpu_s(p) for p in self.pids), machine_busy_s())
        )

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> CpuSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self._sample()

    def cores(self, skip_start: float, skip_end: float) -> tuple[float, float]:
        """(servers' cores, machine's busy cores) between start+skip_start and end-skip_end."""
        s = self.samples
        if len(s) < 2:
            return 0.0, 0.0
        lo_t, hi_t = s[0][0] + skip_start, s[-1][0] - skip_end
        inside = [x for x in s if lo_t <= x[0] <= hi_t]
        if len(inside) < 2:
            inside = [s[0], s[-1]]
        a, b = inside[0], inside[-1]
        dt = max(b[0] - a[0], 1e-9)
        return round((b[1] - a[1]) / dt, 2), round((b[2] - a[2]) / dt, 2)


# --- the two clusters -------------------------------------------------------------------


def doozer_call(addr: str, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(orjson.dumps(req) + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError(f"{addr} closed the connection")
            buf += chunk
        return orjson.loads(buf.split(b"\n", 1)[0])


@dataclass
class DoozerCluster:
    """n durable doozer nodes on loopback; the second and later attach to the first."""

    procs: Procs
    workdir: Path
    n: int = 3
    extra: list[str] = field(default_factory=list)
    name: str = "doozer"  # data dirs and logs: NAME0, NAME0.log, ...
    root: Path = ROOT  # the tree whose doozer runs (bench/abba.py runs two)
    addrs: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    nodes: list[subprocess.Popen] = field(default_factory=list)

    def argv(self, addr: str, datadir: Path, attach: str | None) -> list[str]:
        # -P: doozer from PYTHONPATH (self.root), never from the working dir
        argv = [sys.executable, "-P", "-m", "doozer", "serve", "-l", addr, "-w", "off"]
        argv += ["-d", str(datadir), "--election-timeout", "0.5", *self.extra]
        if attach:
            argv += ["-a", attach]
        else:
            argv += [f"--cals={self.n}"]
        return argv

    def start_node(self, i: int, port: int, attach: str | None) -> str:
        """Start node i and wait until it answers SELF (a joiner: once joined)."""
        addr = f"127.0.0.1:{port}"
        d = self.workdir / f"{self.name}{i}"
        d.mkdir(parents=True, exist_ok=True)
        p = self.procs.start(
            self.argv(addr, d, attach),
            self.workdir / f"{self.name}{i}.log",
            env={"PYTHONPATH": str(self.root)},
        )
        self.nodes.append(p)
        self.pids.append(p.pid)
        self.addrs.append(addr)

        def up() -> bool:
            if p.poll() is not None:
                raise RuntimeError(f"doozer node {i} exited with {p.returncode}; see its log")
            return bool(doozer_call(addr, {"verb": "SELF"}, 1))

        wait_until(up, 30, f"doozer node {i} listening")
        return addr

    def start(self) -> DoozerCluster:
        ports = free_ports(self.n)
        first = self.start_node(0, ports[0], None)
        for i in range(1, self.n):
            self.start_node(i, ports[i], first)
        self.wait_members(self.n)
        return self

    def selves(self) -> dict[str, dict[str, Any]]:
        out = {}
        for a in self.addrs:
            try:
                out[a] = doozer_call(a, {"verb": "SELF"}, 2)
            except OSError:
                pass
        return out

    def wait_members(self, k: int, deadline: float = 60.0) -> None:
        def ok() -> bool:
            s = self.selves()
            members = [x for x in s.values() if x.get("role") in ("leader", "member")]
            leaders = {x.get("leader") for x in s.values()}
            return len(members) >= k and len(leaders) == 1 and "" not in leaders

        wait_until(ok, deadline, f"{k} doozer members agreeing on a leader")

    def leader_first(self) -> list[str]:
        s = self.selves()
        lead = [a for a, x in s.items() if x.get("role") == "leader"]
        return lead + [a for a in self.addrs if a not in lead]

    def probe(self, timeout: float = 5.0) -> None:
        """A SET and a linearizable GET on every node: the cluster serves."""
        for i, a in enumerate(self.addrs):
            path = f"/probe/n{i}"
            r = doozer_call(a, {"verb": "SET", "path": path, "value": "x", "timeout": timeout}, 15)
            if "err_code" in r:
                raise ProbeError(f"doozer SET on {a}: {r}")
            r = doozer_call(a, {"verb": "GET", "path": path, "timeout": timeout}, 15)
            if "err_code" in r or r.get("value") != "x":
                raise ProbeError(f"doozer linearizable GET on {a}: {r}")

    def stop(self) -> None:
        for p in self.nodes:
            self.procs.stop(p)


class ProbeError(Exception):
    """A fresh cluster that does not serve a write and a linearizable read."""


def serving_doozer(
    procs: Procs, workdir: Path, extra: list[str], tries: int = 3, n: int = 3
) -> DoozerCluster:
    """A fresh doozer cluster that passes the probe. A cluster that fails it
    is reported and replaced (a node bug: linearizable reads UNAVAILABLE on
    some fresh clusters while writes succeed), at most `tries` times."""
    for k in range(tries):
        cl = DoozerCluster(procs, workdir / f"try{k}", n=n, extra=extra)
        cl.workdir.mkdir(parents=True, exist_ok=True)
        cl.start()
        try:
            cl.probe()
            return cl
        except ProbeError as e:
            print(f"warning: fresh doozer cluster failed its probe: {e}; logs in {cl.workdir}")
            cl.stop()
    raise ProbeError(f"no serving doozer cluster in {tries} tries")


def etcd_post(addr: str, path: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://{addr}{path}",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return orjson.loads(r.read())


@dataclass
class EtcdCluster:
    """n etcd members on loopback: default settings (WAL fsync on), warn logging."""

    procs: Procs
    workdir: Path
    n: int = 3
    addrs: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    def start(self) -> EtcdCluster:
        ports = free_ports(2 * self.n)
        client, peer = ports[: self.n], ports[self.n :]
        initial = ",".join(f"e{i}=http://127.0.0.1:{peer[i]}" for i in range(self.n))
        for i in range(self.n):
            c, p = f"http://127.0.0.1:{client[i]}", f"http://127.0.0.1:{peer[i]}"
            argv = ["etcd", "--name", f"e{i}", "--data-dir", str(self.workdir / f"etcd{i}")]
            argv += ["--listen-client-urls", c, "--advertise-client-urls", c]
            argv += ["--listen-peer-urls", p, "--initial-advertise-peer-urls", p]
            argv += ["--initial-cluster", initial, "--initial-cluster-state", "new"]
            argv += ["--initial-cluster-token", f"compare-{os.getpid()}"]
            argv += ["--logger", "zap", "--log-level", "warn"]
            proc = self.procs.start(argv, self.workdir / f"etcd{i}.log")
            self.pids.append(proc.pid)
            self.addrs.append(f"127.0.0.1:{client[i]}")
        for a in self.addrs:
            wait_until(lambda a=a: self._healthy(a), 60, f"etcd at {a} healthy")
        return self

    @staticmethod
    def _healthy(addr: str) -> bool:
        with urllib.request.urlopen(f"http://{addr}/health", timeout=2) as r:
            return orjson.loads(r.read()).get("health") == "true"

    def leader_first(self) -> list[str]:
        lead = []
        for a in self.addrs:
            st = etcd_post(a, "/v3/maintenance/status", {})
            if st["header"]["member_id"] == st.get("leader"):
                lead.append(a)
        return lead + [a for a in self.addrs if a not in lead]

    def probe(self) -> None:
        for i, a in enumerate(self.addrs):
            key = base64.b64encode(f"/probe/n{i}".encode()).decode()
            etcd_post(a, "/v3/kv/put", {"key": key, "value": "eA=="})
            r = etcd_post(a, "/v3/kv/range", {"key": key})
            if r.get("kvs", [{}])[0].get("value") != "eA==":
                raise RuntimeError(f"etcd range on {a}: {r}")


# --- the runs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    workload: str
    conns: int


CASES = (
    Case("seq-set", "seq-set", 1),
    Case("set-16", "set", 16),
    Case("set-64", "set", 64),
    Case("get-64", "get", 64),
    Case("mixed-64", "mixed", 64),
    Case("watch", "watch", 8),
    Case("get-stale-64", "get-stale", 64),
)
DEFAULT_CASES = ("seq-set", "set-16", "set-64", "get-64", "mixed-64", "watch")


def bench_argv(system: str, case: Case, addrs: list[str], args: argparse.Namespace) -> list[str]:
    if system == "doozer":
        argv = [sys.executable, "-m", "doozer", "bench"]
    else:
        argv = [sys.executable, str(HERE / "etcdload.py")]
    argv += [case.workload, "-a", ",".join(addrs), "-p", "1", "-d", str(args.duration)]
    argv += ["--warmup", str(args.warmup), "--keys", str(args.keys), "--value-size", "100"]
    argv += ["--json"]
    if case.workload == "watch":
        argv += ["--watchers", str(case.conns), "-c", "1"]
    else:
        argv += ["-c", str(case.conns)]
    procs = 1 if case.conns == 1 else args.procs
    argv += ["--procs", str(procs)]
    return argv


def run_case(
    system: str,
    case: Case,
    addrs: list[str],
    server_pids: list[int],
    idle_pids: list[int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    argv = bench_argv(system, case, addrs, args)
    timeout = args.duration + args.warmup + 120
    with CpuSampler(server_pids) as cpu, CpuSampler(idle_pids) as idle:
        p = subprocess.run(
            argv, capture_output=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{system} {case.name}: exit {p.returncode}: {err}")
    row = orjson.loads(p.stdout)["results"][0]
    # The run's steady state: skip start-up (spawn, preload, warm-up) and drain.
    tail = 1.0
    head = max(0.0, cpu.samples[-1][0] - cpu.samples[0][0] - args.duration - tail)
    row["server_cores"], row["machine_cores"] = cpu.cores(head, tail)
    row["idle_cluster_cores"] = idle.cores(head, tail)[0]
    # What neither cluster nor the generator used: other work on the machine,
    # which makes every figure noisier.
    row["other_cores"] = round(
        max(
            0.0,
            row["machine_cores"]
            - row["server_cores"]
            - row["idle_cluster_cores"]
            - row["client_cpu_total"],
        ),
        2,
    )
    row["system"] = system
    row["case"] = case.name
    return row


def wait_quiet(our_pids: list[int], limit_s: float, max_other: float = 0.25) -> float:
    """Wait up to limit_s for the rest of the machine to use under max_other
    cores (sampled over 1 s); returns the last sample."""
    end = time.monotonic() + limit_s
    while True:
        with CpuSampler(our_pids) as s:
            time.sleep(1.0)
        ours, machine = s.cores(0, 0)
        other = max(0.0, machine - ours)
        if other < max_other or time.monotonic() >= end:
            return other
        time.sleep(1.0)


# --- the table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    label: str
    case: str
    pick: Callable[[dict[str, Any]], float]
    higher_better: bool
    target: str = ""  # doozer/etcd ratio the issue asks for


def _lat(key: str, q: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: r[key][q]


METRICS = (
    Metric("sequential SET p50 (ms)", "seq-set", _lat("latency_ms", "p50"), False, "<= 0.5"),
    Metric("sequential SET p99 (ms)", "seq-set", _lat("latency_ms", "p99"), False),
    Metric("SET/s, 16 clients", "set-16", lambda r: r["ops_per_s"], True),
    Metric("SET/s, 64 clients", "set-64", lambda r: r["ops_per_s"], True, ">= 3"),
    Metric("linearizable GET/s, 64 clients", "get-64", lambda r: r["ops_per_s"], True, ">= 3"),
    Metric("mixed 90/10 ops/s, 64 clients", "mixed-64", lambda r: r["ops_per_s"], True),
    Metric("watch delivery p50 (ms)", "watch", _lat("latency_ms", "p50"), False),
    Metric("watch delivery p99 (ms)", "watch", _lat("latency_ms", "p99"), False),
    Metric("stale GET/s, 64 clients", "get-stale-64", lambda r: r["ops_per_s"], True),
)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _fmt(v: float) -> str:
    if v != v:  # nan
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3f}"


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in METRICS:
        vals: dict[str, list[float]] = {"doozer": [], "etcd": []}
        cpu: dict[str, list[float]] = {"doozer": [], "etcd": []}
        srv: dict[str, list[float]] = {"doozer": [], "etcd": []}
        errs = {"doozer": 0, "etcd": 0}
        for r in rows:
            if r["case"] == m.case:
                vals[r["system"]].append(m.pick(r))
                cpu[r["system"]].append(r["client_cpu"])
                srv[r["system"]].append(r["server_cores"])
                errs[r["system"]] += r["errors"]
        if not vals["doozer"] and not vals["etcd"]:
            continue
        d, e = _median(vals["doozer"]), _median(vals["etcd"])
        ratio = d / e if e and e == e and d == d else float("nan")
        met = ""
        if m.target and ratio == ratio:
            op, want = m.target.split()
            met = "yes" if (ratio <= float(want) if op == "<=" else ratio >= float(want)) else "NO"
        out.append(
            {
                "metric": m.label,
                "doozer": d,
                "etcd": e,
                "ratio": ratio,
                "better": "higher" if m.higher_better else "lower",
                "target": m.target,
                "met": met,
                "doozer_runs": vals["doozer"],
                "etcd_runs": vals["etcd"],
                "client_cpu": {k: max(v) if v else 0.0 for k, v in cpu.items()},
                "server_cores": {k: _median(v) for k, v in srv.items()},
                "errors": errs,
            }
        )
    return out


def format_summary(items: list[dict[str, Any]]) -> str:
    head = [
        "metric",
        "doozer",
        "etcd",
        "doozer/etcd",
        "better",
        "target",
        "met",
        "cli cpu d/e",
        "srv cores d/e",
        "errors d/e",
    ]
    cells = [head]
    for it in items:
        cells.append(
            [
                it["metric"],
                _fmt(it["doozer"]),
                _fmt(it["etcd"]),
                "-" if it["ratio"] != it["ratio"] else f"{it['ratio']:.2f}",
                it["better"],
                it["target"] or "",
                it["met"],
                f"{it['client_cpu']['doozer']:.2f}/{it['client_cpu']['etcd']:.2f}",
                f"{it['server_cores']['doozer']:.2f}/{it['server_cores']['etcd']:.2f}",
                f"{it['errors']['doozer']}/{it['errors']['etcd']}",
            ]
        )
    w = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = []
    for j, r in enumerate(cells):
        lines.append(
            "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)).rstrip()
        )
        if j == 0:
            lines.append("  ".join("-" * x for x in w))
    return "\n".join(lines)


FAIRNESS = """\
How this is kept fair:
  - one machine, one run; both clusters up throughout; turns alternate: {order}
  - both durable: etcd with its default WAL fsync, doozer without --mem; data
    dirs under {workdir} (device {disk})
  - same {keys} keys under /bench, 100-byte values; N clients = N connections,
    one request in flight each, spread over the three members leader first
    (sequential SETs and the watch writer go to the leader on both)
  - generators: `doozer bench`, and bench/etcdload.py (raw keep-alive HTTP/1.1
    to etcd's JSON gateway), {procs} process(es) each; cli cpu = busiest
    generator process's share of a core; srv cores = the three servers' CPU
  - {dur:g} s measured after {warm:g} s of warm-up per run; medians of {rounds} round(s)"""


def _disk_of(path: Path) -> str:
    try:
        out = subprocess.run(
            ["df", "--output=source", str(path)], capture_output=True, text=True, timeout=5
        ).stdout.split()
        return out[-1] if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "-d", "--duration", type=float, default=5.0, help="seconds measured per run (5)"
    )
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per run (1)")
    ap.add_argument("--rounds", type=int, default=2, help="turns per system (2)")
    ap.add_argument("--procs", type=int, default=1, help="generator processes per run (1)")
    ap.add_argument("--keys", type=int, default=1000, help="key space (1000)")
    ap.add_argument(
        "--cases",
        default=",".join(DEFAULT_CASES),
        help=f"comma-separated, from: {', '.join(c.name for c in CASES)}",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run, wait up to S seconds for other work on the machine to stop",
    )
    ap.add_argument("--workdir", default=None, help="where data dirs go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, data)")
    ap.add_argument("--json", default=None, metavar="FILE", help="write every row and the summary")
    ap.add_argument(
        "--doozer-flags", default="", help="extra `doozer serve` flags, space-separated"
    )
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    by_name = {c.name: c for c in CASES}
    if any(n not in by_name for n in names) or args.rounds < 1:
        ap.error(f"bad --cases or --rounds; cases: {', '.join(by_name)}")
    cases = [by_name[n] for n in names]
    if shutil.which("etcd") is None:
        print("compare: etcd not installed (bench/compare.sh installs it)", file=sys.stderr)
        return 2

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="doozer-compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Procs()
    atexit.register(procs.stop_all)
    install_signal_exit()
    rows: list[dict[str, Any]] = []
    pids: dict[str, list[int]] = {}
    try:
        t0 = time.monotonic()
        etcd = EtcdCluster(procs, workdir).start()
        etcd.probe()
        dz = serving_doozer(procs, workdir, args.doozer_flags.split())
        addrs = {"doozer": dz.leader_first(), "etcd": etcd.leader_first()}
        pids.update(doozer=dz.pids, etcd=etcd.pids)
        ver = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout
        print(f"etcd {ver.split()[2] if ver else '?'}: {', '.join(addrs['etcd'])} (leader first)")
        print(f"doozer: {', '.join(addrs['doozer'])} (leader first)")
        print(
            f"clusters up in {time.monotonic() - t0:.1f} s; load average {os.getloadavg()[0]:.2f}"
        )
        order = ["doozer", "etcd"]
        for rnd in range(args.rounds):
            for system in order:
                for case in cases:
                    idle = [q for k, v in pids.items() if k != system for q in v]
                    if args.wait_quiet > 0:
                        wait_quiet(idle + pids[system], args.wait_quiet)
                    r = run_case(system, case, addrs[system], pids[system], idle, args)
                    r["round"] = rnd
                    rows.append(r)
                    lat = r["latency_ms"]
                    print(
                        f"  round {rnd + 1} {system:6} {case.name:12} {r['ops_per_s']:>9,.0f} ops/s"
                        f"  p50 {lat['p50']:7.3f}  p99 {lat['p99']:7.3f} ms"
                        f"  cli cpu {r['client_cpu']:.2f}  srv {r['server_cores']:.2f}"
                        f"  other {r['other_cores']:.2f} cores  errors {r['errors']}",
                        flush=True,
                    )
        items = summary(rows)
        print()
        print(
            FAIRNESS.format(
                order=" ".join(["doozer etcd"] * args.rounds),
                workdir=workdir,
                disk=_disk_of(workdir),
                keys=args.keys,
                procs=args.procs,
                dur=args.duration,
                warm=args.warmup,
                rounds=args.rounds,
            )
        )
        print()
        print(format_summary(items))
        other = statistics.median(r["other_cores"] for r in rows)
        print(f"other processes on the machine used a median {other:.2f} cores during the runs")
        if other > 0.3:
            print("warning: the machine was not quiet; figures are noisier than usual")
        busy = [r for r in rows if r["client_cpu"] >= 0.9]
        if busy:
            print(
                f"warning: a load generator used >= 90% of a core in {len(busy)} run(s):"
                " raise --procs"
            )
        if args.json:
            Path(args.json).write_bytes(
                orjson.dumps(
                    {"rows": rows, "summary": items, "args": vars(args), "pids": pids},
                    option=orjson.OPT_INDENT_2,
                )
            )
        return 0
    except KeyboardInterrupt:
        print("compare: interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
