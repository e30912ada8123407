"""The consensus core, driven by hand: deterministic scenarios for each mechanism.

The whole-cluster randomized simulation lives in tests/sim (test_sim.py); here a
small harness delivers messages in order, with explicit cuts, so each test sets up
exactly the situation it is about. The harness also enforces the Ready contract:
every record a message depends on was in `persist` of that Ready or an earlier one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import orjson
import pytest

from doozer.consensus import Config, DurableState, Replica
from doozer.consensus import messages as M
from doozer.consensus.ballot import ballot_of

CFG = Config(election_timeout=1.0, alpha=4, member_timeout=10.0)


class Host:
    def __init__(
        self,
        nid: str,
        cfg: Config,
        seed: int,
        durable: DurableState | None = None,
        applied: int | None = None,
    ) -> None:
        self.id = nid
        self.cfg = cfg
        self.disk = durable.copy() if durable is not None else DurableState()
        self.r = Replica(nid, config=cfg, rng=random.Random(seed), durable=durable, applied=applied)
        self.log: list[tuple[int, list]] = []
        self.applied = applied or self.disk.base
        self.reads: dict[object, int] = {}
        self.failed: list[object] = []
        self.suspects: list[str] = []
        self.need_snapshot: str | None = None
        self.up = True
        # A failing data dir (Net.break_disk): records and what waits on them
        # (promises, votes, our own vote) stay here until it works again.
        self.disk_broken = False
        self.unsynced: list[list] = []
        self.held_out: list[tuple[str, dict]] = []
        self.held_loopback: list[dict] = []


class Net:
    """Replicas joined by an in-order, loss-free network with cuttable links."""

    def __init__(
        self, ids: list[str], cfg: Config = CFG, members: list[str] | None = None, seed: int = 1
    ) -> None:
        self.cfg = cfg
        self.t = 0.0
        self.seed = seed
        self.hosts = {nid: Host(nid, cfg, seed * 100 + k) for k, nid in enumerate(ids)}
        self.queue: list[tuple[str, str, bytes]] = []
        self.cut: set[tuple[str, str]] = set()
        self.sent: list[tuple[str, str, dict]] = []
        self.drop_types: set[str] = set()  # message kinds the network loses
        # node id -> messages to it held unread (a paused process's socket)
        self.held: dict[str, list[tuple[str, dict]]] = {}
        self.membership: Callable[[Host], frozenset[str]] = lambda h: self.initial
        self.initial = frozenset(members if members is not None else ids)
        for h in self.hosts.values():
            if h.id in self.initial or members is None:
                h.r.bootstrap(self.initial)

    # -- plumbing
    def drain(self, h: Host) -> None:
        while h.up and h.r.has_ready():
            rd = h.r.ready()
            if h.disk_broken or h.unsynced:
                h.unsynced.extend(rd.persist)
                h.held_out.extend(rd.messages)
                h.held_loopback.extend(rd.loopback)
                out, loopback = list(rd.early), []
            else:
                for rec in rd.persist:
                    h.disk.apply(orjson.loads(orjson.dumps(rec)))
                out, loopback = rd.early + rd.messages, rd.loopback
            for to, msg in out:
                self._check_contract(h, msg)
                self.sent.append((h.id, to, msg))
                self.queue.append((h.id, to, orjson.dumps(msg)))
            for msg in loopback:
                self._check_contract(h, msg)
                h.r.receive(self.t, h.id, msg)
            for i, batch in rd.decided:
                assert i == h.applied + 1, (h.id, i, h.applied)
                h.log.append((i, batch))
                h.applied = i
                h.r.set_membership(i, self.membership(h))
            for req, idx in rd.read_states:
                h.reads[req] = idx
            h.failed.extend(rd.read_failed)
            h.suspects.extend(rd.suspects)
            if rd.need_snapshot:
                h.need_snapshot = rd.need_snapshot
            h.r.advance()

    @staticmethod
    def _check_contract(h: Host, msg: dict) -> None:
        """A vote leaves the node only once it is on disk."""
        d = h.disk
        if msg["t"] == "A":
            i = msg["i"]
            assert i <= d.base or i in d.decided or d.accepted[i][0] == ballot_of(msg["b"])
        elif msg["t"] == "P":
            assert d.promised >= ballot_of(msg["b"])

    def deliver(self, limit: int = 100_000) -> None:
        n = 0
        while self.queue and n < limit:
            src, dst, data = self.queue.pop(0)
            n += 1
            h = self.hosts.get(dst)
            if h is None or not h.up or (src, dst) in self.cut:
                continue
            msg = orjson.loads(data)
            if msg["t"] in self.drop_types:
                continue
            if dst in self.held:
                self.held[dst].append((src, msg))
                continue
            h.r.receive(self.t, src, msg)
            self.drain(h)
        assert n < limit, "message storm"

    def tick(self, dt: float = 0.01) -> None:
        self.t += dt
        for h in self.hosts.values():
            if h.up and h.id not in self.held:
                h.r.tick(self.t)
                self.drain(h)
        self.deliver()

    def run(
        self, seconds: float, dt: float = 0.01, until: Callable[[], bool] | None = None
    ) -> None:
        for _ in range(int(seconds / dt)):
            self.tick(dt)
            if until is not None and until():
                return

    # -- views
    def leader(self) -> Host | None:
        ls = [h for h in self.hosts.values() if h.up and h.r.is_leader]
        return ls[0] if len(ls) == 1 else None

    def elect(self, seconds: float = 10.0) -> Host:
        self.run(seconds, until=lambda: self.leader() is not None)
        ld = self.leader()
        assert ld is not None, "no leader elected"
        return ld

    def campaign(self, h: Host, attempts: int = 3) -> None:
        """h starts phase 1 (again, if a higher ballot turns it down) until it leads."""
        for _ in range(attempts):
            assert h.r.campaign()
            self.drain(h)
            self.deliver()
            if h.r.is_leader:
                return
        raise AssertionError(f"{h.id} could not win")

    def propose(self, h: Host, *items: object) -> None:
        h.r.propose(list(items))
        self.drain(h)
        self.deliver()

    def items(self, h: Host) -> list:
        return [it for _, batch in h.log for it in batch]

    def cut_off(self, nid: str, inbound: bool = True, outbound: bool = True) -> None:
        for o in self.hosts:
            if o != nid:
                if outbound:
                    self.cut.add((nid, o))
                if inbound:
                    self.cut.add((o, nid))

    def heal(self) -> None:
        self.cut.clear()

    def pause(self, nid: str) -> None:
        """nid's process stops: no ticks, and what is sent to it waits unread."""
        self.held[nid] = []

    def resume(self, nid: str, tick_first: bool = False) -> None:
        """nid reads its whole backlog in one go (after a tick, if
        `tick_first`: its timers run before its loop reads the sockets)."""
        h = self.hosts[nid]
        backlog = self.held.pop(nid)
        if tick_first:
            h.r.tick(self.t)
            self.drain(h)
        for src, msg in backlog:
            h.r.receive(self.t, src, msg)
        self.drain(h)

    def crash(self, nid: str) -> None:
        self.hosts[nid].up = False

    def break_disk(self, nid: str) -> None:
        """nid's data dir fails every write from now on (a full disk)."""
        h = self.hosts[nid]
        h.disk_broken = True
        h.r.set_can_lead(False)
        self.drain(h)
        self.deliver()

    def mend_disk(self, nid: str) -> None:
        """Space returns: what was pending reaches the disk, in order, and
        what waited on it goes out."""
        h = self.hosts[nid]
        h.disk_broken = False
        for rec in h.unsynced:
            h.disk.apply(orjson.loads(orjson.dumps(rec)))
        out, loopback = h.held_out, h.held_loopback
        h.unsynced, h.held_out, h.held_loopback = [], [], []
        for to, msg in out:
            self._check_contract(h, msg)
            self.sent.append((h.id, to, msg))
            self.queue.append((h.id, to, orjson.dumps(msg)))
        for msg in loopback:
            h.r.receive(self.t, h.id, msg)
        h.r.set_can_lead(True)
        self.drain(h)
        self.deliver()

    def restart(self, nid: str) -> Host:
        old = self.hosts[nid]
        h = Host(nid, self.cfg, self.seed + 999, durable=old.disk, applied=old.disk.base)
        h.log = [(i, b) for i, b in old.log if i <= old.disk.base]
        self.hosts[nid] = h
        return h


# ---------------------------------------------------------------------- basics


def test_lone_member_elects_itself_and_decides_in_order() -> None:
    net = Net(["a"])
    a = net.elect(1.0)
    for k in range(10):
        net.propose(a, k)
    net.tick()
    assert net.items(a) == list(range(10))
    assert [i for i, _ in a.log] == list(range(1, len(a.log) + 1))


def test_a_ready_with_nothing_in_it_is_empty_and_read_only() -> None:
    """ready() hands back one shared empty Ready when there is nothing to do
    (each host pass ends on one); a host changing it must fail, not corrupt
    the next pass."""
    net = Net(["a", "b", "c"])
    a = net.elect()
    net.tick()
    rd = a.r.ready()
    assert not rd and not a.r.has_ready()
    for name in ("persist", "messages", "decided", "early", "loopback", "suspects"):
        with pytest.raises(AttributeError):
            getattr(rd, name).append(None)
    a.r.propose(["x"])
    full = a.r.ready()
    assert full and full.persist and full is not rd
    assert not rd  # still empty


def test_a_lone_member_restarting_leads_at_its_first_tick() -> None:
    net = Net(["a"])
    a = net.elect(1.0)
    for k in range(5):
        net.propose(a, k)
    net.tick()
    net.crash("a")
    a = net.restart("a")
    net.tick()  # nobody else could lead: no election timeout to wait out
    assert a.r.is_leader
    net.propose(a, 5)
    net.tick()
    assert net.items(a)[-1] == 5


def test_a_member_of_three_restarting_waits_before_campaigning() -> None:
    net = Net(["a", "b", "c"])
    net.elect()
    net.crash("a")
    net.crash("b")
    net.crash("c")
    hosts = [net.restart(x) for x in ("a", "b", "c")]
    net.tick()
    assert not any(h.r.is_leader or h.r.role != "follower" for h in hosts)
    net.elect()


def test_three_members_agree_and_followers_learn() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    for k in range(20):
        net.propose(ld, {"k": k})
    net.run(1.0)
    logs = [h.log for h in net.hosts.values()]
    assert logs[0] == logs[1] == logs[2]
    assert [it["k"] for it in net.items(ld)] == list(range(20))


def test_follower_forwards_proposals_and_a_leaderless_node_drops_them() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    f = next(h for h in net.hosts.values() if h is not ld)
    net.propose(f, "via-follower")
    net.run(0.5)
    assert "via-follower" in net.items(ld)
    lone = Net(["a", "b", "c"])  # nobody elected yet: nothing is known, the item is dropped
    lone.propose(lone.hosts["b"], "dropped")
    assert not any(lone.queue) and lone.hosts["b"].r.fwd_buf == []


def test_batches_are_bounded_and_pipelined() -> None:
    cfg = Config(election_timeout=1.0, alpha=4, max_batch_items=3, max_batch_bytes=100)
    net = Net(["a", "b", "c"], cfg)
    ld = net.elect()
    ld.r.propose([f"x{k}" for k in range(10)] + ["y" * 500])
    net.drain(ld)
    accepts = [m for s, _, m in net.sent if s == ld.id and m["t"] == "a"]
    per_instance = {m["i"]: m["v"] for m in accepts}
    assert len(per_instance) == 4  # alpha instances in flight, no more
    assert all(len(v) <= 3 for v in per_instance.values())
    net.run(1.0)
    assert net.items(ld) == [f"x{k}" for k in range(10)] + ["y" * 500]
    big = [b for _, b in ld.log if "y" * 500 in b]
    assert big == [["y" * 500]]  # an item over max_batch_bytes still goes, alone


def test_while_an_instance_is_in_flight_new_writes_wait_and_go_as_one() -> None:
    # Nagle's rule for instances: fewer, fuller instances under load.
    net = Net(["a", "b", "c"])
    ld = net.elect()
    net.run(0.1)

    def instances() -> dict[int, list]:
        return {m["i"]: m["v"] for s, _, m in net.sent if s == ld.id and m["t"] == "a"}

    seen = set(instances())
    ld.r.propose(["w1"])
    net.drain(ld)
    (first,) = set(instances()) - seen  # a lone write goes at once
    ld.r.propose(["w2"])
    net.drain(ld)
    ld.r.propose(["w3"])
    net.drain(ld)
    assert set(instances()) - seen == {first}  # held while w1 is in flight
    net.deliver()  # w1's votes come back: it is decided, and the rest goes
    new = {i: v for i, v in instances().items() if i not in seen}
    assert new == {first: ["w1"], first + 1: ["w2", "w3"]}
    net.run(0.5)
    for h in net.hosts.values():
        assert net.items(h)[-3:] == ["w1", "w2", "w3"]


def test_a_full_batch_does_not_wait_for_the_instance_in_flight() -> None:
    net = Net(["a", "b", "c"], Config(election_timeout=1.0, alpha=4, max_batch_items=2))
    ld = net.elect()
    net.run(0.1)
    seen = {m["i"] for s, _, m in net.sent if s == ld.id and m["t"] == "a"}
    for w in ("w1", "w2", "w3"):
        ld.r.propose([w])
        net.drain(ld)
    out = {m["i"]: m["v"] for s, _, m in net.sent if s == ld.id and m["t"] == "a"}
    new = sorted((i, v) for i, v in out.items() if i not in seen)
    assert [v for _, v in new] == [["w1"], ["w2", "w3"]]  # no vote has come back yet


def test_a_one_mebibyte_value_commits() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    v = "v" * (1 << 20)
    net.propose(ld, {"big": v})
    net.run(0.5)
    for h in net.hosts.values():
        assert {"big": v} in net.items(h)


# ---------------------------------------------------------------------- Paxos safety


def test_durable_state_as_compacted_for_a_snapshot() -> None:
    ds = DurableState()
    for i in range(1, 6):
        ds.apply(["a", i, [1, "x"], [f"v{i}"]])
        ds.apply(["d", i])
    ds.apply(["a", 6, [1, "x"], ["v6"]])
    j = ds.to_json(covered=3)
    assert j["base"] == 3
    assert [e[0] for e in j["decided"]] == [4, 5] and [e[0] for e in j["accepted"]] == [6]
    back = DurableState.from_json(orjson.loads(orjson.dumps(j)))
    back.apply(["d", 2])  # a record replayed from before the snapshot: already held
    back.apply(["a", 1, [1, "x"], ["old"]])
    assert sorted(back.decided) == [4, 5] and sorted(back.accepted) == [6]
    assert back.promised == ds.promised
    assert ds.to_json()["base"] == 0 and len(ds.to_json()["decided"]) == 5


def test_acceptor_rebuilt_from_disk_keeps_its_promise() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    promised = net.hosts["c"].disk.promised
    assert promised >= ld.r.rnd.ballot
    net.crash("c")
    c = net.restart("c")
    low = [promised[0] - 1, "zz"]
    c.r.receive(net.t, "x", {"t": "p", "b": low, "s": 1})
    c.r.receive(net.t, "x", {"t": "a", "b": low, "i": 99, "v": ["evil"], "c": 0})
    net.drain(c)
    replies = [m for s, to, m in net.sent if s == "c" and to == "x"]
    assert [m["t"] for m in replies] == ["x", "x"]
    assert 99 not in c.disk.accepted


def test_new_leader_reproposes_the_highest_ballot_value_and_fills_holes() -> None:
    cfg = Config(election_timeout=1.0, alpha=8)
    net = Net(["a", "b", "c"], cfg)
    for h in net.hosts.values():
        h.r.tick(0.0)
    a, b = net.hosts["a"], net.hosts["b"]

    def acc(h: Host, ballot: list, i: int, v: str) -> None:
        h.r.receive(0.0, "x", {"t": "a", "b": ballot, "i": i, "v": [v], "c": 0})
        net.drain(h)

    # instance 1: v0 at a; 2: nothing anywhere (a hole); 3: v1 at a in (1, x) but v2 at b
    # in the higher (2, y); 4: v4 at b only
    acc(a, [1, "x"], 1, "v0")
    acc(a, [1, "x"], 3, "v1")
    acc(b, [2, "y"], 3, "v2")
    acc(b, [2, "y"], 4, "v4")
    net.queue.clear()
    net.cut_off("c")  # the quorum is {a, b}
    net.campaign(a)  # its first ballot is refused (b promised (2, y)): it learns, retries
    net.run(0.5)
    assert [bt for _, bt in a.log[:4]] == [["v0"], [], ["v2"], ["v4"]]


def test_stale_leader_cannot_decide_after_a_higher_promise() -> None:
    net = Net(["a", "b", "c"])
    old = net.elect()
    rival, third = [h for h in net.hosts.values() if h is not old]
    net.cut.update({(old.id, rival.id), (rival.id, old.id)})
    net.campaign(rival)
    assert old.r.is_leader  # it has not heard of the rival yet
    old.r.propose(["stale"])
    net.drain(old)
    net.deliver()
    net.tick(2 * CFG.thrifty_wait)  # if its accept went to the rival alone, now to all
    refusals = [m for s, to, m in net.sent if s == third.id and to == old.id and m["t"] == "x"]
    assert refusals and not old.r.is_leader
    assert all("stale" not in net.items(h) for h in net.hosts.values())
    net.propose(rival, "fresh")
    net.run(1.0)
    net.heal()
    net.run(1.0)
    logs = [h.log for h in net.hosts.values()]
    assert logs[0] == logs[1] == logs[2]
    assert "fresh" in net.items(old)


def test_lagging_candidate_learns_what_was_decided_without_it() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    lag = next(h for h in net.hosts.values() if h is not ld)
    net.cut_off(lag.id)
    for k in range(5):
        net.propose(ld, k)
    net.run(0.3)
    net.heal()
    net.queue.clear()
    net.campaign(lag)  # it knows nothing of instances 1-5: the promises say they are decided
    net.propose(lag, "new")
    net.run(1.0)
    assert lag.log == ld.log
    assert net.items(lag) == [0, 1, 2, 3, 4, "new"]


def test_followers_do_not_infer_a_value_accepted_in_another_ballot() -> None:
    net = Net(["a", "b", "c"], Config(election_timeout=1.0, alpha=8))
    for h in net.hosts.values():
        h.r.tick(0.0)
    b = net.hosts["b"]
    b.r.receive(0.0, "x", {"t": "a", "b": [1, "x"], "i": 1, "v": ["old"], "c": 0})
    # leader (2, y) says instance 1 is decided: b holds a value of another ballot, so it
    # must fetch rather than take "old"
    b.r.receive(0.0, "y", {"t": "h", "b": [2, "y"], "r": 1, "c": 1})
    net.drain(b)
    assert b.log == []
    assert any(to == "y" and m["t"] == "q" for s, to, m in net.sent if s == "b")


# ---------------------------------------------------------------------- reads


def test_read_index_needs_a_quorum_round() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    net.propose(ld, "w")
    net.run(0.2)
    net.cut_off(ld.id)
    ld.r.read_index("r1")
    net.drain(ld)
    net.run(0.5)
    assert "r1" not in ld.reads
    net.run(3.0)  # check-quorum: it steps down, and fails the read
    assert not ld.r.is_leader and "r1" in ld.failed


def test_votes_answer_for_check_quorum_and_role_changes_are_explained() -> None:
    """A leader whose heartbeats go unanswered but whose accepts are voted on
    is heard by its quorum: it keeps leading. Without either it steps down, and
    says why; so do the followers that stop hearing from it."""
    net = Net(["a", "b", "c"])
    ld = net.elect()
    net.drop_types = {M.HEARTBEAT_OK}
    for k in range(30):  # 3 s: three election timeouts
        net.propose(ld, k)
        net.run(0.1)
    assert ld.r.is_leader
    assert list(range(30)) == [x for x in net.items(ld) if isinstance(x, int)]
    assert not [n for n in ld.r.notes if n.startswith("stepping down")]
    net.run(3.0)  # no writes: nothing answers its heartbeats
    assert not ld.r.is_leader
    assert any(n.startswith("stepping down: no quorum answered within 1.0s") for n in ld.r.notes), (
        ld.r.notes
    )

    net = Net(["a", "b", "c"], seed=2)
    ld = net.elect()
    net.run(0.5)
    f = next(h for h in net.hosts.values() if h is not ld)
    net.cut_off(f.id)
    net.run(6.0)  # its pre-votes fail, again and again
    said = [n for n in f.r.notes if n.startswith(f"no word from leader {ld.id}")]
    assert len(said) == 1, f.r.notes  # once per silence, however many tries
    assert ld.r.is_leader
    f.r.campaign()
    net.drain(f)
    net.run(2.5)
    assert any(n.endswith("won no quorum in time") for n in f.r.notes), f.r.notes


def test_read_index_from_a_follower_is_relayed_and_covers_acknowledged_writes() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    for k in range(5):
        net.propose(ld, k)
    net.run(0.2)
    f = next(h for h in net.hosts.values() if h is not ld)
    f.r.read_index(7)
    net.drain(f)
    net.deliver()
    net.run(0.5)
    assert f.reads[7] >= max(i for i, b in ld.log if 4 in b)


def test_read_index_without_a_leader_fails_at_once() -> None:
    net = Net(["a", "b", "c"])
    h = net.hosts["a"]
    h.r.read_index("r")
    net.drain(h)
    assert h.failed == ["r"]


# ---------------------------------------------------------------------- crashes


def test_restarted_member_replays_its_log_and_rejoins() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    for k in range(10):
        net.propose(ld, k)
    net.run(0.5)
    f = next(h for h in net.hosts.values() if h is not ld)
    net.crash(f.id)
    for k in range(10, 15):
        net.propose(ld, k)
    h = net.restart(f.id)
    net.run(2.0)
    assert net.items(h) == list(range(15))


def test_leader_crash_elects_another_that_keeps_every_decision() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    for k in range(10):
        net.propose(ld, k)
    net.run(0.3)
    net.crash(ld.id)
    new = net.elect(10.0)
    assert new is not ld
    net.propose(new, "after")
    net.run(0.5)
    assert net.items(new) == [*range(10), "after"]


# ---------------------------------------------------------------------- catch-up


def test_compacted_peer_answers_snapshot_needed_and_install_resumes_the_log() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    lagger = next(h for h in net.hosts.values() if h is not ld)
    net.cut_off(lagger.id)
    for k in range(20):
        net.propose(ld, k)
    net.run(0.3)
    for h in net.hosts.values():
        if h is not lagger:
            h.r.compact(h.applied)
            net.drain(h)
    net.heal()
    net.run(1.0, until=lambda: lagger.need_snapshot is not None)
    peer = net.hosts[lagger.need_snapshot]  # type: ignore[index]
    sched = peer.r.membership_schedule(peer.applied)
    assert lagger.r.install_snapshot(peer.applied, sched)
    lagger.log = list(peer.log)
    lagger.applied = peer.applied
    net.propose(ld, "next")
    net.run(1.0)
    assert net.items(lagger)[-1] == "next"
    assert lagger.log == ld.log


def test_catch_up_answers_do_not_wait_for_the_fsync() -> None:
    # Decided values are durable on a quorum already: a lagging member's
    # fetch is answered in `early`, not behind this Ready's records.
    net = Net(["a", "b", "c"])
    ld = net.elect()
    for k in range(3):
        net.propose(ld, f"w{k}")
    net.run(0.3)
    h = next(x for x in net.hosts.values() if x is not ld)
    h.r.receive(net.t, "c", {"t": "q", "s": 1})
    h.r.receive(net.t, ld.id, {"t": "a", "b": ld.r.rnd.blist, "i": 99, "v": ["x"], "c": 0})
    rd = h.r.ready()
    assert any(rec[0] == "a" for rec in rd.persist)  # a record waits for the disk
    (ents,) = [m for _, m in rd.early if m["t"] == "e"]
    assert "w0" in orjson.dumps(ents).decode() and not any(m["t"] == "e" for _, m in rd.messages)
    h.r.advance()


def test_fetch_replies_and_promises_are_bounded_in_bytes() -> None:
    # Not thrifty: an accept that waited on the lagger would let the rest pile
    # up into one big batch, and this is about paging many small ones.
    cfg = Config(election_timeout=1.0, alpha=64, fetch_max_bytes=3000, thrifty=False)
    net = Net(["a", "b", "c"], cfg)
    ld = net.elect()
    lagger = next(h for h in net.hosts.values() if h is not ld)
    net.cut_off(lagger.id)
    for k in range(30):
        net.propose(ld, "p" * 500 + str(k))
    net.run(0.3)
    net.heal()
    net.run(2.0)
    entries = [m for s, to, m in net.sent if to == lagger.id and m["t"] == "e"]
    assert entries and all(len(orjson.dumps(m)) < 3000 + 1000 for m in entries)
    assert lagger.log == ld.log
    # a candidate pages through a large promise
    net2 = Net(["a", "b", "c"], cfg)
    for h in net2.hosts.values():
        h.r.tick(0.0)
    for i in range(1, 30):
        net2.hosts["b"].r.receive(
            0.0, "x", {"t": "a", "b": [1, "x"], "i": i, "v": ["q" * 500], "c": 0}
        )
    net2.drain(net2.hosts["b"])
    net2.queue.clear()
    a = net2.hosts["a"]
    net2.cut.add(("c", "a"))  # a needs b's whole report
    net2.campaign(a)
    promises = [m for s, _, m in net2.sent if s == "b" and m["t"] == "P"]
    assert len(promises) > 1 and all(len(orjson.dumps(m)) < 4000 for m in promises)
    net2.run(1.0)
    assert [b for _, b in a.log][:29] == [["q" * 500]] * 29


def test_a_member_back_from_a_pause_asks_for_what_it_missed_once() -> None:
    """A member paused for a while reads its backlog in one go: heartbeats
    that show it behind, and the news (decided values) it was sent. Each
    news message once re-armed the fetch, so the member asked for the same
    range once per message, and the peer built a reply of up to
    fetch_max_bytes for each: ~190 replies of ~4 MiB stalled a peer's loop
    for ~1 s, and with a member down that peer's silence cost an election."""
    net = Net(["a", "b", "c"])
    ld = net.elect()
    net.run(0.5)
    p = next(h for h in net.hosts.values() if h is not ld)
    net.pause(p.id)
    for k in range(600):  # an all-vote spell after the first silence, then news
        net.propose(ld, f"w{k}")
        net.tick(0.005)
    # The leader's queue for it overflowed and dropped the oldest: the
    # accepts of the all-vote spell and the first news. The rest of the news
    # starts past what it can apply, and its heartbeats show it behind.
    backlog = net.held[p.id]
    first = next(k for k, (_, m) in enumerate(backlog) if m["t"] == M.ENTRIES)
    backlog[:] = [(s, m) for s, m in backlog[first + 1 :] if m["t"] not in (M.ACCEPT, M.COMMIT)]
    assert sum(m["t"] == M.ENTRIES for _, m in backlog) > 20
    n0 = len(net.sent)
    net.resume(p.id)
    fetches = [m for s, _, m in net.sent[n0:] if s == p.id and m["t"] == M.FETCH]
    assert len(fetches) <= 1
    net.run(1.0)
    assert net.items(p) == net.items(ld)


def test_a_stall_is_not_taken_for_the_peers_silence() -> None:
    """A leader whose host did not drive it for longer than the election
    timeout (a stalled loop, a paused process) finds its members' answers
    waiting unread: its first tick must not step down for their "silence".
    Real silence afterwards still ends its leadership."""
    net = Net(["a", "b", "c"])
    ld = net.elect()
    net.run(0.5)
    et = CFG.election_timeout
    net.t += 3 * et  # the stall: no tick, no message
    ld.r.tick(net.t)
    net.drain(ld)
    assert ld.r.is_leader
    net.deliver()
    net.run(2 * et)
    assert ld.r.is_leader  # its members answered all along
    for h in net.hosts.values():
        if h is not ld:
            h.up = False  # now they are really gone
    net.run(2 * et)
    assert not ld.r.is_leader


def test_a_follower_back_from_a_stall_hears_its_leader_before_campaigning() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    net.run(0.5)
    f = next(h for h in net.hosts.values() if h is not ld)
    net.pause(f.id)  # the leader's heartbeats queue up for it
    net.run(3 * CFG.election_timeout)
    sent = len(net.sent)
    net.resume(f.id, tick_first=True)
    # no pre-vote round for a leader that is there
    assert not any(m["t"] == M.PREVOTE for s, _, m in net.sent[sent:] if s == f.id)
    net.deliver()
    net.run(1.0)
    assert net.leader() is ld


def test_non_member_learns_by_push_after_registering() -> None:
    net = Net(["a", "b", "c", "l"], members=["a", "b", "c"])
    ld = net.elect()
    learner = net.hosts["l"]
    learner.r.install_snapshot(0, ld.r.membership_schedule(0))
    net.run(2.0)
    for k in range(5):
        net.propose(ld, k)
    net.run(0.2)
    assert net.items(learner) == list(range(5))
    assert not learner.r.is_member()
    assert not any(s == "l" and m["t"] in ("A", "P", "v") for s, _, m in net.sent)


# ---------------------------------------------------------------------- membership


def _member_items(net: Net) -> None:
    def members(h: Host) -> frozenset[str]:
        ms = net.initial
        for _, batch in h.log:
            for it in batch:
                if isinstance(it, dict) and "members" in it:
                    ms = frozenset(it["members"])
        return ms

    net.membership = members


def test_membership_change_takes_effect_alpha_instances_later() -> None:
    cfg = Config(election_timeout=1.0, alpha=3)
    net = Net(["a", "b", "c", "d"], cfg, members=["a", "b", "c"])
    _member_items(net)
    ld = net.elect()
    net.hosts["d"].r.install_snapshot(0, ld.r.membership_schedule(0))
    net.run(1.0)
    net.propose(ld, {"members": ["a", "b", "c", "d"]})
    net.run(0.2)
    at = next(i for i, b in ld.log if b and isinstance(b[0], dict) and "members" in b[0])
    for k in range(8):
        net.propose(ld, k)
    net.run(0.5)
    # d votes (if a thrifty leader asks it) only from alpha instances on,
    # and hears of every decision from then on either way
    accepts = [m["i"] for s, to, m in net.sent if to == "d" and m["t"] == "a"]
    entries = [m for s, to, m in net.sent if to == "d" and m["t"] == "e"]
    told = [m["s"] + k for m in entries for k in range(len(m["e"]))]
    assert not accepts or min(accepts) >= at + cfg.alpha
    assert set(range(at + cfg.alpha, ld.r.commit + 1)) <= set(accepts) | set(told)
    assert net.hosts["d"].r.is_member()
    assert net.items(net.hosts["d"])[-1] == 7


def test_a_leader_keeps_leading_while_a_member_joins() -> None:
    """A new member has not answered a heartbeat yet when it enters the set the
    leader's check-quorum counts: it gets the same grace as every member at an
    election, so a join (1 -> 2 members is the tight case: both are needed)
    causes no step-down and no election."""
    cfg = Config(election_timeout=1.0, alpha=3)
    net = Net(["a", "b"], cfg, members=["a"])
    _member_items(net)
    ld = net.elect()
    assert ld.id == "a"
    net.hosts["b"].r.install_snapshot(0, ld.r.membership_schedule(0))
    net.run(3 * cfg.election_timeout)  # lead well past one election timeout
    ballot = ld.r.leader_ballot
    since = len(net.sent)
    net.propose(ld, {"members": ["a", "b"]})
    for k in range(2 * cfg.alpha):  # put the change in force
        net.propose(ld, k)
    net.run(3 * cfg.election_timeout)
    assert net.hosts["b"].r.is_member()
    assert ld.r.is_leader and ld.r.leader_ballot == ballot
    assert net.hosts["b"].r.leader == "a"
    # no campaign: no pre-vote, no prepare but the leader's own ballot's (which
    # asks the new member for its promise)
    later = [m for _, _, m in net.sent[since:]]
    assert not [m for m in later if m["t"] == "v"]
    assert {ballot_of(m["b"]) for m in later if m["t"] == "p"} <= {ballot}


def test_a_leader_keeps_leading_while_a_removed_member_comes_back() -> None:
    """The member's last answer is old news when it is added back: the grace
    goes to whoever enters the counted sets, not only to ids never seen."""
    cfg = Config(election_timeout=1.0, alpha=3)
    net = Net(["a", "b"], cfg, members=["a", "b"])
    _member_items(net)
    ld = net.hosts["a"]
    net.campaign(ld)
    net.run(1.0)

    def change(members: list[str]) -> None:
        net.propose(ld, {"members": members})
        for k in range(2 * cfg.alpha):  # put the change in force
            net.propose(ld, k)
        net.run(3 * cfg.election_timeout)  # lead on well past one election timeout

    change(["a"])
    assert not net.hosts["b"].r.is_member()
    ballot = ld.r.leader_ballot
    since = len(net.sent)
    change(["a", "b"])
    assert net.hosts["b"].r.is_member()
    assert ld.r.is_leader and ld.r.leader_ballot == ballot
    assert not [m for _, _, m in net.sent[since:] if m["t"] == "v"]


def test_phase1_needs_a_majority_of_every_member_set_it_covers() -> None:
    cfg = Config(election_timeout=1.0, alpha=4)
    net = Net(["a", "b", "c", "d", "e"], cfg, members=["a", "b", "c"])
    _member_items(net)
    ld = net.elect()
    for x in ("d", "e"):
        net.hosts[x].r.install_snapshot(0, ld.r.membership_schedule(0))
    net.run(1.0)
    net.propose(ld, {"members": ["c", "d", "e"]})  # governs instances from (its own) + 4 on
    net.run(0.3)
    c = net.hosts["c"]  # the one node in both sets
    for x in ("d", "e"):
        net.cut_off(x)
    assert c.r.campaign()
    net.drain(c)
    net.deliver()
    # a majority of {a, b, c} promised, but only c of {c, d, e}: not enough to lead
    assert not c.r.is_leader
    net.heal()
    net.run(5.0, until=lambda: net.leader() is not None)
    assert net.leader() is not None


def test_removed_leader_hands_over_and_stops_voting() -> None:
    cfg = Config(election_timeout=1.0, alpha=2)
    net = Net(["a", "b", "c"], cfg)
    _member_items(net)
    ld = net.elect()
    rest = sorted(set(net.hosts) - {ld.id})
    net.propose(ld, {"members": rest})
    for k in range(4):
        net.propose(ld, k)
    net.run(1.0, until=lambda: net.leader() not in (None, ld))
    assert not ld.r.is_leader
    new = net.leader()
    assert new is not None and new is not ld
    net.propose(new, "later")
    net.run(1.0)
    assert net.items(ld)[-1] == "later"  # it still learns, as a follower
    assert not ld.r.is_member()


# ---------------------------------------------------------------------- thrifty accepts


def _accepts_to(net: Net, since: int, i: int) -> list[str]:
    return sorted(to for _, to, m in net.sent[since:] if m["t"] == "a" and m["i"] == i)


def test_thrifty_accept_goes_to_a_quorum_and_the_rest_get_the_value() -> None:
    net = Net(["a", "b", "c", "d", "e"])
    ld = net.elect()
    net.run(0.5)
    n0 = len(net.sent)
    net.propose(ld, "x")
    i = ld.r.commit
    assert "x" in net.items(ld)
    voters = _accepts_to(net, n0, i)
    assert len(voters) == 2  # with the leader's own vote, 3 of 5
    rest = {h for h in net.hosts if h != ld.id} - set(voters)

    def sent_values() -> set[str]:
        return {to for _, to, m in net.sent[n0:] if m["t"] == "e" and m["s"] <= i}

    # the value is news to the rest: it lingers, to go with whatever follows
    assert sent_values() == set()
    net.tick(CFG.news_linger / 2)
    assert sent_values() == set()
    net.tick(CFG.news_linger / 2 + 1e-6)
    assert sent_values() == rest
    assert not any(m["t"] == "A" and s in rest for s, _, m in net.sent[n0:])
    assert all(net.items(h) == net.items(ld) for h in net.hosts.values())


def _news_for_the_non_voter() -> tuple[Net, Host, str]:
    """A three-member cluster whose leader decided "x" with one voter: the
    other member (returned) has not been sent "x" yet."""
    net = Net(["a", "b", "c"])
    ld = net.elect()
    net.run(0.5)
    n0 = len(net.sent)
    net.propose(ld, "x")
    (voter,) = _accepts_to(net, n0, ld.r.commit)
    (other,) = {h for h in net.hosts if h not in (ld.id, voter)}
    assert "x" not in net.items(net.hosts[other])  # news to it: lingering
    return net, ld, other


def test_news_goes_at_once_to_a_member_whose_clients_wait_on_it() -> None:
    net, ld, other = _news_for_the_non_voter()
    # a write forwarded by the member that does not vote: its client waits
    # for the value, so it goes at once (with "x" before it)
    net.propose(net.hosts[other], "y")
    assert ld.r.commit > 0 and net.items(ld)[-2:] == ["x", "y"]
    assert net.items(net.hosts[other])[-2:] == ["x", "y"]
    # a read index it asks for comes after the values it needs to serve it
    # (the heartbeat round that confirms it sends them first)
    net.propose(ld, "z")
    assert "z" not in net.items(net.hosts[other])
    n1 = len(net.sent)
    net.hosts[other].r.read_index("r1")
    net.drain(net.hosts[other])
    net.deliver()  # no time passes: the news would still linger
    assert any(m["t"] == M.READ_OK for _, to, m in net.sent if to == other)
    assert net.items(net.hosts[other])[-1] == "z"
    # sent, not left to fetch
    assert not any(m["t"] == M.FETCH for s, _, m in net.sent[n1:] if s == other)


def test_news_goes_at_once_to_a_member_with_watchers() -> None:
    net, ld, other = _news_for_the_non_voter()
    net.hosts[other].r.watched = True  # its host saw a WATCH open
    net.run(2 * CFG.heartbeat_interval)  # it says so in a heartbeat answer
    net.propose(ld, "y")
    assert net.items(net.hosts[other])[-1:] == ["y"]
    net.hosts[other].r.watched = False
    net.run(2 * CFG.heartbeat_interval)
    net.propose(ld, "z")
    assert net.items(net.hosts[other])[-1:] == ["y"]


def test_news_linger_zero_sends_the_values_with_each_decision() -> None:
    net = Net(["a", "b", "c"], replace(CFG, news_linger=0.0))
    ld = net.elect()
    net.run(0.5)
    n0 = len(net.sent)
    net.propose(ld, "x")
    assert all(net.items(h)[-1:] == ["x"] for h in net.hosts.values())
    assert any(m["t"] == "e" for _, _, m in net.sent[n0:])


def test_thrifty_accept_falls_back_to_all_when_a_voter_is_silent() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    net.run(0.5)
    n0 = len(net.sent)
    net.propose(ld, 1)
    (voter,) = _accepts_to(net, n0, ld.r.commit)
    other = next(h for h in net.hosts if h not in (ld.id, voter))
    net.crash(voter)
    n0 = len(net.sent)
    net.propose(ld, 2)
    assert 2 not in net.items(ld)  # waiting on the silent voter
    net.tick(2 * CFG.thrifty_wait)
    assert 2 in net.items(ld)  # the accept went to the other member too
    assert _accepts_to(net, n0, ld.r.commit) == sorted([voter, other])
    assert ld.r.late_votes == {voter: 1}  # for the host to report
    # every member votes for a while; then the silent one ranks last
    n0 = len(net.sent)
    net.propose(ld, 3)
    assert 3 in net.items(ld) and _accepts_to(net, n0, ld.r.commit) == sorted([voter, other])
    net.run(CFG.election_timeout + 0.1)
    n0 = len(net.sent)
    net.propose(ld, 4)
    assert 4 in net.items(ld) and _accepts_to(net, n0, ld.r.commit) == [other]


def test_skipped_member_gets_the_values_even_when_the_next_accept_reaches_it() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    net.run(0.5)
    n0 = len(net.sent)
    ld.r.propose(["x"])
    net.drain(ld)  # the accept of "x" is queued for its one voter
    (skipped,) = {h for h in net.hosts if h != ld.id} - {
        to for _, to, m in net.sent[n0:] if m["t"] == "a"
    }
    lead = ld.r.ld
    assert lead is not None
    lead.full_until = float("inf")  # the next accept goes to everyone, with commit "x"
    ld.r.propose(["y"])  # waits for "x" to be decided (Nagle)
    net.drain(ld)
    net.deliver()
    assert net.items(ld) == ["x", "y"]
    to_skipped = [m["t"] for _, to, m in net.sent[n0:] if to == skipped]
    assert "e" in to_skipped and "q" not in [
        m["t"] for s, _, m in net.sent[n0:] if s == skipped
    ]  # sent the value of "x", not left to fetch it
    assert net.items(net.hosts[skipped]) == ["x", "y"]


def test_thrifty_deadline_names_the_fallback_time() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    net.run(0.5)
    assert ld.r.deadline() is None
    n0 = len(net.sent)
    net.propose(ld, 1)
    (voter,) = _accepts_to(net, n0, ld.r.commit)
    assert ld.r.deadline() is None  # decided: nothing to fall back from
    net.crash(voter)
    net.propose(ld, 2)
    d = ld.r.deadline()
    assert d == pytest.approx(net.t + CFG.thrifty_wait)
    ld.r.tick(d)  # the host ticks at the deadline, not at its next regular tick
    net.drain(ld)
    net.deliver()
    assert 2 in net.items(ld) and ld.r.deadline() is None


def test_thrifty_leader_with_the_slow_disk_asks_everyone() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    lead = ld.r.ld
    assert lead is not None
    lead.own_avg, lead.peer_avg = 0.030, 0.001  # our fsync: 30 ms, a member's vote 1 ms
    n0 = len(net.sent)
    net.propose(ld, "x")
    assert len(_accepts_to(net, n0, ld.r.commit)) == 2
    lead.own_avg = 0.001
    n0 = len(net.sent)
    net.propose(ld, "y")
    assert len(_accepts_to(net, n0, ld.r.commit)) == 1


def test_thrifty_leader_behind_on_its_own_disk_asks_everyone() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    lead = ld.r.ld
    assert lead is not None
    lead.own_wait[10**6] = 0.0  # a vote of ours not yet back (a snapshot holds our disk)
    n0 = len(net.sent)
    net.propose(ld, "x")
    assert len(_accepts_to(net, n0, ld.r.commit)) == 2
    del lead.own_wait[10**6]
    n0 = len(net.sent)
    net.propose(ld, "y")
    assert len(_accepts_to(net, n0, ld.r.commit)) == 1


def test_not_thrifty_accept_goes_to_every_member() -> None:
    net = Net(["a", "b", "c"], Config(election_timeout=1.0, alpha=4, thrifty=False))
    ld = net.elect()
    n0 = len(net.sent)
    net.propose(ld, "x")
    assert len(_accepts_to(net, n0, ld.r.commit)) == 2
    assert not any(m["t"] == "e" for _, _, m in net.sent[n0:])


# ---------------------------------------------------------------------- liveness


def test_dead_member_is_suspected_once_by_the_leader() -> None:
    cfg = Config(election_timeout=0.5, member_timeout=3.0)
    net = Net(["a", "b", "c"], cfg)
    ld = net.elect()
    dead = next(h for h in net.hosts.values() if h is not ld)
    net.crash(dead.id)
    net.run(2.0)
    assert ld.suspects == []
    net.run(3.0)
    assert ld.suspects == [dead.id]


def test_a_member_the_majority_hears_is_never_suspected() -> None:
    cfg = Config(election_timeout=0.5, member_timeout=2.0)
    net = Net(["a", "b", "c"], cfg)
    ld = net.elect()
    x, y = [h for h in net.hosts.values() if h is not ld]
    net.cut.add((x.id, y.id))  # y cannot hear x; the leader can
    net.run(8.0)
    assert ld.suspects == []
    net.cut.add((x.id, ld.id))  # now neither can: a quorum (leader, y) has not heard x
    net.run(5.0)
    assert x.id in [m for h in net.hosts.values() for m in h.suspects]


def test_a_restarted_node_does_not_get_a_healthy_one_suspected() -> None:
    cfg = Config(election_timeout=0.5, member_timeout=2.0)
    net = Net(["a", "b", "c"], cfg)
    ld = net.elect()
    x = next(h for h in net.hosts.values() if h is not ld)
    net.crash(x.id)
    net.run(1.0)
    net.restart(x.id)
    net.run(1.0)
    # the restarted node has heard nobody yet; it must not report anyone for a while
    assert net.hosts[x.id].r._my_suspicions() == []
    net.run(6.0)
    assert [m for h in net.hosts.values() for m in h.suspects] == []


def test_transfer_leadership_is_immediate() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    for k in range(3):
        net.propose(ld, k)
    net.run(0.3)
    target = ld.r.transfer_leadership()
    assert target is not None
    net.drain(ld)
    net.deliver()
    net.tick()
    assert net.leader() is net.hosts[target]
    net.propose(net.hosts[target], "next")
    net.run(0.3)
    assert net.items(ld) == [0, 1, 2, "next"]


def test_a_leader_whose_disk_fails_hands_over_and_its_writes_go_on() -> None:
    """A full disk on the leader: it cannot count its own votes, and while it
    led, the cluster took no writes although two healthy members could
    decide them. It hands leadership on at once; writes through any node,
    itself included (it forwards), are decided by the others."""
    net = Net(["a", "b", "c"])
    ld = net.elect()
    net.propose(ld, "before")
    net.run(0.3)
    net.break_disk(ld.id)
    net.run(0.5, until=lambda: net.leader() not in (None, ld))
    new = net.leader()
    assert new is not None and new is not ld
    assert any("handing leadership" in n for n in ld.r.notes)
    net.propose(new, "through the new leader")
    net.propose(ld, "through the broken node")
    net.run(1.0)
    for h in net.hosts.values():
        assert net.items(h) == ["before", "through the new leader", "through the broken node"]
    # it stays out of the lead for as long as its disk fails
    net.run(5.0)
    assert net.leader() is new and ld.r.role != "leader"
    net.mend_disk(ld.id)
    assert ld.r.campaign()  # and may lead again once it works
    net.run(1.0, until=lambda: net.leader() is ld)
    assert net.leader() is ld
    net.propose(ld, "after")
    net.run(1.0)
    assert net.items(new)[-1] == "after"


def test_a_leader_whose_disk_fails_keeps_leading_when_the_others_could_not_elect() -> None:
    """With a member down, the one left cannot be elected without our
    promise, which our failing disk holds back: handing over would leave no
    leader, where we still serve linearizable reads. We hand over once the
    member is back."""
    net = Net(["a", "b", "c"])
    ld = net.elect()
    net.propose(ld, "w")
    net.run(0.3)
    down = next(h for h in net.hosts.values() if h is not ld)
    net.crash(down.id)
    net.run(1.5)  # past an election timeout: it no longer counts as live
    net.break_disk(ld.id)
    net.run(3.0)
    assert net.leader() is ld
    ld.r.read_index("r1")
    net.drain(ld)
    net.run(0.5)
    assert "r1" in ld.reads
    net.restart(down.id)
    net.run(3.0, until=lambda: net.leader() not in (None, ld))
    assert net.leader() not in (None, ld)
    assert any("handing leadership" in n for n in ld.r.notes)


def test_a_member_whose_disk_fails_does_not_campaign() -> None:
    """A campaign needs our own durable promise: a member with a failing
    disk would only hold the election up. It waits; when the leader dies, the
    two others cannot elect anyone without it, and once its disk works a
    leader is elected without an operator."""
    net = Net(["a", "b", "c"])
    ld = net.elect()
    net.propose(ld, "x")
    net.run(0.3)
    sick, well = [h for h in net.hosts.values() if h is not ld]
    net.break_disk(sick.id)
    since = len(net.sent)
    net.crash(ld.id)
    net.run(6.0)
    assert sick.r.role == "follower" and net.leader() is None
    assert not any(m["t"] in ("v", "p") for src, _, m in net.sent[since:] if src == sick.id)
    assert any(m["t"] == "p" for src, _, m in net.sent[since:] if src == well.id)
    net.mend_disk(sick.id)
    net.run(10.0, until=lambda: net.leader() is not None)
    assert net.leader() is not None
    net.propose(net.leader(), "y")
    net.run(1.0)
    assert net.items(well) == ["x", "y"]


def test_no_quorum_no_progress_and_recovery_without_operator() -> None:
    net = Net(["a", "b", "c"])
    ld = net.elect()
    others = [h for h in net.hosts.values() if h is not ld]
    for h in others:
        net.crash(h.id)
    net.propose(ld, "stuck")
    net.run(3.0)
    assert "stuck" not in net.items(ld)
    for h in others:
        net.restart(h.id)
    net.run(5.0, until=lambda: net.leader() is not None)
    new = net.elect()
    net.propose(new, "moving")
    net.run(1.0)
    assert "moving" in net.items(new)


@pytest.mark.parametrize("seed", range(5))
def test_every_message_and_record_is_json(seed: int) -> None:
    net = Net(["a", "b", "c"], seed=seed)
    ld = net.elect()
    net.propose(ld, {"x": [1, 2.5, None, "s"]})
    net.run(1.0)
    for rec in ld.disk.to_json()["accepted"]:
        orjson.dumps(rec)
    assert DurableState.from_json(orjson.loads(orjson.dumps(ld.disk.to_json()))) == ld.disk
