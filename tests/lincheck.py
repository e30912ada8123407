"""Linearizability checking for key-value histories (Wing & Gong, Lowe; as in Porcupine).

    from lincheck import Op, check, REGISTER
    result = check(history, model=REGISTER, budget_s=10.0)
    if result.outcome == "violation": print(result.report())

A history is a list of `Op`s with invoke (`call`) and response (`ret`) times. An op
with `ret=None` got no response: it may have taken effect at any time after its
call, or never, and its output is unknown. The history is split per key (a
register per key is independent of the others: P-compositionality) and each part
is searched depth-first for a linearization, memoising (linearized set, state)
pairs. The search stops at `budget_s` (outcome "unknown").

On a violation, the report names the smallest window found: the shortest prefix
that is already non-linearizable (ops pending at its end count as unanswered), cut
from the left at the latest quiescent point that keeps it non-linearizable from
any initial state. Both cuts are sound: a linearizable history never yields a
non-linearizable window.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

OK = "ok"
VIOLATION = "violation"
UNKNOWN = "unknown"

_INF = float("inf")


@dataclass(frozen=True, slots=True)
class Op:
    kind: str  # get | set | cas | del (or whatever the model understands)
    key: Hashable
    call: float
    ret: float | None = None  # None: no response (indeterminate)
    value: Any = None  # set / cas: the value written
    expect: Any = None  # cas: the value compared against
    output: Any = None  # get: the value read (None: absent); cas: True / False
    client: Any = None

    def __str__(self) -> str:
        ret = "?" if self.ret is None else f"{self.ret:.6f}"
        args = {
            "get": "",
            "set": f"{self.value!r}",
            "cas": f"{self.expect!r} -> {self.value!r}",
            "del": "",
        }.get(self.kind, f"{self.expect!r}, {self.value!r}")
        out = "" if self.ret is None or self.kind in ("set", "del") else f" => {self.output!r}"
        who = f"client {self.client} " if self.client is not None else ""
        sep = ", " if args else ""
        return f"[{self.call:.6f} .. {ret}] {who}{self.kind}({self.key!r}{sep}{args}){out}"


class Model:
    """A sequential specification. States must be hashable."""

    def key(self, op: Op) -> Hashable:
        return op.key

    def init(self) -> Hashable:
        raise NotImplementedError

    def step(self, state: Hashable, op: Op) -> tuple[bool, Hashable]:
        """Is op (with its output, unless op.ret is None) legal in state? And the next state."""
        raise NotImplementedError

    def is_read(self, op: Op) -> bool:
        """An op without effect: dropped when it got no response."""
        return op.kind == "get"

    def quick_violation(self, ops: list[Op]) -> tuple[list[Op], Op] | None:
        """A cheap proof of a violation (window, offending op), or None: try the search."""
        return None

    def canonical(self, ops: list[Op]) -> list[Op]:
        """The ops as the search steps them: values nothing can tell apart may be merged,
        so that more states coincide (same length and order as ops)."""
        return ops

    def states(self, ops: list[Op]) -> list[Hashable]:
        """Candidate states at the start of a window of ops (for the report's left cut):
        every state the window could start from, or a wildcard that `step` accepts as
        "any state" as long as it over-approximates (never rejects a legal op)."""
        raise NotImplementedError


class _Unseen:
    """A written value that no read and no compare-and-set mentions: all such values
    behave alike, so the search treats them as one."""

    def __repr__(self) -> str:
        return "<unseen>"


_UNSEEN = _Unseen()


class _Any:
    """Wildcard state: the register could hold anything (first observation settles it)."""

    def __repr__(self) -> str:
        return "<any>"


_ANY = _Any()


class RegisterModel(Model):
    """A register per key; None means absent. get / set / cas / del."""

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, op: Op) -> tuple[bool, Hashable]:
        k = op.kind
        if state is _ANY:
            if k == "get":
                return True, op.output
            if k == "cas":
                if op.ret is None:
                    return True, _ANY
                return True, (op.value if op.output else _ANY)
        if k == "get":
            return op.output == state, state
        if k == "set":
            return True, op.value
        if k == "cas":
            hit = state == op.expect
            if op.ret is not None and bool(op.output) != hit:
                return False, state
            return True, op.value if hit else state
        if k == "del":
            return True, None
        raise ValueError(f"unknown op kind {k!r}")

    def states(self, ops: list[Op]) -> list[Hashable]:
        return [_ANY]

    def canonical(self, ops: list[Op]) -> list[Op]:
        seen: set[Hashable] = set()
        for op in ops:
            if op.kind == "get" and op.ret is not None:
                seen.add(op.output)
            elif op.kind == "cas":
                seen.add(op.expect)
        return [
            replace(op, value=_UNSEEN) if op.kind in ("set", "cas") and op.value not in seen else op
            for op in ops
        ]

    def quick_violation(self, ops: list[Op]) -> tuple[list[Op], Op] | None:
        """With every value written at most once, a read proves a violation if its value
        was never written, was written only after the read returned, or was certainly
        overwritten before the read began (the classic stale read)."""
        writers: dict[Hashable, Op] = {}
        for op in ops:
            if op.kind in ("set", "cas") and op.value is not None:
                if op.value in writers:
                    return None  # values are not unique: no shortcut
                writers[op.value] = op
        # writes certainly in effect: answered sets / deletes / successful cas
        eff = sorted(
            (
                op
                for op in ops
                if op.ret is not None
                and (op.kind in ("set", "del") or (op.kind == "cas" and op.output))
            ),
            key=lambda o: o.call,
        )
        calls = [o.call for o in eff]
        suffix_min: list[tuple[float, int]] = [(_INF, -1)] * (len(eff) + 1)
        for k in range(len(eff) - 1, -1, -1):
            suffix_min[k] = min(suffix_min[k + 1], (eff[k].ret, k))  # type: ignore[arg-type]
        for op in ops:
            if op.kind != "get" or op.ret is None or op.output is None:
                continue
            w = writers.get(op.output)
            if w is None:
                return [op], op
            if w.call > op.ret or (w.kind == "cas" and w.ret is not None and not w.output):
                return [w, op], op
            if w.ret is None:
                continue
            k = bisect.bisect_right(calls, w.ret)
            ret, j = suffix_min[k]
            if ret < op.call:
                return [w, eff[j], op], op
        return None


class FileModel(Model):
    """A doozer file: state (value, rev); a missing file is (None, 0).

    get: output (value, rev). set / del: `expect` is the condition rev (None or -1:
    any, 0: create-only, n: unchanged since n); output the new rev, or "REV_MISMATCH".
    A successful write's rev exceeds the file's rev (revs are global and grow with
    the log). An unanswered write that takes effect leaves the rev unknown, ("?", lb):
    some rev above lb, settled by the next read or conditional write that sees it.
    """

    def init(self) -> Hashable:
        return (None, 0)

    @staticmethod
    def _cond(rev: Any, expect: Any) -> bool | None:
        """Does the condition hold? None: it depends on an unknown rev."""
        if expect is None or expect == -1:
            return True
        if isinstance(rev, tuple):
            return None if expect > rev[1] else False
        return rev == expect

    @staticmethod
    def _floor(rev: Any) -> Any:
        return rev[1] if isinstance(rev, tuple) else rev

    def step(self, state: Hashable, op: Op) -> tuple[bool, Hashable]:
        value, rev = state  # type: ignore[misc]
        k = op.kind
        if k == "get":
            if op.output is None:
                return False, state
            v, r = op.output
            if isinstance(rev, tuple):
                return (v == value and r > rev[1]), (v, r)
            return (v == value and r == rev), state
        if k not in ("set", "del"):
            raise ValueError(f"unknown op kind {k!r}")
        cond = self._cond(rev, op.expect)
        if op.ret is None:
            if cond is False:
                return True, state
            # taking effect; "no effect" is covered by never linearizing the op
            return True, ((op.value, ("?", self._floor(rev))) if k == "set" else (None, 0))
        if op.output == "REV_MISMATCH":
            return cond is not True, state
        r = op.output
        if cond is False or not isinstance(r, int) or r <= self._floor(rev):
            return False, state
        return True, ((op.value, r) if k == "set" else (None, 0))

    def canonical(self, ops: list[Op]) -> list[Op]:
        seen: set[Hashable] = set()
        for op in ops:
            if op.kind == "get" and op.ret is not None and op.output is not None:
                seen.add(op.output[0])
        return [
            replace(op, value=_UNSEEN) if op.kind == "set" and op.value not in seen else op
            for op in ops
        ]

    def states(self, ops: list[Op]) -> list[Hashable]:
        seen: dict[Hashable, None] = {(None, 0): None}
        for op in ops:
            if op.kind == "get" and op.output is not None:
                seen[tuple(op.output)] = None
            if op.kind == "set" and isinstance(op.output, int):
                seen[(op.value, op.output)] = None
            if isinstance(op.expect, int) and op.expect > 0:
                seen[("<other>", op.expect)] = None
        seen[("<other>", ("?", 0))] = None
        return list(seen)


REGISTER = RegisterModel()
FILE = FileModel()


@dataclass
class Result:
    outcome: str  # "ok" | "violation" | "unknown"
    ops: int = 0
    keys: int = 0
    elapsed: float = 0.0
    key: Hashable | None = None  # the key with a violation (or the one that ran out of time)
    window: list[Op] = field(default_factory=list)
    stuck: Op | None = None  # an op that could not be linearized at the end of the window
    detail: str = ""

    def __bool__(self) -> bool:
        return self.outcome == OK

    def report(self) -> str:
        head = (
            f"linearizability: {self.outcome} "
            f"({self.ops} ops, {self.keys} keys, {self.elapsed:.2f}s)"
        )
        if self.outcome == OK:
            return head
        lines = [head]
        if self.key is not None:
            lines.append(f"key {self.key!r}")
        if self.detail:
            lines.append(self.detail)
        if self.window:
            lines.append(f"smallest non-linearizable window ({len(self.window)} ops):")
            lines.extend(
                "  " + str(op) + ("   <-- cannot be linearized" if op is self.stuck else "")
                for op in self.window
            )
        return "\n".join(lines)


class _Budget(Exception):
    pass


class _Node:
    __slots__ = ("call", "idx", "match", "next", "op", "prev")

    def __init__(self, op: Op | None, idx: int, call: bool) -> None:
        self.op = op
        self.idx = idx
        self.call = call
        self.match: _Node | None = None
        self.prev: _Node | None = None
        self.next: _Node | None = None


def _search(ops: list[Op], model: Model, init: Hashable, deadline: float) -> tuple[bool, int, int]:
    """Depth-first search for a linearization. Returns (ok, depth, stuck op index).
    Raises _Budget past the deadline.

    Unanswered ops that the model cannot tell apart (same kind, value and condition)
    are interchangeable: any linearization using some of them can use the earliest
    called instead, so they are only ever linearized in call order. Without this, k
    unanswered writes cost 2**k."""
    ops = model.canonical(ops)
    events: list[tuple[float, int, int, _Node]] = []
    group: list[int] = [-1] * len(ops)
    members: dict[tuple, list[int]] = {}
    for i, op in enumerate(ops):
        c = _Node(op, i, True)
        r = _Node(op, i, False)
        c.match = r
        events.append((op.call, 0, i, c))
        events.append((_INF if op.ret is None else op.ret, 1, i, r))
        if op.ret is None:
            try:
                members.setdefault((op.kind, op.value, op.expect), []).append(i)
            except TypeError:
                pass  # an unhashable value: no twins for it
    order: list[list[int]] = []
    for m in members.values():
        if len(m) > 1:
            for i in m:
                group[i] = len(order)
            order.append(sorted(m, key=lambda i: (ops[i].call, i)))
    nxt = [0] * len(order)  # members of each group linearized so far (a prefix)
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    head = _Node(None, -1, False)
    prev = head
    for *_, n in events:
        prev.next = n
        n.prev = prev
        prev = n

    step = model.step
    state = init
    linearized = 0
    cache: set[tuple[int, Hashable]] = set()
    stack: list[tuple[_Node, Hashable]] = []
    best = 0
    stuck = -1
    n = head.next
    count = 0
    while n is not None:
        count += 1
        if count & 4095 == 0 and time.monotonic() > deadline:
            raise _Budget
        op = n.op
        assert op is not None
        if n.call:
            g = group[n.idx]
            if g >= 0 and order[g][nxt[g]] != n.idx:
                n = n.next  # a twin called earlier goes first
                continue
            ok, new = step(state, op)
            if ok:
                lin = linearized | (1 << n.idx)
                key = (lin, new)
                if key not in cache:
                    cache.add(key)
                    stack.append((n, state))
                    state = new
                    linearized = lin
                    if g >= 0:
                        nxt[g] += 1
                    # lift the op out of the list
                    n.prev.next = n.next  # type: ignore[union-attr]
                    n.next.prev = n.prev  # type: ignore[union-attr]
                    m = n.match
                    assert m is not None
                    m.prev.next = m.next  # type: ignore[union-attr]
                    if m.next is not None:
                        m.next.prev = m.prev
                    n = head.next
                    continue
            n = n.next
            continue
        # a response: every op still listed before it must have been linearized first
        if op.ret is None:
            return True, len(stack), -1  # only unanswered ops remain
        if len(stack) >= best:
            best = len(stack)
            stuck = n.idx
        if not stack:
            return False, best, stuck
        c, state = stack.pop()
        linearized &= ~(1 << c.idx)
        if group[c.idx] >= 0:
            nxt[group[c.idx]] -= 1
        m = c.match
        assert m is not None
        m.prev.next = m  # type: ignore[union-attr]
        if m.next is not None:
            m.next.prev = m
        c.prev.next = c  # type: ignore[union-attr]
        c.next.prev = c  # type: ignore[union-attr]
        n = c.next
    return True, len(stack), -1


def _prepare(history: Iterable[Op], model: Model) -> dict[Hashable, list[Op]]:
    parts: dict[Hashable, list[Op]] = {}
    for op in history:
        if op.ret is None and model.is_read(op):
            continue  # an unanswered read has no effect and no output
        if op.ret is not None and op.ret < op.call:
            raise ValueError(f"op returns before it is called: {op}")
        parts.setdefault(model.key(op), []).append(op)
    for ops in parts.values():
        ops.sort(key=lambda o: o.call)
    return parts


def _cut(ops: list[Op], t: float, model: Model) -> list[int]:
    """Indices of the ops called by time t (ops pending at t will count as unanswered)."""
    return [
        i for i, op in enumerate(ops) if op.call <= t and not (model.is_read(op) and _after(op, t))
    ]


def _after(op: Op, t: float) -> bool:
    return op.ret is None or op.ret > t


def _view(ops: list[Op], idx: list[int], t: float) -> list[Op]:
    return [ops[i] if not _after(ops[i], t) else replace(ops[i], ret=None) for i in idx]


def _deepest(
    view: list[Op], model: Model, states: list[Hashable], deadline: float
) -> tuple[bool, int]:
    """Linearizable from some state? Else the op where the deepest search got stuck."""
    best, stuck = -1, -1
    for s in states:
        ok, depth, at = _search(view, model, s, deadline)
        if ok:
            return True, -1
        if depth > best:
            best, stuck = depth, at
    return False, stuck


def _minimize(ops: list[Op], model: Model, deadline: float) -> tuple[list[Op], Op | None]:
    """Shrink a non-linearizable history to a small non-linearizable window."""
    init = model.init()
    # Right cut: the earliest response time by which the prefix is already broken.
    rets = sorted({op.ret for op in ops if op.ret is not None})
    lo, hi = 0, len(rets) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        t = rets[mid]
        if _search(_view(ops, _cut(ops, t, model), t), model, init, deadline)[0]:
            lo = mid + 1
        else:
            hi = mid
    t_end = rets[lo] if rets else _INF
    win = _cut(ops, t_end, model)

    # Left cut at time t: keep the ops called from t on; of the earlier ones keep only
    # writes still pending at t, as unanswered. Sound from any start state: in a
    # linearization of the whole, every dropped op precedes the ops called after t,
    # and the kept pending writes either follow the last dropped op or are absorbed
    # into the start state.
    def tail(t: float) -> list[Op]:
        out = []
        for i in win:
            op = ops[i]
            if op.call >= t:
                out.append(op if not _after(op, t_end) else replace(op, ret=None))
            elif _after(op, t) and not model.is_read(op):
                out.append(replace(op, ret=None))
        return out

    calls = sorted({ops[i].call for i in win})
    lo, hi = 0, len(calls) - 1
    while lo < hi:  # the latest cut whose tail is still broken from any start state
        mid = (lo + hi + 1) // 2
        view = tail(calls[mid])
        if _deepest(view, model, model.states(view), deadline)[0]:
            hi = mid - 1
        else:
            lo = mid
    view = tail(calls[lo]) if lo else _view(ops, win, t_end)
    ok, stuck = _deepest(view, model, model.states(view) if lo else [init], deadline)
    if ok:  # the bisection is not strictly monotone: fall back to the whole prefix
        view = _view(ops, win, t_end)
        _, stuck = _deepest(view, model, [init], deadline)
    # report the ops as they were recorded (answered ones with their answers)
    by_id = {id(ops[i]): ops[i] for i in win}
    orig = {(o.call, o.kind, o.key, o.client, repr(o.value)): o for o in by_id.values()}
    report = [orig.get((o.call, o.kind, o.key, o.client, repr(o.value)), o) for o in view]
    return report, (report[stuck] if stuck >= 0 else None)


def check(history: Iterable[Op], model: Model = REGISTER, budget_s: float = 10.0) -> Result:
    """Is the history linearizable with respect to model? See the module doc."""
    t0 = time.monotonic()
    deadline = t0 + budget_s
    parts = _prepare(history, model)
    total = sum(len(v) for v in parts.values())
    res = Result(OK, ops=total, keys=len(parts))
    for key in sorted(parts, key=repr):
        ops = parts[key]
        quick = model.quick_violation(ops)
        if quick is not None:
            res.outcome = VIOLATION
            res.key = key
            res.window, res.stuck = quick
            break
        try:
            ok, _, stuck = _search(ops, model, model.init(), deadline)
        except _Budget:
            res.outcome = UNKNOWN
            res.key = key
            res.detail = f"out of time budget ({budget_s}s) on a key with {len(ops)} ops"
            break
        if not ok:
            res.outcome = VIOLATION
            res.key = key
            res.stuck = ops[stuck] if stuck >= 0 else None
            try:
                window, stuck_op = _minimize(ops, model, time.monotonic() + max(1.0, budget_s))
                res.window = window
                if stuck_op is not None:
                    res.stuck = stuck_op
            except _Budget:
                res.window = [op for op in ops if res.stuck is None or _overlaps(op, res.stuck)]
                res.detail = "window not minimised (out of time)"
            break
    res.elapsed = time.monotonic() - t0
    return res


def _overlaps(a: Op, b: Op) -> bool:
    a_end = _INF if a.ret is None else a.ret
    b_end = _INF if b.ret is None else b.ret
    return a.call <= b_end and b.call <= a_end
