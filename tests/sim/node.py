"""One simulated node: a Replica, its fake disk, the tiny state machine, client plumbing.

The node plays the host's part of the Ready contract as doozer's real host does:
early messages leave and decided batches are applied at once (calling
set_membership after each); records and snapshots join a disk queue that a later
"fsync" event makes durable in order (one fsync for all that waits: group
commit), and only then do the Ready's messages leave and its loopback votes
return to the replica. A crash loses whatever the queue still held.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from doozer.consensus import Config, DurableState, Replica

from .statemachine import StateMachine

if TYPE_CHECKING:
    from .cluster import ClientOp, Cluster


@dataclass
class Disk:
    """What survives a crash: the replica's durable records and the host's snapshot."""

    ds: DurableState = field(default_factory=DurableState)
    snap_instance: int | None = None  # None: never had a state (a joiner)
    snap_sm: StateMachine | None = None


class SimNode:
    def __init__(self, cluster: Cluster, nid: str, cfg: Config, rng: random.Random) -> None:
        self.c = cluster
        self.id = nid
        self.cfg = cfg
        self.rng = rng
        self.disk = Disk()
        self.up = False
        self.gen = 0
        self.paused_until = 0.0
        # A full disk: syncs fail until then (retried every 0.1 s, as the host
        # does), and the replica is told it cannot lead meanwhile.
        self.disk_full_until = 0.0
        self.replica: Replica | None = None
        self.sm: StateMachine | None = None
        self.applied = 0
        self.last_snap = 0
        self.pending_writes: dict[str, tuple[ClientOp, dict, float]] = {}
        self.pending_reads: dict[str, ClientOp] = {}
        self.read_waits: list[tuple[int, str]] = []
        self.reqs = 0
        self.crash_mid_ready = False
        # the disk queue: ("recs", records, messages, loopback) | ("snap", instance, sm)
        self.unsynced: list[tuple] = []
        self.sync_at: float | None = None
        self.rate = 1.0 + rng.uniform(-cluster.cfg.drift, cluster.cfg.drift)
        self.anchor = (0.0, rng.uniform(0, 100))  # (sim time, local time) where rate began
        self.next_claim = 0.0
        self.suspects_seen = 0

    # ------------------------------------------------------------------ clock

    def local(self, t: float) -> float:
        """This node's clock: offset and drifting (the rate may change), but monotonic."""
        t0, l0 = self.anchor
        return l0 + (t - t0) * self.rate

    def set_rate(self, t: float, rate: float) -> None:
        self.anchor = (t, self.local(t))
        self.rate = rate

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        self.gen += 1
        self.up = True
        self.paused_until = 0.0
        d = self.disk
        self.replica = Replica(
            self.id,
            config=self.cfg,
            rng=random.Random(self.rng.random()),
            durable=d.ds,
            applied=d.snap_instance or 0,
        )
        if d.snap_sm is not None:
            self.sm = d.snap_sm.copy()
            self.applied = d.snap_instance or 0
        else:
            self.sm = None
            self.applied = 0
        self.last_snap = self.applied
        self.pending_writes.clear()
        self.pending_reads.clear()
        self.read_waits.clear()
        self.c.checker.on_start(self)

    def stop(self) -> list[ClientOp]:
        """Crash: volatile state is gone; returns the client ops left hanging."""
        self.up = False
        self.replica = None
        self.unsynced = []
        self.sync_at = None
        ops = [op for op, _, _ in self.pending_writes.values()] + list(self.pending_reads.values())
        self.pending_writes.clear()
        self.pending_reads.clear()
        self.read_waits.clear()
        return ops

    def bootstrap(self, slots: int) -> None:
        sm = StateMachine()
        sm.slots = {str(k): (self.id if k == 0 else "") for k in range(slots)}
        self.disk.snap_instance = 0
        self.disk.snap_sm = sm
        self.start()
        assert self.replica is not None
        self.replica.bootstrap([self.id])

    def join_from(self, peer: SimNode) -> bool:
        """Copy a snapshot of peer's state (the host-level transfer) and install it."""
        assert self.replica is not None and peer.replica is not None and peer.sm is not None
        inst = peer.applied
        sched = peer.replica.membership_schedule(inst)
        if not self.replica.install_snapshot(inst, sched):
            return False
        self.sm = peer.sm.copy()
        self.applied = inst
        self.last_snap = inst
        # The local snapshot joins the disk queue ahead of the replica's install
        # record, as the real host does.
        self.unsynced.append(("snap", inst, self.sm.copy(), self.replica.ds.copy()))
        self.c.checker.on_snapshot(self, inst)
        # writes we were waiting for may be inside the snapshot: answer them from it
        for iid in [iid for iid in self.pending_writes if iid in self.sm.done]:
            op = self.pending_writes.pop(iid)[0]
            res, at = self.sm.done[iid]
            self.c.write_done(self, op, res, at)
        self.drain()
        return True

    # ------------------------------------------------------------------ inputs

    def tick(self, t: float) -> None:
        r = self.replica
        assert r is not None
        if self.rng.random() < 0.01:
            r.watched = not r.watched  # a client's WATCH opened or ended here
        r.tick(self.local(t))
        now = t
        for iid, (op, item, nxt) in list(self.pending_writes.items()):
            if now >= nxt:
                self.pending_writes[iid] = (op, item, now + self.c.cfg.retry)
                r.propose([item])
        self._maybe_claim(t)
        self.drain()

    def deliver(self, t: float, src: str, data: bytes) -> None:
        r = self.replica
        assert r is not None
        r.receive(self.local(t), src, orjson.loads(data))
        self.drain()

    def submit_write(self, op: ClientOp, item: dict) -> None:
        r = self.replica
        assert r is not None
        self.pending_writes[item["id"]] = (op, item, self.c.t + self.c.cfg.retry)
        r.propose([item])
        self.drain()

    def submit_read(self, op: ClientOp) -> None:
        r = self.replica
        assert r is not None
        self.reqs += 1
        req = f"{self.id}.{self.gen}.{self.reqs}"
        self.pending_reads[req] = op
        r.read_index(req)
        self.drain()

    def propose_admin(self, item: dict) -> None:
        if self.replica is not None:
            self.replica.propose([item])
            self.drain()

    def _maybe_claim(self, t: float) -> None:
        """A follower that sees an empty slot claims it (as doozer nodes do)."""
        sm = self.sm
        if sm is None or t < self.next_claim:
            return
        self.next_claim = t + self.rng.uniform(0.5, 1.5)
        if self.id in sm.members():
            return
        empty = sm.empty_slots()
        if empty:
            self.c.admin_ids += 1
            slot = empty[0]
            self.propose_admin(
                {
                    "id": f"claim.{self.id}.{self.c.admin_ids}",
                    "op": "cal",
                    "slot": slot,
                    "node": self.id,
                    "if": "",
                }
            )

    # ------------------------------------------------------------------ the Ready loop

    def drain(self) -> None:
        r = self.replica
        c = self.c
        while r is not None and self.up and r.has_ready():
            rd = r.ready()
            if rd.persist or rd.messages or rd.loopback:
                self.unsynced.append(("recs", rd.persist, rd.messages, rd.loopback))
            if self.crash_mid_ready and rd.persist:
                self._torn_crash()
                return
            for to, msg in rd.early:
                c.send(self.id, to, msg)
            for i, batch in rd.decided:
                self._apply(i, batch)
            for req, idx in rd.read_states:
                if req in self.pending_reads:
                    if self.applied >= idx:
                        self._serve_read(req)
                    else:
                        self.read_waits.append((idx, req))
            for req in rd.read_failed:
                op = self.pending_reads.pop(req, None)
                if op is not None:
                    c.read_failed(self, op)
            if rd.need_snapshot is not None:
                c.snapshot_wanted(self, rd.need_snapshot)
            for m in rd.suspects:
                self._suspect(m)
            r.advance()
            r = self.replica
        if self.up and self.unsynced and self.sync_at is None:
            rng = self.rng
            delay = rng.uniform(0.05, 0.3) if rng.random() < 0.03 else rng.uniform(0.0002, 0.004)
            self.sync_at = c.t + delay
            c.at(self.sync_at, c.disk_synced, self.id, self.gen)

    def _persist(self, job: tuple) -> None:
        d = self.disk
        if job[0] == "snap":
            # like the real host's snapshot file: the store and the acceptor's
            # state as of when it was taken; later records replay on top
            d.snap_instance, d.snap_sm, d.ds = job[1], job[2], job[3].copy()
            return
        for rec in job[1]:
            d.ds.apply(orjson.loads(orjson.dumps(rec)))

    def synced(self) -> None:
        """The fsync finished: everything queued before it is durable; release the
        messages and our own votes that waited on it."""
        self.sync_at = None
        jobs, self.unsynced = self.unsynced, []
        for job in jobs:
            self._persist(job)
        for job in jobs:
            if job[0] != "recs" or self.replica is None:
                continue
            for to, msg in job[2]:
                self.c.send(self.id, to, msg)
            for msg in job[3]:
                self.replica.receive(self.local(self.c.t), self.id, msg)
        self.drain()

    def _torn_crash(self) -> None:
        """A crash mid-write: a prefix of what the queue held reached the disk."""
        units: list[tuple] = []  # one record, or one whole snapshot
        for job in self.unsynced:
            if job[0] == "snap":
                units.append(job)
            else:
                units.extend(("recs", [rec], [], []) for rec in job[1])
        for job in units[: self.rng.randint(0, len(units))]:
            self._persist(job)
        self.crash_mid_ready = False
        self.c.crash(self, torn=True)

    def _apply(self, i: int, batch: list) -> None:
        sm = self.sm
        assert sm is not None and self.replica is not None
        self.c.checker.on_apply(self, i, batch)
        self.applied = i
        for item in batch:
            first, res = sm.apply(item, i)
            if first:
                w = self.pending_writes.pop(item["id"], None)
                if w is not None:
                    self.c.write_done(self, w[0], res, i)
        self.replica.set_membership(i, sm.members())
        self.c.checker.after_apply(self, i)
        if self.read_waits:
            ready = [w for w in self.read_waits if w[0] <= i]
            if ready:
                self.read_waits = [w for w in self.read_waits if w[0] > i]
                for _, req in ready:
                    self._serve_read(req)
        ce = self.c.cfg.compact_every
        if ce and i - self.last_snap >= ce:
            # Snapshot now (queued behind the records before it, as the real disk
            # thread does); compact to the previous snapshot so a short tail stays
            # fetchable.
            prev = self.last_snap
            self.unsynced.append(("snap", i, sm.copy(), self.replica.ds.copy()))
            self.last_snap = i
            self.replica.compact(prev)

    def _serve_read(self, req: str) -> None:
        op = self.pending_reads.pop(req, None)
        if op is not None and self.sm is not None:
            self.c.read_done(self, op, self.sm.regs.get(op.key))

    def _suspect(self, m: str) -> None:
        sm = self.sm
        if sm is None:
            return
        slot = sm.slot_of(m)
        if slot is None:
            return
        self.suspects_seen += 1
        self.c.stats["suspects"] += 1
        self.c.admin_ids += 1
        self.propose_admin(
            {
                "id": f"kick.{self.id}.{self.c.admin_ids}",
                "op": "cal",
                "slot": slot,
                "node": "",
                "if": m,
            }
        )

    def describe(self) -> dict[str, Any]:
        r = self.replica
        return {
            "id": self.id,
            "up": self.up,
            "applied": self.applied,
            "role": r.role if r else None,
            "commit": r.commit if r else None,
            "leader": r.leader if r else None,
            "members": sorted(self.sm.members()) if self.sm else None,
        }
