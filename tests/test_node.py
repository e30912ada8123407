"""A node's timers and background loops, driven on a real event loop: a bug in
what one of them does is logged, and the loop lives on."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
import uvloop

from doozer.mutation import SET, Mutation
from doozer.node import Node
from doozer.store import Store


class _Undeciding:
    """A sequencer that takes every write and decides none."""

    reads_are_local = True

    def start(self, node: Node) -> None:
        pass

    def propose(self, p: object) -> None:
        pass

    def writable(self) -> str | None:
        return None

    def close(self) -> None:
        pass


def test_write_timeouts_outlive_a_failing_answer(caplog: pytest.LogCaptureFixture) -> None:
    """A write whose answer fails (a bug) is logged; the writes after it still
    time out instead of leaving their clients waiting for ever."""
    answered: list[str] = []

    def broken(applied: object, why: str) -> None:
        raise RuntimeError("a bug in answering")

    async def run() -> None:
        node = Node(node_id="n", store=Store(), sequencer=_Undeciding())  # type: ignore[arg-type]
        node.start()
        node.propose(Mutation(SET, "/a", -1, b"x"), broken, 0.01)
        node.propose(Mutation(SET, "/b", -1, b"x"), lambda a, why: answered.append(why), 0.2)
        for _ in range(100):
            if answered:
                break
            await asyncio.sleep(0.02)
        node.close()

    caplog.set_level(logging.ERROR, logger="doozer")
    uvloop.run(run())
    assert answered and "outcome is unknown" in answered[0]
    assert any("timed-out write failed" in r.getMessage() for r in caplog.records)


def test_housekeeping_outlives_a_failure_in_it(caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from doozer.cluster import housekeeping

    calls = 0

    def check_followers(timeout: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")

    store = Store()
    node = SimpleNamespace(closing=False, store=store, node_id="n", addr="")
    seq = SimpleNamespace(
        replica=SimpleNamespace(is_leader=True, leader=None),
        check_followers=check_followers,
        _members={"n"},
    )
    args = SimpleNamespace(timeout=8.0, readonly=False)

    async def run() -> None:
        task = asyncio.ensure_future(housekeeping(node, seq, args))  # type: ignore[arg-type]
        for _ in range(100):
            if calls >= 2 or task.done():
                break
            await asyncio.sleep(0.05)
        node.closing = True
        await asyncio.wait_for(task, 2)

    caplog.set_level(logging.ERROR, logger="doozer")
    uvloop.run(run())
    assert calls >= 2
    assert any("housekeeping failed" in r.getMessage() for r in caplog.records)


class _Clock:
    """A loop's clock for the reader sweep, moved by hand."""

    t = 0.0

    def time(self) -> float:
        return self.t

    def call_later(self, delay: float, fn: object) -> None:
        pass


class _Transport:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.data: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("a bug in writing")
        self.data.append(data)

    unread = 0  # bytes the client has not read

    def get_write_buffer_size(self) -> int:
        return self.unread

    def abort(self) -> None:
        self.aborted = True


def test_clients_that_read_nothing_of_big_answers_are_dropped_and_hold_big_answers_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers a client leaves unread hold memory: a client that reads none of
    STUCK_BACKLOG or more for STUCK_GRACE is dropped; one that reads, however
    slowly, stays. While all clients' unread output passes the budget, no
    big answer is built."""
    from types import SimpleNamespace

    from doozer import server as server_mod
    from doozer.server import Connection, Server

    held: list = []
    node = SimpleNamespace(dispatch=None, hold_big_answers_while=held.append)
    server = Server(node)  # type: ignore[arg-type]
    assert held == [server.output_backed_up]
    deaf, slow, fine = (Connection(server) for _ in range(3))
    for c in (deaf, slow, fine):
        c.transport = _Transport()  # type: ignore[assignment]
        server.connections.add(c)
    deaf.transport.unread = slow.transport.unread = 5 << 20  # type: ignore[union-attr]
    monkeypatch.setattr(server_mod, "OUTPUT_BUDGET", 9 << 20)
    assert server.output_backed_up()

    clock = _Clock()
    monkeypatch.setattr(server_mod.asyncio, "get_running_loop", lambda: clock)
    caplog.set_level(logging.WARNING, logger="doozer")
    for k in range(40):
        clock.t = float(k)
        slow.transport.unread -= 1000  # type: ignore[union-attr]  # it reads a little
        server._sweep_readers()
    assert deaf.transport.aborted and deaf.closed  # type: ignore[union-attr]
    assert not slow.transport.aborted and not fine.transport.aborted  # type: ignore[union-attr]
    assert any("unread for 30s" in r.getMessage() for r in caplog.records)
    server.connections.discard(deaf)
    assert not server.output_backed_up()


def _conns(server: object, n: int) -> list:
    from doozer.server import Connection

    out = []
    for _ in range(n):
        c = Connection(server)  # type: ignore[arg-type]
        c.transport = _Transport()  # type: ignore[assignment]
        c.first = False  # not a peer's hello
        server.connections.add(c)  # type: ignore[attr-defined]
        out.append(c)
    return out


def _said(c: object) -> bytes:
    return b"".join(c.transport.data)  # type: ignore[attr-defined]


def test_unfinished_lines_of_all_clients_are_bounded_and_stalled_ones_dropped(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines are buffered until their newline: a hundred clients each halfway
    through a 4 MiB line held 426 MB of one node (and a thousand would hold
    4 GB, before any ACCESS). Past INPUT_BUDGET of unfinished lines a client
    may send only short lines; a line that stops growing is dropped."""
    from types import SimpleNamespace

    from doozer import server as server_mod
    from doozer.server import Server

    monkeypatch.setattr(server_mod, "INPUT_BUDGET", 1 << 20)
    monkeypatch.setattr(server_mod, "SMALL_LINE", 1 << 10)
    asked: list = []
    node = SimpleNamespace(dispatch=None, hold_big_answers_while=lambda f: None)
    server = Server(node, dispatch=lambda req, call: asked.append(req.verb))  # type: ignore[arg-type]
    a, b, c = _conns(server, 3)
    big = b'{"verb":"SET","path":"/x","value":"' + b"v" * (700 << 10)
    a.data_received(big)
    b.data_received(big)
    assert server.input_held == a.held + b.held > 1 << 20
    c.data_received(b"{" + b" " * (10 << 10))  # a long line, over budget: refused
    assert b"TOO_LARGE" in _said(c) and b"unfinished request lines" in _said(c)
    c.data_received(b' "x":1}\n{"verb":"NOP"}\n')  # its rest skipped; short ones served
    assert asked == ["NOP"] and c.held == 0
    a.data_received(b'"}\n')  # a finishes its line: under budget again
    assert asked == ["NOP", "SET"] and server.input_held == b.held
    c.data_received(b"{" + b" " * (10 << 10))
    assert _said(c).count(b"TOO_LARGE") == 1 and c.held > 10 << 10

    clock = _Clock()
    monkeypatch.setattr(server_mod.asyncio, "get_running_loop", lambda: clock)
    caplog.set_level(logging.WARNING, logger="doozer")
    for k in range(40):
        clock.t = float(k)
        c.data_received(b" ")  # c's line grows, however slowly; b's does not
        server._sweep_readers()
    assert b.transport.aborted and not c.transport.aborted  # type: ignore[union-attr]
    assert any("unfinished" in r.getMessage() for r in caplog.records)
    b.connection_lost(None)
    assert server.input_held == c.held


def test_before_access_a_client_may_send_only_short_lines() -> None:
    """On a node with a secret, a client that has not passed ACCESS cannot
    make the node buffer a long line; right after ACCESS, in the same chunk,
    it can."""
    from types import SimpleNamespace

    from doozer.server import SMALL_LINE, Server

    asked: list = []
    node = SimpleNamespace(dispatch=None, hold_big_answers_while=lambda f: None)
    server = Server(node, secret=b"s", dispatch=lambda req, call: asked.append(req.verb))  # type: ignore[arg-type]
    (c,) = _conns(server, 1)
    c.data_received(b"{" + b" " * SMALL_LINE)
    assert b"TOO_LARGE" in _said(c) and b"before ACCESS" in _said(c) and c.held == 0
    c.data_received(b'\n{"verb":"ACCESS","value":"s"}\n{"verb":"SET","value":"' + b"v" * SMALL_LINE)
    assert c.authed and c.held > SMALL_LINE and _said(c).count(b"TOO_LARGE") == 1
    c.data_received(b'","path":"/x"}\n')
    assert asked == ["SET"]


def test_a_client_gone_while_its_wait_is_open_is_let_go() -> None:
    """A client that half-closes is no longer read, so when it then goes for
    good nothing saw the reset: with a WAIT of a quiet path open, the node
    held its descriptor and its WAIT for ever (200 such clients: 200 fds).
    The reader sweep now drops it once the kernel has reset the connection,
    and keepalive makes the kernel find out about clients that went without
    a word."""
    import socket
    import struct
    from types import SimpleNamespace

    from doozer.server import Server

    async def run() -> tuple[int, int, bool]:
        asked: list = []
        node = SimpleNamespace(dispatch=None, hold_big_answers_while=lambda f: None)
        server = Server(node, dispatch=lambda req, call: asked.append(call))  # type: ignore[arg-type]
        host, port = await server.start("127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        c = socket.create_connection((host, port))
        try:
            c.sendall(b'{"verb":"WAIT","path":"/quiet"}\n')
            c.shutdown(socket.SHUT_WR)  # printf ... | nc -N: the WAIT stays
            end = loop.time() + 10
            while not (asked and next(iter(server.connections))._eof):
                assert loop.time() < end, "the WAIT and the EOF never came"
                await asyncio.sleep(0.01)
            (conn,) = server.connections
            sock = conn.transport.get_extra_info("socket")  # type: ignore[union-attr]
            keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            server._sweep_readers()
            still = len(server.connections)  # half-closed, alive: kept
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            c.close()  # a reset: the client is gone
        end = loop.time() + 10
        while server.connections and loop.time() < end:
            server._sweep_readers()
            await asyncio.sleep(0.05)
        server.stop_accepting()
        return keepalive, still, not server.connections

    keepalive, still, dropped = uvloop.run(run())
    assert keepalive and still == 1 and dropped


def test_one_client_failing_to_flush_does_not_silence_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from types import SimpleNamespace

    from doozer.server import Connection, Server

    async def run() -> tuple[_Transport, _Transport, _Transport]:
        server = Server(SimpleNamespace(dispatch=None, hold_big_answers_while=lambda f: None))  # type: ignore[arg-type]
        conns = [Connection(server) for _ in range(3)]
        ts = (_Transport(), _Transport(fail=True), _Transport())
        for c, t in zip(conns, ts, strict=True):
            c.transport = t  # type: ignore[assignment]
            c.write(b"answer\n")  # queued; one flush for all, at the end of the pass
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        conns[2].write(b"later\n")  # its flush gets scheduled again
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return ts

    caplog.set_level(logging.ERROR, logger="doozer")
    ok1, bad, ok2 = uvloop.run(run())
    assert ok1.data == [b"answer\n"] and ok2.data == [b"answer\n", b"later\n"]
    assert bad.aborted
    assert any("writing to client" in r.getMessage() for r in caplog.records)


class _Call:
    """What a connection gives a request: its answers, recorded."""

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.failed: tuple[str, str] | None = None

    def ok(self, resp: dict) -> None:
        pass

    def fail(self, code: str, detail: str) -> None:
        self.failed = (code, detail)

    def event(self, body: bytes, final: bool) -> bool:
        self.events.append(body)
        return True

    def set_cancel(self, cancel: object) -> None:
        pass


def _ahead(store: Store, writes: int, hist: int) -> dict:
    """A snapshot of `store` after `writes` more writes, keeping `hist` revs."""
    other = Store.restore(store.snapshot(), hist=hist)
    for k in range(writes):
        other.apply(Mutation(SET, f"/w/{k}", -1, b"v"))
    return {"store": other.snapshot(), "origins": [], "meta": {}}


@pytest.mark.parametrize("hist", [100, 3])
def test_a_snapshot_installed_under_a_watch_gives_it_the_changes_or_ends_it(hist: int) -> None:
    """A node far behind installs a snapshot and its store jumps ahead. A WATCH
    must not skip the changes in between in silence: it gets them from the
    snapshot's history, or, if that no longer holds them, ends with TOO_LATE."""
    from doozer import protocol

    node = Node(node_id="n", store=Store(hist=hist), sequencer=_Undeciding())  # type: ignore[arg-type]
    node.store.apply(Mutation(SET, "/w/start", -1, b"v"))
    call = _Call()
    req = protocol.parse(b'{"tag":1,"verb":"WATCH","path":"/w/*","rev":2}')
    node.dispatch(req, call)  # type: ignore[arg-type]
    resets: list[int] = []
    node.on_reset(lambda: resets.append(node.store.rev))
    node.install_snapshot(_ahead(node.store, 10, hist))
    assert node.store.rev == 11
    if hist == 100:
        assert call.failed is None and len(call.events) == 10 and not resets
        node.apply_batch([])  # and it goes on following
    else:
        assert call.events == [] and call.failed is not None
        assert call.failed[0] == "TOO_LATE" and "snapshot at rev 11" in call.failed[1]
        assert resets == [11] and node.watches.count == 0


class _Judging(_Undeciding):
    """Hears from members a and b only; refuses nothing itself."""

    max_item = 1 << 24

    def live_members(self, nodes: set[str]) -> set[str]:
        return nodes & {"a", "b"}


def test_membership_changes_are_judged_by_the_members_kept() -> None:
    """Members a, b live; c, d silent. A change that takes a member out must
    leave a live quorum of the new set; one brought in counts as live (a
    member does not hear followers, only the leader does)."""
    from doozer import errors
    from doozer.errors import DoozerError
    from doozer.mutation import DEL

    store = Store()
    for slot, who in enumerate("abcd"):
        store.apply(Mutation(SET, f"/ctl/node/{who}/addr", -1, b"x"))
        store.apply(Mutation(SET, f"/ctl/cal/{slot}", -1, who.encode()))
    node = Node(node_id="a", store=store, sequencer=_Judging())  # type: ignore[arg-type]

    def refused(m: Mutation) -> str:
        try:
            node._live_quorum_check(m)
        except DoozerError as e:
            assert e.code == errors.PERMISSION
            return e.detail
        return ""

    # {a, c, d}: one live of three
    assert "1 of 3 members live" in refused(Mutation(DEL, "/ctl/cal/1"))
    # d replaced by e: {a, b, c, e}, e taken as live: three of four
    assert refused(Mutation(SET, "/ctl/cal/3", -1, b"e")) == ""
    # d removed: {a, b, c}: two live of three
    assert refused(Mutation(DEL, "/ctl/cal/3")) == ""
    # an empty slot changes no member
    assert refused(Mutation(SET, "/ctl/cal/9", 0, b"")) == ""


def test_watches_and_rev_waits_make_a_node_watched() -> None:
    """Node.watched tells the leader (through heartbeat answers) to send this
    node decisions promptly even when it does not vote."""
    node = Node(node_id="n", store=Store(), sequencer=_Undeciding())  # type: ignore[arg-type]
    assert not node.watched()
    sub = node.watches.subscribe("/**", 1, lambda ev, body: None, once=False)
    assert node.watched()
    sub.cancel()
    assert not node.watched()
    woke: list[int] = []
    node.when_rev(node.store.rev + 1, lambda: woke.append(1))  # a WAIT for the next rev
    assert node.watched()
    node.store.apply(Mutation(SET, "/x", -1, b"1"))
    node._wake_rev_waiters()
    assert woke == [1] and not node.watched()


class _Answers:
    """A call that records its answers in `log`, named."""

    def __init__(self, name: str, log: list[tuple[str, object]]) -> None:
        self.name = name
        self.log = log
        self.left = False  # the client went away

    def ok(self, resp: dict) -> None:
        self.log.append((self.name, resp))

    def ok_parts(self, resp: dict, key: str, parts: list[bytes]) -> None:
        self.log.append((self.name, {**resp, key: orjson.loads(b"".join(parts))}))

    def gone(self) -> bool:
        return self.left

    def fail(self, code: str, detail: str) -> None:
        self.log.append((self.name, code))

    def event(self, body: bytes, final: bool) -> bool:
        return True

    def set_cancel(self, cancel: object) -> None:
        pass


def test_big_answers_are_built_in_slices_one_at_a_time_while_the_node_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seconds of encoding (a million files) must not stall the node: other
    requests, small WALKs among them, are answered between the slices of a
    big SNAPSHOT; big answers asked meanwhile wait their turn (one in memory
    at a time), each at the state of when it was asked, or later; one whose
    client went away meanwhile is skipped."""
    from doozer import stepper
    from doozer import store as store_mod
    from doozer.protocol import parse

    monkeypatch.setattr(stepper, "SLICE", 0.0)  # one step per turn of the loop
    monkeypatch.setattr(stepper, "GAP", 0.0)
    monkeypatch.setattr(store_mod, "_WALK_CAP", 400)
    store = Store()
    for i in range(6000):
        store.apply(Mutation(SET, f"/d{i % 10}/f{i}", -1, b"v"))
    log: list[tuple[str, object]] = []

    def ask(name: str, line: bytes) -> _Answers:
        call = _Answers(name, log)
        node.dispatch(parse(line), call)
        return call

    async def run() -> None:
        node.start()
        try:
            ask("snap1", b'{"verb":"SNAPSHOT","stale":true}')
            await asyncio.sleep(0)
            store.apply(Mutation(SET, "/late", -1, b"v"))  # after the first freeze
            ask("get", b'{"verb":"GET","path":"/late","stale":true}')
            ask("walk-small", b'{"verb":"WALK","path":"/d1/f1*","stale":true}')
            ask("walk-big", b'{"verb":"WALK","path":"/**","stale":true,"limit":7000}')
            left = ask("walk-left", b'{"verb":"WALK","path":"/**","stale":true}')
            left.left = True
            ask("snap2", b'{"verb":"SNAPSHOT","stale":true}')
            deadline = asyncio.get_running_loop().time() + 30
            while len(log) < 5 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.001)
        finally:
            node.close()

    node = Node(node_id="n", store=store, sequencer=_Undeciding())  # type: ignore[arg-type]
    uvloop.run(run())
    assert [name for name, _ in log] == ["get", "walk-small", "snap1", "walk-big", "snap2"]
    got = dict(log)
    assert got["snap1"]["rev"] == 6000 and got["snap2"]["rev"] == 6001  # type: ignore[index]
    restored = Store.restore(got["snap2"]["snapshot"]["store"])  # type: ignore[index]
    assert restored.get("/late") == (b"v", 6001) and len(restored) == 6001
    small = sorted(f"/d1/f{i}" for i in range(6000) if i % 10 == 1 and str(i)[0] == "1")
    assert [f["path"] for f in got["walk-small"]["files"]] == small  # type: ignore[index]
    walked = got["walk-big"]["files"]  # type: ignore[index]
    assert got["walk-big"]["rev"] == 6001 and len(walked) == 6001  # type: ignore[index]
    assert [f["path"] for f in walked] == sorted(f["path"] for f in walked)
