"""Tests for `doozer bench`: pure helpers, every workload against a small fake
node (in a thread), and every workload against the real node when it exists.

Run as a script (`python tests/test_bench.py PORT`), this file serves the fake
node on 127.0.0.1:PORT, for measuring the generator by hand.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from doozer import bench  # noqa: E402

# --- a fake node: SET/GET/REV/WATCH/CANCEL/ACCESS per protocol.md, in memory ---


def _glob_re(glob: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)


class FakeState:
    def __init__(self, secret: str | None = None, close_after: int | None = None) -> None:
        self.secret = secret
        self.close_after = close_after  # drop each connection after this many requests
        self.files: dict[str, tuple[str, int]] = {}
        self.rev = 0
        self.events: list[dict[str, Any]] = []
        self.watches: list[tuple[FakeConn, Any, re.Pattern[str]]] = []
        self.accepted = 0
        self.verbs: Counter[str] = Counter()


class FakeConn(asyncio.Protocol):
    def __init__(self, st: FakeState) -> None:
        self.st = st
        self.buf = b""
        self.authed = st.secret is None
        self.nreq = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.st.accepted += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.st.watches = [w for w in self.st.watches if w[0] is not self]

    def data_received(self, data: bytes) -> None:
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        out: list[bytes] = []
        for line in lines:
            if not line.strip():
                continue
            self.nreq += 1
            if self.st.close_after is not None and self.nreq > self.st.close_after:
                assert self.transport is not None
                self.transport.close()
                return
            r = self.handle(orjson.loads(line))
            if r is not None:
                out.append(_line(r))
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def handle(self, req: dict[str, Any]) -> dict[str, Any] | None:
        st = self.st
        verb = str(req.get("verb", "")).upper()
        st.verbs[verb] += 1
        tagged = {"tag": req["tag"]} if "tag" in req else {}
        if verb == "ACCESS":
            if st.secret is not None and req.get("value") != st.secret:
                return {**tagged, "err_code": "PERMISSION", "err_detail": "wrong secret"}
            self.authed = True
            return tagged
        if verb == "REV":
            return {**tagged, "rev": st.rev}
        if not self.authed:
            return {**tagged, "err_code": "PERMISSION", "err_detail": "send ACCESS first"}
        if verb == "GET":
            value, rev = st.files.get(req["path"], ("", 0))
            return {**tagged, "value": value, "rev": rev, "snap_rev": st.rev}
        if verb == "SET":
            st.rev += 1
            st.files[req["path"]] = (req["value"], st.rev)
            ev = {"path": req["path"], "rev": st.rev, "value": req["value"], "flags": 4}
            st.events.append(ev)
            if len(st.events) > 4000:  # keep a history window, as a node does
                del st.events[:2000]
            for conn, tag, pat in st.watches:
                if pat.match(ev["path"]) and conn.transport is not None:
                    conn.transport.write(_line({"tag": tag, **ev}))
            return {**tagged, "rev": st.rev}
        if verb == "WATCH":
            pat = _glob_re(req["path"])
            since = req.get("rev", st.rev + 1)
            assert self.transport is not None
            for ev in st.events:
                if ev["rev"] >= since and pat.match(ev["path"]):
                    self.transport.write(_line({**tagged, **ev}))
            st.watches.append((self, req["tag"], pat))
            return None
        if verb == "CANCEL":
            st.watches = [w for w in st.watches if not (w[0] is self and w[1] == req["other_tag"])]
            return tagged
        return {**tagged, "err_code": "UNKNOWN_VERB", "err_detail": verb}


class FakeNode:
    """A fake node on its own event loop in a thread."""

    def __init__(self, **kw: Any) -> None:
        self.st = FakeState(**kw)
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.AbstractServer | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> FakeNode:
        self.server = self.loop.run_until_complete(
            self.loop.create_server(lambda: FakeConn(self.st), "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        async def shutdown() -> None:
            assert self.server is not None
            self.server.close()
            for conn, _, _ in list(self.st.watches):
                if conn.transport is not None:
                    conn.transport.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(autouse=True)
def _no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOOZER_SECRET", raising=False)


@pytest.fixture
def fake() -> Iterator[FakeNode]:
    with FakeNode() as node:
        yield node


FAST = ["-d", "0.3", "--warmup", "0.1", "--json"]


def run_bench(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    rc = bench.main(list(argv))
    out = capsys.readouterr().out
    return rc, orjson.loads(out) if "--json" in argv and rc == 0 else out


def check_row(row: dict[str, Any], workload: str) -> None:
    for k in ("workload", "conns", "depth", "procs", "ops", "ops_per_s", "errors", "client_cpu"):
        assert k in row, k
    assert row["workload"] == workload
    assert set(row["latency_ms"]) == {"p50", "p90", "p99", "p999", "max", "mean"}
    lat = row["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert row["ops"] > 0 and row["ops_per_s"] > 0
    assert row["errors"] == 0, row["error_codes"]
    assert row["client_cpu"] >= 0


# --- pure helpers ---------------------------------------------------------------


def test_histogram_percentiles_within_bucket_width() -> None:
    samples = [i * 1000 for i in range(1, 100_001)]  # 1 µs .. 100 ms, uniform
    lat = bench.Latency.of(array("q", samples))
    s = lat.summary_ms()
    for key, want in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)):
        assert abs(s[key] - want) / want < 0.011, (key, s[key])
    assert s["max"] == 100.0
    assert abs(s["mean"] - 50.0005) < 1e-3
    # merging per-process halves gives the same answer as the whole
    halves = [
        bench.Latency.of(array("q", samples[::2])),
        bench.Latency.of(array("q", samples[1::2])),
    ]
    assert bench.Latency.merge(halves).summary_ms() == s


def test_percentile_edges() -> None:
    assert bench.Latency().summary_ms()["p99"] == 0.0
    one = bench.Latency.of(array("q", [123_456]))
    assert one.summary_ms()["p50"] == one.summary_ms()["max"] == 0.1235
    tiny = bench.Latency.of(array("q", [10, 20, 5_000_000_000_000]))  # below / above range
    s = tiny.summary_ms()
    assert s["p50"] <= 0.001 and s["max"] == 5_000_000.0


def test_parse_addr() -> None:
    assert bench.parse_addr("10.0.0.1:8046") == ("10.0.0.1", 8046)
    assert bench.parse_addr("[::1]:9") == ("::1", 9)
    assert bench.parse_addr("8047") == ("127.0.0.1", 8047)
    with pytest.raises(ValueError):
        bench.parse_addr("nohost")


def test_key_walk_touches_every_key_once_per_cycle() -> None:
    # 104729 is the stride itself: the walk must fall back to a stride of 1.
    for keys in (1, 6, 1000, 104729):
        for cid in (0, 5):
            walk = bench.key_walk(keys, cid)
            seen = [walk() for _ in range(keys)]
            assert sorted(seen) == list(range(keys)), (keys, cid)
            assert walk() == seen[0]
    assert bench.key_walk(1000, 0)() != bench.key_walk(1000, 1)()  # connections spread out


def test_plans_split_connections_over_processes() -> None:
    cfg = bench.Config(workload="set", addrs=[("h", 1)], conns=5, procs=2, ops=7)
    plans = bench.plans_for(cfg)
    assert [p.conn_ids for p in plans] == [[0, 2, 4], [1, 3]]
    assert [p.ops for p in plans] == [4, 3]
    w = bench.plans_for(bench.Config(workload="watch", addrs=[("h", 1)], watchers=3, procs=8))
    assert [p.conn_ids for p in w] == [[0], [1], [2]]
    assert [p.writer for p in w] == [True, False, False]


def test_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers())
    monkeypatch.setenv("DOOZER_SECRET", "from-env")
    args = parser.parse_args(["bench", "-a", "h:1,h:2", "-a", "h:3", "get", "watch", "get"])
    assert args.func is bench.main_args
    cfgs = bench.configs_from_args(args)
    assert [c.workload for c in cfgs] == ["get", "watch"]
    assert cfgs[0].addrs == [("h", 1), ("h", 2), ("h", 3)]
    assert cfgs[0].secret == "from-env" and cfgs[0].duration == bench.DEFAULT_DURATION
    assert (cfgs[0].conns, cfgs[0].depth, cfgs[0].value_size) == (16, 16, 100)
    args = parser.parse_args(["bench", "-n", "10", "--secret", "s", "--value-size", "3", "watch"])
    (cfg,) = bench.configs_from_args(args)
    assert cfg.duration is None and cfg.ops == 10 and cfg.secret == "s"
    assert cfg.value_size == 21  # room for the watch stamp
    args = parser.parse_args(["bench"])
    assert [c.workload for c in bench.configs_from_args(args)] == ["mixed"]
    with pytest.raises(ValueError):
        bench.configs_from_args(parser.parse_args(["bench", "nope"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--read-fraction", "1.5"])


# --- against the fake node --------------------------------------------------------


@pytest.mark.parametrize("workload", bench.WORKLOADS)
def test_workload_against_fake(
    fake: FakeNode, capsys: pytest.CaptureFixture[str], workload: str
) -> None:
    rc, out = run_bench(capsys, workload, "-a", fake.addr, "-c", "4", "-p", "8", *FAST)
    assert rc == 0
    (row,) = out["results"]
    check_row(row, workload)
    verbs = fake.st.verbs
    if workload == "seq-set":
        assert (row["conns"], row["depth"]) == (1, 1)
    if workload in ("get", "get-stale"):
        assert verbs["GET"] > 0 and verbs["SET"] == 1000  # the preload only
        assert fake.st.files["/bench/k999"][0] == "x" * 100
    if workload == "mixed":
        assert verbs["GET"] > 2 * (verbs["SET"] - 1000) > 0
    if workload == "watch":
        assert row["watchers"] == 8 and row["lost"] == 0
        assert row["deliveries"] == row["ops"] == 8 * row["writes"] > 0
        assert verbs["WATCH"] == 8
        assert "/bench/watch/end" in fake.st.files


def test_table_output(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_bench(capsys, "set", "watch", "-a", fake.addr, "-d", "0.2", "--warmup", "0")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "workload", "conns", "depth", "procs", "ops", "ops/s",
        "p50", "p90", "p99", "p99.9", "max", "errors", "cpu",
    ]  # fmt: skip
    assert lines[1].split()[0] == "set" and lines[2].split()[0] == "watch"
    assert any(line.startswith("watch: 8 watchers") for line in lines)


def test_op_count(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_bench(capsys, "set", "-a", fake.addr, "-c", "2", "-p", "4", "-n", "300",
                        "--warmup", "0", "--json")  # fmt: skip
    assert rc == 0
    (row,) = out["results"]
    # each connection may overshoot by the replies that were already in flight
    assert 300 <= row["ops"] <= 300 + 2 * 4
    assert row["errors"] == 0


def test_connections_round_robin(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeNode() as a, FakeNode() as b:
        rc, _ = run_bench(capsys, "set", "-a", a.addr, "-a", b.addr, "-c", "5", *FAST)
        assert rc == 0
        assert (a.st.accepted, b.st.accepted) == (3, 2)
        assert a.st.verbs["SET"] > 0 and b.st.verbs["SET"] > 0


def test_secret(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeNode(secret="s3") as node:
        rc, out = run_bench(capsys, "set", "-a", node.addr, "--secret", "s3", *FAST)
        assert rc == 0 and out["results"][0]["errors"] == 0
        assert node.st.verbs["ACCESS"] == 16
        # without ACCESS every request is refused, and the bench counts it
        rc, out = run_bench(capsys, "set", "-a", node.addr, *FAST)
        (row,) = out["results"]
        assert rc == 0 and row["ops"] == 0 and row["error_codes"]["PERMISSION"] > 0
        monkeypatch.setenv("DOOZER_SECRET", "wrong")
        assert bench.main(["set", "-a", node.addr, *FAST]) == 1
        assert "ACCESS refused" in capsys.readouterr().err


def test_connection_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        rc = bench.main(["set", "-a", f"127.0.0.1:{port}", "-d", "0.2", "--warmup", "0"])
    assert rc == 1
    assert "cannot connect" in capsys.readouterr().err


def test_connection_refused_in_a_worker(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        argv = ["set", "--procs", "2", "-c", "2", "-a", f"127.0.0.1:{port}", "-d", "0.2"]
        assert bench.main(argv) == 1
    assert "cannot connect" in capsys.readouterr().err


def test_lost_connections_are_counted_not_hung(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeNode(close_after=50) as node:
        rc, out = run_bench(capsys, "set", "-a", node.addr, "-c", "3", "-p", "4", "-d", "5",
                            "--warmup", "0", "--json")  # fmt: skip
    assert rc == 0
    (row,) = out["results"]
    assert row["error_codes"].get("CONN_LOST") == 3
    # every connection died after 50 requests; the run ends then, not at -d
    assert row["ops"] <= 150


@pytest.mark.parametrize("workload", ["set", "watch"])
def test_procs(fake: FakeNode, capsys: pytest.CaptureFixture[str], workload: str) -> None:
    rc, out = run_bench(
        capsys, workload, "-a", fake.addr, "--procs", "2", "-c", "4", "--watchers", "4",
        "-d", "0.5", "--warmup", "0.1", "--json",
    )  # fmt: skip
    assert rc == 0
    (row,) = out["results"]
    check_row(row, workload)
    assert row["procs"] == 2
    assert row["client_cpu_total"] >= row["client_cpu"]
    if workload == "watch":
        assert row["deliveries"] == 4 * row["writes"] and row["lost"] == 0


# --- against the real node -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"node exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("node did not listen in time")


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "doozer" / "server.py").exists(), reason="no doozer/server.py yet")
def test_workloads_against_real_node(tmp_path: Path) -> None:
    import signal

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DOOZER_SECRET", None)
    log = open(tmp_path / "node.log", "wb")  # noqa: SIM115
    node = subprocess.Popen(
        [sys.executable, "-m", "doozer", "serve", "-l", f"127.0.0.1:{port}", "--mem", "-w", "off"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        _wait_port(port, node, time.monotonic() + 30)
        for workload in bench.WORKLOADS:
            done = subprocess.run(
                [sys.executable, "-m", "doozer", "bench", workload, "-a", f"127.0.0.1:{port}",
                 "-c", "4", "-p", "4", "--watchers", "4", "-d", "1", "--warmup", "0.2", "--json"],
                cwd=ROOT, env=env, capture_output=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr.decode()
            (row,) = orjson.loads(done.stdout)["results"]
            check_row(row, workload)
    finally:
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait(timeout=10)
        log.close()


if __name__ == "__main__":
    # Serve the fake node in the foreground: python tests/test_bench.py PORT

    async def _serve(port: int) -> None:
        st = FakeState()
        server = await asyncio.get_running_loop().create_server(
            lambda: FakeConn(st), "127.0.0.1", port
        )
        print(f"fake node listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        async with server:
            await server.serve_forever()

    import uvloop

    uvloop.run(_serve(int(sys.argv[1]) if len(sys.argv) > 1 else 8046))
