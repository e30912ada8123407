"""Invariants checked on every step of a simulation, and once more at the end."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from doozer.consensus.membership import members_at

if TYPE_CHECKING:
    from .cluster import ClientOp, Cluster
    from .node import SimNode


class SimFailure(AssertionError):
    def __init__(self, seed: int, step: int, t: float, msg: str) -> None:
        self.seed, self.step, self.t, self.msg = seed, step, t, msg
        super().__init__(
            f"seed {seed} step {step} (t={t:.3f}s): {msg}\n"
            f"replay: python -m tests.sim --seed {seed} --trace"
        )


class Checker:
    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.decided: dict[int, bytes] = {}  # instance -> the batch, as first seen anywhere
        self.states: dict[int, tuple] = {}  # instance -> state machine after applying it
        self.max_instance = 0
        self.acked: dict[str, int] = {}  # acknowledged write id -> instance
        self.first_applied: dict[int, float] = {}  # instance -> when some node applied it

    def on_start(self, n: SimNode) -> None:
        if n.sm is not None:
            self._state_at(n, n.applied)

    def on_snapshot(self, n: SimNode, instance: int) -> None:
        self._state_at(n, instance)

    def _state_at(self, n: SimNode, i: int) -> None:
        assert n.sm is not None
        st = n.sm.state()
        prev = self.states.get(i)
        if prev is None:
            if i > 0:
                self.states[i] = st
        elif prev != st:
            raise self.c.fail(f"{n.id}: state after instance {i} differs: {st} vs {prev}")

    def on_apply(self, n: SimNode, i: int, batch: list) -> None:
        if i != n.applied + 1:
            raise self.c.fail(f"{n.id} applied instance {i} right after {n.applied}")
        b = orjson.dumps(batch)
        prev = self.decided.get(i)
        if prev is None:
            self.decided[i] = b
            self.first_applied[i] = self.c.t
            if i > self.max_instance:
                self.max_instance = i
        elif prev != b:
            raise self.c.fail(
                f"{n.id} decided a different batch for instance {i}: {b[:200]!r} vs {prev[:200]!r}"
            )

    def after_apply(self, n: SimNode, i: int) -> None:
        self._state_at(n, i)
        r = n.replica
        assert r is not None and n.sm is not None
        want = n.sm.members()
        got = members_at(r.ds.schedule, i + r.cfg.alpha)
        if got != want:
            raise self.c.fail(
                f"{n.id}: schedule says {got} governs {i + r.cfg.alpha}, store {want}"
            )

    def on_ack(self, n: SimNode, op: ClientOp, instance: int) -> None:
        iid = op.iid
        b = self.decided.get(instance)
        if b is None:
            raise self.c.fail(f"write acknowledged at unknown instance {instance}")
        if f'"{iid}"'.encode() not in b:
            raise self.c.fail(f"acknowledged write {iid} is not in instance {instance}")
        self._durable_on_quorum(n, instance, b)
        self.acked[f"{op.client}.{op.call}"] = instance

    def _durable_on_quorum(self, n: SimNode, i: int, b: bytes) -> None:
        """An acknowledged write must already be on the disks of a majority of the
        members governing its instance (what survives if every node crashes now)."""
        r = n.replica
        assert r is not None
        ms = members_at(r.ds.schedule, i)
        if ms is None:
            return  # compacted away here; other checks cover it
        have = set()
        for m in ms:
            node = self.c.nodes.get(m)
            if node is None:
                continue
            d = node.disk
            if (d.snap_instance or 0) >= i or i <= d.ds.base:
                have.add(m)
            elif i in d.ds.decided:
                if orjson.dumps(d.ds.decided[i]) == b:
                    have.add(m)
            elif i in d.ds.accepted and orjson.dumps(d.ds.accepted[i][1]) == b:
                have.add(m)
        if len(have) * 2 <= len(ms):
            raise self.c.fail(
                f"write acknowledged at instance {i} is durable only on"
                f" {sorted(have)} of {sorted(ms)}"
            )

    def bad_messages(self, n: SimNode) -> None:
        if n.replica is not None and n.replica.bad_messages:
            raise self.c.fail(f"{n.id} could not handle {n.replica.bad_messages} message(s)")

    def final(self) -> None:
        nodes = list(self.c.nodes.values())
        for n in nodes:
            self.bad_messages(n)
        states = {n.id: n.sm.state() for n in nodes if n.sm is not None}
        if len(set(states.values())) != 1:
            raise self.c.fail(f"nodes did not converge: {states}")
        ref = nodes[0]
        assert ref.sm is not None
        for o in self.c.history:
            if o.state == "ok" and o.kind != "get":
                b = self.decided.get(o.instance)
                if b is None:
                    raise self.c.fail(f"acknowledged write lost: {o}")
