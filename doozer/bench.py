"""`doozer bench`: a load generator that speaks the wire protocol directly.

It carries its own minimal client (an asyncio.Protocol per connection, tagged
pipelined requests, one perf_counter_ns per received chunk) rather than the
client library, so that the generator costs as little CPU per request as
possible. It reports its own CPU use so an operator can tell when it, not the
node, is the bottleneck; `--procs` spreads the connections over processes.

Workloads:
  get        linearizable GET of preloaded keys
  get-stale  GET with "stale": true
  set        unconditional SET over the key space
  mixed      GET or SET per request, --read-fraction of them reads
  watch      W watchers on one glob, one writer; delivery latency and rate
  seq-set    one connection, depth 1: sequential SET latency

Output: one row per workload; latencies in ms from send to reply (watch: from
the write's send to each watcher's receipt, ops = deliveries); cpu is the
busiest generator process's share of one core (near 1: add --procs).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import queue
import random
import resource
import sys
import time
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import orjson

WORKLOADS = ("get", "get-stale", "set", "mixed", "watch", "seq-set")
DEFAULT_ADDR = "127.0.0.1:8046"
DEFAULT_DURATION = 10.0
# How long the end of a run may take (outstanding replies, watch drain) before
# the run gives up on them; longer than the node's default request timeout.
DRAIN_TIMEOUT = 15.0
CONNECT_TIMEOUT = 5.0
# Below this many bytes the stamp of a watch value would not fit.
STAMP_LEN = 21

WARMUP, MEASURE, DRAIN = 0, 1, 2

_dumps = orjson.dumps
_loads = orjson.loads
_NL = orjson.OPT_APPEND_NEWLINE

_T = TypeVar("_T")
_P = TypeVar("_P", bound=asyncio.BaseProtocol)


class BenchError(Exception):
    """A run that cannot go on: a refused connection, a rejected secret, a dead worker."""


# --- latency histogram ----------------------------------------------------
#
# Each process keeps raw samples (8 bytes each) while it runs and turns them
# into a log-bucket histogram at the end, so that processes can be merged
# without shipping or re-sorting every sample. Buckets are 1 % wide.

_RATIO = 1.01
_BOUNDS: list[int] = []
_b = 1000.0  # 1 µs: everything below shares the first bucket
while _b < 1e12:
    _BOUNDS.append(int(_b))
    _b *= _RATIO
del _b


def histogram(samples: array | list[int]) -> dict[int, int]:
    """Bucket index -> count for latency samples in ns (bucket i holds values
    up to _BOUNDS[i]; index len(_BOUNDS) holds anything longer)."""
    s = sorted(samples)
    n = len(s)
    out: dict[int, int] = {}
    prev = 0
    for i, bound in enumerate(_BOUNDS):
        if prev == n:
            break
        c = bisect_right(s, bound, prev)
        if c > prev:
            out[i] = c - prev
            prev = c
    if prev < n:
        out[len(_BOUNDS)] = n - prev
    return out


def merge_histograms(hists: list[dict[int, int]]) -> dict[int, int]:
    total: Counter[int] = Counter()
    for h in hists:
        total.update(h)
    return dict(total)


def percentile(hist: dict[int, int], q: float, lo: int = 0, hi: int | None = None) -> float:
    """The q-quantile (0 < q <= 1) in ns, as the geometric middle of its
    bucket, clamped to the exact [lo, hi] of the samples."""
    n = sum(hist.values())
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(q * n))
    seen = 0
    for i in sorted(hist):
        seen += hist[i]
        if seen >= rank:
            upper = _BOUNDS[i] if i < len(_BOUNDS) else (hi or _BOUNDS[-1])
            lower = _BOUNDS[i - 1] if 0 < i <= len(_BOUNDS) else upper / _RATIO
            v = math.sqrt(lower * upper)
            v = max(v, lo)
            if hi is not None:
                v = min(v, hi)
            return v
    return float(hi or 0)


@dataclass
class Latency:
    """Latency summary that merges across processes."""

    hist: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total_ns: int = 0
    min_ns: int = 0
    max_ns: int = 0

    @classmethod
    def of(cls, samples: array) -> Latency:
        if not samples:
            return cls()
        return cls(histogram(samples), len(samples), sum(samples), min(samples), max(samples))

    @classmethod
    def merge(cls, parts: list[Latency]) -> Latency:
        parts = [p for p in parts if p.count]
        if not parts:
            return cls()
        return cls(
            merge_histograms([p.hist for p in parts]),
            sum(p.count for p in parts),
            sum(p.total_ns for p in parts),
            min(p.min_ns for p in parts),
            max(p.max_ns for p in parts),
        )

    def summary_ms(self) -> dict[str, float]:
        def ms(ns: float) -> float:
            return round(ns / 1e6, 4)

        if not self.count:
            return {k: 0.0 for k in ("p50", "p90", "p99", "p999", "max", "mean")}
        lo, hi = self.min_ns, self.max_ns
        return {
            "p50": ms(percentile(self.hist, 0.50, lo, hi)),
            "p90": ms(percentile(self.hist, 0.90, lo, hi)),
            "p99": ms(percentile(self.hist, 0.99, lo, hi)),
            "p999": ms(percentile(self.hist, 0.999, lo, hi)),
            "max": ms(hi),
            "mean": ms(self.total_ns / self.count),
        }


# --- the plan each process runs -------------------------------------------


@dataclass
class Plan:
    """What one process does; picklable, so it crosses to spawned workers."""

    workload: str
    addrs: list[tuple[str, int]]
    conn_ids: list[int]  # global connection (or watcher) indices this process drives
    depth: int
    value_size: int
    keys: int
    read_fraction: float
    warmup: float
    duration: float | None  # None: until `ops` measured operations
    ops: int | None
    secret: str | None
    prefix: str
    writer: bool = False  # watch: this process hosts the single writer
    total_watchers: int = 0


@dataclass
class WorkerResult:
    ops: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency: Latency = field(default_factory=Latency)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    # watch only
    writes: int = 0
    write_latency: Latency = field(default_factory=Latency)
    writer_wall_s: float = 0.0


# How a process runs its Plan: run_plan(plan, barrier) in doozer.bench and in
# bench/etcdload.py; spawn() hands it to the workers by name.
RunPlan = Callable[[Plan, Any], Coroutine[Any, Any, WorkerResult]]


def key_path(prefix: str, i: int) -> str:
    return f"{prefix}/k{i}"


def watch_dir(prefix: str) -> str:
    return f"{prefix}/watch"


def parse_addr(s: str) -> tuple[str, int]:
    """host:port, [v6]:port, or a bare port on 127.0.0.1."""
    s = s.strip()
    if s.isdigit():
        return "127.0.0.1", int(s)
    if s.startswith("["):
        host, _, port = s[1:].partition("]:")
    else:
        host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"bad address {s!r}: want host:port")
    return host, int(port)


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def stamp(phase: int, pad: str = "") -> str:
    """A watch value: its send time (20 digits) and the phase it was sent in,
    so that watchers in any process can time and classify the write."""
    return f"{time.monotonic_ns():020d}{phase}{pad}"


# --- the driver, whatever the protocol (bench/etcdload.py uses it too) --------


class RunState:
    """State shared by the connections of one process."""

    def __init__(self, plan: Plan, loop: asyncio.AbstractEventLoop) -> None:
        self.plan = plan
        self.loop = loop
        self.phase = WARMUP
        self.lat = array("q")
        self.done = 0  # operations completed while measuring
        self.target = plan.ops
        self.errors: Counter[str] = Counter()
        self.live = 0  # connections still issuing or owing replies
        self.finished: asyncio.Future[None] = loop.create_future()  # op target reached / all lost
        self.drained: asyncio.Future[None] = loop.create_future()
        # watch
        self.writes = 0
        self.write_lat = array("q")

    def conn_idle(self) -> None:
        """A connection has nothing outstanding and will issue no more."""
        self.live -= 1
        if self.live <= 0:
            if not self.drained.done():
                self.drained.set_result(None)
            if not self.finished.done():
                self.finished.set_result(None)

    def reached(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def count(self, ok: int) -> None:
        """ok more operations succeeded while measuring."""
        self.done += ok
        if self.target is not None and self.done >= self.target:
            self.reached()


class LoadConn(asyncio.Protocol):
    """A load connection's bookkeeping, whatever it speaks: it is `active` from
    start until it issues no more and owes no replies, and then the run hears
    conn_idle, once. Subclasses frame the requests and replies."""

    def __init__(self, run: RunState | None, loop: asyncio.AbstractEventLoop) -> None:
        self.run = run
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.outstanding = 0
        self.active = False
        self.closing = False  # closed by us: no error to count
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.fail_calls()
        run = self.run
        if self.active and run is not None:
            self.active = False
            if not self.closing:
                run.errors["CONN_LOST"] += 1
            self.outstanding = 0
            run.conn_idle()

    def fail_calls(self) -> None:
        """Fail the control calls still waiting for replies; the connection is gone."""

    def _activate(self) -> None:
        assert self.run is not None
        self.active = True
        self.run.live += 1

    def _settle(self, run: RunState, n: int) -> bool:
        """n load replies are in. True: issue n more; False: the run is
        draining, and the connection goes idle once it owes nothing."""
        self.outstanding -= n
        if run.phase != DRAIN:
            return True
        if self.outstanding == 0 and self.active:
            self.active = False
            run.conn_idle()
        return False

    def stop(self) -> None:
        """Issue no more; the run hears conn_idle once the replies are in."""
        if self.active and self.outstanding == 0:
            self.active = False
            assert self.run is not None
            self.run.conn_idle()


class WatchStream(Protocol):
    """What measure() needs of a watcher: `ended` resolves once its stream has
    seen the writer's end marker, failed, or closed."""

    ended: asyncio.Future[None]


async def open_conn(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], _P], addr: tuple[str, int]
) -> _P:
    """Connect within CONNECT_TIMEOUT; a refusal fails the run, naming the address."""
    try:
        _, conn = await asyncio.wait_for(
            loop.create_connection(factory, addr[0], addr[1]), CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError) as e:
        raise BenchError(f"cannot connect to {addr[0]}:{addr[1]}: {e}") from e
    return conn


async def await_reply(fut: asyncio.Future[_T], what: str) -> _T:
    """The reply to a control call; a run that waits longer than DRAIN_TIMEOUT fails."""
    try:
        return await asyncio.wait_for(fut, DRAIN_TIMEOUT)
    except TimeoutError:
        raise BenchError(f"{what}: no reply in {DRAIN_TIMEOUT:g} s") from None


def close_all(conns: Iterable[Any]) -> None:
    """Close connections (None: skipped) on purpose: no CONN_LOST for them."""
    for c in conns:
        if c is not None and c.transport is not None:
            c.closing = True
            c.transport.close()


async def put_keys(
    keys: int,
    put: Callable[[int], asyncio.Future[_T]],
    check: Callable[[asyncio.Future[_T]], Awaitable[object]],
) -> None:
    """Preload: put(i) for every key index, 256 requests pipelined at a time,
    each batch's replies checked in order before the next goes out."""
    for lo in range(0, keys, 256):
        futs = [put(i) for i in range(lo, min(keys, lo + 256))]
        for f in futs:
            await check(f)


def line_up(barrier: Any) -> None:
    """Wait until every worker process has connected (no barrier: alone)."""
    if barrier is not None:
        barrier.wait(CONNECT_TIMEOUT * 6)


def abandon(barrier: Any, conns: Iterable[Any]) -> None:
    """Setup failed: free the other workers from the barrier, close ours."""
    if barrier is not None:
        barrier.abort()
    close_all(conns)


async def measure(
    run: RunState,
    conns: Sequence[LoadConn],
    writer: LoadConn | None,
    watchers: Sequence[WatchStream],
    send_end: Callable[[str], Awaitable[object]],
) -> WorkerResult:
    """One process's run once its loaders (conns, writer) have started: warm
    up, measure for plan.duration or until plan.ops, then drain the replies
    still owed. The writer then sends the end marker (`send_end(value)`) that
    each watcher waits for. Closes every connection before it returns."""
    plan = run.plan
    loaders: list[LoadConn] = [*conns, *([writer] if writer is not None else [])]
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    t1, cpu1 = t0, cpu0
    try:
        if loaders:
            # run.finished fires when the op target is reached or every
            # connection is gone; the target counts measured ops only.
            if plan.warmup > 0:
                await asyncio.wait([run.finished], timeout=plan.warmup)
            run.phase = MEASURE
            t0, cpu0 = time.perf_counter(), cpu_seconds()
            if not run.finished.done() and not (run.target is not None and run.target <= 0):
                await asyncio.wait([run.finished], timeout=plan.duration)
            run.phase = DRAIN
            t1, cpu1 = time.perf_counter(), cpu_seconds()
            for c in loaders:
                c.stop()
            if run.live > 0:
                await asyncio.wait([run.drained], timeout=DRAIN_TIMEOUT)
            if run.live > 0:
                run.errors["NO_REPLY"] += sum(c.outstanding for c in loaders)
            if writer is not None and not writer.lost.done():
                await send_end(stamp(DRAIN))
        if watchers:
            # Watchers in other processes learn the end from the writer's
            # marker; bound the wait by the whole run in case the writer died.
            limit = DRAIN_TIMEOUT
            if not loaders:
                limit += plan.warmup + (plan.duration or 3600.0)
            pending = [w.ended for w in watchers if not w.ended.done()]
            if pending:
                await asyncio.wait(pending, timeout=limit)
            missing = sum(1 for w in watchers if not w.ended.done())
            if missing:
                run.errors["NO_END_MARKER"] += missing
            if not loaders:
                t1, cpu1 = time.perf_counter(), cpu_seconds()
    finally:
        close_all([*conns, *watchers, writer])

    wall = max(t1 - t0, 1e-9)
    return WorkerResult(
        ops=run.done if plan.workload != "watch" else len(run.lat),
        errors=dict(run.errors),
        latency=Latency.of(run.lat),
        wall_s=wall,
        cpu_s=cpu1 - cpu0,
        writes=run.writes,
        write_latency=Latency.of(run.write_lat),
        writer_wall_s=wall if writer is not None else 0.0,
    )


def key_walk(keys: int, cid: int) -> Callable[[], int]:
    """The key indices connection `cid` visits, in order: connections start
    spread over the key space and advance by a stride prime to typical key
    counts, so that each one touches every key."""
    state = [(cid * 7919) % keys]
    stride = 104729 % keys or 1
    if math.gcd(stride, keys) != 1:
        stride = 1

    def next_key() -> int:
        k = state[0]
        state[0] = (k + stride) % keys
        return k

    return next_key


def read_pattern(cid: int, read_fraction: float) -> list[bool]:
    """mixed: which requests of a 4096-long cycle are reads; seeded by the
    connection, so that every run repeats it."""
    rng = random.Random(cid)
    return [rng.random() < read_fraction for _ in range(4096)]


# --- the raw client ---------------------------------------------------------


class _Conn(LoadConn):
    """One connection: string-tagged control calls (ACCESS, REV, preload)
    plus integer-tagged load slots 0..depth-1. A slot's tag is reused as soon
    as its reply arrives, so tags never collide and start times live in a list."""

    def __init__(self, run: RunState | None, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(run, loop)
        self.buf = b""
        self.calls: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.ncalls = 0
        self.gen: Callable[[int], bytes] | None = None
        self.starts: list[int] = []

    def fail_calls(self) -> None:
        for fut in self.calls.values():
            if not fut.done():
                fut.set_exception(BenchError("connection lost"))
        self.calls.clear()

    # control path

    def call(self, req: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        self.ncalls += 1
        tag = f"c{self.ncalls}"
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        if self.transport is None or self.transport.is_closing():
            fut.set_exception(BenchError("connection lost"))
            return fut
        self.calls[tag] = fut
        req["tag"] = tag
        self.transport.write(_dumps(req, option=_NL))
        return fut

    def _control(self, tag: Any, r: dict[str, Any]) -> None:
        fut = self.calls.pop(tag, None) if isinstance(tag, str) else None
        if fut is not None and not fut.done():
            fut.set_result(r)
        elif self.run is not None:
            self.run.errors["UNEXPECTED_REPLY"] += 1

    # load path

    def start(self, gen: Callable[[int], bytes], depth: int) -> None:
        self.gen = gen
        self.starts = [0] * depth
        self._activate()
        self._issue(list(range(depth)))

    def _issue(self, slots: list[int]) -> None:
        gen = self.gen
        assert gen is not None and self.transport is not None
        data = b"".join([gen(s) for s in slots])
        t = time.perf_counter_ns()
        starts = self.starts
        for s in slots:
            starts[s] = t
        self.outstanding += len(slots)
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        if self.buf:
            data = self.buf + data
        lines = data.split(b"\n")
        self.buf = lines.pop()
        run = self.run
        if run is None:
            for line in lines:
                if line.strip():
                    r = _loads(line)
                    self._control(r.get("tag"), r)
            return
        measuring = run.phase == MEASURE
        starts = self.starts
        append = run.lat.append
        free: list[int] = []
        ok = 0
        for line in lines:
            if not line:
                continue
            r = _loads(line)
            tag = r.get("tag")
            if type(tag) is int:
                free.append(tag)
                if "err_code" in r:
                    run.errors[r["err_code"]] += 1
                elif measuring:
                    append(now - starts[tag])
                    ok += 1
            else:
                self._control(tag, r)
        if not free:
            return
        if ok:
            run.count(ok)
        if self._settle(run, len(free)):
            self._issue(free)


class _Writer(_Conn):
    """The watch workload's writer: each value carries its send time and the
    phase it was sent in, so watchers in any process can time and classify it."""

    def __init__(self, run: RunState, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(run, loop)
        self.slot_phase: list[int] = []

    def start(self, gen: Callable[[int], bytes], depth: int) -> None:
        self.slot_phase = [WARMUP] * depth
        super().start(gen, depth)

    def _issue(self, slots: list[int]) -> None:
        assert self.gen is not None and self.transport is not None
        phase = self.run.phase if self.run is not None else WARMUP
        t = time.monotonic_ns()
        for s in slots:
            self.starts[s] = t
            self.slot_phase[s] = phase
        self.outstanding += len(slots)
        self.transport.write(b"".join([self.gen(s) for s in slots]))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.buf:
            data = self.buf + data
        lines = data.split(b"\n")
        self.buf = lines.pop()
        run = self.run
        assert run is not None
        free: list[int] = []
        for line in lines:
            if not line:
                continue
            r = _loads(line)
            tag = r.get("tag")
            if type(tag) is not int:
                self._control(tag, r)
                continue
            free.append(tag)
            if "err_code" in r:
                run.errors[r["err_code"]] += 1
            elif self.slot_phase[tag] == MEASURE:
                run.write_lat.append(now - self.starts[tag])
                run.writes += 1
        if not free:
            return
        if run.target is not None and run.writes >= run.target:
            run.reached()
        if self._settle(run, len(free)):
            self._issue(free)


class _Watcher(_Conn):
    """A WATCH stream: records the delay from each measured write's send time
    to its arrival here; the writer's end marker closes the stream."""

    def __init__(self, run: RunState, loop: asyncio.AbstractEventLoop, end_path: str) -> None:
        super().__init__(run, loop)
        self.end_path = end_path
        self.ended: asyncio.Future[None] = loop.create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.ended.done():
            assert self.run is not None
            if not self.closing:
                self.run.errors["CONN_LOST"] += 1
            self.ended.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.buf:
            data = self.buf + data
        lines = data.split(b"\n")
        self.buf = lines.pop()
        run = self.run
        assert run is not None
        append = run.lat.append
        n = 0
        for line in lines:
            if not line:
                continue
            r = _loads(line)
            tag = r.get("tag")
            if tag != "w":
                self._control(tag, r)
                continue
            if "err_code" in r:
                run.errors[r["err_code"]] += 1
                if not self.ended.done():
                    self.ended.set_result(None)
                continue
            v = r.get("value", "")
            if v[20:21] == "1":  # sent while measuring
                append(now - int(v[:20]))
                n += 1
            elif r.get("path") == self.end_path and not self.ended.done():
                self.ended.set_result(None)
        run.done += n


# --- request generators -------------------------------------------------------


def _value(size: int) -> str:
    return "x" * size


def _make_gen(plan: Plan, cid: int) -> Callable[[int], bytes]:
    """The request a load slot sends next, for connection `cid`."""
    paths = [key_path(plan.prefix, i) for i in range(plan.keys)]
    next_key = key_walk(plan.keys, cid)
    value = _value(plan.value_size)
    w = plan.workload

    if w in ("get", "get-stale"):
        stale = w == "get-stale"

        def gen(slot: int) -> bytes:
            if stale:
                return _dumps(
                    {"tag": slot, "verb": "GET", "path": paths[next_key()], "stale": True},
                    option=_NL,
                )
            return _dumps({"tag": slot, "verb": "GET", "path": paths[next_key()]}, option=_NL)

        return gen
    if w in ("set", "seq-set"):

        def gen(slot: int) -> bytes:
            return _dumps(
                {"tag": slot, "verb": "SET", "path": paths[next_key()], "value": value}, option=_NL
            )

        return gen
    if w == "mixed":
        pattern = read_pattern(cid, plan.read_fraction)
        i = [0]

        def gen(slot: int) -> bytes:
            i[0] = n = (i[0] + 1) & 4095
            if pattern[n]:
                return _dumps({"tag": slot, "verb": "GET", "path": paths[next_key()]}, option=_NL)
            return _dumps(
                {"tag": slot, "verb": "SET", "path": paths[next_key()], "value": value}, option=_NL
            )

        return gen
    raise ValueError(f"no generator for workload {w!r}")


def _watch_gen(plan: Plan, run: RunState) -> Callable[[int], bytes]:
    d = watch_dir(plan.prefix)
    paths = [f"{d}/k{i}" for i in range(plan.keys)]
    pad = _value(max(0, plan.value_size - STAMP_LEN))
    i = [0]

    def gen(slot: int) -> bytes:
        k = i[0]
        i[0] = (k + 1) % len(paths)
        v = stamp(run.phase, pad)
        return _dumps({"tag": slot, "verb": "SET", "path": paths[k], "value": v}, option=_NL)

    return gen


# --- one process's run ----------------------------------------------------------


async def _connect(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], _Conn],
    addr: tuple[str, int],
    secret: str | None,
) -> _Conn:
    conn = await open_conn(loop, factory, addr)
    if secret is not None:
        try:
            r = await asyncio.wait_for(
                conn.call({"verb": "ACCESS", "value": secret}), CONNECT_TIMEOUT
            )
            if "err_code" in r:
                raise BenchError(f"ACCESS refused by {addr[0]}:{addr[1]}: {r['err_code']}")
        except BaseException:
            close_all([conn])
            raise
    return conn


async def _checked(fut: asyncio.Future[dict[str, Any]], what: str) -> dict[str, Any]:
    r = await await_reply(fut, what)
    if "err_code" in r:
        raise BenchError(f"{what}: {r['err_code']} {r.get('err_detail', '')}".rstrip())
    return r


async def preload(
    addr: tuple[str, int], secret: str | None, prefix: str, keys: int, value_size: int
) -> None:
    """SET every key once so that reads find files; pipelined, 256 at a time."""
    loop = asyncio.get_running_loop()
    conn = await _connect(loop, lambda: _Conn(None, loop), addr, secret)
    value = _value(value_size)
    try:
        await put_keys(
            keys,
            lambda i: conn.call({"verb": "SET", "path": key_path(prefix, i), "value": value}),
            lambda f: _checked(f, "preload SET"),
        )
    finally:
        close_all([conn])


async def run_plan(plan: Plan, barrier: Any = None) -> WorkerResult:
    """Drive one process's share of the load; `barrier` (multiprocessing)
    lines the processes up after they connect and before the clock starts."""
    loop = asyncio.get_running_loop()
    run = RunState(plan, loop)
    conns: list[_Conn] = []
    watchers: list[_Watcher] = []
    writer: _Writer | None = None
    d = watch_dir(plan.prefix)
    end_path = f"{d}/end"
    try:
        if plan.workload == "watch":
            for cid in plan.conn_ids:
                addr = plan.addrs[cid % len(plan.addrs)]
                w = await _connect(loop, lambda: _Watcher(run, loop, end_path), addr, plan.secret)
                watchers.append(w)  # type: ignore[arg-type]
            if plan.writer:
                writer = await _connect(  # type: ignore[assignment]
                    loop, lambda: _Writer(run, loop), plan.addrs[0], plan.secret
                )
            # Watch from just past the current rev: every write this run makes
            # comes later, however late the WATCH itself is registered.
            ctl = watchers[0] if watchers else writer
            assert ctl is not None
            base = (await _checked(ctl.call({"verb": "REV"}), "REV"))["rev"]
            for w in watchers:
                assert w.transport is not None
                w.transport.write(
                    _dumps(
                        {"tag": "w", "verb": "WATCH", "path": f"{d}/*", "rev": base + 1},
                        option=_NL,
                    )
                )
        else:
            for cid in plan.conn_ids:
                addr = plan.addrs[cid % len(plan.addrs)]
                conns.append(await _connect(loop, lambda: _Conn(run, loop), addr, plan.secret))
        line_up(barrier)
    except BaseException:
        abandon(barrier, [*conns, *watchers, writer])
        raise

    async def send_end(marker: str) -> None:
        assert writer is not None
        await _checked(
            writer.call({"verb": "SET", "path": end_path, "value": marker}), "SET end marker"
        )

    if writer is not None:
        writer.start(_watch_gen(plan, run), plan.depth)
    for i, c in enumerate(conns):
        c.start(_make_gen(plan, plan.conn_ids[i]), plan.depth)
    return await measure(run, conns, writer, watchers, send_end)


# --- orchestration ------------------------------------------------------------


@dataclass
class Config:
    workload: str
    addrs: list[tuple[str, int]]
    conns: int = 16
    depth: int = 16
    procs: int = 1
    value_size: int = 100
    keys: int = 1000
    read_fraction: float = 0.9
    watchers: int = 8
    warmup: float = 1.0
    duration: float | None = DEFAULT_DURATION
    ops: int | None = None
    secret: str | None = None
    prefix: str = "/bench"
    preload: bool = True


def _share(total: int | None, k: int, n: int) -> int | None:
    if total is None:
        return None
    return total // n + (1 if k < total % n else 0)


def plans_for(cfg: Config) -> list[Plan]:
    """Split a run over cfg.procs processes (never more than there are connections)."""
    base = Plan(
        workload=cfg.workload,
        addrs=cfg.addrs,
        conn_ids=[],
        depth=cfg.depth,
        value_size=cfg.value_size,
        keys=cfg.keys,
        read_fraction=cfg.read_fraction,
        warmup=cfg.warmup,
        duration=cfg.duration,
        ops=cfg.ops,
        secret=cfg.secret,
        prefix=cfg.prefix,
    )
    if cfg.workload == "watch":
        n = max(1, min(cfg.procs, cfg.watchers))
        return [
            replace(
                base,
                conn_ids=list(range(k, cfg.watchers, n)),
                writer=k == 0,
                total_watchers=cfg.watchers,
                ops=cfg.ops if k == 0 else None,
            )
            for k in range(n)
        ]
    n = max(1, min(cfg.procs, cfg.conns, cfg.ops or cfg.conns))
    return [
        replace(base, conn_ids=list(range(k, cfg.conns, n)), ops=_share(cfg.ops, k, n))
        for k in range(n)
    ]


def run_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run coro on a fresh event loop: uvloop's when it is installed."""
    try:
        import uvloop
    except ImportError:  # the bench still works, only slower
        return asyncio.run(coro)
    return uvloop.run(coro)


def _worker_main(run_plan: RunPlan, plan: Plan, barrier: Any, results: Any, index: int) -> None:
    """Entry point of a spawned worker process."""
    try:
        res = run_loop(run_plan(plan, barrier))
        results.put((index, res, None))
    except BaseException as e:  # reported to the parent, which fails the run
        try:
            barrier.abort()
        except Exception:
            pass
        results.put((index, None, f"{type(e).__name__}: {e}"))


def spawn(plans: list[Plan], run_plan: RunPlan) -> list[WorkerResult]:
    """Run each plan in a process of its own with `run_plan`, which the
    workers import by name; a failed or late worker fails the run."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(plans))
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker_main, args=(run_plan, p, barrier, results, i), daemon=True)
        for i, p in enumerate(plans)
    ]
    for p in procs:
        p.start()
    out: dict[int, WorkerResult] = {}
    first_error: str | None = None
    p0 = plans[0]
    deadline = time.monotonic() + 60 + p0.warmup + (p0.duration or 3600.0) + 2 * DRAIN_TIMEOUT
    try:
        while len(out) < len(plans) and time.monotonic() < deadline:
            try:
                i, res, err = results.get(timeout=0.5)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode is not None and p.exitcode != 0]
                if dead:
                    raise BenchError(f"worker exited with {dead[0].exitcode}") from None
                continue
            if err is not None:
                first_error = first_error or err
                break
            out[i] = res
        if first_error is not None:
            raise BenchError(f"worker failed: {first_error}")
        if len(out) < len(plans):
            raise BenchError("workers did not finish in time")
    finally:
        for p in procs:
            p.join(timeout=5 if first_error is None else 0.5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    return [out[i] for i in range(len(plans))]


def drive(
    cfg: Config, run_plan: RunPlan, preload: Callable[[Config], Coroutine[Any, Any, None]]
) -> dict[str, Any]:
    """Run one workload with `run_plan`, in this process or spread over
    cfg.procs, after `preload` when it reads; returns its result row."""
    if cfg.workload == "seq-set":
        cfg = replace(cfg, conns=1, depth=1, procs=1)
    if cfg.workload in ("get", "get-stale", "mixed") and cfg.preload:
        run_loop(preload(cfg))
    plans = plans_for(cfg)
    results = [run_loop(run_plan(plans[0], None))] if len(plans) == 1 else spawn(plans, run_plan)
    return summarize(cfg, plans, results)


def run(cfg: Config) -> dict[str, Any]:
    """Run one workload and return its result row (what --json prints)."""
    return drive(
        cfg,
        run_plan,
        lambda c: preload(c.addrs[0], c.secret, c.prefix, c.keys, c.value_size),
    )


def summarize(cfg: Config, plans: list[Plan], results: list[WorkerResult]) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
    ops = sum(r.ops for r in results)
    # Processes measure over (nearly) the same window; the longest is the honest
    # divisor. Watch deliveries belong to the writer's window.
    wall = max(r.wall_s for r in results)
    if cfg.workload == "watch":
        wall = max(r.writer_wall_s for r in results) or wall
    cpu = [r.cpu_s / r.wall_s if r.wall_s > 1e-3 else 0.0 for r in results]
    row: dict[str, Any] = {
        "workload": cfg.workload,
        "addrs": [f"{h}:{p}" for h, p in cfg.addrs],
        "conns": cfg.watchers if cfg.workload == "watch" else cfg.conns,
        "depth": cfg.depth,
        "procs": len(plans),
        "value_size": cfg.value_size,
        "keys": cfg.keys,
        "duration_s": round(wall, 3),
        "ops": ops,
        "ops_per_s": round(ops / wall, 1),
        "latency_ms": Latency.merge([r.latency for r in results]).summary_ms(),
        # Busiest process's share of one core: near 1.0 means the generator
        # itself is saturated, and --procs should go up.
        "client_cpu": round(max(cpu), 3),
        "client_cpu_total": round(sum(cpu), 3),
    }
    if cfg.workload == "mixed":
        row["read_fraction"] = cfg.read_fraction
    if cfg.workload == "watch":
        writes = sum(r.writes for r in results)
        expected = writes * cfg.watchers
        lost = expected - ops
        if lost > 0:
            errors["LOST"] += lost
        elif lost < 0:
            errors["DUPLICATE"] += -lost
        row.update(
            watchers=cfg.watchers,
            writes=writes,
            writes_per_s=round(writes / wall, 1),
            deliveries=ops,
            lost=max(lost, 0),
            write_latency_ms=Latency.merge([r.write_latency for r in results]).summary_ms(),
        )
    row["errors"] = sum(errors.values())
    row["error_codes"] = dict(sorted(errors.items()))
    return row


# --- output ---------------------------------------------------------------------

_COLUMNS = (
    ("workload", "<"),
    ("conns", ">"),
    ("depth", ">"),
    ("procs", ">"),
    ("ops", ">"),
    ("ops/s", ">"),
    ("p50", ">"),
    ("p90", ">"),
    ("p99", ">"),
    ("p99.9", ">"),
    ("max", ">"),
    ("errors", ">"),
    ("cpu", ">"),
)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Latencies in ms; cpu is the busiest generator process's share of a core."""
    cells = [[name for name, _ in _COLUMNS]]
    for r in rows:
        lat = r["latency_ms"]
        cells.append(
            [
                r["workload"],
                str(r["conns"]),
                str(r["depth"]),
                str(r["procs"]),
                str(r["ops"]),
                f"{r['ops_per_s']:,.0f}",
                f"{lat['p50']:.3f}",
                f"{lat['p90']:.3f}",
                f"{lat['p99']:.3f}",
                f"{lat['p999']:.3f}",
                f"{lat['max']:.3f}",
                str(r["errors"]),
                f"{r['client_cpu']:.2f}",
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(f"{c:{_COLUMNS[i][1]}{widths[i]}}" for i, c in enumerate(row)).rstrip()
        for row in cells
    ]
    notes = []
    for r in rows:
        if r["workload"] == "watch":
            wl = r["write_latency_ms"]
            notes.append(
                f"watch: {r['watchers']} watchers, {r['writes']} writes"
                f" ({r['writes_per_s']:,.0f}/s, ack p50 {wl['p50']:.3f} ms),"
                f" {r['deliveries']} deliveries, {r['lost']} lost;"
                " latency = write sent to watcher receipt"
            )
        if r["error_codes"]:
            codes = ", ".join(f"{k} {v}" for k, v in r["error_codes"].items())
            notes.append(f"{r['workload']}: errors: {codes}")
        if r["client_cpu"] >= 0.9:
            notes.append(
                f"{r['workload']}: the generator used {r['client_cpu']:.0%} of a core;"
                " it may be the bottleneck (try --procs)"
            )
    return "\n".join(lines + notes)


# --- command line -----------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="drive load against doozer nodes and report throughput and latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # No `choices`: argparse checks a list default against them as one value.
    p.add_argument(
        "workload",
        nargs="*",
        metavar="WORKLOAD",
        help=f"one or more of: {', '.join(WORKLOADS)} (default: mixed)",
    )
    p.add_argument(
        "-a",
        "--addr",
        action="append",
        dest="addrs",
        metavar="ADDR",
        help=f"node host:port; repeat (or separate with commas) to spread connections"
        f" round-robin (default {DEFAULT_ADDR})",
    )
    p.add_argument("-c", "--conns", type=_positive_int, default=16, help="connections (16)")
    p.add_argument(
        "-p",
        "--pipeline",
        type=_positive_int,
        default=16,
        help="requests in flight per connection (16)",
    )
    p.add_argument("--procs", type=_positive_int, default=1, help="generator processes (1)")
    p.add_argument(
        "-d",
        "--duration",
        type=_positive_float,
        default=None,
        help=f"seconds measured per workload (default {DEFAULT_DURATION:g}, or unbounded with -n)",
    )
    p.add_argument(
        "-n",
        "--ops",
        type=_positive_int,
        default=None,
        help="stop after this many measured ops (watch: writes)",
    )
    p.add_argument("--warmup", type=_nonneg_float, default=1.0, help="seconds before measuring (1)")
    p.add_argument("--value-size", type=_nonneg_int, default=100, help="bytes per value (100)")
    p.add_argument("--keys", type=_positive_int, default=1000, help="size of the key space (1000)")
    p.add_argument(
        "--read-fraction", type=_fraction, default=0.9, help="mixed: share of reads (0.9)"
    )
    p.add_argument(
        "--watchers", type=_positive_int, default=8, help="watch: watcher connections (8)"
    )
    p.add_argument("--prefix", default="/bench", help="directory the bench writes under (/bench)")
    p.add_argument("--no-preload", action="store_true", help="do not SET the keys before reads")
    p.add_argument(
        "--secret", default=None, help="send ACCESS with this secret (default $DOOZER_SECRET)"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=main_args)
    return p


def _positive_int(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def _nonneg_float(s: str) -> float:
    v = float(s)
    if not v >= 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def _fraction(s: str) -> float:
    v = float(s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return v


def configs_from_args(args: argparse.Namespace) -> list[Config]:
    raw = args.addrs or [DEFAULT_ADDR]
    addrs = [parse_addr(a) for item in raw for a in item.split(",") if a.strip()]
    secret = args.secret if args.secret is not None else os.environ.get("DOOZER_SECRET") or None
    duration = args.duration
    if duration is None and args.ops is None:
        duration = DEFAULT_DURATION
    prefix = args.prefix.rstrip("/") or "/bench"
    value_size = args.value_size
    workloads = list(dict.fromkeys(args.workload or ["mixed"]))  # in order, once each
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload {unknown[0]!r}: choose from {', '.join(WORKLOADS)}")
    out = []
    for w in workloads:
        out.append(
            Config(
                workload=w,
                addrs=addrs,
                conns=args.conns,
                depth=args.pipeline,
                procs=args.procs,
                value_size=max(value_size, STAMP_LEN) if w == "watch" else value_size,
                keys=args.keys,
                read_fraction=args.read_fraction,
                watchers=args.watchers,
                warmup=args.warmup,
                duration=duration,
                ops=args.ops,
                secret=secret,
                prefix=prefix,
                preload=not args.no_preload,
            )
        )
    return out


def main_args(args: argparse.Namespace) -> int:
    try:
        cfgs = configs_from_args(args)
    except ValueError as e:
        print(f"doozer bench: {e}", file=sys.stderr)
        return 2
    rows = []
    try:
        for cfg in cfgs:
            rows.append(run(cfg))
    except BenchError as e:
        print(f"doozer bench: {e}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(
            orjson.dumps({"results": rows}, option=orjson.OPT_INDENT_2).decode() + "\n"
        )
    else:
        print(format_table(rows))
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m doozer.bench ...`: the bench without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="doozer")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
