"""The Jepsen-style suite (tests/jepsen/): its checks on made-up histories, a short
real run under several nemeses, and a run that must fail (nodes that keep nothing
on disk, all restarted at once, lose acknowledged writes: the checks must say so).

The real run takes a fresh seed each time (printed); rerun a failure with
`JEPSEN_SEED=<seed> python -m pytest tests/test_jepsen.py`, or soak with
`python -m tests.jepsen --seconds 1800 --seed <seed>`. JEPSEN_SERVE_ARGS sets
the `doozer serve` flags of every node (default `--snap-revs 1000`).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

import pytest

from tests.jepsen import checks, disks
from tests.jepsen.nemesis import ALL, SOLO, Event, Timing, plan
from tests.jepsen.network import netns_usable
from tests.jepsen.workload import FAIL, INFO, OK, Rec, classify
from tests.lincheck import Op, check
from tests.nodeproc import ROOT

# -- the checks, on histories made up to be right or wrong ---------------------------


def rec(i: int, kind: str, call: float, ret: float | None, outcome: str = OK, **kw) -> Rec:
    r = Rec(i, f"c{i}", 0, kind, "/jepsen/k0", call, **kw)
    r.ret, r.outcome = ret, outcome
    return r


def test_protocol_condition_is_at_least_not_equal():
    """REV_MISMATCH only below the file's rev: a SET at an old rev of a deleted file wins."""
    m = checks.MODEL
    h = [
        Op("set", "k", 0, 1, value="a", expect=-1, output=5),
        Op("del", "k", 2, 3, expect=-1, output=6),
        Op("set", "k", 4, 5, value="b", expect=5, output=7),
        Op("get", "k", 6, 7, output=("b", 7)),
    ]
    assert check(h, m).outcome == "ok"
    stale = [*h[:1], Op("set", "k", 2, 3, value="b", expect=4, output=6)]
    assert check(stale, m).outcome == "violation"  # 4 < 5: must have been REV_MISMATCH
    mismatch = [*h[:1], Op("set", "k", 2, 3, value="b", expect=5, output="REV_MISMATCH")]
    assert check(mismatch, m).outcome == "violation"  # 5 >= 5: must have succeeded


def test_classify_is_honest():
    def outcome(kind: str, resp: dict, expect: int = -1) -> tuple[str, object]:
        r = rec(1, kind, 0.0, 0.1, outcome="", expect=expect, value="v")
        classify(r, resp)
        return r.outcome, r.output

    assert outcome("set", {"rev": 9}) == (OK, 9)
    assert outcome("get", {"rev": 0, "value": ""}) == (OK, (None, 0))
    assert outcome("set", {"err_code": "REV_MISMATCH"}, expect=3) == (OK, "REV_MISMATCH")
    unknown = {"err_code": "UNAVAILABLE", "err_detail": "no quorum; its outcome is unknown"}
    assert outcome("set", unknown)[0] == INFO
    assert outcome("del", {"err_code": "UNAVAILABLE", "err_detail": "shutting down"})[0] == FAIL
    assert outcome("get", unknown)[0] == FAIL  # a read has no effect to be unsure of


def test_lost_write_is_found_both_ways():
    w = rec(1, "set", 0.0, 1.0, value="a", output=10)
    later_unknown = rec(2, "set", 2.0, 3.0, outcome=INFO, value="b")
    final_ok = rec(3, "get", 5.0, 5.1, output=("a", 10))
    final_lost = rec(4, "get", 5.0, 5.1, output=(None, 0))
    assert checks.lost_writes([w], [final_ok]) == []
    assert len(checks.lost_writes([w], [final_lost])) == 1
    # an indeterminate write after it: not certainly last; linearizability decides
    assert checks.lost_writes([w, later_unknown], [final_lost]) == []
    res = checks.linearizability([w, later_unknown, final_lost], {4}, budget_s=5)
    assert [v[0] for v in res.violations] == ["/jepsen/k0"]
    assert res.lost_keys == ["/jepsen/k0"]
    assert not checks.linearizability([w, later_unknown, final_ok], {3}, budget_s=5).violations
    # the unknown write may have won: reading it back is no loss
    won = rec(5, "get", 5.0, 5.1, output=("b", 11))
    assert not checks.linearizability([w, later_unknown, won], {5}, budget_s=5).violations


def test_one_value_at_two_revs_is_divergence():
    w = rec(1, "set", 0.0, 1.0, value="a", output=10)
    same = Rec(2, "c2", 1, "get", "/jepsen/k0", 2.0, ret=2.1, outcome=OK, output=("a", 10))
    other = Rec(3, "c3", 2, "get", "/jepsen/k0", 3.0, ret=3.1, outcome=OK, output=("a", 12))
    assert checks.rev_disagreements([w, same]) == []
    found = checks.rev_disagreements([w, same, other])
    assert found and found[0].startswith("n0 from 3.100s") and "n2 rev 12" in found[0]


def test_availability_windows():
    writes = [
        rec(i, "set", t, t + 0.01, value=f"v{i}", output=i) for i, t in enumerate([1, 2, 6, 9])
    ]
    ev = Event("kill", start=2.5, heal=5.0)
    (w,) = checks.availability(writes, [ev], end=10.0)
    assert w.recovered == pytest.approx(6.01) and w.checked
    assert w.longest_gap == pytest.approx(6.01 - 2.5)
    assert checks.quiet_gap(writes, [w], 0.0, 10.0) == pytest.approx(3.0)  # 6.01 .. 9.01


def test_availability_tells_a_fault_alone_from_overlapping_ones():
    writes = [
        rec(i, "set", t, t + 0.01, value=f"v{i}", output=i) for i, t in enumerate([1, 9, 12, 20])
    ]
    kill = Event("kill", start=2.0, heal=8.0)
    cut = Event("partition-one", start=3.0, heal=7.0)  # inside the kill: no quorum
    late = Event("partition-one", start=10.0, heal=11.0)  # alone
    ws = checks.availability(writes, [kill, cut, late], end=25.0)
    assert [w.alone for w in ws] == [False, False, True]
    d = checks.per_nemesis(ws)
    assert d["partition-one"]["longest_no_write_s"] == pytest.approx(9.01 - 3.0)
    assert d["partition-one"]["longest_no_write_alone_s"] == pytest.approx(12.01 - 10.0)
    assert d["partition-one"]["longest_alone_at_s"] == pytest.approx(10.0)
    assert d["kill"]["longest_no_write_alone_s"] == 0.0
    assert d["kill"]["longest_alone_at_s"] is None


def test_plan_is_drawn_from_the_seed_and_plays_every_nemesis():
    t = Timing(combine=0.5)
    a = plan(list(ALL), 300, 42, t)
    assert a == plan(list(ALL), 300, 42, t)
    assert a != plan(list(ALL), 300, 43, t)
    assert {n for r in a for n in r.names} == set(ALL)
    assert all(len(r.names) == 1 for r in a if r.names[0] in SOLO)


# -- real runs -------------------------------------------------------------------------


def run_jepsen(*args: str, timeout: float) -> tuple[int, str]:
    """The runner as a process of its own (it moves into a network namespace)."""
    p = subprocess.Popen(
        [sys.executable, "-m", "tests.jepsen", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.terminate()  # the runner stops its nodes and removes its namespaces
        try:
            out, _ = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        raise AssertionError(f"jepsen run did not finish in {timeout}s:\n{out}") from None
    return p.returncode, out


NETNS = netns_usable() is None
NEMESES = (
    "kill,kill-leader,pause,partition-one,partition-half,partition-bridge,"
    "partition-oneway,flaky,membership,restart-all"
    if NETNS
    else "kill,kill-leader,pause,partition-oneway,delay,membership,restart-all"
) + (",disk-full" if disks.why_not() is None else "")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_short_run_under_faults():
    seed = os.environ.get("JEPSEN_SEED") or str(random.randrange(1 << 31))
    # Snapshots every 1000 revs, so that snapshots, compaction and catch-up by
    # snapshot happen within the short run (the soak found a fork there).
    serve = os.environ.get("JEPSEN_SERVE_ARGS", "--snap-revs 1000")
    rc, out = run_jepsen(
        *("--nodes", "3", "--seconds", "100", "--seed", seed, "--nemesis", NEMESES),
        *("--net", "netns" if NETNS else "proxy", "--combine", "0.2", "--serve-args", serve),
        timeout=540,
    )
    print(out)
    assert rc == 0, f"jepsen run failed (seed {seed}; JEPSEN_SEED={seed} reruns it):\n{out}"
    assert "anomalies" in out and "acknowledged writes lost: 0" in out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_checks_catch_lost_writes():
    rc, out = run_jepsen(
        *("--nodes", "3", "--seconds", "8", "--seed", "1", "--nemesis", "restart-all"),
        *("--mem", "--no-hostile", "--net", "netns" if NETNS else "proxy", "--results", "/tmp"),
        timeout=240,
    )
    print(out)
    kept = [line.rsplit(": ", 1)[1] for line in out.splitlines() if line.startswith("results (")]
    for d in kept:
        shutil.rmtree(d, ignore_errors=True)
    assert rc == 1, out
    assert "FAIL" in out and "acknowledged writes lost on" in out
    assert "smallest non-linearizable window" in out
    assert "seed 1; schedule" in out and "results (history, node logs" in out


def test_a_traceback_in_a_node_log_is_found(tmp_path):
    """A bug a node survives (logged, not a crash) must fail the run."""
    from types import SimpleNamespace

    from tests.jepsen.runner import _exceptions_logged

    good, bad = tmp_path / "good.log", tmp_path / "bad.log"
    good.write_text("2026-11-27T09:25:17.057 doozer: leader is x (this node)\n")
    bad.write_text(
        "2026-11-27T09:25:19.000 doozer: Exception in callback ClusterSequencer._tick\n"
        "Traceback (most recent call last):\n"
        '  File "cluster.py", line 490, in _arm_deadline\n'
        "    if self._early_tick.when() <= d + 0.0005:\n"
        "AttributeError: 'uvloop.loop.Handle' object has no attribute 'when'\n"
        "2026-11-27T09:25:24.103 doozer: leader is y\n"
    )
    nodes = [SimpleNamespace(name="n0", logfile=good), SimpleNamespace(name="n1", logfile=bad)]
    assert _exceptions_logged(nodes) == [  # type: ignore[arg-type]
        ("n1", "AttributeError: 'uvloop.loop.Handle' object has no attribute 'when'")
    ]
