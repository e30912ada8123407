"""What must hold of a run, computed from the recorded history and events.

- linearizability, per key, with the project's checker (tests/lincheck.py,
  the FILE model: values and revs), in bounded time;
- no acknowledged write lost: the final reads (after healing and a full
  restart) are part of the history, so a read that misses an acknowledged
  write is a linearizability violation; a key whose history is fine without
  its final reads and broken with them has lost a write. Separately, and
  simply: where one acknowledged write certainly came last on its key (every
  other write that may have taken effect was answered before it began), the
  final reads must return exactly it;
- availability: the longest spell without an acknowledged write during each
  fault and until the first write after its heal, and the time from each
  heal to that write.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from tests.jepsen.nemesis import Event
from tests.jepsen.workload import OK, Rec
from tests.lincheck import VIOLATION, FileModel, check


class ProtocolFile(FileModel):
    """lincheck's FILE model with the protocol's condition for writes: REV_MISMATCH
    only when the condition rev is *lower* than the file's rev (protocol.md;
    store.py: `cond < cur_rev`). FILE itself demands equality, which rejects
    legal histories: a SET at rev 65 of a file deleted since must succeed."""

    @staticmethod
    def _cond(rev: Any, expect: Any) -> bool | None:
        if expect is None or expect == -1:
            return True
        if isinstance(rev, tuple):  # some rev above rev[1]: below expect or not
            return None if expect > rev[1] else False
        return expect >= rev


MODEL = ProtocolFile()


@dataclass
class LinResult:
    keys: int = 0
    ops: int = 0
    elapsed: float = 0.0
    # (key, the checker's report with the smallest window found, window start, window end)
    violations: list[tuple[str, str, float, float]] = field(default_factory=list)

    def earliest(self, n: int) -> list[tuple[str, str, float, float]]:
        """The n violations whose windows end first: the first things that went wrong."""
        return sorted(self.violations, key=lambda v: (v[3], v[2]))[:n]

    unknown: list[tuple[str, str]] = field(default_factory=list)
    lost_keys: list[str] = field(default_factory=list)


def linearizability(recs: list[Rec], final_ids: set[int], budget_s: float) -> LinResult:
    """Check every key; `final_ids` are the ids of the final reads."""
    by_key: dict[str, list[Rec]] = defaultdict(list)
    for r in recs:
        by_key[r.key].append(r)
    res = LinResult()
    t0 = time.monotonic()
    deadline = t0 + budget_s
    for key in sorted(by_key, key=_key_order):
        ops = [op for r in by_key[key] if (op := r.to_op()) is not None]
        res.keys += 1
        res.ops += len(ops)
        left = max(0.5, deadline - time.monotonic())
        out = check(ops, MODEL, budget_s=left)
        if out.outcome == VIOLATION:
            win = out.window or ops
            lo = min(op.call for op in win)
            hi = max(op.ret if op.ret is not None else op.call for op in win)
            res.violations.append((key, out.report(), lo, hi))
            before = [op for r in by_key[key] if r.id not in final_ids and (op := r.to_op())]
            if check(before, MODEL, budget_s=max(0.5, deadline - time.monotonic())):
                res.lost_keys.append(key)
        elif out.outcome != OK:
            res.unknown.append((key, out.report()))
    res.elapsed = time.monotonic() - t0
    return res


def _key_order(key: str) -> tuple[int, str]:
    tail = key.rsplit("k", 1)[-1]
    return (int(tail) if tail.isdigit() else -1, key)


def certainly_last(recs: list[Rec], final_ids: set[int]) -> dict[str, Rec]:
    """Per key, the acknowledged write that certainly took effect last, if one did."""
    by_key: dict[str, list[Rec]] = defaultdict(list)
    for r in recs:
        if r.is_write and r.id not in final_ids:
            by_key[r.key].append(r)
    out: dict[str, Rec] = {}
    for key, ws in by_key.items():
        effective = [w for w in ws if w.outcome != "fail" and w.output != "REV_MISMATCH"]
        acked = [w for w in effective if w.outcome == OK]
        if not acked:
            continue
        last = max(acked, key=lambda w: w.call)
        if all(w is last or (w.outcome == OK and w.ret < last.call) for w in effective):  # type: ignore[operator]
            out[key] = last
    return out


def lost_writes(recs: list[Rec], final: list[Rec]) -> list[str]:
    """Final reads that do not return the certainly-last acknowledged write."""
    last = certainly_last(recs, {r.id for r in final})
    bad = []
    for r in final:
        w = last.get(r.key)
        if w is None or r.outcome != OK:
            continue
        want = (w.value, w.output) if w.kind == "set" else (None, 0)
        if tuple(r.output) != want:
            bad.append(
                f"{r.key}: acknowledged {w.kind} {w.value!r} at rev {w.output} "
                f"[{w.call:.3f}..{w.ret:.3f} by {w.client}@n{w.node}], "
                f"n{r.node} reads {tuple(r.output)!r} at {r.call:.3f}"
            )
    return bad


def rev_disagreements(recs: list[Rec]) -> list[str]:
    """Values are unique, so each acknowledged value has one rev, the same on every node.
    A value seen at two revs (written at one, read at another, on different nodes) means
    the replicas disagree on the log. Returns the first disagreement per node, earliest
    first."""
    seen: dict[str, dict[int, tuple[int, float, str]]] = {}
    for r in recs:
        if r.outcome != OK or r.ret is None:
            continue
        if r.kind == "set" and isinstance(r.output, int):
            value, rev = r.value, r.output
        elif r.kind == "get" and r.output is not None and r.output[0] is not None:
            value, rev = r.output
        else:
            continue
        by_node = seen.setdefault(value, {})  # type: ignore[arg-type]
        if r.node not in by_node or r.ret < by_node[r.node][1]:
            by_node[r.node] = (rev, r.ret, f"{r.client} {r.kind} {r.key}")
    first: dict[int, tuple[float, str]] = {}
    for value, by_node in seen.items():
        if len({rev for rev, _, _ in by_node.values()}) < 2:
            continue
        t = max(x[1] for x in by_node.values())  # when the disagreement became visible
        where = ", ".join(
            f"n{n} rev {rev} ({what} at {at:.3f})" for n, (rev, at, what) in sorted(by_node.items())
        )
        for n in by_node:
            if n not in first or t < first[n][0]:
                first[n] = (t, f"value {value!r}: {where}")
    return [
        f"n{n} from {t:.3f}s: {text}" for n, (t, text) in sorted(first.items(), key=lambda x: x[1])
    ]


@dataclass
class Window:
    nemesis: str
    start: float
    heal: float
    recovered: float | None  # completion of the first acknowledged write called after the heal
    longest_gap: float
    checked: bool  # no other fault active at the heal: the recovery bound applies
    alone: bool = True  # no other fault overlapped it at any time
    gap_at: float = 0.0  # when the longest gap began (run time, s)


def availability(recs: list[Rec], events: list[Event], end: float) -> list[Window]:
    writes = sorted(
        (r.call, r.ret)
        for r in recs
        if r.is_write and r.outcome == OK and isinstance(r.output, int) and r.ret is not None
    )
    calls = [c for c, _ in writes]
    suffix_min = [float("inf")] * (len(writes) + 1)
    for i in range(len(writes) - 1, -1, -1):
        suffix_min[i] = min(suffix_min[i + 1], writes[i][1])
    rets = sorted(r for _, r in writes)
    out = []
    for ev in events:
        h = ev.heal if ev.heal is not None else end
        i = bisect.bisect_left(calls, h)
        rec = suffix_min[i] if i < len(writes) else float("inf")
        recovered = None if rec == float("inf") else rec
        stop = recovered if recovered is not None else end
        lo, hi = bisect.bisect_right(rets, ev.start), bisect.bisect_left(rets, stop)
        pts = [ev.start, *rets[lo:hi], stop]
        gap, gap_at = max(((b - a, a) for a, b in itertools.pairwise(pts)), default=(0.0, ev.start))
        others = any(o is not ev and o.start <= h < (o.heal or end) for o in events)
        alone = not any(o is not ev and o.start < h and (o.heal or end) > ev.start for o in events)
        out.append(Window(ev.nemesis, ev.start, h, recovered, gap, not others, alone, gap_at))
    return out


def quiet_gap(recs: list[Rec], windows: list[Window], start: float, end: float) -> float:
    """The longest spell without an acknowledged write outside every fault window."""
    rets = sorted(
        r.ret  # type: ignore[misc]
        for r in recs
        if r.is_write and r.outcome == OK and isinstance(r.output, int)
    )
    spans: list[list[float]] = []
    for s, e in sorted((w.start, w.recovered or end) for w in windows):
        if spans and s <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([s, e])
    pts = [start, *(t for t in rets if start <= t <= end), end]
    worst = 0.0
    for a, b in itertools.pairwise(pts):
        # the part of [a, b] not covered by any fault window
        free = b - a
        for s, e in spans:
            free -= max(0.0, min(b, e) - max(a, s))
        worst = max(worst, free if free > 0 else 0.0)
    return worst


def per_nemesis(windows: list[Window]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for w in windows:
        d = out.setdefault(
            w.nemesis,
            {
                "faults": 0,
                "longest_no_write_s": 0.0,
                "longest_no_write_alone_s": 0.0,  # with no other fault overlapping
                "longest_alone_at_s": None,  # when that gap began, to find it in the log
                "worst_recovery_s": 0.0,
                "unrecovered": 0,
            },
        )
        d["faults"] += 1
        d["longest_no_write_s"] = round(max(d["longest_no_write_s"], w.longest_gap), 3)
        if w.alone and (
            d["longest_alone_at_s"] is None or w.longest_gap > d["longest_no_write_alone_s"]
        ):
            d["longest_no_write_alone_s"] = round(w.longest_gap, 3)
            d["longest_alone_at_s"] = round(w.gap_at, 1)
        if w.recovered is None:
            d["unrecovered"] += 1
        else:
            d["worst_recovery_s"] = round(max(d["worst_recovery_s"], w.recovered - w.heal), 3)
    return out
