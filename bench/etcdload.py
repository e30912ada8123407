"""A load generator for etcd v3, through its JSON gateway, shaped like `doozer bench`.

    python bench/etcdload.py WORKLOAD... -a HOST:PORT[,HOST:PORT...] [-c 16] [-p 1]
                             [--procs 1] [-d 10] [--warmup 1] [--json]

It speaks raw HTTP/1.1 keep-alive (asyncio Protocols, optional pipelining,
requests prebuilt as bytes) to etcd's gateway (`/v3/kv/put`, `/v3/kv/range`,
`/v3/watch`), so that it costs about as little CPU per request as `doozer
bench` does per request to doozer; it reports its own CPU the same way
(`client_cpu`: the busiest generator process's share of one core), and
`--procs` spreads connections over processes. The workloads, key space,
value size and output rows are those of `doozer bench` (its Config, Plan and
summary are reused), so the two can be put side by side:

  get        linearizable range of one preloaded key (etcd's default)
  get-stale  serializable range (a member's local state)
  set        unconditional put over the key space
  mixed      get or put per request, --read-fraction of them reads
  watch      W watch streams on one prefix, one writer; delivery latency
  seq-set    one connection, depth 1: sequential put latency

Go's HTTP server answers a connection's pipelined requests one at a time, so
concurrency comes from connections (-c); -p > 1 only hides round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doozer.bench import (
    CONNECT_TIMEOUT,
    MEASURE,
    STAMP_LEN,
    WORKLOADS,
    BenchError,
    Config,
    LoadConn,
    Plan,
    RunState,
    WorkerResult,
    abandon,
    await_reply,
    close_all,
    drive,
    format_table,
    key_path,
    key_walk,
    line_up,
    measure,
    open_conn,
    parse_addr,
    put_keys,
    read_pattern,
    stamp,
    watch_dir,
)


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _post(host: str, path: str, body: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path.encode(), host.encode(), len(body), body)
    )


def put_request(host: str, key: str, value: bytes) -> bytes:
    body = orjson.dumps({"key": _b64(key), "value": _b64(value)})
    return _post(host, "/v3/kv/put", body)


def range_request(host: str, key: str, serializable: bool = False) -> bytes:
    req: dict[str, Any] = {"key": _b64(key)}
    if serializable:
        req["serializable"] = True
    return _post(host, "/v3/kv/range", orjson.dumps(req))


# --- HTTP/1.1 response framing ------------------------------------------------


def parse_response(buf: bytes | bytearray, pos: int) -> tuple[int, bytes, int] | None:
    """One complete response at buf[pos:]: (status, body, end offset), or None
    when more bytes are needed. Handles Content-Length and chunked bodies."""
    he = buf.find(b"\r\n\r\n", pos)
    if he < 0:
        return None
    status = int(buf[pos + 9 : pos + 12])
    start = he + 4
    i = buf.find(b"\r\nContent-Length: ", pos, he)
    if i >= 0:
        j = buf.find(b"\r\n", i + 18, he + 2)
        end = start + int(buf[i + 18 : j])
        if len(buf) < end:
            return None
        return status, bytes(buf[start:end]), end
    if buf.find(b"\r\nTransfer-Encoding: chunked", pos, he) < 0:
        return status, b"", start  # no body (e.g. 204)
    parts = []
    p = start
    while True:
        nl = buf.find(b"\r\n", p)
        if nl < 0:
            return None
        size = int(buf[p:nl].split(b";", 1)[0], 16)
        if size == 0:
            if len(buf) < nl + 4:
                return None
            return status, b"".join(parts), nl + 4
        if len(buf) < nl + 2 + size + 2:
            return None
        parts.append(bytes(buf[nl + 2 : nl + 2 + size]))
        p = nl + 2 + size + 2


class ChunkStream:
    """De-chunks a streamed HTTP/1.1 response body (a watch) into lines."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.headers_done = False
        self.status = 0
        self.body = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf
        buf += data
        p = 0
        if not self.headers_done:
            he = buf.find(b"\r\n\r\n")
            if he < 0:
                return []
            self.status = int(buf[9:12])
            self.headers_done = True
            p = he + 4
        body = self.body
        while True:
            nl = buf.find(b"\r\n", p)
            if nl < 0:
                break
            size = int(buf[p:nl].split(b";", 1)[0], 16)
            if len(buf) < nl + 2 + size + 2:
                break
            body += buf[nl + 2 : nl + 2 + size]
            p = nl + 2 + size + 2
        del buf[:p]
        if b"\n" not in body:
            return []
        lines = bytes(body).split(b"\n")
        body[:] = lines.pop()
        return [ln for ln in lines if ln]


# --- one process's run ------------------------------------------------------------


class _Conn(LoadConn):
    """A keep-alive connection: responses come back in request order, so the
    send times of in-flight requests are a FIFO. Outside a load (run None)
    `call` sends one request and resolves with (status, body)."""

    def __init__(self, run: RunState | None, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(run, loop)
        self.buf = bytearray()
        self.calls: deque[asyncio.Future[tuple[int, bytes]]] = deque()
        self.starts: deque[int] = deque()
        self.gen: Callable[[], bytes] | None = None

    def fail_calls(self) -> None:
        while self.calls:
            f = self.calls.popleft()
            if not f.done():
                f.set_exception(BenchError("connection lost"))

    def call(self, req: bytes) -> asyncio.Future[tuple[int, bytes]]:
        fut: asyncio.Future[tuple[int, bytes]] = self.loop.create_future()
        if self.transport is None or self.transport.is_closing():
            fut.set_exception(BenchError("connection lost"))
            return fut
        self.calls.append(fut)
        self.transport.write(req)
        return fut

    def start(self, gen: Callable[[], bytes], depth: int) -> None:
        self.gen = gen
        self._activate()
        self._issue(depth)

    def _issue(self, n: int) -> None:
        gen = self.gen
        assert gen is not None and self.transport is not None
        data = b"".join([gen() for _ in range(n)])
        t = time.perf_counter_ns()
        self.starts.extend([t] * n)
        self.outstanding += n
        self.transport.write(data)

    def _responses(self) -> list[tuple[int, bytes]]:
        buf = self.buf
        out = []
        pos = 0
        while True:
            r = parse_response(buf, pos)
            if r is None:
                break
            out.append((r[0], r[1]))
            pos = r[2]
        if pos:
            del buf[:pos]
        return out

    def _answer(self, resps: list[tuple[int, bytes]]) -> None:
        """Not loading: the responses answer control calls, in order."""
        for r in resps:
            if self.calls:
                f = self.calls.popleft()
                if not f.done():
                    f.set_result(r)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        self.buf += data
        resps = self._responses()
        run = self.run
        if run is None or not self.active:
            self._answer(resps)
            return
        if not resps:
            return
        measuring = run.phase == MEASURE
        starts = self.starts
        append = run.lat.append
        ok = 0
        for status, body in resps:
            t0 = starts.popleft()
            if status != 200:
                run.errors[_error_code(status, body)] += 1
            elif measuring:
                append(now - t0)
                ok += 1
        if ok:
            run.count(ok)
        n = len(resps)
        if self._settle(run, n):
            self._issue(n)


def _error_code(status: int, body: bytes) -> str:
    try:
        msg = orjson.loads(body).get("error") or ""
    except orjson.JSONDecodeError:
        msg = ""
    return f"HTTP_{status}" + (f" {msg[:60]}" if msg else "")


class _Writer(_Conn):
    """The watch workload's writer: each value carries its send time and phase."""

    def __init__(self, run: RunState, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(run, loop)
        self.phases: deque[int] = deque()

    def _issue(self, n: int) -> None:
        gen = self.gen
        assert gen is not None and self.transport is not None and self.run is not None
        phase = self.run.phase
        t = time.monotonic_ns()
        self.starts.extend([t] * n)
        self.phases.extend([phase] * n)
        self.outstanding += n
        self.transport.write(b"".join([gen() for _ in range(n)]))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.buf += data
        resps = self._responses()
        run = self.run
        assert run is not None
        if not self.active:
            self._answer(resps)
            return
        if not resps:
            return
        for status, body in resps:
            t0 = self.starts.popleft()
            phase = self.phases.popleft()
            if status != 200:
                run.errors[_error_code(status, body)] += 1
            elif phase == MEASURE:
                run.write_lat.append(now - t0)
                run.writes += 1
        if run.target is not None and run.writes >= run.target:
            run.reached()
        n = len(resps)
        if self._settle(run, n):
            self._issue(n)


class _Watcher(asyncio.Protocol):
    """One /v3/watch stream; records send-to-receipt delay of measured writes."""

    def __init__(self, run: RunState, loop: asyncio.AbstractEventLoop, end_key: bytes) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.stream = ChunkStream()
        self.end_key = end_key
        self.closing = False
        self.created: asyncio.Future[None] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.created.done():
            self.created.set_exception(BenchError("watch connection lost"))
        if not self.ended.done():
            if not self.closing:
                self.run.errors["CONN_LOST"] += 1
            self.ended.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        run = self.run
        append = run.lat.append
        n = 0
        for line in self.stream.feed(data):
            msg = orjson.loads(line)
            res = msg.get("result")
            if res is None:
                run.errors["WATCH_ERROR"] += 1
                if not self.ended.done():
                    self.ended.set_result(None)
                continue
            if res.get("created") and not self.created.done():
                self.created.set_result(None)
            for ev in res.get("events", ()):
                kv = ev["kv"]
                v = base64.b64decode(kv.get("value", ""))
                if v[20:21] == b"1":
                    append(now - int(v[:20]))
                    n += 1
                elif base64.b64decode(kv["key"]) == self.end_key and not self.ended.done():
                    self.ended.set_result(None)
        run.done += n


# --- request generators --------------------------------------------------------


def _make_gen(plan: Plan, cid: int, host: str) -> Callable[[], bytes]:
    paths = [key_path(plan.prefix, i) for i in range(plan.keys)]
    next_key = key_walk(plan.keys, cid)
    value = b"x" * plan.value_size
    w = plan.workload
    puts = reads = None
    if w in ("set", "seq-set", "mixed"):
        puts = [put_request(host, p, value) for p in paths]
    if w in ("get", "get-stale", "mixed"):
        reads = [range_request(host, p, serializable=w == "get-stale") for p in paths]

    if w in ("get", "get-stale"):
        assert reads is not None
        return lambda: reads[next_key()]
    if w in ("set", "seq-set"):
        assert puts is not None
        return lambda: puts[next_key()]
    if w == "mixed":
        assert puts is not None and reads is not None
        pattern = read_pattern(cid, plan.read_fraction)
        i = [0]

        def gen() -> bytes:
            i[0] = n = (i[0] + 1) & 4095
            return reads[next_key()] if pattern[n] else puts[next_key()]

        return gen
    raise ValueError(f"no generator for workload {w!r}")


def _watch_gen(plan: Plan, run: RunState, host: str) -> Callable[[], bytes]:
    d = watch_dir(plan.prefix)
    keys = [_b64(f"{d}/k{i}") for i in range(plan.keys)]
    pad = "x" * max(0, plan.value_size - STAMP_LEN)
    i = [0]

    def gen() -> bytes:
        k = i[0]
        i[0] = (k + 1) % len(keys)
        v = stamp(run.phase, pad)
        body = b'{"key":"%s","value":"%s"}' % (keys[k].encode(), _b64(v).encode())
        return _post(host, "/v3/kv/put", body)

    return gen


async def _checked(fut: asyncio.Future[tuple[int, bytes]], what: str) -> dict[str, Any]:
    status, body = await await_reply(fut, what)
    if status != 200:
        raise BenchError(f"{what}: HTTP {status} {body[:200]!r}")
    return orjson.loads(body)


def _host(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


async def preload(addr: tuple[str, int], prefix: str, keys: int, value_size: int) -> None:
    """Put every key once, pipelined 256 at a time, so reads find values."""
    loop = asyncio.get_running_loop()
    conn = await open_conn(loop, lambda: _Conn(None, loop), addr)
    value = b"x" * value_size
    try:
        await put_keys(
            keys,
            lambda i: conn.call(put_request(_host(addr), key_path(prefix, i), value)),
            lambda f: _checked(f, "preload put"),
        )
    finally:
        close_all([conn])


async def run_plan(plan: Plan, barrier: Any = None) -> WorkerResult:
    loop = asyncio.get_running_loop()
    run = RunState(plan, loop)
    conns: list[_Conn] = []
    watchers: list[_Watcher] = []
    writer: _Writer | None = None
    d = watch_dir(plan.prefix)
    end_key = f"{d}/end".encode()
    try:
        if plan.workload == "watch":
            # Watch from just past the current revision: every write of this
            # run comes later, however late a stream is created.
            ctl = await open_conn(loop, lambda: _Conn(None, loop), plan.addrs[0])
            try:
                r = await _checked(
                    ctl.call(range_request(_host(plan.addrs[0]), f"{d}/end")), "range"
                )
            finally:
                close_all([ctl])
            base = int(r["header"]["revision"])
            create = orjson.dumps(
                {
                    "create_request": {
                        "key": _b64(f"{d}/"),
                        "range_end": _b64(f"{d}0"),  # '0' follows '/': the whole prefix
                        "start_revision": base + 1,
                    }
                }
            )
            for cid in plan.conn_ids:
                addr = plan.addrs[cid % len(plan.addrs)]
                w = await open_conn(loop, lambda: _Watcher(run, loop, end_key), addr)
                watchers.append(w)
                assert w.transport is not None
                w.transport.write(_post(_host(addr), "/v3/watch", create))
            for w in watchers:
                await asyncio.wait_for(w.created, CONNECT_TIMEOUT)
            if plan.writer:
                writer = await open_conn(loop, lambda: _Writer(run, loop), plan.addrs[0])
        else:
            for cid in plan.conn_ids:
                addr = plan.addrs[cid % len(plan.addrs)]
                conns.append(await open_conn(loop, lambda: _Conn(run, loop), addr))
        line_up(barrier)
    except BaseException:
        abandon(barrier, [*conns, *watchers, writer])
        raise

    async def send_end(marker: str) -> None:
        assert writer is not None
        req = put_request(_host(plan.addrs[0]), end_key.decode(), marker.encode())
        await _checked(writer.call(req), "put end marker")

    if writer is not None:
        writer.start(_watch_gen(plan, run, _host(plan.addrs[0])), plan.depth)
    for i, c in enumerate(conns):
        cid = plan.conn_ids[i]
        c.start(_make_gen(plan, cid, _host(plan.addrs[cid % len(plan.addrs)])), plan.depth)
    return await measure(run, conns, writer, watchers, send_end)


def run(cfg: Config) -> dict[str, Any]:
    """Run one workload against etcd; the row has doozer bench's shape."""
    row = drive(cfg, run_plan, lambda c: preload(c.addrs[0], c.prefix, c.keys, c.value_size))
    row["target"] = "etcd"
    return row


# --- command line ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="etcdload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("workload", nargs="*", help=f"one or more of: {', '.join(WORKLOADS)}")
    p.add_argument("-a", "--addr", action="append", dest="addrs", required=True)
    p.add_argument("-c", "--conns", type=int, default=16)
    p.add_argument("-p", "--pipeline", type=int, default=1)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("-d", "--duration", type=float, default=None)
    p.add_argument("-n", "--ops", type=int, default=None)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--read-fraction", type=float, default=0.9)
    p.add_argument("--watchers", type=int, default=8)
    p.add_argument("--prefix", default="/bench")
    p.add_argument("--no-preload", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    addrs = [parse_addr(x) for item in a.addrs for x in item.split(",") if x.strip()]
    workloads = list(dict.fromkeys(a.workload or ["mixed"]))
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad or min(a.conns, a.pipeline, a.procs, a.keys, a.watchers) < 1:
        print(f"etcdload: bad arguments {bad or ''}", file=sys.stderr)
        return 2
    duration = a.duration if a.duration is not None or a.ops is not None else 10.0
    rows = []
    try:
        for w in workloads:
            cfg = Config(
                workload=w,
                addrs=addrs,
                conns=a.conns,
                depth=a.pipeline,
                procs=a.procs,
                value_size=max(a.value_size, STAMP_LEN) if w == "watch" else a.value_size,
                keys=a.keys,
                read_fraction=a.read_fraction,
                watchers=a.watchers,
                warmup=a.warmup,
                duration=duration,
                ops=a.ops,
                prefix=a.prefix.rstrip("/") or "/bench",
                preload=not a.no_preload,
            )
            rows.append(run(cfg))
    except BenchError as e:
        print(f"etcdload: {e}", file=sys.stderr)
        return 1
    if a.json:
        sys.stdout.write(orjson.dumps({"results": rows}, option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
