"""Crash a node (kill -9) under write load, restart it from its data dir, and
find every write it acknowledged, at the same rev."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.nodeproc import (
    NodeProc,
    Raw,
    call,
    free_port,
    wait_for,
    wait_roles,
    wait_three_members,
)

pytestmark = pytest.mark.slow


def durable_node(datadir: Path, port: int, *extra: str) -> NodeProc:
    return NodeProc("-d", str(datadir), "--election-timeout", "0.3", *extra, port=port, mem=False)


def three_durable(tmp_path: Path, *flags: str) -> tuple[str, Callable[[int, bool], NodeProc]]:
    """Ports for three durable nodes under tmp_path; returns the first's address
    and start(i, first_time): the first start of nodes 1 and 2 joins node 0,
    a later one resumes from the node's data dir."""
    ports = [free_port() for _ in range(3)]
    addr0 = f"127.0.0.1:{ports[0]}"

    def start(i: int, first_time: bool) -> NodeProc:
        extra = ["-a", addr0] if (first_time and i) else []
        return durable_node(tmp_path / f"n{i}", ports[i], *flags, *extra).start()

    return addr0, start


def mount_tmpfs(tmp_path: Path, size: str) -> Path:
    """A tmpfs of `size` at tmp_path/small (skips the test unless root)."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    return mnt


def umount(mnt: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill_up(mnt: Path) -> Path:
    """Take every byte the file system at mnt has left; returns the filler."""
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


SMALL_SEGMENTS = ("--segment-bytes", "262144")


def three_one_on(first: Path, tmp_path: Path) -> list[NodeProc]:
    """Three durable members, the first (the leader) with its data dir at `first`."""
    nodes = [durable_node(first, free_port(), *SMALL_SEGMENTS).start()]
    try:
        for i in (1, 2):
            nodes.append(
                durable_node(
                    tmp_path / f"n{i}", free_port(), *SMALL_SEGMENTS, "-a", nodes[0].addr
                ).start()
            )
        wait_three_members(nodes)
    except BaseException:
        for n in nodes:
            n.stop()
        raise
    return nodes


class Writer:
    """Writes unique files as fast as it can, remembering what was acknowledged."""

    def __init__(self, addrs: list[str], tag: str) -> None:
        self.addrs = addrs
        self.tag = tag
        self.acked: dict[str, tuple[int, str]] = {}
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set() and i < 1_000_000:
            addr = self.addrs[i % len(self.addrs)]
            try:
                with Raw(addr, timeout=3) as r:
                    while not self.stop.is_set():
                        i += 1
                        path, value = f"/crash/{self.tag}/{i}", f"v{i}"
                        resp = r.call({"verb": "SET", "path": path, "value": value, "timeout": 2})
                        if "rev" in resp:
                            self.acked[path] = (resp["rev"], value)
            except OSError:
                self.stop.wait(0.02)

    def __enter__(self) -> Writer:
        self.t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.t.join(10)


def restarted(datadir: Path, port: int, flags: list[str], deadline: float) -> NodeProc:
    """The node started again from its data dir, once it answers a quorum read."""
    node = durable_node(datadir, port, *flags).start()
    wait_for(
        lambda: "rev" in call(node.addr, {"verb": "REV", "timeout": 1}, 5),
        deadline,
        "restarted node answers",
    )
    return node


def kill_while_writing(node: NodeProc, w: Writer, need: int, pause: float) -> dict:
    """Kill the node `pause` s after `w` has had `need` writes acknowledged;
    what it acknowledged."""
    with w:
        wait_for(lambda: len(w.acked) > need, 20, "writes acknowledged")
        w.stop.wait(pause)
        node.kill()
    return w.acked


def check_acked(addr: str, acked: dict[str, tuple[int, str]]) -> None:
    with Raw(addr, timeout=10) as r:
        for path, (rev, value) in acked.items():
            g = r.call({"verb": "GET", "path": path})
            assert (g.get("rev"), g.get("value")) == (rev, value), (path, rev, value, g)


def test_single_node_kill9_under_load_loses_nothing(tmp_path):
    rng = random.Random(7)
    port = free_port()
    # Small segments and frequent snapshots: the kills land during rolls into
    # spare and recycled segment files too (such a run found recycled files'
    # old bytes taken for a torn record).
    flags = ["--segment-bytes", str(64 << 10), "--snap-revs", "50"]
    node = durable_node(tmp_path / "d", port, *flags).start()
    acked: dict[str, tuple[int, str]] = {}
    try:
        for rnd in range(10):
            w = Writer([node.addr], f"r{rnd}")
            acked.update(kill_while_writing(node, w, 20, rng.uniform(0.05, 0.6)))
            node = restarted(tmp_path / "d", port, flags, 20)
            check_acked(node.addr, acked)
        assert len(acked) > 100
        assert int(sorted((tmp_path / "d").glob("log-*.wal"))[-1].name[4:-4]) > 0  # rolled
    finally:
        node.stop()


class BulkWriter(Writer):
    """Pipelines SETs of big values, 100 at a time, remembering the acknowledged:
    the log grows fast enough for a big tree's snapshots to follow each other."""

    def run(self) -> None:
        value = "b" * 2000
        i = 0
        try:
            with Raw(self.addrs[0], timeout=5) as r:
                while not self.stop.is_set():
                    for k in range(i, i + 100):
                        r.send(
                            {
                                "tag": k,
                                "verb": "SET",
                                "path": f"/bulk/{self.tag}/{k}",
                                "value": value,
                            }
                        )
                    for _ in range(100):
                        resp = r.recv()
                        if "rev" in resp:
                            self.acked[f"/bulk/{self.tag}/{resp['tag']}"] = (resp["rev"], value)
                    i += 100
        except (OSError, ValueError):
            pass  # killed


def test_kill9_while_a_big_snapshot_is_encoded_loses_nothing(tmp_path):
    """A big tree's disk snapshot is encoded over many turns of the loop while
    writes go on, and covers only the log up to its freeze. Kills land in the
    middle of such encodings (12k files of 2 KB; at this write rate one is
    being encoded about half the time): the writes logged meanwhile must be
    replayed over it, none lost."""
    rng = random.Random(11)
    port = free_port()
    node = durable_node(tmp_path / "d", port).start()
    acked: dict[str, tuple[int, str]] = {}
    try:
        with BulkWriter([node.addr], "fill") as w:
            wait_for(lambda: len(w.acked) >= 12_000, 120, "the tree filled")
        acked.update(w.acked)
        for rnd in range(5):
            w = BulkWriter([node.addr], f"r{rnd}")
            acked.update(kill_while_writing(node, w, 500, rng.uniform(0.2, 1.5)))
            node = restarted(tmp_path / "d", port, [], 30)
            with Raw(node.addr, timeout=30) as r:
                files = r.call({"verb": "WALK", "path": "/bulk/**"})["files"]
            have = {f["path"]: (f["rev"], f["value"]) for f in files}
            assert {p: have.get(p) for p in acked} == acked
    finally:
        node.stop()


def test_three_nodes_all_killed_together_lose_nothing(tmp_path):
    # Frequent snapshots and small segments: restarts recover from snapshot +
    # log, not the log alone, and segments roll and are recycled meanwhile.
    addr0, start = three_durable(tmp_path, "--snap-revs", "50", "--segment-bytes", str(64 << 10))

    nodes = [start(0, True)]
    nodes += [start(1, True), start(2, True)]
    acked: dict[str, tuple[int, str]] = {}
    try:
        wait_for(
            lambda: all(call(n.addr, {"verb": "SELF"})["leader"] for n in nodes), 20, "a leader"
        )
        wait_for(
            lambda: all(
                f["value"] for f in call(addr0, {"verb": "WALK", "path": "/ctl/cal/*"})["files"]
            ),
            20,
            "three members",
        )
        for rnd in range(3):
            with Writer([n.addr for n in nodes], f"r{rnd}") as w:
                # enough for each round's log to fill a segment or more
                wait_for(lambda w=w: len(w.acked) > 500, 60, "writes acknowledged")
                for n in nodes:
                    n.kill()
            acked.update(w.acked)
            nodes = [start(i, False) for i in range(3)]
            wait_for(
                lambda ns=nodes: "rev" in call(ns[1].addr, {"verb": "REV", "timeout": 1}, 5),
                30,
                "cluster writable again",
            )
            for n in nodes:
                check_acked(n.addr, acked)
        # the logs rolled over (into spare files, then recycled ones)
        for i in range(3):
            assert int(sorted((tmp_path / f"n{i}").glob("log-*.wal"))[-1].name[4:-4]) > 0
        # nobody was evicted: the same three hold the slots
        slots = call(addr0, {"verb": "WALK", "path": "/ctl/cal/*"})["files"]
        assert len({f["value"] for f in slots if f["value"]}) == 3
        # A snapshot carries no decided values it covers itself.
        for i in range(3):
            snap = newest_snapshot(tmp_path / f"n{i}")
            d = snap["durable"]
            assert snap["instance"] > 0 and d["base"] == snap["instance"]
            assert all(e[0] > d["base"] for e in d["decided"] + d["accepted"])
    finally:
        for n in nodes:
            n.stop()


def newest_snapshot(datadir: Path) -> dict:
    """The payload of the newest snap-*.snap (after its 32-byte header)."""
    path = sorted(datadir.glob("snap-*.snap"))[-1]
    return orjson.loads(path.read_bytes()[32:])


def log_end(data: bytes) -> int:
    """Where a segment's records end: its header, then `[u32 len][u32 salt][u32
    crc][json]` frames, up to the first frame without the segment's salt."""
    from tests.test_storage import frames

    got = frames(data)
    return got[-1][1] if got else 16


def test_torn_tail_is_cut_and_corruption_refuses_to_start(tmp_path):
    port = free_port()
    d = tmp_path / "d"
    node = durable_node(d, port).start()
    for i in range(20):
        assert "rev" in call(node.addr, {"verb": "SET", "path": f"/t/{i}", "value": "x" * 50})
    node.kill()
    seg = sorted(d.glob("log-*.wal"))[-1]
    data = seg.read_bytes()
    end = log_end(data)
    # the last record cut short: its tail never reached the (preallocated) file
    seg.write_bytes(data[: end - 7] + bytes(len(data) - end + 7))
    node = durable_node(d, port).start()
    try:
        assert "rev" in call(node.addr, {"verb": "GET", "path": "/t/5"})
        assert "torn" in node.log().lower()
    finally:
        node.kill()
    seg = sorted(d.glob("log-*.wal"))[-1]
    data = bytearray(seg.read_bytes())
    data[log_end(bytes(data)) // 3] ^= 0xFF  # a flipped byte in the middle of the log
    seg.write_bytes(bytes(data))
    node = durable_node(d, port)
    node.start(wait=False)
    assert node.proc is not None
    rc = node.proc.wait(20)
    assert rc != 0
    assert seg.name in node.log() and "offset" in node.log()
    # and what to do about it
    assert "move " + str(d) + " aside and start this node with -a" in node.log()


def test_second_node_on_same_dir_is_refused(tmp_path):
    node = durable_node(tmp_path / "d", free_port()).start()
    try:
        other = durable_node(tmp_path / "d", free_port())
        other.start(wait=False)
        assert other.proc is not None
        assert other.proc.wait(20) != 0
        assert f"process {node.proc.pid}" in other.log() or "in use" in other.log()
    finally:
        node.stop()


def test_backup_and_restore(tmp_path):
    import subprocess
    import sys

    src = NodeProc().start()
    try:
        for i in range(50):
            call(src.addr, {"verb": "SET", "path": f"/b/{i}", "value": f"{i}"})
        revs = {
            f"/b/{i}": call(src.addr, {"verb": "GET", "path": f"/b/{i}"})["rev"] for i in range(50)
        }
        snap = tmp_path / "backup.snap"
        subprocess.run(
            [sys.executable, "-m", "doozer", "-a", src.addr, "snapshot", "save", str(snap)],
            check=True,
            timeout=60,
        )
    finally:
        src.stop()
    d = tmp_path / "restored"
    subprocess.run(
        [sys.executable, "-m", "doozer", "snapshot", "restore", str(snap), "-d", str(d)],
        check=True,
        timeout=60,
    )
    node = durable_node(d, free_port()).start()
    try:
        wait_for(
            lambda: (
                "rev"
                in call(node.addr, {"verb": "SET", "path": "/after", "value": "1", "timeout": 1}, 5)
            ),
            20,
            "restored node writable",
        )
        for path, rev in revs.items():
            assert call(node.addr, {"verb": "GET", "path": path})["rev"] == rev
        me = call(node.addr, {"verb": "SELF"})["value"]
        assert call(node.addr, {"verb": "GET", "path": "/ctl/cal/0"})["value"] == me
        wait_for(
            lambda: (
                call(node.addr, {"verb": "GET", "path": f"/ctl/node/{me}/addr"})["value"]
                == node.addr
            ),
            20,
            "restored node rewrites its address",
        )
    finally:
        node.stop()


def test_dead_member_loses_its_slot_and_reclaims_it_after_restart(tmp_path):
    """--timeout: a member a quorum has not heard from loses its slot (once,
    through consensus); restarted from its data dir it comes back as itself,
    as a follower, and claims the free slot again. Nobody healthy is removed."""
    addr0, start = three_durable(tmp_path, "--timeout", "3")

    nodes = [start(0, True), start(1, True), start(2, True)]
    try:
        wait_three_members(nodes)
        victim = next(n for n in nodes if call(n.addr, {"verb": "SELF"})["role"] == "member")
        vid = call(victim.addr, {"verb": "SELF"})["value"]
        healthy = [call(n.addr, {"verb": "SELF"})["value"] for n in nodes if n is not victim]
        victim.kill()

        def slots() -> dict[str, str]:
            files = call(
                addr0 if victim.addr != addr0 else nodes[1].addr,
                {"verb": "WALK", "path": "/ctl/cal/*"},
            )["files"]
            return {f["path"]: f["value"] for f in files}

        wait_for(lambda: vid not in slots().values(), 30, "the dead member's slot emptied")
        assert set(healthy) <= set(slots().values())
        i = nodes.index(victim)
        nodes[i] = start(i, False)
        assert call(nodes[i].addr, {"verb": "SELF"})["value"] == vid  # same identity
        wait_for(lambda: vid in slots().values(), 30, "the restarted node claims a slot")
        assert set(healthy) <= set(slots().values())
    finally:
        for n in nodes:
            n.stop()


def test_a_member_restarted_at_a_new_address_is_a_member_again(tmp_path):
    """A member comes back from its data dir at another address (a machine
    rescheduled with a new IP). The leader must dial it there at once: it
    cannot rewrite its own /ctl/node address until it hears a leader. Then the
    other follower dies, and the leader and the moved member are the quorum."""
    _, start = three_durable(tmp_path)
    nodes = [start(0, True), start(1, True), start(2, True)]
    try:
        wait_three_members(nodes)
        leader = next(n for n in nodes if call(n.addr, {"verb": "SELF"})["role"] == "leader")
        moved, other = [n for n in nodes if n is not leader]
        mid = call(moved.addr, {"verb": "SELF"})["value"]
        moved.stop()
        new = durable_node(tmp_path / f"n{nodes.index(moved)}", free_port()).start()
        nodes[nodes.index(moved)] = new
        assert call(new.addr, {"verb": "SELF"})["value"] == mid
        hears = lambda: call(new.addr, {"verb": "SELF"}).get("leader")  # noqa: E731
        wait_for(hears, 10, "the moved member hears a leader")
        other.kill()
        r = call(new.addr, {"verb": "SET", "path": "/after-move", "value": "1", "timeout": 10})
        assert "rev" in r, r
        path = f"/ctl/node/{mid}/addr"
        moved_entry = lambda: call(leader.addr, {"verb": "GET", "path": path})["value"]  # noqa: E731
        wait_for(lambda: moved_entry() == new.addr, 10, "the moved member's address rewritten")
        assert not any("two nodes with one id" in n.log() for n in nodes)  # a move, not a twin
    finally:
        for n in nodes:
            n.stop()


def test_a_whole_cluster_moved_to_new_addresses_reforms_given_a_peer_each(tmp_path):
    """Every machine rescheduled with a new address at once: each node dials
    the others at their old /ctl/node addresses and none is there. Restarted
    with -a naming one other node's new address, each asks it who it is and
    dials it there; a quorum forms, and every entry is rewritten."""
    _, start = three_durable(tmp_path)
    nodes = [start(0, True), start(1, True), start(2, True)]
    try:
        wait_three_members(nodes)
        ids = [call(n.addr, {"verb": "SELF"})["value"] for n in nodes]
        for n in nodes:
            n.stop()
        ports = [free_port() for _ in range(3)]
        nodes = [
            durable_node(tmp_path / f"n{i}", ports[i], "-a", f"127.0.0.1:{ports[(i + 1) % 3]}")
            for i in range(3)
        ]
        for n in nodes:
            n.start()
        r = call(nodes[0].addr, {"verb": "SET", "path": "/moved", "value": "1", "timeout": 15}, 20)
        assert "rev" in r, r

        def rewritten() -> bool:
            got = [
                call(nodes[0].addr, {"verb": "GET", "path": f"/ctl/node/{nid}/addr"})["value"]
                for nid in ids
            ]
            return got == [n.addr for n in nodes]

        wait_for(rewritten, 15, "every node's entry names its new address")
        wait_three_members(nodes)
    finally:
        for n in nodes:
            n.stop()


def test_a_resuming_node_ignores_an_a_peer_of_another_cluster(tmp_path):
    other = NodeProc("-c", "other").start()
    port = free_port()
    node = durable_node(tmp_path / "a", port).start()
    try:
        node.stop()
        node = durable_node(tmp_path / "a", port, "-a", other.addr).start()
        wait_for(lambda: "of another cluster" in node.log(), 10, "the foreign -a is noticed")
        assert "rev" in call(node.addr, {"verb": "SET", "path": "/x", "value": "1"})
        assert "unreachable" not in node.log()  # never dialed as a peer
    finally:
        node.stop()
        other.stop()


def test_two_nodes_with_one_id_are_reported(tmp_path):
    """A member's data dir copied and started twice (two machines, one id)
    breaks consensus; its peers cannot tell which is which, but they can see
    one id connected from two addresses at once, and say so."""
    import shutil

    _, start = three_durable(tmp_path)
    nodes = [start(0, True), start(1, True), start(2, True)]
    twin = None
    try:
        wait_three_members(nodes)
        nodes[2].stop()
        shutil.copytree(tmp_path / "n2", tmp_path / "twin")
        nodes[2] = start(2, False)
        twin = durable_node(tmp_path / "twin", free_port()).start()

        def reported() -> bool:
            return any("two nodes with one id" in n.log() for n in nodes[:2])

        wait_for(reported, 15, "a peer reports the duplicate id")
    finally:
        if twin is not None:
            twin.kill()
        for n in nodes:
            n.stop()


def test_full_disk_refuses_writes_keeps_reads_and_recovers(tmp_path):
    import os

    mnt = mount_tmpfs(tmp_path, "4m")
    node = None
    try:
        node = durable_node(mnt / "d", free_port()).start()
        assert "rev" in call(node.addr, {"verb": "SET", "path": "/keep", "value": "k"})
        filler = mnt / "filler"
        st = os.statvfs(mnt)
        filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - (200 << 10)))
        value = "x" * 20_000
        err = None
        for i in range(200):
            r = call(
                node.addr, {"verb": "SET", "path": f"/fill/{i}", "value": value, "timeout": 2}, 10
            )
            if "err_code" in r:
                err = r
                break
        assert err is not None and err["err_code"] == "UNAVAILABLE", err
        # writes are refused with the reason; stale reads go on
        r = call(node.addr, {"verb": "SET", "path": "/more", "value": "y", "timeout": 2}, 10)
        assert r.get("err_code") == "UNAVAILABLE"
        assert "data dir" in r["err_detail"] or "outcome" in r["err_detail"], r
        assert call(node.addr, {"verb": "GET", "path": "/keep", "stale": True})["value"] == "k"
        filler.unlink()  # space returns
        wait_for(
            lambda: (
                "rev"
                in call(
                    node.addr, {"verb": "SET", "path": "/after", "value": "z", "timeout": 2}, 10
                )
            ),
            30,
            "writes resume",
        )
        assert call(node.addr, {"verb": "GET", "path": "/keep"})["value"] == "k"
    finally:
        if node is not None:
            node.stop()
        umount(mnt)


def test_a_leader_with_a_full_disk_hands_over_and_writes_go_on(tmp_path):
    """The leader's disk fills up. It cannot count its own votes, and while it
    stayed leader the cluster refused every write for as long as the disk was
    full, although two healthy members could decide them. It hands
    leadership on at once, and writes through its own address go on: it
    forwards them, and they are decided on the others' disks."""

    mnt = mount_tmpfs(tmp_path, "4m")
    nodes = three_one_on(mnt / "d", tmp_path)
    addr0 = nodes[0].addr
    try:
        assert call(addr0, {"verb": "SELF"})["role"] == "leader"
        assert "rev" in call(addr0, {"verb": "SET", "path": "/keep", "value": "k"})
        filler = fill_up(mnt)
        # Appends overwrite the segment's zeros: the disk fails once the log
        # needs a new segment. Every write is acknowledged, before and after.
        acked = []
        failed_at = None
        with Raw(addr0, timeout=15) as r:
            for k in range(20_000):
                a = r.call({"verb": "SET", "path": f"/w/{k}", "value": "v" * 100, "timeout": 5})
                assert "rev" in a, (k, a)
                acked.append(a["rev"])
                if failed_at is None and k % 50 == 0 and "neither leads" in nodes[0].log():
                    failed_at = k
                if failed_at is not None and k >= failed_at + 300:
                    break
        assert failed_at is not None, "the disk never filled up"
        assert "handing leadership" in nodes[0].log()
        assert call(addr0, {"verb": "SELF"})["role"] != "leader"
        for n in nodes:
            got = call(n.addr, {"verb": "GET", "path": f"/w/{len(acked) - 1}"})
            assert got["value"] == "v" * 100 and got["rev"] == acked[-1], got
        filler.unlink()  # space returns
        wait_for(lambda: "data dir writable again" in nodes[0].log(), 20, "the disk works")
        assert "rev" in call(addr0, {"verb": "SET", "path": "/after", "value": "z"})
        assert call(addr0, {"verb": "GET", "path": "/keep"})["value"] == "k"
    finally:
        for n in nodes:
            n.stop()
        umount(mnt)


def test_a_member_whose_disk_stays_full_under_writes_exits_and_resumes_later(tmp_path):
    """What a member cannot write waits in memory, and the decided values with
    it: under a steady stream of writes its memory would grow without bound
    (~10 MB/s under 64 writers here). Past 16 MiB of unwritten log it exits
    (1), saying why, and the others go on; restarted once there is space, it
    resumes from its disk and catches up."""

    mnt = mount_tmpfs(tmp_path, "64m")
    nodes = three_one_on(mnt / "d", tmp_path)
    addr0 = nodes[0].addr
    try:
        filler = fill_up(mnt)
        value = "v" * 20_000
        proc = nodes[0].proc
        assert proc is not None
        last = None
        with Raw(nodes[1].addr, timeout=15) as r:
            for k in range(5_000):  # ~16 MiB needs ~850 of them
                last = r.call({"verb": "SET", "path": f"/big/{k % 50}", "value": value})
                assert "rev" in last, (k, last)
                if proc.poll() is not None:
                    break
        assert proc.poll() == 1, "the member with the full disk did not exit"
        assert "MiB of log wait in memory: exiting" in nodes[0].log()
        with Raw(nodes[2].addr, timeout=15) as r:
            assert "rev" in r.call({"verb": "SET", "path": "/still", "value": "ok"})
        filler.unlink()  # room for the log it fetches as it catches up (~20 MB)
        nodes[0].stop()
        nodes[0] = durable_node(mnt / "d", nodes[0].port, *SMALL_SEGMENTS).start()
        wait_for(
            lambda: call(addr0, {"verb": "GET", "path": "/still", "stale": True})["value"] == "ok",
            30,
            "the member resumed and caught up",
        )
        assert "resumed from" in nodes[0].log()
    finally:
        for n in nodes:
            n.stop()
        umount(mnt)


def test_a_follower_whose_disk_is_full_claims_no_slot_until_it_works(tmp_path):
    """A follower that cannot write its data dir could not vote: claiming an
    empty slot, it would take the place of a healthy node. It waits until
    its disk works again."""
    mnt = mount_tmpfs(tmp_path, "4m")
    first = durable_node(tmp_path / "n0", free_port(), *SMALL_SEGMENTS, "--cals", "2").start()
    nodes = [first]
    try:
        for d in (tmp_path / "n1", mnt / "d"):
            nodes.append(durable_node(d, free_port(), *SMALL_SEGMENTS, "-a", first.addr).start())
        sick = nodes[2]
        wait_roles(nodes, ["follower", "leader", "member"], "two members and a follower")
        filler = fill_up(mnt)
        with Raw(first.addr, timeout=15) as r:
            for k in range(20_000):  # until the follower's log needs room it lacks
                assert "rev" in r.call({"verb": "SET", "path": f"/w/{k % 100}", "value": "v" * 200})
                if k % 50 == 0 and "neither leads nor votes" in sick.log():
                    break
        assert "neither leads nor votes" in sick.log()
        slot = call(first.addr, {"verb": "SET", "path": "/ctl/cal/2", "value": "", "rev": 0})
        assert "rev" in slot, slot
        with Raw(first.addr, timeout=15) as r:
            for k in range(30):  # three seconds of writes: time enough to claim it
                assert "rev" in r.call({"verb": "SET", "path": "/more", "value": str(k)})
                time.sleep(0.1)
        assert call(first.addr, {"verb": "GET", "path": "/ctl/cal/2"})["value"] == ""
        filler.unlink()
        wait_for(
            lambda: (
                call(first.addr, {"verb": "GET", "path": "/ctl/cal/2"})["value"]
                == call(sick.addr, {"verb": "SELF"})["value"]
            ),
            20,
            "the follower claims the slot once its disk works",
        )
    finally:
        for n in nodes:
            n.stop()
        umount(mnt)


def test_a_member_back_from_a_short_stop_catches_up_without_a_snapshot(tmp_path):
    """Members snapshot (and compact) every 50 revs here. One stopped for 120
    writes comes back behind the others' snapshots; they keep a margin of
    decided instances before each snapshot, so it fetches the entries it
    lacks rather than the whole store again."""
    addr0, start = three_durable(tmp_path, "--snap-revs", "50")

    nodes = [start(0, True), start(1, True), start(2, True)]
    try:
        wait_for(
            lambda: all(
                f["value"] for f in call(addr0, {"verb": "WALK", "path": "/ctl/cal/*"})["files"]
            ),
            20,
            "three members",
        )
        with Raw(addr0, timeout=10) as r:
            for k in range(40):
                assert "rev" in r.call({"verb": "SET", "path": f"/a/{k}", "value": "x"})
        nodes[2].stop()
        with Raw(addr0, timeout=10) as r:
            for k in range(120):
                last = r.call({"verb": "SET", "path": f"/b/{k}", "value": "y", "timeout": 5})
                assert "rev" in last, last
        snaps = sorted((tmp_path / "n0").glob("snap-*"))
        assert snaps, "the leader took no snapshot while the member was away"
        nodes[2] = start(2, False)
        wait_for(
            lambda: call(nodes[2].addr, {"verb": "REV", "stale": True})["rev"] >= last["rev"],
            20,
            "the member caught up",
        )
        assert "installed a snapshot" not in nodes[2].log()
        assert call(nodes[2].addr, {"verb": "GET", "path": "/b/119", "stale": True})["value"] == "y"
    finally:
        for n in nodes:
            n.stop()
