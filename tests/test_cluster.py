"""Real `doozer serve` processes on loopback, joined with -a."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tests.nodeproc import Cluster, Raw, call, wait_for

pytestmark = pytest.mark.slow


def write(addr: str, path: str, value: str, rev: int = -1, timeout: float = 5.0) -> dict:
    return call(
        addr,
        {"verb": "SET", "path": path, "value": value, "rev": rev, "timeout": timeout},
        timeout + 2,
    )


def test_three_nodes_join_and_any_node_serves_every_verb():
    with Cluster(3) as c:
        a, b, cc = c.nodes
        selves = c.selves()
        assert sorted(x["role"] for x in selves.values()).count("leader") == 1
        # the joins cost no election: the first node led throughout
        assert selves[a.addr]["role"] == "leader"
        for n in c.nodes:
            changes = [ln for ln in n.log().splitlines() if "leader is" in ln]
            assert len(changes) == 1, changes
        # every slot is taken by the three nodes
        cal = call(a.addr, {"verb": "WALK", "path": "/ctl/cal/*"})["files"]
        assert sorted(f["value"] for f in cal) == sorted(x["value"] for x in selves.values())
        # a write on any node is read linearizably on any other
        for i, n in enumerate(c.nodes):
            r = write(n.addr, f"/k{i}", f"v{i}")
            assert "rev" in r, r
            for m in c.nodes:
                g = call(m.addr, {"verb": "GET", "path": f"/k{i}"})
                assert g["value"] == f"v{i}" and g["rev"] == r["rev"]
        # the same revs everywhere: reads at a rev are identical on every node
        rev = call(b.addr, {"verb": "REV"})["rev"]
        walks = [call(n.addr, {"verb": "WALK", "path": "/**", "rev": rev}) for n in c.nodes]
        assert walks[0] == walks[1] == walks[2]
        # WAIT on one node sees a write made on another
        with Raw(cc.addr) as w:
            w.send({"tag": 1, "verb": "WAIT", "path": "/w/*"})
            w.call({"tag": 2, "verb": "NOP"})
            r = write(a.addr, "/w/x", "1")
            ev = w.recv()
            assert ev["tag"] == 1 and ev["rev"] == r["rev"] and ev["path"] == "/w/x"


def test_follower_forwards_writes_and_serves_reads():
    with Cluster(3) as c:
        f = c.add()  # a fourth node: every slot is taken, so it follows
        wait_for(lambda: call(f.addr, {"verb": "SELF"})["leader"], 20, "follower knows the leader")
        assert call(f.addr, {"verb": "SELF"})["role"] == "follower"
        r = write(f.addr, "/from-follower", "x")
        assert "rev" in r, r
        assert call(c.nodes[0].addr, {"verb": "GET", "path": "/from-follower"})["value"] == "x"
        r2 = write(c.nodes[1].addr, "/to-follower", "y")
        g = call(f.addr, {"verb": "GET", "path": "/to-follower"})
        assert g["value"] == "y" and g["rev"] == r2["rev"]
        # stale reads are local and catch up
        wait_for(
            lambda: (
                call(f.addr, {"verb": "GET", "path": "/to-follower", "stale": True})["value"] == "y"
            ),
            10,
            "stale read catches up",
        )
        # the follower's /ctl/node entries exist
        me = call(f.addr, {"verb": "SELF"})["value"]
        assert call(f.addr, {"verb": "GET", "path": f"/ctl/node/{me}/addr"})["value"] == f.addr


def test_one_mib_value_through_three_nodes():
    with Cluster(3) as c:
        big = "z" * (1 << 20)
        r = write(c.nodes[1].addr, "/big", big, timeout=10)
        assert "rev" in r, r
        for n in c.nodes:
            g = call(n.addr, {"verb": "GET", "path": "/big"}, 10)
            assert g["rev"] == r["rev"] and len(g["value"]) == 1 << 20


def test_kill_leader_under_load_writes_resume():
    with Cluster(3) as c:
        leader = c.leader()
        assert leader is not None
        others = [n for n in c.nodes if n is not leader]
        acked: list[tuple[str, int]] = []
        stop = threading.Event()

        def load(addr: str, tag: str) -> None:
            i = 0
            while not stop.is_set() and i < 100_000:
                i += 1
                try:
                    r = write(addr, f"/load/{tag}/{i}", str(i), timeout=2)
                except OSError:
                    continue
                if "rev" in r:
                    acked.append((f"/load/{tag}/{i}", r["rev"]))

        threads = [
            threading.Thread(target=load, args=(n.addr, f"t{i}")) for i, n in enumerate(others)
        ]
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) > 50, 20, "writes before the kill")
        leader.kill()
        t0 = time.monotonic()
        n0 = len(acked)
        wait_for(lambda: len(acked) > n0 + 50, 20, "writes after the leader died")
        took = time.monotonic() - t0
        stop.set()
        for t in threads:
            t.join(30)
        print(f"writes resumed {took:.2f}s after kill -9 of the leader")
        c.wait_members(2)
        # nothing acknowledged is lost
        survivor = others[0].addr
        for path, rev in acked:
            g = call(survivor, {"verb": "GET", "path": path})
            assert g["rev"] == rev, (path, rev, g)


def test_paused_member_does_not_stop_the_cluster_and_catches_up():
    with Cluster(3) as c:
        victim = next(n for n in c.nodes if n is not c.leader())
        victim.signal(signal.SIGSTOP)
        try:
            others = [n for n in c.nodes if n is not victim]
            for i in range(20):
                assert "rev" in write(others[i % 2].addr, f"/p/{i}", "x"), i
        finally:
            victim.signal(signal.SIGCONT)
        last = call(others[0].addr, {"verb": "REV"})["rev"]
        wait_for(
            lambda: call(victim.addr, {"verb": "REV", "stale": True})["rev"] >= last,
            20,
            "paused member catches up",
        )
        assert call(victim.addr, {"verb": "GET", "path": "/p/19"})["value"] == "x"


def test_a_member_paused_past_the_timeout_learns_it_was_removed_and_serves_again():
    """Paused past --timeout: its slot is emptied and its /ctl/node entries
    removed. Back, it must still hear decisions (from peers it is linked to),
    learn that, put its entries back and serve linearizable reads."""
    with Cluster(3, "--election-timeout", "0.5", "--timeout", "2") as c:
        victim = next(n for n in c.nodes if n is not c.leader())
        vid = call(victim.addr, {"verb": "SELF"})["value"]
        others = [n for n in c.nodes if n is not victim]

        def listed() -> bool:
            files = call(others[0].addr, {"verb": "WALK", "path": "/ctl/**"})["files"]
            return any(vid in f["path"] or f["value"] == vid for f in files)

        victim.signal(signal.SIGSTOP)
        try:
            wait_for(lambda: not listed(), 30, "the paused member removed")
            assert "rev" in write(others[0].addr, "/while-paused", "x")
        finally:
            victim.signal(signal.SIGCONT)
        wait_for(listed, 30, "its entries back")
        r = wait_for(
            lambda: (
                (x := call(victim.addr, {"verb": "GET", "path": "/while-paused"}))
                and "value" in x
                and x
            ),
            30,
            "a linearizable read on it",
        )
        assert r["value"] == "x"


def test_no_quorum_answers_unavailable_then_recovers():
    with Cluster(3) as c:
        a = c.nodes[0]
        stopped = c.nodes[1:]
        for n in stopped:
            n.signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            r = write(a.addr, "/nq", "x", timeout=1)
            assert r["err_code"] == "UNAVAILABLE", r
            assert time.monotonic() - t0 < 5
            g = call(a.addr, {"verb": "GET", "path": "/nq", "timeout": 1})
            assert g["err_code"] == "UNAVAILABLE"
            assert "rev" in call(a.addr, {"verb": "GET", "path": "/nq", "stale": True})
        finally:
            for n in stopped:
                n.signal(signal.SIGCONT)
        wait_for(lambda: "rev" in write(a.addr, "/nq2", "y", timeout=2), 30, "writes resume")


def test_five_nodes():
    with Cluster(5) as c:
        r = write(c.nodes[4].addr, "/five", "5")
        for n in c.nodes:
            assert call(n.addr, {"verb": "GET", "path": "/five"})["rev"] == r["rev"]
        # two members down: still a quorum
        c.nodes[3].kill()
        c.nodes[4].kill()
        assert "rev" in write(c.nodes[0].addr, "/five2", "x", timeout=10)


def test_joining_node_refuses_other_cluster_name_and_takes_the_peers_without_c():
    with Cluster(1) as c:
        from tests.nodeproc import NodeProc

        n = NodeProc("-c", "other", "-a", c.nodes[0].addr)
        n.start(wait=False)
        try:
            assert n.proc is not None
            n.proc.wait(20)
            assert n.proc.returncode != 0
            assert "refusing to join" in n.log()
        finally:
            n.kill()
    # Without -c a joiner takes the cluster of the peer it was pointed at.
    with Cluster(1, "-c", "alpha") as c:
        from tests.nodeproc import NodeProc

        with NodeProc("-a", c.nodes[0].addr) as n:
            assert "joined cluster 'alpha'" in n.log()
            assert "rev" in write(n.addr, "/joined-alpha", "x", timeout=10)


def test_a_membership_change_that_leaves_no_live_quorum_is_refused():
    # --timeout 6: members ping every 0.3 s, so a dead one is "not heard
    # from" after ~1 s, and removed by the leader only after 6 s.
    with Cluster(3, "--timeout", "6") as c:
        ids = [call(n.addr, {"verb": "SELF"})["value"] for n in c.nodes]
        leader = call(c.nodes[0].addr, {"verb": "SELF"}).get("leader") or ids[0]
        addr = c.nodes[ids.index(leader)].addr  # asked throughout: never the one killed
        slot = {call(addr, {"verb": "GET", "path": f"/ctl/cal/{i}"})["value"]: i for i in range(3)}
        dead, live = [x for x in ids if x != leader]
        outsider = c.add("--timeout", "6")  # no free slot: a follower, hearing only the leader
        c.nodes[ids.index(dead)].kill()

        def delete(member: str, rev: int = -1) -> dict:
            req = {"verb": "DEL", "path": f"/ctl/cal/{slot[member]}", "rev": rev, "timeout": 5}
            return call(addr, req, 8)

        # Until the dead member counts as silent, a DEL with a stale rev is
        # only a REV_MISMATCH: a probe that changes nothing either way.
        wait_for(lambda: delete(live, rev=1).get("err_code") == "PERMISSION", 10, "dead is silent")

        # {leader, dead} would need both: refused, and nothing changes
        r = delete(live)
        assert r.get("err_code") == "PERMISSION", r
        assert "1 of 2 members live" in r["err_detail"] and dead in r["err_detail"]
        assert call(addr, {"verb": "GET", "path": f"/ctl/cal/{slot[live]}"})["value"] == live
        # an empty slot takes no member out: fine, whoever is down, and on a
        # node outside the member set too (it cannot judge who is live)
        assert "rev" in write(outsider.addr, "/ctl/cal/5", "", rev=0)
        # removing the dead one leaves {leader, live}: fine
        assert "rev" in delete(dead)
        assert "rev" in write(addr, "/after", "x")


def test_a_write_too_large_to_pass_between_members_is_refused_and_the_log_goes_on():
    """A raised --max-line let a write through whose accept no link carries
    (a 17 MB path, here): every link dropped it, the write never decided, and
    the log was stuck behind it for good. It is refused up front now (a path
    is held to MAX_PATH bytes; a write too large for the links would be
    TOO_LARGE); the largest --max-value allowed still passes."""
    from doozer.serve import MAX_VALUE_BETWEEN_MEMBERS as most

    with Cluster(3, "--max-line", "60000000", "--max-value", str(most)) as c:
        addr = c.nodes[0].addr
        r = call(
            addr, {"verb": "SET", "path": "/" + "p" * 17_000_000, "value": "", "timeout": 5}, 30
        )
        assert r.get("err_code") == "BAD_PATH", r
        assert "longer than" in r["err_detail"]
        r = call(addr, {"verb": "SET", "path": "/big", "value": "v" * most, "timeout": 20}, 40)
        assert "rev" in r, r
        assert "rev" in write(c.nodes[1].addr, "/after", "x")
        assert len(call(c.nodes[2].addr, {"verb": "GET", "path": "/big"}, 30)["value"]) == most


def test_joining_with_a_wrong_or_no_secret_stops_and_says_why():
    from tests.nodeproc import NodeProc

    def refused(first: NodeProc, env: dict[str, str], said: str) -> None:
        n = NodeProc("-a", first.addr, env=env)
        n.start(wait=False)
        try:
            assert n.proc is not None
            assert n.proc.wait(20) == 2  # at once: no retrying for ever
            assert said in n.log() and "secret" in n.log()
        finally:
            n.kill()

    with NodeProc(env={"DOOZER_SECRET": "right"}) as first:
        for env in ({"DOOZER_SECRET": "wrong"}, {"DOOZER_SECRET": ""}):
            refused(first, env, "refused us")
    # A secret the cluster does not have: ACCESS passes on a node without
    # one, and the joiner once "joined", then had every peer link refused
    # for good.
    with NodeProc(env={"DOOZER_SECRET": ""}) as first:
        refused(first, {"DOOZER_SECRET": "extra"}, "without a secret")


class Proxy:
    """tests/faultproxy.py as a subprocess in front of one node's port."""

    def __init__(self, target: str) -> None:
        import subprocess
        import sys

        self.p = subprocess.Popen(
            [sys.executable, "-m", "tests.faultproxy", "--target", target],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        assert line.startswith("listening "), line
        self.addr = line.split()[1]

    def cmd(self, c: str) -> str:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(c + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def close(self) -> None:
        self.p.kill()
        self.p.wait(5)


def test_member_cut_off_from_peers_majority_goes_on_and_it_catches_up():
    from tests.nodeproc import NodeProc, free_port

    port_c = free_port()
    proxy = Proxy(f"127.0.0.1:{port_c}")
    nodes: list[NodeProc] = []
    try:
        a = NodeProc("--election-timeout", "0.5", "--cals=3").start()
        nodes.append(a)
        b = NodeProc("--election-timeout", "0.5", "-a", a.addr).start()
        nodes.append(b)
        # peers reach C only through the proxy (C advertises it)
        cnode = NodeProc(
            "--election-timeout", "0.5", "-a", a.addr, "--advertise", proxy.addr, port=port_c
        ).start()
        nodes.append(cnode)
        c = Cluster(3)
        c.nodes = nodes
        c.wait_members(3)
        assert "rev" in write(a.addr, "/before", "1")
        assert proxy.cmd("block").startswith("ok")
        # the majority keeps writing (C may have been the leader)
        wait_for(lambda: "rev" in write(b.addr, "/during", "2", timeout=2), 20, "majority writes")
        for i in range(20):
            assert "rev" in write(a.addr, f"/dur/{i}", "x", timeout=5)
        # C cannot confirm a linearizable read or a write: UNAVAILABLE, in time
        r = call(cnode.addr, {"verb": "GET", "path": "/during", "timeout": 1}, 5)
        assert r.get("err_code") == "UNAVAILABLE", r
        assert "rev" in call(cnode.addr, {"verb": "GET", "path": "/before", "stale": True})
        assert proxy.cmd("unblock").startswith("ok")
        last = call(a.addr, {"verb": "REV"})["rev"]
        wait_for(
            lambda: call(cnode.addr, {"verb": "REV", "stale": True})["rev"] >= last,
            30,
            "cut-off member catches up",
        )
        assert call(cnode.addr, {"verb": "GET", "path": "/dur/19"})["value"] == "x"
        # nobody was removed
        slots = call(a.addr, {"verb": "WALK", "path": "/ctl/cal/*"})["files"]
        assert all(f["value"] for f in slots)
    finally:
        for n in nodes:
            n.stop(5)
        proxy.close()


def test_a_node_joining_through_a_silent_peer_stops_on_sigterm_and_sigint():
    """Joining retries for ever while its peer does not answer; a signal must
    still stop it at once (a user pressing ^C on a mistyped -a)."""
    import signal

    from tests.nodeproc import NodeProc, free_port, wait_for

    for sig in (signal.SIGTERM, signal.SIGINT):
        n = NodeProc("-a", f"127.0.0.1:{free_port()}")
        n.start(wait=False)
        try:
            assert n.proc is not None

            def retrying(n: NodeProc = n) -> bool:
                assert n.proc is not None and n.proc.poll() is None, n.log()
                return "cannot join" in n.log()

            wait_for(retrying, 20, "the joiner retrying its silent peer")
            n.proc.send_signal(sig)
            assert n.proc.wait(10) == 0, n.log()
            assert "stopped by a signal while starting" in n.log()
        finally:
            n.kill()


def test_a_node_back_at_its_address_with_a_new_id_is_not_cut_off_by_the_old_one():
    """A member restarted on a wiped disk at its old address has a new id.
    Nodes that had the old id's address from its hello dialed it there for
    good, and each dial took the new node's link from them for a new one
    and closed the live one: the leader's link to it went down every ~2 s.
    Once the old id is removed, nobody dials it any more."""
    from tests.nodeproc import NodeProc

    flags = ("--election-timeout", "0.5", "--timeout", "2")
    nodes: list[NodeProc] = []
    try:
        a = NodeProc(*flags, "--cals=3").start()
        nodes.append(a)
        for _ in range(2):
            nodes.append(NodeProc(*flags, "-a", a.addr).start())
        c = Cluster(3)
        c.nodes = list(nodes)
        c.wait_members(3)
        old = nodes[2]
        old_id = call(old.addr, {"verb": "SELF"})["value"]
        old.kill()
        new = NodeProc(*flags, "-a", a.addr, port=old.port).start()  # --mem: a new id
        nodes.append(new)
        new_id = wait_for(lambda: call(new.addr, {"verb": "SELF"})["value"], 20, "the new node")
        assert new_id != old_id

        def old_gone() -> bool:
            files = call(a.addr, {"verb": "WALK", "path": "/ctl/**"})["files"]
            return not any(old_id in f["path"] or f["value"] == old_id for f in files)

        wait_for(old_gone, 30, "the old id removed from /ctl")
        for n in nodes[:2]:  # neither dials the old id any more
            wait_for(lambda n=n: f"peer {old_id} at {old.addr} removed" in n.log(), 10, "unlinked")
        # and the links to the new node stay up
        down = f"peer {new_id} down"
        before = [n.log().count(down) for n in nodes[:2]]
        end = time.monotonic() + 4  # two redial periods (2 s) of writes through a
        while time.monotonic() < end:
            assert "rev" in write(a.addr, "/k", "x")
        assert [n.log().count(down) for n in nodes[:2]] == before
    finally:
        for n in nodes:
            n.stop(5)


def test_a_graceful_stop_costs_the_client_library_no_write():
    """A node stopped with SIGTERM answers what it will not carry out as
    such, and keeps answering until its clients fall silent, before it
    closes: the library sends those writes to the next node. Closing at
    once, a writer's next request met the FIN unanswered, and the library
    could only report its outcome unknown: one failed write per client at
    every graceful restart (3 of 3 in a rolling restart by hand)."""
    import asyncio

    from doozer.client import Client

    with Cluster(3) as c:
        addrs = [n.addr for n in c.nodes]

        async def writer() -> tuple[list[int], str, str]:
            revs: list[int] = []
            async with await Client.connect(addrs) as cl:
                first = cl.addr
                assert first is not None
                for k in range(400):
                    revs.append(await cl.set(f"/roll/{k % 20}", str(k).encode()))
                    if k == 99:  # the writes go on while it shuts down
                        victim = next(n for n in c.nodes if n.addr == first)
                        assert victim.proc is not None
                        victim.proc.send_signal(signal.SIGTERM)
                last = cl.addr
                assert last is not None
                return revs, first, last

        revs, first, last = asyncio.run(writer())
        assert revs == sorted(revs) and len(set(revs)) == 400
        assert last != first
        victim = next(n for n in c.nodes if n.addr == first)
        assert victim.proc is not None and victim.proc.wait(10) == 0
