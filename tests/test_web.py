"""The web viewer's HTTP and WebSocket protocol, against an in-process node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import doozer.web
from doozer.mutation import DEL, SET, Mutation
from doozer.node import Node
from doozer.runtime import loop_factory
from doozer.sequencer import LocalSequencer
from doozer.serve import propose_all, write_initial_ctl
from doozer.store import Store
from doozer.web import session as web_session
from doozer.web import wire
from doozer.web.viewer import WebViewer

CTL_REV = 7  # what write_initial_ctl leaves with 3 slots


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    with asyncio.Runner(loop_factory=loop_factory()) as r:
        return r.run(bounded())


@contextlib.asynccontextmanager
async def viewer(
    secret: bytes | None = None, hist: int = 2000
) -> AsyncIterator[tuple[Node, WebViewer]]:
    node = Node(
        node_id="n1", store=Store(hist=hist), sequencer=LocalSequencer(), addr="127.0.0.1:1"
    )
    node.start()
    await write_initial_ctl(node, "local", 3)
    web = await doozer.web.start("127.0.0.1:0", node, secret, explicit=True)
    assert web is not None
    try:
        yield node, web
    finally:
        await web.close()
        node.close()


async def put(node: Node, *items: tuple[str, bytes | None]) -> None:
    """SET (bytes) or DEL (None) each path, in order, through the node."""
    await propose_all(
        node,
        [Mutation(SET, p, -1, v) if v is not None else Mutation(DEL, p, -1) for p, v in items],
    )


class WS:
    """A viewer client that reads messages with deadlines, skipping status pushes."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.statuses: list[dict] = []

    async def send(self, **msg: Any) -> None:
        await self.conn.send(orjson.dumps(msg).decode())

    async def recv(self, timeout: float = 5.0, status: bool = False) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                m = orjson.loads(await self.conn.recv())
                if m["op"] == "status":
                    self.statuses.append(m)
                    if not status:
                        continue
                return m

    async def expect(self, op: str, timeout: float = 5.0) -> dict:
        m = await self.recv(timeout, status=op == "status")
        assert m["op"] == op, m
        return m

    async def load(self) -> tuple[int, dict[str, dict], list[dict]]:
        """Read one full load: (rev, path -> file, the `files` messages)."""
        start = await self.expect("load")
        files: dict[str, dict] = {}
        chunks = []
        while True:
            m = await self.recv()
            if m["op"] == "loaded":
                assert m["rev"] == start["rev"]
                return m["rev"], files, chunks
            assert m["op"] == "files", m
            chunks.append(m)
            for f in m["files"]:
                files[f["path"]] = f

    async def events(self, n: int) -> list[dict]:
        out: list[dict] = []
        while len(out) < n:
            m = await self.expect("evs")
            out.extend(m["events"])
        assert len(out) == n, out
        return out


@contextlib.asynccontextmanager
async def client(web: WebViewer, **kw: Any) -> AsyncIterator[WS]:
    async with connect(f"ws://{web.addr}/ws", **kw) as conn:
        yield WS(conn)


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def tree_of(node: Node, rev: int | None = None) -> dict[str, tuple[int, bytes]]:
    return {p: (r, v) for p, r, v in node.store.iter_files(rev)}


def body(f: dict) -> bytes:
    import base64

    return f["value"].encode() if "value" in f else base64.b64decode(f["value_b64"])


# -- load and live events ---------------------------------------------------


def test_hello_load_and_live_events() -> None:
    async def go() -> None:
        async with viewer() as (node, web), client(web) as ws:
            hello = await ws.expect("hello")
            assert hello["auth"] is False and hello["rev"] == CTL_REV
            assert hello["node"] == "n1" and hello["incarnation"] == node.incarnation
            await ws.send(op="sub")
            rev, files, _ = await ws.load()
            assert rev == CTL_REV
            assert {p: (f["rev"], body(f)) for p, f in files.items()} == tree_of(node)
            await put(node, ("/a/b", b"x"), ("/a/bin", b"\xff\x00"), ("/a/b", None))
            evs = await ws.events(3)
            assert [(e["rev"], e["path"], e["flags"]) for e in evs] == [
                (8, "/a/b", 4),
                (9, "/a/bin", 4),
                (10, "/a/b", 8),
            ]
            assert evs[0]["value"] == "x" and evs[0]["len"] == 1
            assert evs[1]["value_b64"] == "/wA=" and "value" not in evs[1]
            assert "value" not in evs[2] and "value_b64" not in evs[2]

    run(go())


def test_a_page_following_the_tree_counts_as_a_watcher() -> None:
    """A node with a page following its tree asks for decisions promptly
    (Node.watched: the leader otherwise gathers values for a member that did
    not vote for up to ~20 ms)."""

    async def go() -> None:
        async with viewer() as (node, web):
            assert not node.watched()
            async with client(web) as ws:
                await ws.expect("hello")
                assert not node.watched()  # connected, not following yet
                await ws.send(op="sub")
                await ws.load()
                assert node.watched()
            await until(lambda: not node.watched())

    run(go())


def test_a_snapshot_past_the_history_reloads_the_page() -> None:
    """A node far behind installs a snapshot: the page following its tree
    cannot be given the skipped events, so it gets the whole tree again."""
    from doozer.store import Store

    async def go() -> None:
        async with viewer() as (node, web), client(web) as ws:
            await ws.expect("hello")
            await ws.send(op="sub")
            await ws.load()
            ahead = Store.restore(node.store.snapshot(), hist=3)
            for k in range(10):
                ahead.apply(Mutation(SET, f"/skipped/{k}", -1, b"v"))
            node.install_snapshot({"store": ahead.snapshot(), "origins": [], "meta": {}})
            rev, files, _ = await ws.load()
            assert rev == node.store.rev == CTL_REV + 10
            assert {p: (f["rev"], body(f)) for p, f in files.items()} == tree_of(node)

    run(go())


def test_loaded_carries_recent_events_for_the_feed() -> None:
    async def go() -> None:
        async with viewer() as (node, web), client(web) as ws:
            await put(node, *[(f"/r/{i}", b"v") for i in range(60)])
            await ws.expect("hello")
            await ws.send(op="sub")
            await ws.expect("load")
            while (m := await ws.recv())["op"] != "loaded":
                pass
            recent = [e["rev"] for e in m["recent"]]
            assert recent == list(range(m["rev"] - 49, m["rev"] + 1))

    run(go())


def test_ten_thousand_files_load_in_chunks_with_cut_values() -> None:
    async def go() -> None:
        async with viewer() as (node, web):
            for k in range(10):
                await put(node, *[(f"/big/d{k}/f{i:04d}", b"v%d" % i) for i in range(1000)])
            await put(node, ("/big/long", b"L" * 5000), ("/big/utf", "é".encode() * 200))
            async with client(web) as ws:
                await ws.expect("hello")
                await ws.send(op="sub")
                rev, files, chunks = await ws.load()
                assert rev == node.store.rev
                assert len(files) == len(node.store) == 10_009
                assert len(chunks) >= 20
                assert all(len(c["files"]) <= web_session.CHUNK_FILES for c in chunks)
                paths = [f["path"] for c in chunks for f in c["files"]]
                assert paths == sorted(paths)
                long = files["/big/long"]
                assert long["len"] == 5000 and long["cut"] is True
                assert long["value"] == "L" * 256
                utf = files["/big/utf"]  # cut inside a character: the partial tail goes
                assert utf["cut"] and utf["value"] == "é" * 128
                await ws.send(op="get", id=7, path="/big/long")
                full = await ws.expect("value")
                assert full["id"] == 7 and full["value"] == "L" * 5000 and "cut" not in full

    run(go())


def test_writes_during_a_big_load_are_neither_lost_nor_repeated() -> None:
    async def go() -> None:
        async with viewer() as (node, web):
            for k in range(6):
                await put(node, *[(f"/w/d{k}/f{i:04d}", b"x" * 200) for i in range(1000)])
            async with client(web) as ws:
                await ws.expect("hello")
                await ws.send(op="sub")
                start = await ws.expect("load")
                # the load is being sent chunk by chunk; write and delete meanwhile
                writes = [("/w/new", b"n"), ("/w/d0/f0000", None), ("/w/d5/f0999", b"changed")]
                await put(node, *writes)
                files: dict[str, dict] = {}
                seen = start["rev"]
                while True:
                    m = await ws.recv()
                    if m["op"] == "files":
                        files.update((f["path"], f) for f in m["files"])
                    elif m["op"] == "loaded":
                        break
                while seen < node.store.rev:
                    for e in (await ws.expect("evs"))["events"]:
                        assert e["rev"] == seen + 1
                        seen = e["rev"]
                        if e["flags"] == 8:
                            files.pop(e["path"])
                        else:
                            files[e["path"]] = e
                got = {p: (f["rev"], f["len"]) for p, f in files.items()}
                assert got == {p: (r, len(v)) for p, (r, v) in tree_of(node).items()}

    run(go())


def test_a_slow_load_outlives_the_history_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The page reads its load slowly while the history moves past the load's
    rev: the load is of files frozen at its start, so it completes as it began
    and the changes since follow as events, none missing, none repeated."""

    async def go() -> None:
        async with viewer(hist=5) as (node, web):
            # big previews, so the load outgrows what the sockets can buffer
            monkeypatch.setattr(wire, "PREVIEW", 4096)
            for k in range(3):
                await put(node, *[(f"/o/d{k}/f{i:04d}", b"o" * 4096) for i in range(1000)])
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            host, port = web.addr.rsplit(":", 1)
            sock.connect((host, int(port)))
            async with client(web, sock=sock, max_queue=1, max_size=None) as ws:
                await ws.expect("hello")
                await ws.send(op="sub")
                first = await ws.expect("load")
                # the page reads slowly: the history moves past the load's rev meanwhile
                await put(node, *[(f"/o/new{i}", b"n") for i in range(10)])
                loads = [first["rev"]]
                files: dict[str, dict] = {}
                rev = 0
                final = node.store.rev
                wrote_after = False
                while rev < final + 1:
                    if rev == final and not wrote_after:
                        await put(node, ("/o/after", b"a"))  # anything stale queued comes first
                        wrote_after = True
                    m = await ws.recv()
                    if m["op"] == "load":
                        loads.append(m["rev"])
                        files = {}
                    elif m["op"] == "files":
                        files.update((f["path"], f) for f in m["files"])
                    elif m["op"] == "loaded":
                        rev = m["rev"]
                    elif m["op"] == "evs":
                        for e in m["events"]:
                            assert e["rev"] == rev + 1
                            rev = e["rev"]
                            files[e["path"]] = e
                assert loads == [first["rev"]] and node.store.oldest > first["rev"]
                got = {p: (f["rev"], f["len"]) for p, f in files.items()}
                assert got == {p: (r, len(v)) for p, (r, v) in tree_of(node).items()}

    run(go())


# -- history ----------------------------------------------------------------


def test_tree_at_a_past_rev() -> None:
    async def go() -> None:
        async with viewer() as (node, web), client(web) as ws:
            await ws.expect("hello")
            await put(node, ("/h/x", b"v1"), ("/h/x", b"v2"), ("/h/y", b"y"), ("/h/x", None))
            r1, r2, r4 = CTL_REV + 1, CTL_REV + 2, CTL_REV + 4
            for rev, want in ((r1, "v1"), (r2, "v2"), (r4, None)):
                await ws.send(op="at", id=f"q{rev}", rev=rev)
                files: dict[str, dict] = {}
                while True:
                    m = await ws.expect("at")
                    assert m["id"] == f"q{rev}" and m["rev"] == rev
                    files.update((f["path"], f) for f in m["files"])
                    if m["done"]:
                        break
                assert {p: (f["rev"], body(f)) for p, f in files.items()} == tree_of(node, rev)
                assert (files["/h/x"]["value"] if "/h/x" in files else None) == want
            await ws.send(op="at", id=1, rev=node.store.rev + 1)
            assert (await ws.expect("error")) | {"detail": ""} == {
                "op": "error",
                "id": 1,
                "code": "RANGE",
                "detail": "",
            }
            await ws.send(op="at", id=2, rev=0)
            assert (await ws.expect("error"))["code"] == "BAD_REQUEST"
            await ws.send(op="get", id=3, path="/h/x", rev=r2)
            v = await ws.expect("value")
            assert (v["id"], v["value"], v["rev"]) == (3, "v2", r2)

    run(go())


def test_tree_at_a_rev_older_than_the_history_is_too_late() -> None:
    async def go() -> None:
        async with viewer(hist=5) as (node, web), client(web) as ws:
            await ws.expect("hello")
            await put(node, *[(f"/t/{i}", b"v") for i in range(20)])
            await ws.send(op="at", id=1, rev=2)
            m = await ws.expect("error")
            assert (m["id"], m["code"]) == (1, "TOO_LATE")

    run(go())


# -- catching up after a reconnect -----------------------------------------


def test_catch_up_from_the_last_rev_seen() -> None:
    async def go() -> None:
        async with viewer() as (node, web):
            async with client(web) as ws:
                await ws.expect("hello")
                await ws.send(op="sub")
                last, _, _ = await ws.load()
            # the page is away while these happen
            await put(node, ("/c/a", b"1"), ("/c/b", b"2"), ("/c/a", None))
            async with client(web) as ws:
                await ws.expect("hello")
                await ws.send(op="sub", **{"from": last + 1})
                m = await ws.expect("catchup")
                assert m == {"op": "catchup", "from": last + 1, "rev": last + 3}
                evs = await ws.events(3)
                assert [(e["rev"], e["path"], e["flags"]) for e in evs] == [
                    (last + 1, "/c/a", 4),
                    (last + 2, "/c/b", 4),
                    (last + 3, "/c/a", 8),
                ]
                await put(node, ("/c/live", b"l"))
                (e,) = await ws.events(1)
                assert (e["rev"], e["path"]) == (last + 4, "/c/live")
                # already up to date: an empty catch-up
                await ws.send(op="sub", **{"from": last + 5})
                assert await ws.expect("catchup") == {
                    "op": "catchup",
                    "from": last + 5,
                    "rev": last + 4,
                }

    run(go())


@pytest.mark.parametrize("start", ["too_old", "ahead", "not_int"])
def test_catch_up_that_cannot_be_served_is_a_full_load(start: str) -> None:
    async def go() -> None:
        async with viewer(hist=5) as (node, web), client(web) as ws:
            await put(node, *[(f"/t/{i}", b"v") for i in range(20)])
            await ws.expect("hello")
            frm: Any = {"too_old": 2, "ahead": node.store.rev + 5, "not_int": "3"}[start]
            await ws.send(op="sub", **{"from": frm})
            rev, files, _ = await ws.load()
            assert rev == node.store.rev
            assert set(files) == set(tree_of(node))

    run(go())


# -- cluster status -----------------------------------------------------------


def fake_node(nid: str, addr: str, role: str, applied: int | None, alive: bool | None) -> dict:
    return {"id": nid, "addr": addr, "role": role, "applied": applied, "alive": alive}


def test_status_is_pushed_every_second_with_every_node() -> None:
    fake_nodes = [
        fake_node("aaaa1111", "10.0.0.1:8046", "leader", 40, True),
        fake_node("bbbb2222", "10.0.0.2:8046", "member", 38, True),
        fake_node("cccc3333", "10.0.0.3:8046", "member", 12, False),
        fake_node("dddd4444", "10.0.0.4:8046", "follower", None, None),
    ]

    async def go() -> None:
        async with viewer() as (node, web):
            real = node.status

            def fake() -> dict:
                st = real()
                st["cal"] = {"0": "aaaa1111", "1": "bbbb2222", "2": "cccc3333", "3": ""}
                st["nodes"] = fake_nodes
                return st

            node.status = fake  # type: ignore[method-assign]
            async with client(web) as ws:
                await ws.expect("hello")
                first = await ws.expect("status")
                assert first["nodes"] == fake_nodes and first["cal"]["3"] == ""
                await put(node, *[(f"/s/{i}", b"v") for i in range(30)])
                # the ticker's samples count the writes made since the last one
                for _ in range(5):
                    m = await ws.expect("status", timeout=3)
                    if sum(m["rate"]) > 0:
                        break
                assert m["rate_every"] == 1.0 and sum(m["rate"]) > 0
                assert m["rev"] == node.store.rev and m["nodes"] == fake_nodes

    run(go())


# -- access -----------------------------------------------------------------


def test_a_secret_holds_everything_back_until_auth() -> None:
    async def go() -> None:
        async with viewer(secret=b"s3cret") as (_node, web), client(web) as ws:
            hello = await ws.expect("hello")
            assert hello["auth"] is True
            for req in ({"op": "sub"}, {"op": "at", "id": 1, "rev": 1}, {"op": "get", "id": 2}):
                await ws.send(**req)
                m = await ws.recv()
                assert (m["op"], m["code"]) == ("error", "PERMISSION"), m
            await ws.send(op="auth", secret="nope")
            assert await ws.expect("auth") == {"op": "auth", "ok": False, "detail": "wrong secret"}
            await ws.send(op="sub")
            assert (await ws.expect("error"))["code"] == "PERMISSION"
            assert ws.statuses == []  # nothing about the cluster either
            await ws.send(op="auth", secret="s3cret")
            assert await ws.expect("auth") == {"op": "auth", "ok": True}
            await ws.expect("status")
            await ws.send(op="sub")
            rev, _, _ = await ws.load()
            assert rev == CTL_REV

    run(go())


# -- robustness -----------------------------------------------------------------


def test_bad_requests_are_answered_and_the_socket_stays() -> None:
    async def go() -> None:
        async with viewer() as (_node, web), client(web) as ws:
            await ws.expect("hello")
            await ws.conn.send("not json")
            assert (await ws.expect("error"))["code"] == "BAD_REQUEST"
            await ws.conn.send("[1]")
            assert (await ws.expect("error"))["code"] == "BAD_REQUEST"
            await ws.send(op="frobnicate", id=1)
            assert (await ws.expect("error"))["code"] == "UNKNOWN_VERB"
            await ws.send(op="get", id=2)
            assert (await ws.expect("error"))["code"] == "BAD_REQUEST"
            await ws.send(op="get", id=3, path="/ctl")
            assert (await ws.expect("error"))["code"] == "ISDIR"
            await ws.send(op="get", id=4, path="bad//path")
            assert (await ws.expect("error"))["code"] == "BAD_PATH"
            await ws.send(op="get", id=5, path="/ctl/name")
            assert (await ws.expect("value"))["value"] == "local"

    run(go())


def test_a_page_that_stops_reading_is_disconnected(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(web_session, "OUT_LIMIT", 256 << 10)

    async def go() -> None:
        async with viewer() as (node, web):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            host, port = web.addr.rsplit(":", 1)
            sock.connect((host, int(port)))
            # a client that stops reading cannot see the close either: do not wait on it
            async with client(web, sock=sock, max_queue=1, close_timeout=0.2) as ws:
                await ws.expect("hello")
                await ws.send(op="sub")
                # stop reading; write until the viewer gives up on this page
                value = b"z" * 250
                for batch in range(400):
                    if all(s.closed for s in web.sessions):
                        break
                    await put(node, *[(f"/slow/{batch}/{i}", value) for i in range(200)])
                await until(lambda: not web.sessions)
                assert batch < 399
            assert "stopped reading; disconnected" in caplog.text
            # and the viewer serves the next page as usual
            async with client(web) as ws2:
                await ws2.expect("hello")

    run(go(), timeout=60)


# -- HTTP ---------------------------------------------------------------------


async def http_get(addr: str, path: str, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    host, port = addr.rsplit(":", 1)
    r, w = await asyncio.open_connection(host, int(port))
    hdrs = {"Host": addr, **(headers or {})}
    req = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    w.write((req + "\r\n").encode())
    data = await r.read()
    w.close()
    head, _, content = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    h = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, h, content


# a reference to another origin: src=/href= to a URL, a CSS import or url(), a fetch of a URL
FOREIGN = re.compile(
    rb"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(|fetch\(\s*["'](https?:)?//"""
)


def test_static_assets_with_their_content_types() -> None:
    async def go() -> None:
        async with viewer() as (_node, web):
            status, h, page = await http_get(web.addr, "/")
            assert status == 200 and h["content-type"] == "text/html; charset=utf-8"
            assert b'src="app.js"' in page and b'href="style.css"' in page
            assert not FOREIGN.search(page)  # nothing loaded from elsewhere
            assert "default-src 'none'" in h["content-security-policy"]
            assert int(h["content-length"]) == len(page)
            for path, ctype in (
                ("/app.js", "text/javascript; charset=utf-8"),
                ("/style.css", "text/css; charset=utf-8"),
                ("/index.html?x=1", "text/html; charset=utf-8"),
            ):
                status, h, content = await http_get(web.addr, path)
                assert (status, h["content-type"]) == (200, ctype), path
                assert content and h["x-content-type-options"] == "nosniff"
                assert not FOREIGN.search(content), path
            status, _, _ = await http_get(web.addr, "/nope.js")
            assert status == 404
            status, _, _ = await http_get(web.addr, "/debug/drop")
            assert status == 404  # test hooks are off unless DOOZER_WEB_DEBUG=1

    run(go())


def test_foreign_hosts_and_origins_are_refused() -> None:
    async def go() -> None:
        async with viewer() as (_node, web):
            port = web.addr.rsplit(":", 1)[1]
            status, _, _ = await http_get(web.addr, "/", {"Host": f"evil.example:{port}"})
            assert status == 403  # DNS rebinding onto a loopback viewer
            status, _, _ = await http_get(web.addr, "/", {"Host": f"localhost:{port}"})
            assert status == 200
            with pytest.raises(InvalidStatus) as e:
                async with connect(f"ws://{web.addr}/ws", origin="http://evil.example"):  # type: ignore[arg-type]
                    pass
            assert e.value.response.status_code == 403
            async with connect(f"ws://{web.addr}/ws", origin=f"http://{web.addr}") as c:  # type: ignore[arg-type]
                assert orjson.loads(await c.recv())["op"] == "hello"

    run(go())


def test_debug_drop_closes_sockets_and_holds_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOOZER_WEB_DEBUG", "1")

    async def go() -> None:
        async with viewer() as (_node, web), client(web) as ws:
            await ws.expect("hello")
            status, _, text = await http_get(web.addr, "/debug/drop?hold=1")
            assert (status, text) == (200, b"dropped 1\n")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            with pytest.raises(InvalidStatus) as e:
                async with connect(f"ws://{web.addr}/ws"):
                    pass
            assert e.value.response.status_code == 503
            assert (await http_get(web.addr, "/debug/release"))[0] == 200
            async with client(web) as ws2:
                await ws2.expect("hello")

    run(go())


# -- binding ----------------------------------------------------------------------


def test_default_address_taken_runs_without_the_viewer(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        node = Node(node_id="n1", store=Store(), sequencer=LocalSequencer())
        node.start()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            addr = f"127.0.0.1:{taken.getsockname()[1]}"
            with caplog.at_level(logging.INFO, logger="doozer"):
                assert await doozer.web.start(addr, node, None, explicit=False) is None
            assert f"web viewer: {addr} in use; running without it" in caplog.text
            with pytest.raises(OSError) as e:
                await doozer.web.start(addr, node, None, explicit=True)
            assert str(e.value) == f"web viewer: cannot listen on {addr}: Address already in use"
        with pytest.raises(OSError, match="bad web viewer address 'nowhere'"):
            await doozer.web.start("nowhere", node, None, explicit=True)
        node.close()

    run(go())
