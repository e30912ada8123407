"""The asyncio client and its sync wrapper, against a small fake node that
answers per protocol.md (and, when doozer/server.py exists, a real node)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from doozer import errors
from doozer.client import Client, Event, Got, Stat
from doozer.syncclient import SyncClient

ROOT = Path(__file__).resolve().parent.parent
HAVE_SERVER = (ROOT / "doozer" / "server.py").exists()

# -- the fake node --------------------------------------------------------------

_PATH = re.compile(r"^/$|^(/[A-Za-z0-9._-]+)+$")


def _glob_re(glob: str) -> re.Pattern[str]:
    out = []
    for tok in re.split(r"(\*\*|\*|\?)", glob):
        out.append({"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(tok, re.escape(tok)))
    return re.compile("^" + "".join(out) + "$")


def _err(code: str, detail: str = "") -> dict[str, Any]:
    return {"err_code": code, "err_detail": detail}


def _body(value: bytes) -> dict[str, Any]:
    try:
        return {"value": value.decode()}
    except UnicodeDecodeError:
        return {"value_b64": base64.b64encode(value).decode()}


class FakeState:
    """The tree shared by every fake node of a FakeCluster."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret
        self.files: dict[str, tuple[bytes, int]] = {}
        self.history: dict[int, dict[str, tuple[bytes, int]]] = {0: {}}  # the tree at each rev
        self.rev = 0
        self.events: list[dict[str, Any]] = []
        self.subs: list[tuple[re.Pattern[str], int, FakeConn, Any, bool]] = []
        self.log: list[tuple[int, int, dict[str, Any]]] = []  # (node, conn id, request)

    def at(self, rev: int | None) -> tuple[dict[str, tuple[bytes, int]], int]:
        """The tree and the snapshot rev for a read at `rev` (None: current)."""
        return (self.files, self.rev) if rev is None else (self.history[rev], rev)

    @staticmethod
    def is_dir(files: dict[str, Any], path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return any(p.startswith(prefix) for p in files)

    @staticmethod
    def children(files: dict[str, Any], path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted({p[len(prefix) :].split("/")[0] for p in files if p.startswith(prefix)})

    def mutate(self, path: str, value: bytes | None) -> dict[str, Any]:
        self.rev += 1
        if value is None:
            del self.files[path]
        else:
            self.files[path] = (value, self.rev)
        self.history[self.rev] = dict(self.files)
        ev = {"path": path, "rev": self.rev, "flags": 8 if value is None else 4}
        ev.update(_body(value or b""))
        self.events.append(ev)
        for sub in list(self.subs):
            rx, from_rev, conn, tag, once = sub
            if ev["rev"] >= from_rev and rx.match(path):
                conn.reply(tag, dict(ev))
                if once:
                    self.subs.remove(sub)
        return {"rev": self.rev}


class FakeConn(asyncio.Protocol):
    ids = itertools.count(1)

    def __init__(self, node: FakeNode) -> None:
        self.node = node
        self.st = node.state
        self.id = next(self.ids)
        self.authed = node.state.secret is None
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.node.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.node.conns.discard(self)
        self.st.subs = [s for s in self.st.subs if s[2] is not self]

    def data_received(self, data: bytes) -> None:
        *lines, self.buf = (self.buf + data).split(b"\n")
        for line in lines:
            if self.transport is None or self.transport.is_closing():
                return
            req = orjson.loads(line)
            self.st.log.append((self.node.index, self.id, req))
            resp = self.handle(req)
            if resp is not None:
                self.reply(req.get("tag"), resp)

    def reply(self, tag: Any, resp: dict[str, Any]) -> None:
        if tag is not None:
            resp["tag"] = tag
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(orjson.dumps(resp) + b"\n")

    def handle(self, req: dict[str, Any]) -> dict[str, Any] | None:
        st, node = self.st, self.node
        verb, tag, path = req["verb"].upper(), req.get("tag"), req.get("path", "/")
        if not self.authed and verb not in ("ACCESS", "REV", "SELF"):
            return _err("PERMISSION", "send ACCESS first")
        if node.refusing is not None:  # shutting down: nothing is carried out
            return _err("UNAVAILABLE", node.refusing)
        if verb in node.drop_verbs:
            if verb == "SET":  # the write happens; its answer is lost
                st.mutate(path, req.get("value", "").encode())
            assert self.transport is not None
            self.transport.abort()
            return None
        if path in node.blackhole:
            return None
        if not _PATH.match(path.replace("*", "x").replace("?", "x")):
            return _err("BAD_PATH", path)
        rev = req.get("rev")
        files, snap = st.at(rev if verb in ("GET", "STAT", "GETDIR", "WALK") else None)
        if verb == "ACCESS":
            if st.secret is not None and req.get("value") != st.secret:
                return _err("PERMISSION", "wrong secret")
            self.authed = True
            return {}
        if verb in ("REV", "NOP"):
            return {"rev": st.rev}
        if verb == "SELF":
            return {"value": f"fake{node.index}", "addr": node.addr, "role": "leader"}
        if verb == "GET":
            if st.is_dir(files, path):
                return _err("ISDIR", path)
            value, frev = files.get(path, (b"", 0))
            resp = {"rev": frev, "snap_rev": snap, **_body(value)}
            if path in node.hold:
                node.held.append((self, tag, resp))
                return None
            return resp
        if verb == "STAT":
            if st.is_dir(files, path):
                return {"len": len(st.children(files, path)), "rev": -2, "snap_rev": snap}
            value, frev = files.get(path, (b"", 0))
            return {"len": len(value), "rev": frev, "snap_rev": snap}
        if verb == "GETDIR":
            if path in files:
                return _err("NOTDIR", path)
            if not st.is_dir(files, path):
                return _err("NOENT", path)
            return {"entries": st.children(files, path), "rev": snap}
        if verb == "WALK":
            rx = _glob_re(path)
            found = [
                {"path": p, "rev": r, **_body(v)}
                for p, (v, r) in sorted(files.items())
                if rx.match(p)
            ]
            return {"files": found, "rev": snap}
        if verb in ("SET", "DEL"):
            cur = st.files.get(path, (b"", 0))[1]
            if rev not in (None, -1) and rev < cur:
                return _err("REV_MISMATCH", f"{path} is at rev {cur}")
            if st.is_dir(st.files, path):
                return _err("ISDIR", path)
            if verb == "DEL":
                return st.mutate(path, None) if path in st.files else {"rev": st.rev}
            if "value_b64" in req:
                value = base64.b64decode(req["value_b64"])
            else:
                value = req["value"].encode()
            return st.mutate(path, value)
        if verb in ("WAIT", "WATCH"):
            if verb == "WATCH" and tag is None:
                return _err("MISSING_ARG", "WATCH needs a tag")
            rx, start = _glob_re(path), st.rev + 1 if rev is None else rev
            for ev in st.events:
                if ev["rev"] >= start and rx.match(ev["path"]):
                    if verb == "WAIT":
                        return dict(ev)
                    self.reply(tag, dict(ev))
            sub = (rx, start, self, tag, verb == "WAIT")
            st.subs.append(sub)
            if verb == "WAIT" and req.get("timeout") is not None:

                def expire() -> None:
                    if sub in st.subs:
                        st.subs.remove(sub)
                        self.reply(tag, _err("TIMEOUT", "no change"))

                asyncio.get_running_loop().call_later(req["timeout"], expire)
            return None
        if verb == "CANCEL":
            for sub in list(st.subs):
                if sub[2] is self and sub[3] == req["other_tag"]:
                    st.subs.remove(sub)
                    self.reply(sub[3], _err("CANCELLED", "cancelled"))
            return {}
        return _err("UNKNOWN_VERB", verb)


class FakeNode:
    def __init__(self, state: FakeState, index: int) -> None:
        self.state = state
        self.index = index
        self.conns: set[FakeConn] = set()
        self.server: asyncio.Server | None = None
        self.addr = ""
        self.drop_verbs: set[str] = set()  # abort the connection on receiving these
        self.refusing: str | None = None  # answer everything UNAVAILABLE with this detail
        self.blackhole: set[str] = set()  # paths never answered
        self.hold: set[str] = set()  # paths whose GET answers wait for release()
        self.held: list[tuple[FakeConn, Any, dict[str, Any]]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: FakeConn(self), "127.0.0.1", 0)
        self.addr = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        self.drop()

    def drop(self) -> None:
        for c in list(self.conns):
            assert c.transport is not None
            c.transport.abort()

    def release(self) -> None:
        held, self.held = self.held, []
        for conn, tag, resp in held:
            conn.reply(tag, resp)


class FakeCluster:
    """Fake nodes sharing one tree, served from an event loop in a thread."""

    def __init__(self, n: int = 1, secret: str | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.state = FakeState(secret)
        self.nodes = [FakeNode(self.state, i) for i in range(n)]
        for node in self.nodes:
            self.run(node.start)

    @property
    def addrs(self) -> list[str]:
        return [n.addr for n in self.nodes]

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call fn(*args) on the fake's loop (awaiting it if it is a coroutine)."""

        async def call() -> Any:
            r = fn(*args)
            return await r if isinstance(r, Awaitable) else r

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=10)

    def requests(self, verb: str | None = None) -> list[tuple[int, int, dict[str, Any]]]:
        log = self.run(lambda: list(self.state.log))
        return [e for e in log if verb is None or e[2]["verb"].upper() == verb]

    def close(self) -> None:
        for node in self.nodes:
            self.run(node.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    cluster = FakeCluster(2)
    try:
        yield cluster
    finally:
        cluster.close()


def dead_addr() -> str:
    """An address on which nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _loop_factories() -> list[Any]:
    out: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop

        out.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    except ImportError:
        pass
    return out


@pytest.fixture(params=_loop_factories())
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    """Run a coroutine to completion on a fresh loop (asyncio, then uvloop), within 20 s."""

    def runner(coro: Awaitable[Any]) -> Any:
        async def bounded() -> Any:
            async with asyncio.timeout(20):
                return await coro

        with asyncio.Runner(loop_factory=request.param) as r:
            return r.run(bounded())

    return runner


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (on the client's loop) until cond() holds, failing at the deadline."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


# -- tests against the fake -------------------------------------------------------


def test_verbs_round_trip(fake: FakeCluster, run: Any) -> None:
    async def go() -> None:
        async with await Client.connect(fake.addrs[:1]) as c:
            r1 = await c.set("/a/b", b"hello", rev=0)
            r2 = await c.set("/a/c", "text")
            assert r2 == r1 + 1
            got = await c.get("/a/b")
            value, rev = got
            assert (value, rev) == (b"hello", r1) and isinstance(got, Got)
            assert got.value == b"hello" and got.rev == r1 and got.snap_rev == r2
            assert await c.get("/missing") == (b"", 0)
            st = await c.stat("/a/b")
            assert st == (5, r1) and isinstance(st, Stat) and st.len == 5 and not st.is_dir
            assert (await c.stat("/a")).is_dir
            assert await c.stat("/nope") == (0, 0)
            names = await c.getdir("/a")
            assert names == ["b", "c"] and names.rev == r2
            files = await c.walk("/a/*")
            assert [(f.path, f.rev, f.value) for f in files] == [
                ("/a/b", r1, b"hello"),
                ("/a/c", r2, b"text"),
            ]
            assert await c.rev() == r2
            assert await c.nop() == r2
            r3 = await c.delete("/a/c", rev=r2)
            assert r3 == r2 + 1 and await c.get("/a/c") == (b"", 0)
            info = await c.self_info()
            assert info["id"] == "fake0" and info["role"] == "leader"
            assert (await c.call("rev"))["rev"] == r3

    run(go())


def test_connect_forms(fake: FakeCluster, run: Any) -> None:
    async def go() -> None:
        c = Client(",".join(fake.addrs))
        assert c.addrs == fake.addrs and c.addr is None
        assert await c.connect() is c
        assert c.addr == fake.addrs[0]
        await c.close()
        c2 = await Client.connect("doozer:?ca=" + fake.addrs[1])
        assert c2.addr == fake.addrs[1] and c2.secret is None
        await c2.close()
        c3 = Client([fake.addrs[0], f"doozer:?ca={fake.addrs[1]}&sk=k"])
        assert c3.addrs == fake.addrs and c3.secret == "k"

    run(go())


def test_binary_and_text_values(fake: FakeCluster, run: Any) -> None:
    blob = bytes(range(256))

    async def go() -> None:
        async with await Client.connect(fake.addrs[:1]) as c:
            await c.set("/bin", blob)
            await c.set("/txt", "héllo".encode())
            assert (await c.get("/bin")).value == blob
            assert (await c.get("/txt")).value == "héllo".encode()
            assert [f.value for f in await c.walk("/*")] == [blob, "héllo".encode()]

    run(go())
    sets = {r["path"]: r for _, _, r in fake.requests("SET")}
    assert "value" not in sets["/bin"] and base64.b64decode(sets["/bin"]["value_b64"]) == blob
    assert sets["/txt"]["value"] == "héllo" and "value_b64" not in sets["/txt"]


def test_pipelined_answers_out_of_order(fake: FakeCluster, run: Any) -> None:
    fake.nodes[0].hold.add("/slow")

    async def go() -> None:
        async with await Client.connect(fake.addrs[:1]) as c:
            await c.set("/slow", b"s")
            await c.set("/fast", b"f")
            slow = asyncio.ensure_future(c.get("/slow"))
            fast = asyncio.ensure_future(c.get("/fast"))
            # The fast answer arrives while the slow one is still held.
            assert (await fast).value == b"f"
            assert not slow.done()
            fake.run(fake.nodes[0].release)
            assert (await slow).value == b"s"
            many = await asyncio.gather(*(c.get("/fast") for _ in range(200)))
            assert all(g.value == b"f" for g in many)

    run(go())
    log = fake.requests()
    assert len({conn for _, conn, _ in log}) == 1  # one connection carried everything
    tags = [r["tag"] for _, _, r in log]
    assert all(isinstance(t, int) for t in tags) and len(set(tags)) == len(tags)


def test_typed_errors(fake: FakeCluster, run: Any) -> None:
    async def go() -> None:
        async with await Client.connect(fake.addrs[:1]) as c:
            rev = await c.set("/f", b"1")
            with pytest.raises(errors.RevMismatch) as ei:
                await c.set("/f", b"2", rev=0)
            assert ei.value.code == "REV_MISMATCH" and f"rev {rev}" in ei.value.detail
            with pytest.raises(errors.NoEnt):
                await c.getdir("/nothing")
            with pytest.raises(errors.BadPath):
                await c.get("bad//path")
            await c.set("/d/x", b"")
            with pytest.raises(errors.IsDir):
                await c.get("/d")
            with pytest.raises(errors.UnknownVerb):
                await c.call("FROB")
            # The connection survives errors.
            assert (await c.get("/f")).value == b"1"

    run(go())


def test_connect_skips_dead_address(fake: FakeCluster, run: Any) -> None:
    async def go() -> None:
        async with await Client.connect([dead_addr(), fake.addrs[1]]) as c:
            assert c.addr == fake.addrs[1]
            await c.set("/x", b"1")

    run(go())


def test_no_node_reachable(run: Any) -> None:
    async def go() -> None:
        with pytest.raises(errors.Unavailable) as ei:
            await Client.connect([dead_addr(), dead_addr()], timeout=5)
        assert "no node reachable" in ei.value.detail

    run(go())


def test_read_in_flight_fails_over(fake: FakeCluster, run: Any) -> None:
    fake.nodes[0].hold.add("/r")

    async def go() -> None:
        async with await Client.connect(fake.addrs) as c:
            await c.set("/r", b"v")
            pending = asyncio.ensure_future(c.get("/r"))
            await until(lambda: any(r.get("path") == "/r" for _, _, r in fake.requests("GET")))
            fake.run(fake.nodes[0].stop)
            assert (await pending).value == b"v"  # sent again to node 1
            assert c.addr == fake.addrs[1]

    run(go())
    gets = [node for node, _, r in fake.requests("GET")]
    assert gets == [0, 1]


def test_write_with_unknown_outcome_is_not_retried(fake: FakeCluster, run: Any) -> None:
    fake.nodes[0].drop_verbs.add("SET")

    async def go() -> None:
        async with await Client.connect(fake.addrs) as c:
            with pytest.raises(errors.Unavailable) as ei:
                await c.set("/w", b"once")
            assert "outcome is unknown" in ei.value.detail
            # The client carries on with the next node.
            assert (await c.get("/w")).value == b"once"
            assert c.addr == fake.addrs[1]

    run(go())
    assert len(fake.requests("SET")) == 1


def test_write_refused_by_a_node_shutting_down_goes_to_the_next(
    fake: FakeCluster, run: Any
) -> None:
    """A node shutting down answers what it will not carry out with a detail
    that says so: a write is then as safe to send elsewhere as a read, and
    the application sees nothing of a rolling restart. Any other
    UNAVAILABLE (outcome unknown, no quorum) reaches the caller."""

    async def go() -> None:
        async with await Client.connect(fake.addrs) as c:
            await c.set("/s", b"0")
            fake.nodes[0].refusing = errors.NOT_CARRIED_OUT
            assert await c.set("/s", b"1") > 0
            assert c.addr == fake.addrs[1]
            assert (await c.get("/s")).value == b"1"
            # a read in flight as the node closed: any node may answer it
            fake.nodes[1].refusing = "the node is shutting down"
            fake.nodes[0].refusing = None
            assert (await c.get("/s")).value == b"1"
            assert c.addr == fake.addrs[0]
            # a write proposed before the close: its outcome is unknown
            fake.nodes[0].refusing = "the node is shutting down; the write's outcome is unknown"
            with pytest.raises(errors.Unavailable, match="outcome is unknown"):
                await c.set("/s", b"2")

    run(go())
    sets = [node for node, _, r in fake.requests("SET")]
    assert sets[:3] == [0, 0, 1]
    gets = [node for node, _, r in fake.requests("GET")]
    assert gets[-2:] == [1, 0]


def test_write_queued_while_disconnected_is_sent(fake: FakeCluster, run: Any) -> None:
    async def go() -> None:
        async with await Client.connect(fake.addrs) as c:
            await c.set("/q", b"0")
            fake.run(fake.nodes[0].stop)
            await until(lambda: c.addr is None)
            # Not yet sent when the connection went: safe to send on the next node.
            assert await c.set("/q", b"1") > 0
            assert (await c.get("/q")).value == b"1"

    run(go())


def test_watch_and_cancel(fake: FakeCluster, run: Any) -> None:
    async def go() -> None:
        async with await Client.connect(fake.addrs[:1]) as c:
            w = c.watch("/w/**")
            r1 = await c.set("/w/a", b"1")  # sent after the WATCH: seen
            await c.set("/x", b"ignored")
            r3 = await c.set("/w/b/c", b"\xff")
            r4 = await c.delete("/w/a")
            evs = [await anext(w) for _ in range(3)]
            assert evs == [
                Event("/w/a", r1, b"1", 4),
                Event("/w/b/c", r3, b"\xff", 4),
                Event("/w/a", r4, b"", 8),
            ]
            assert evs[0].is_set and evs[2].is_del and w.next_rev == r4 + 1
            await w.cancel()
            with pytest.raises(StopAsyncIteration):
                await anext(w)
            async with c.watch("/w/*", rev=r1) as w2:
                assert (await anext(w2)).rev == r1  # replayed from the history
            assert [e async for e in w2] == []

    run(go())
    watches = fake.requests("WATCH")
    cancels = [r["other_tag"] for _, _, r in fake.requests("CANCEL")]
    assert cancels == [r["tag"] for _, _, r in watches]


def test_watch_cancelled_while_iterating(fake: FakeCluster, run: Any) -> None:
    async def go() -> None:
        async with await Client.connect(fake.addrs[:1]) as c:
            w = c.watch("/z")
            got: list[Event] = []

            async def consume() -> None:
                async for ev in w:
                    got.append(ev)

            task = asyncio.ensure_future(consume())
            await c.set("/z", b"1")
            await until(lambda: len(got) == 1)
            await w.cancel()
            await task  # the loop ends without an error

    run(go())


def test_watch_resumes_on_next_node(fake: FakeCluster, run: Any) -> None:
    async def go() -> None:
        async with await Client.connect(fake.addrs) as c:
            start = await c.rev() + 1
            w = c.watch("/r/*", rev=start)
            r1 = await c.set("/r/1", b"a")
            assert (await anext(w)).rev == r1
            fake.run(fake.nodes[0].stop)
            async with await Client.connect(fake.addrs[1:]) as other:
                r2 = await other.set("/r/2", b"b")
            ev = await anext(w)
            assert (ev.path, ev.rev) == ("/r/2", r2)  # nothing lost, nothing repeated
            await w.cancel()

    run(go())
    watches = [(node, r.get("rev")) for node, _, r in fake.requests("WATCH")]
    assert watches[0][0] == 0 and watches[1][0] == 1 and watches[1][1] == watches[0][1] + 1


def test_watch_without_rev_cannot_resume_blind(fake: FakeCluster, run: Any) -> None:
    async def go() -> None:
        async with await Client.connect(fake.addrs) as c:
            w = c.watch("/q")
            await until(lambda: len(fake.requests("WATCH")) == 1)
            fake.run(fake.nodes[0].stop)
            with pytest.raises(errors.Unavailable) as ei:
                await anext(w)
            assert "missed" in ei.value.detail

    run(go())


def test_close_ends_watch(fake: FakeCluster, run: Any) -> None:
    async def go() -> None:
        c = await Client.connect(fake.addrs[:1])
        w = c.watch("/c", rev=1)
        await until(lambda: len(fake.requests("WATCH")) == 1)
        await c.close()
        assert [e async for e in w] == []
        with pytest.raises(errors.Unavailable):
            await c.get("/c")

    run(go())


def test_wait(fake: FakeCluster, run: Any) -> None:
    async def go() -> None:
        async with await Client.connect(fake.addrs[:1]) as c:
            r1 = await c.set("/k", b"1")
            assert await c.wait("/k", rev=r1) == Event("/k", r1, b"1", 4)
            pending = asyncio.ensure_future(c.wait("/k"))
            await until(lambda: len(fake.requests("WAIT")) == 2)
            r2 = await c.set("/k", b"2")
            assert (await pending).rev == r2
            with pytest.raises(errors.Timeout):
                await c.wait("/never", timeout=0.05)

    run(go())
    assert fake.requests("WAIT")[-1][2]["timeout"] == 0.05


def test_wait_fails_over_only_from_a_known_rev(fake: FakeCluster, run: Any) -> None:
    async def go() -> None:
        async with await Client.connect(fake.addrs) as c:
            start = await c.rev() + 1
            known = asyncio.ensure_future(c.wait("/v", rev=start))
            blind = asyncio.ensure_future(c.wait("/v"))
            await until(lambda: len(fake.requests("WAIT")) == 2)
            fake.run(fake.nodes[0].stop)
            with pytest.raises(errors.Unavailable) as ei:
                await blind  # the next change might have been missed meanwhile
            assert "missed" in ei.value.detail
            async with await Client.connect(fake.addrs[1:]) as other:
                r = await other.set("/v", b"1")
            assert (await known).rev == r == start

    run(go())
    assert [(node, r.get("rev")) for node, _, r in fake.requests("WAIT")][-1] == (1, 1)


def test_client_side_deadline(fake: FakeCluster, run: Any) -> None:
    fake.nodes[0].blackhole.add("/hole")

    async def go() -> None:
        async with await Client.connect(fake.addrs[:1]) as c:
            with pytest.raises(errors.Unavailable) as ei:
                await c.get("/hole", timeout=0.05)
            assert "outcome" not in ei.value.detail
            with pytest.raises(errors.Unavailable) as ei:
                await c.set("/hole", b"x", timeout=0.05)
            assert "outcome is unknown" in ei.value.detail
            assert (await c.get("/ok")).rev == 0  # still usable

    run(go())
    assert [r["timeout"] for _, _, r in fake.requests() if r.get("path") == "/hole"] == [0.05] * 2


def test_secret_sent_first_on_every_connection(run: Any) -> None:
    cluster = FakeCluster(2, secret="s3cret")
    try:

        async def go() -> None:
            async with await Client.connect(cluster.addrs[:1]) as bare:
                with pytest.raises(errors.Permission):
                    await bare.get("/x")
            with pytest.raises(errors.Permission):
                await Client.connect(cluster.addrs, secret="wrong")
            async with await Client.connect(cluster.addrs, secret="s3cret") as c:
                await c.set("/x", b"1")
                cluster.run(cluster.nodes[0].drop)
                await until(lambda: c.addr is None)
                assert (await c.get("/x")).value == b"1"
            url = f"doozer:?ca={cluster.addrs[0]}&sk=s3cret"
            async with await Client.connect(url) as c:
                await c.get("/x")
            async with await Client.connect(cluster.addrs[:1]) as late:
                await late.access("s3cret")
                await late.get("/x")

        run(go())
        first: dict[int, str] = {}
        for _, conn, req in cluster.requests():
            first.setdefault(conn, req["verb"])
        # bare; wrong secret; with the secret, before and after the drop; by URI; late
        assert list(first.values()) == ["GET"] + ["ACCESS"] * 5
    finally:
        cluster.close()


def test_sync_client(fake: FakeCluster) -> None:
    with SyncClient(fake.addrs) as c:
        r1 = c.set("/s/a", b"1", 0)
        assert c.get("/s/a") == (b"1", r1)
        assert c.stat("/s/a") == (1, r1)
        assert c.getdir("/s") == ["a"]
        assert [f.path for f in c.walk("/s/**")] == ["/s/a"]
        assert c.rev() == r1 and c.nop() == r1
        with pytest.raises(errors.RevMismatch):
            c.set("/s/a", b"2", 0)
        with c.watch("/s/*", rev=r1) as w:
            r2 = c.set("/s/b", b"2")
            assert [next(w).rev, next(w).rev] == [r1, r2]
        assert list(w) == []
        assert c.wait("/s/*", rev=r2).path == "/s/b"
        assert c.self_info()["id"] == "fake0"
        assert c.delete("/s/a") == r2 + 1
    with pytest.raises(errors.Unavailable):
        c.get("/s/a")
    with pytest.raises(errors.Unavailable):
        SyncClient([dead_addr()], timeout=2)


# -- tests against a real node ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_node(*extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """A real `doozer serve` on a free port, killed (its whole group) afterwards."""
    port = free_port()
    addr = f"127.0.0.1:{port}"
    log = open(os.devnull, "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "doozer", "serve", "-l", addr, "--mem", "-w", "off", *extra],
        cwd=ROOT,
        stdout=log,
        stderr=log,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"node exited with {proc.returncode}"
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "node did not start listening"
            time.sleep(0.02)  # polling the port, bounded by the deadline
        yield addr
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()


@pytest.fixture
def real_node() -> Iterator[str]:
    if not HAVE_SERVER:
        pytest.skip("doozer/server.py does not exist yet")
    with start_node() as addr:
        yield addr


def test_real_node(real_node: str, run: Any) -> None:
    async def go() -> None:
        async with await Client.connect(real_node) as c:
            assert "ctl" in await c.getdir("/")
            w = c.watch("/t/**")
            r1 = await c.set("/t/a", b"\x00\xff", rev=0)
            with pytest.raises(errors.RevMismatch):
                await c.set("/t/a", b"x", rev=0)
            got = await c.get("/t/a")
            assert (got.value, got.rev) == (b"\x00\xff", r1) and got.snap_rev >= r1
            assert await c.stat("/t/a") == (2, r1)
            many = await asyncio.gather(*(c.set(f"/t/n{i}", str(i)) for i in range(50)))
            assert sorted(many) == list(range(r1 + 1, r1 + 51))
            assert len(await c.walk("/t/n*")) == 50
            evs = [await anext(w) for _ in range(51)]
            assert [e.rev for e in evs] == list(range(r1, r1 + 51))
            await w.cancel()
            with pytest.raises(errors.Timeout):
                await c.wait("/none", timeout=0.05)
            r = await c.delete("/t/a", rev=r1)
            assert await c.wait("/t/a", rev=r) == Event("/t/a", r, b"", 8)
            assert (await c.self_info())["id"]

    run(go())


def test_real_node_secret(run: Any) -> None:
    if not HAVE_SERVER:
        pytest.skip("doozer/server.py does not exist yet")
    with start_node(env={"DOOZER_SECRET": "pw"}) as addr:

        async def go() -> None:
            async with await Client.connect(addr, secret="pw") as c:
                await c.set("/p", b"1")
            async with await Client.connect(addr) as c:
                with pytest.raises(errors.Permission):
                    await c.get("/p")

        run(go())
