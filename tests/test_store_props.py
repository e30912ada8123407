"""Property tests: the store against a naive model that copies the whole tree at
every rev, and snapshot/restore equivalence."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doozer import errors
from doozer import store as store_mod
from doozer.mutation import DEL, NOP, SET, Mutation
from doozer.store import FLAG_DEL, FLAG_SET, Event, Store

from .test_paths import ref_match

NAMES = ["a", "b", "c"]
# Every path of depth <= 3 over NAMES: the probes for reads.
PROBES = ["/"]
_level = [""]
for _ in range(3):
    _level = [f"{p}/{n}" for p in _level for n in NAMES]
    PROBES.extend(_level)
GLOBS = ["/**", "/*", "/a/**", "/*/b", "/?/*/a", "/**/c", "/b", "/a/b/c", "/*/**/a"]

Tree = dict[str, tuple[bytes, int]]


def parents(p: str) -> list[str]:
    out = []
    while p != "/":
        p = p.rsplit("/", 1)[0] or "/"
        out.append(p)
    return out


def dirs_of(files: Tree) -> set[str]:
    out = {"/"}
    for p in files:
        out.update(parents(p))
    return out


def model_apply(files: Tree, rev: int, m: Mutation) -> tuple[str | None, Tree | None]:
    """The error, or the new tree if the mutation consumed a rev (None if it did not)."""
    if m.op == NOP:
        return None, None
    p = m.path
    dirs = dirs_of(files)
    cur = files.get(p)
    if cur is None:
        if p in dirs:
            return errors.ISDIR, None
        if any(a in files for a in parents(p)):
            return errors.NOTDIR, None
        if m.op == DEL:
            return None, None
    if m.rev != -1 and cur is not None and m.rev < cur[1]:
        return errors.REV_MISMATCH, None
    new = dict(files)
    if m.op == SET:
        new[p] = (m.value, rev + 1)
    else:
        del new[p]
    return None, new


def model_read(files: Tree, verb: str, arg: str) -> object:
    """What a read returns, or the error code it raises."""
    dirs = dirs_of(files)
    if verb == "get":
        if arg in files:
            return files[arg]
        return errors.ISDIR if arg in dirs else (b"", 0)
    if verb == "stat":
        if arg in files:
            return (len(files[arg][0]), files[arg][1])
        if arg in dirs:
            return (sum(1 for p in files.keys() | dirs if p != "/" and parents(p)[0] == arg), -2)
        return (0, 0)
    if verb == "getdir":
        if arg in dirs:
            kids = {
                p.rsplit("/", 1)[1]
                for p in files.keys() | dirs
                if p != "/" and parents(p)[0] == arg
            }
            return sorted(kids, key=str.encode)
        if arg in files or any(a in files for a in parents(arg)):
            return errors.NOTDIR
        return errors.NOENT
    assert verb == "walk"
    return [(p, r, v) for p, (v, r) in sorted(files.items()) if ref_match(arg, p)]


def store_read(s: Store, verb: str, arg: str, rev: int | None) -> object:
    try:
        return getattr(s, verb)(arg, rev=rev)
    except errors.DoozerError as e:
        return e.code


def check_reads(s: Store, trees: list[Tree], revs: list[int | None]) -> None:
    for r in revs:
        tree = trees[s.rev if r is None else r]
        for p in PROBES:
            for verb in ("get", "stat", "getdir"):
                assert store_read(s, verb, p, r) == model_read(tree, verb, p), (verb, p, r)
        for g in GLOBS:
            want = model_read(tree, "walk", g)
            assert store_read(s, "walk", g, r) == want, (g, r)
            # The frozen, stepped walk of big matches, from tiny sorted runs.
            cap, run = store_mod._WALK_CAP, store_mod._SORT_RUN
            store_mod._WALK_CAP, store_mod._SORT_RUN = 0, 2
            try:
                s._sorted.clear()  # no cached listing: big directories, sorted in steps
                for p in PROBES:
                    assert store_read(s, "getdir", p, r) == model_read(tree, "getdir", p)
                assert store_read(s, "walk", g, r) == want, (g, r, "frozen")
                assert s.walk(g, r, offset=1, limit=2) == want[1:3], (g, r)  # type: ignore[index]
                assert s.walk(g, r, offset=2) == want[2:], (g, r)  # type: ignore[index]
            finally:
                store_mod._WALK_CAP, store_mod._SORT_RUN = cap, run


def check_window(s: Store, trees: list[Tree], events: list[Event]) -> None:
    """Every rev in the window reads as the model; every rev below is TooLate."""
    assert s.oldest <= max(s.rev, 1)
    check_reads(s, trees, [None, *range(s.oldest, s.rev + 1)])
    for r in range(0, min(s.oldest, s.rev + 1)):
        for verb, arg in (("get", "/a"), ("stat", "/"), ("getdir", "/"), ("walk", "/**")):
            assert store_read(s, verb, arg, r) == errors.TOO_LATE
    if s.rev:
        assert s.events_from(s.oldest) == events[s.oldest - 1 :]
        with pytest.raises(errors.TooLate):
            s.events_from(s.oldest - 1)
    assert s.events_from(s.rev + 1) == []


path_st = st.integers(1, 3).flatmap(
    lambda n: st.lists(st.sampled_from(NAMES), min_size=n, max_size=n).map(
        lambda ns: "/" + "/".join(ns)
    )
)
mutation_st = st.one_of(
    st.builds(
        Mutation,
        st.just(SET),
        path_st,
        st.one_of(st.just(-1), st.just(0), st.integers(1, 40)),
        st.binary(max_size=6),
    ),
    st.builds(
        Mutation, st.just(DEL), path_st, st.one_of(st.just(-1), st.just(0), st.integers(1, 40))
    ),
    st.just(Mutation(NOP)),
)


def run(s: Store, muts: list[Mutation], trees: list[Tree], events: list[Event]) -> None:
    """Apply `muts` to the store and the model side by side, checking each outcome."""
    for m in muts:
        before = s.rev
        err, new = model_apply(trees[-1], before, m)
        a = s.apply(m)
        assert a.err == err, (m, a)
        if new is None:
            assert (a.rev, a.event) == (before, None)
            assert s.rev == before
            continue
        assert a.rev == s.rev == before + 1
        flags = FLAG_SET if m.op == SET else FLAG_DEL
        value = m.value if m.op == SET else None
        assert a.event == Event(a.rev, m.path, value, flags)
        trees.append(new)
        events.append(a.event)
        if s.hist_bytes is None:
            assert s.oldest == max(1, s.rev - s.hist + 1)
        else:
            assert s.oldest >= max(1, s.rev - s.hist + 1)
            assert s.history_bytes <= s.hist_bytes or s.oldest == s.rev
        # A cheap check at every step: the current tree and the oldest readable rev.
        check_reads(s, trees, [None, s.oldest])


params = st.one_of(
    st.tuples(st.integers(1, 8), st.none()),
    st.tuples(st.integers(1, 30), st.integers(0, 2000)),
)


@settings(max_examples=120, deadline=None)
@given(params, st.lists(mutation_st, max_size=40))
def test_store_matches_model(hp: tuple[int, int | None], muts: list[Mutation]) -> None:
    hist, hist_bytes = hp
    s = Store(hist=hist, hist_bytes=hist_bytes)
    trees: list[Tree] = [{}]
    events: list[Event] = []
    run(s, muts, trees, events)
    check_window(s, trees, events)


@settings(max_examples=80, deadline=None)
@given(params, st.lists(mutation_st, max_size=30), st.lists(mutation_st, max_size=15))
def test_snapshot_restore_equivalent(
    hp: tuple[int, int | None], muts: list[Mutation], more: list[Mutation]
) -> None:
    hist, hist_bytes = hp
    s = Store(hist=hist, hist_bytes=hist_bytes)
    trees: list[Tree] = [{}]
    events: list[Event] = []
    run(s, muts, trees, events)
    snap = s.snapshot()
    t = Store.restore(orjson.loads(orjson.dumps(snap)), hist=hist, hist_bytes=hist_bytes)
    assert (t.rev, t.oldest, t.history_bytes) == (s.rev, s.oldest, s.history_bytes)
    check_window(t, trees, events)
    # The copy goes on exactly like the original, trimming included.
    t_trees = list(trees)
    t_events = list(events)
    run(s, more, trees, events)
    run(t, more, t_trees, t_events)
    assert (t.rev, t.oldest, t.history_bytes) == (s.rev, s.oldest, s.history_bytes)
    assert t.snapshot() == s.snapshot()
    check_window(t, t_trees, t_events)
