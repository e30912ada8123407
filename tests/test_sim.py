"""The whole-cluster simulation: many seeds of faults, every invariant on every step.

DOOZER_SIM_SEEDS=N (default 500) and DOOZER_SIM_START=S choose the seeds;
`python -m tests.sim --seeds N --start S` runs them outside pytest, and
`python -m tests.sim --seed S --trace` replays one.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from doozer.consensus import replica as replica_mod

try:
    from tests.sim import Cluster, SimFailure
    from tests.sim.__main__ import summary
    from tests.sim.cluster import SimConfig
except ImportError:  # tests/ itself on sys.path (pytest's default import mode)
    from sim import Cluster, SimFailure  # type: ignore[no-redef]
    from sim.__main__ import summary  # type: ignore[no-redef]
    from sim.cluster import SimConfig  # type: ignore[no-redef]

SEEDS = int(os.environ.get("DOOZER_SIM_SEEDS", "500"))
START = int(os.environ.get("DOOZER_SIM_START", "0"))


def test_many_seeds_of_faults(capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    faults: Counter = Counter()
    ops: Counter = Counter()
    failures: list[str] = []
    for seed in range(START, START + SEEDS):
        try:
            r = Cluster(seed).run()
        except SimFailure as e:
            failures.append(str(e))
            continue
        faults.update(r.faults)
        ops.update(r.ops)
    line = summary(SEEDS, faults, ops, len(failures), time.monotonic() - t0)
    with capsys.disabled():
        print("\n" + line)
    assert not failures, "\n\n".join(failures[:3])
    assert sum(faults.values()) > 10 * SEEDS  # the seeds did inject faults
    assert ops["set:ok"] > 10 * SEEDS and ops["get:ok"] > 10 * SEEDS


def test_a_seed_replays_exactly() -> None:
    a, b = Cluster(12345), Cluster(12345)
    ra, rb = a.run(), b.run()
    assert (ra.steps, ra.instances, ra.faults, ra.ops) == (
        rb.steps,
        rb.instances,
        rb.faults,
        rb.ops,
    )
    assert [(o.kind, o.call, o.ret, o.output) for o in a.history] == [
        (o.kind, o.call, o.ret, o.output) for o in b.history
    ]


def test_without_faults_a_cluster_elects_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Liveness, not safety: with no crash, pause or partition (but the
    simulation's slow fsyncs, delays and clock drift), forming the cluster,
    joins and slot claims included, and serving clients cost no election
    after the first. Each extra one is a window without writes."""
    elections: list[str] = []
    start = replica_mod.Replica._start_phase1

    def counted(self: replica_mod.Replica) -> None:
        elections.append(self.id)
        start(self)

    monkeypatch.setattr(replica_mod.Replica, "_start_phase1", counted)
    extra = []
    for seed in range(24):
        nodes = 2 + seed % 5
        cfg = SimConfig(
            nodes=nodes,
            slots=min(nodes, (2, 3, 5)[seed % 3]),
            faults=False,
            membership=False,
            chaos=6.0,
            clients=3,
        )
        elections.clear()
        Cluster(seed, cfg).run()
        if len(elections) != 1:
            extra.append((seed, nodes, cfg.slots, elections[:]))
    assert not extra


def _first_failure(seeds: int) -> SimFailure | None:
    for seed in range(seeds):
        try:
            Cluster(seed).run()
        except SimFailure as e:
            return e
    return None


def _choose_noop(self: replica_mod.Replica, j: int) -> list:
    return []  # a new leader forgets what acceptors reported: loses chosen values


def _stale_read_index(self: replica_mod.Replica) -> None:
    ld = self.ld
    assert ld is not None
    for req, origin in ld.reads_waiting:
        ld.reads.append((ld.round + 1, max(0, self.commit - 2), req, origin))
    ld.reads_waiting = []
    _heartbeat(self)


_heartbeat = replica_mod.Replica._heartbeat


@pytest.mark.parametrize(
    "name, attr, bug",
    [
        ("recovery ignores reported values", "_choose", _choose_noop),
        ("read index too low", "_heartbeat", _stale_read_index),
    ],
)
def test_the_simulation_catches_a_planted_bug(
    monkeypatch: pytest.MonkeyPatch, name: str, attr: str, bug: object
) -> None:
    monkeypatch.setattr(replica_mod.Replica, attr, bug)
    e = _first_failure(400)
    assert e is not None, f"planted bug not found: {name}"
    # and the failing seed replays to the same step
    with pytest.raises(SimFailure) as again:
        Cluster(e.seed).run()
    assert (again.value.step, again.value.msg) == (e.step, e.msg)
