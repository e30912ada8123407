"""The store: every rule of the data model, each error, history, events, snapshots."""

from __future__ import annotations

import orjson
import pytest

from doozer import errors
from doozer import store as store_mod
from doozer.mutation import DEL, NOP, SET, Mutation
from doozer.store import FLAG_DEL, FLAG_SET, Applied, Event, Store


def mset(s: Store, path: str, value: bytes = b"v", rev: int = -1) -> Applied:
    return s.apply(Mutation(SET, path, rev, value))


def mdel(s: Store, path: str, rev: int = -1) -> Applied:
    return s.apply(Mutation(DEL, path, rev))


# ---- writes and the tree ----


def test_empty_store() -> None:
    s = Store()
    assert s.rev == 0
    assert s.getdir("/") == []
    assert s.stat("/") == (0, -2)
    assert s.get("/a") == (b"", 0)
    assert s.walk("/**") == []
    assert len(s) == 0
    with pytest.raises(errors.IsDir):
        s.get("/")


def test_set_creates_implicit_dirs_and_advances_rev() -> None:
    s = Store()
    a = mset(s, "/a/b/c", b"hi")
    assert a == Applied(1, None, "", Event(1, "/a/b/c", b"hi", FLAG_SET))
    assert s.rev == 1
    assert s.getdir("/") == ["a"]
    assert s.getdir("/a") == ["b"]
    assert s.getdir("/a/b") == ["c"]
    assert s.get("/a/b/c") == (b"hi", 1)
    assert s.stat("/a") == (1, -2)
    assert s.stat("/a/b/c") == (2, 1)
    a2 = mset(s, "/a/x", b"")
    assert a2.rev == 2
    assert s.get("/a/x") == (b"", 2)
    assert s.stat("/a") == (2, -2)
    # Overwrite: the file's rev becomes the rev of that SET.
    assert mset(s, "/a/b/c", b"again").rev == 3
    assert s.get("/a/b/c") == (b"again", 3)
    assert s.get("/a/x") == (b"", 2)


def test_delete_removes_empty_dirs_up_to_root() -> None:
    s = Store()
    mset(s, "/a/b/c")
    mset(s, "/a/d")
    a = mdel(s, "/a/b/c")
    assert a == Applied(3, None, "", Event(3, "/a/b/c", None, FLAG_DEL))
    assert s.getdir("/a") == ["d"]
    with pytest.raises(errors.NoEnt):
        s.getdir("/a/b")
    assert s.stat("/a/b") == (0, 0)
    mdel(s, "/a/d")
    assert s.getdir("/") == []
    assert s.stat("/") == (0, -2)
    with pytest.raises(errors.NoEnt):
        s.getdir("/a")
    # The path of a removed directory can hold a file now.
    assert mset(s, "/a", b"file").err is None
    assert s.get("/a") == (b"file", 5)


def test_set_on_directory_is_isdir() -> None:
    s = Store()
    mset(s, "/a/b")
    a = mset(s, "/a")
    assert (a.rev, a.err, a.event) == (1, errors.ISDIR, None)
    assert "/a" in a.detail
    a = mset(s, "/")
    assert (a.rev, a.err) == (1, errors.ISDIR)
    assert s.rev == 1


def test_set_and_del_through_a_file_is_notdir() -> None:
    s = Store()
    mset(s, "/f")
    for a in (mset(s, "/f/x"), mset(s, "/f/x/y"), mdel(s, "/f/x"), mdel(s, "/f/x/y")):
        assert (a.rev, a.err, a.event) == (1, errors.NOTDIR, None)
        assert a.detail == "/f is a file"
    assert s.rev == 1
    assert s.getdir("/") == ["f"]


def test_del_directory_is_isdir() -> None:
    s = Store()
    mset(s, "/a/b")
    a = mdel(s, "/a")
    assert (a.rev, a.err, a.event) == (1, errors.ISDIR, None)
    assert mdel(s, "/").err == errors.ISDIR
    assert s.get("/a/b") == (b"v", 1)


def test_del_missing_succeeds_without_a_rev() -> None:
    s = Store()
    mset(s, "/a")
    for cond in (-1, 0, 1, 99):
        a = mdel(s, "/nope", cond)
        assert a == Applied(1, None, "", None)
        a = mdel(s, "/deep/nope", cond)
        assert a == Applied(1, None, "", None)
    assert s.rev == 1
    assert s.events_from(1) == [Event(1, "/a", b"v", FLAG_SET)]


def test_nop() -> None:
    s = Store()
    assert s.apply(Mutation(NOP)) == Applied(0, None, "", None)
    mset(s, "/a")
    assert s.apply(Mutation(NOP)) == Applied(1, None, "", None)
    assert s.rev == 1


def test_unknown_op_is_a_bug() -> None:
    with pytest.raises(ValueError):
        Store().apply(Mutation(7, "/a"))


def test_bad_path_mutation_changes_nothing() -> None:
    s = Store()
    for p in ("", "a", "/a/", "//a", "/a b"):
        assert mset(s, p).err == errors.BAD_PATH
        assert mdel(s, p).err == errors.BAD_PATH
    assert s.rev == 0
    assert s.getdir("/") == []


def test_conditional_writes() -> None:
    s = Store()
    for i in range(6):
        mset(s, f"/pad{i}")
    assert mset(s, "/hello", b"world", 0).rev == 7  # create-only on a missing file
    a = mset(s, "/hello", b"again", 0)
    assert (a.rev, a.err, a.detail, a.event) == (7, errors.REV_MISMATCH, "/hello is at rev 7", None)
    assert mset(s, "/hello", b"x", 6).err == errors.REV_MISMATCH
    assert mset(s, "/hello", b"x", 7).rev == 8  # unchanged since 7
    assert mset(s, "/hello", b"y", 100).rev == 9  # higher than the file's rev: accepted
    assert mset(s, "/hello", b"z", -1).rev == 10
    a = mdel(s, "/hello", 9)
    assert (a.rev, a.err, a.detail) == (10, errors.REV_MISMATCH, "/hello is at rev 10")
    assert mdel(s, "/hello", 10).rev == 11
    assert s.get("/hello") == (b"", 0)
    assert mset(s, "/new", b"", 5).rev == 12  # missing file is at rev 0


def test_file_rev_is_rev_of_its_last_set() -> None:
    s = Store()
    mset(s, "/a")
    mset(s, "/b")
    mset(s, "/a")
    mdel(s, "/b")
    assert s.get("/a") == (b"v", 3)
    assert s.stat("/a") == (1, 3)
    assert s.rev == 4


# ---- reads ----


def test_get_and_stat_through_a_file_report_missing() -> None:
    s = Store()
    mset(s, "/f", b"abc")
    assert s.get("/f/x") == (b"", 0)
    assert s.get("/f/x/y") == (b"", 0)
    assert s.stat("/f/x") == (0, 0)
    assert s.get("/f/x", rev=1) == (b"", 0)
    assert s.stat("/f/x", rev=1) == (0, 0)


def test_get_of_directory_is_isdir() -> None:
    s = Store()
    mset(s, "/a/b")
    mset(s, "/c")
    for rev in (None, 1, 2):
        with pytest.raises(errors.IsDir):
            s.get("/a", rev=rev)
        with pytest.raises(errors.IsDir):
            s.get("/", rev=rev)


def test_reads_check_paths() -> None:
    s = Store()
    mset(s, "/a")
    for rev in (None, 1):
        for bad in ("a", "/a/", "//", ""):
            with pytest.raises(errors.BadPath):
                s.get(bad, rev=rev)
            with pytest.raises(errors.BadPath):
                s.stat(bad, rev=rev)
            with pytest.raises(errors.BadPath):
                s.getdir(bad, rev=rev)
        with pytest.raises(errors.BadPath):
            s.walk("/a/", rev=rev)


def test_getdir_sorted_by_byte_order_and_paged() -> None:
    s = Store()
    for name in ("b", "a", "B", "a-x", "a.y", "0", "_", "a/z"):
        mset(s, "/d/" + name)
    want = sorted(["b", "a", "B", "a-x", "a.y", "0", "_"], key=lambda n: n.encode())
    assert want == ["0", "B", "_", "a", "a-x", "a.y", "b"]
    assert s.getdir("/d") == want
    assert s.getdir("/d", offset=2) == want[2:]
    assert s.getdir("/d", offset=2, limit=3) == want[2:5]
    assert s.getdir("/d", limit=0) == []
    assert s.getdir("/d", offset=7) == []
    assert s.getdir("/d", offset=100, limit=5) == []
    assert s.getdir("/d", rev=5) == sorted(["b", "a", "B", "a-x", "a.y"])
    assert s.getdir("/d", rev=5, offset=1, limit=1) == ["a"]
    # The cached listing follows changes, and callers cannot corrupt it.
    s.getdir("/d").append("zz")
    assert s.getdir("/d") == want
    mset(s, "/d/c")
    assert s.getdir("/d")[-1] == "c"
    mdel(s, "/d/c")
    assert s.getdir("/d") == want


def test_getdir_errors() -> None:
    s = Store()
    mset(s, "/f")
    mset(s, "/d/x")
    for rev in (None, 2):
        with pytest.raises(errors.NoEnt):
            s.getdir("/missing", rev=rev)
        with pytest.raises(errors.NoEnt):
            s.getdir("/d/missing/deeper", rev=rev)
        with pytest.raises(errors.NotDir) as e:
            s.getdir("/f", rev=rev)
        assert e.value.detail == "/f is a file"
        with pytest.raises(errors.NotDir) as e:
            s.getdir("/f/x/y", rev=rev)
        assert e.value.detail == "/f is a file"
        with pytest.raises(errors.NotDir):
            s.getdir("/d/x", rev=rev)
        with pytest.raises(errors.RangeError_):
            s.getdir("/d", rev=rev, offset=-1)
        with pytest.raises(errors.RangeError_):
            s.getdir("/d", rev=rev, limit=-1)


def test_walk() -> None:
    s = Store()
    for p in ("/a/b", "/a-x", "/a/c/d", "/a.b", "/z", "/a/c/e"):
        mset(s, p, p.encode())
    every = s.walk("/**")
    # Sorted by path (byte order: `-` and `.` sort before `/`); directories never listed.
    assert [p for p, _, _ in every] == ["/a-x", "/a.b", "/a/b", "/a/c/d", "/a/c/e", "/z"]
    assert every[0] == ("/a-x", 2, b"/a-x")
    assert [p for p, _, _ in s.walk("/a/**")] == ["/a/b", "/a/c/d", "/a/c/e"]
    assert [p for p, _, _ in s.walk("/a/*")] == ["/a/b"]
    assert [p for p, _, _ in s.walk("/*")] == ["/a-x", "/a.b", "/z"]
    assert [p for p, _, _ in s.walk("/a/?/*")] == ["/a/c/d", "/a/c/e"]
    assert [p for p, _, _ in s.walk("/**/e")] == ["/a/c/e"]
    assert s.walk("/a/b") == [("/a/b", 1, b"/a/b")]
    assert s.walk("/a") == []  # a directory
    assert s.walk("/nope/**") == []
    assert s.walk("/z/**") == []  # under a file
    assert [p for p, _, _ in s.walk("/**", offset=1, limit=2)] == ["/a.b", "/a/b"]
    assert s.walk("/**", offset=6) == []
    assert s.walk("/**", limit=0) == []
    with pytest.raises(errors.RangeError_):
        s.walk("/**", offset=-1)
    with pytest.raises(errors.RangeError_):
        s.walk("/**", limit=-2)
    with pytest.raises(errors.BadPath):
        s.walk("**")
    # At an old rev.
    assert [p for p, _, _ in s.walk("/**", rev=3)] == ["/a-x", "/a/b", "/a/c/d"]
    mdel(s, "/a/b")
    mset(s, "/a/c/d", b"new")
    assert s.walk("/a/**", rev=6) == [
        ("/a/b", 1, b"/a/b"),
        ("/a/c/d", 3, b"/a/c/d"),
        ("/a/c/e", 6, b"/a/c/e"),
    ]
    assert s.walk("/a/**") == [("/a/c/d", 8, b"new"), ("/a/c/e", 6, b"/a/c/e")]
    assert s.walk("/a/b", rev=6) == [("/a/b", 1, b"/a/b")]


# ---- history ----


def test_reads_at_old_revs() -> None:
    s = Store()
    mset(s, "/a/b", b"1")  # 1
    mset(s, "/a/b", b"2")  # 2
    mdel(s, "/a/b")  # 3
    mset(s, "/a", b"file")  # 4
    mset(s, "/a", b"file2")  # 5
    mdel(s, "/a")  # 6
    assert s.get("/a/b", rev=1) == (b"1", 1)
    assert s.get("/a/b", rev=2) == (b"2", 2)
    assert s.get("/a/b", rev=3) == (b"", 0)
    assert s.stat("/a", rev=2) == (1, -2)
    assert s.stat("/a", rev=3) == (0, 0)
    assert s.stat("/a", rev=4) == (4, 4)
    assert s.get("/a", rev=5) == (b"file2", 5)
    with pytest.raises(errors.IsDir):
        s.get("/a", rev=2)
    assert s.getdir("/", rev=2) == ["a"]
    assert s.getdir("/", rev=3) == []
    assert s.getdir("/", rev=4) == ["a"]
    with pytest.raises(errors.NotDir):
        s.getdir("/a", rev=4)
    with pytest.raises(errors.NotDir):
        s.getdir("/a/b", rev=4)
    assert s.getdir("/a", rev=1) == ["b"]
    with pytest.raises(errors.NoEnt):
        s.getdir("/a", rev=6)
    assert s.get("/a/b", rev=4) == (b"", 0)  # through a file


def test_read_rev_checks() -> None:
    s = Store(hist=3)
    for i in range(5):
        mset(s, "/a", str(i).encode())
    assert s.rev == 5
    assert s.oldest == 3
    assert s.get("/a", rev=3) == (b"2", 3)
    for bad in (0, 1, 2):
        with pytest.raises(errors.TooLate):
            s.get("/a", rev=bad)
        with pytest.raises(errors.TooLate):
            s.stat("/a", rev=bad)
        with pytest.raises(errors.TooLate):
            s.getdir("/", rev=bad)
        with pytest.raises(errors.TooLate):
            s.walk("/**", rev=bad)
    with pytest.raises(errors.BadRequest):
        s.get("/a", rev=-1)
    with pytest.raises(ValueError):
        s.get("/a", rev=6)  # the node must wait instead
    # rev 0 is TooLate even on an empty store
    with pytest.raises(errors.TooLate):
        Store().get("/a", rev=0)


def test_window_slides_by_hist() -> None:
    s = Store(hist=10)
    for i in range(1, 26):
        mset(s, f"/k{i % 4}", str(i).encode())
        assert s.oldest == max(1, i - 10 + 1)
        for r in range(s.oldest, i + 1):
            assert s.get(f"/k{r % 4}", rev=r) == (str(r).encode(), r)


def test_history_is_trimmed_not_leaked() -> None:
    s = Store(hist=10)
    for i in range(3000):
        mset(s, f"/d{i % 37}/f{i}", b"x" * 10)
        if i % 3 == 0:
            mdel(s, f"/d{i % 37}/f{i}")
    assert len(s._events) == 10
    assert len(s._fhist) <= 10
    assert sum(len(h.revs) for h in s._fhist.values()) == 9
    assert sum(len(h.revs) for h in s._dhist.values()) <= 9 * 2


def test_hist_bytes_budget() -> None:
    budget = 20_000
    s = Store(hist=2000, hist_bytes=budget)
    big = b"x" * 4000
    for i in range(100):
        mset(s, "/big", big + str(i).encode())
        assert s.history_bytes <= budget or s.oldest == s.rev
    assert s.oldest > 90  # only a handful of 4 kB versions fit
    assert s.get("/big")[1] == 100
    r = s.oldest
    assert s.get("/big", rev=r) == (big + str(r - 1).encode(), r)
    with pytest.raises(errors.TooLate):
        s.get("/big", rev=r - 1)
    # A budget below one event keeps only the current rev readable.
    t = Store(hist_bytes=0)
    mset(t, "/a")
    mset(t, "/a")
    assert t.oldest == t.rev == 2


def test_events_from() -> None:
    s = Store(hist=4)
    assert s.events_from(1) == []
    with pytest.raises(errors.TooLate):
        s.events_from(0)
    mset(s, "/a", b"1")
    mset(s, "/b", b"2")
    mdel(s, "/a")
    assert s.events_from(1) == [
        Event(1, "/a", b"1", FLAG_SET),
        Event(2, "/b", b"2", FLAG_SET),
        Event(3, "/a", None, FLAG_DEL),
    ]
    assert [e.rev for e in s.events_from(3)] == [3]
    assert s.events_from(4) == []
    assert s.events_from(100) == []
    for _ in range(3):
        mset(s, "/c")
    assert s.oldest == 3
    assert [e.rev for e in s.events_from(3)] == [3, 4, 5, 6]
    with pytest.raises(errors.TooLate):
        s.events_from(2)


# ---- iter_files and snapshots ----


def test_iter_files() -> None:
    s = Store()
    mset(s, "/b", b"1")
    mset(s, "/a/x", b"2")
    mset(s, "/a-y", b"3")
    it = s.iter_files()
    mdel(s, "/b")  # applied while iterating: the iterator stays at rev 3
    mset(s, "/a/x", b"changed")
    assert list(it) == [("/a-y", 3, b"3"), ("/a/x", 2, b"2"), ("/b", 1, b"1")]
    assert list(s.iter_files(2)) == [("/a/x", 2, b"2"), ("/b", 1, b"1")]
    assert list(s.iter_files()) == [("/a-y", 3, b"3"), ("/a/x", 5, b"changed")]
    with pytest.raises(errors.TooLate):
        s.iter_files(0)
    t = Store(hist=2)
    mset(t, "/a")
    mset(t, "/a")
    it = t.iter_files(1)
    mset(t, "/a")
    mset(t, "/a")  # rev 1 leaves the window: the frozen files stay readable
    assert t.oldest > 1
    assert list(it) == [("/a", 1, b"v")]


def test_frozen_batches_sort_like_paths_and_step_in_bounded_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_mod, "_SORT_RUN", 7)
    s = Store()
    names = [f"/d{i % 5}/{'-.x_'[i % 4]}{i * 7919 % 1000}" for i in range(200)]
    names += ["/a", "/a-b", "/a.b/c", "/a0"]  # '-' and '.' sort before '/' and digits
    for p in names:
        mset(s, p, p.encode())
    tree = s.freeze()
    steps = list(tree.batches(size=10))
    runs = -(-len(set(names)) // 7)
    assert all(b == [] for b in steps[:runs])  # one sorted run per step
    assert all(0 < len(b) <= 10 for b in steps[runs:])
    flat = [p for b in steps for p, _, _ in b]
    assert flat == sorted(set(names))
    assert s.freeze().files == tree.files


def every_read(s: Store) -> dict:
    """Everything readable from `s`, at every rev of its window."""
    out: dict = {"rev": s.rev, "oldest": s.oldest}
    for r in [None, *range(s.oldest, s.rev + 1)]:
        files = list(s.iter_files(r)) if s.rev else []
        out[("files", r)] = files
        out[("walk", r)] = s.walk("/**", rev=r)
        dirs = {"/"}
        for p, _, _ in files:
            while p != "/":
                p = p.rsplit("/", 1)[0] or "/"
                dirs.add(p)
        for d in sorted(dirs):
            out[("dir", d, r)] = s.getdir(d, rev=r)
            out[("stat", d, r)] = s.stat(d, rev=r)
    if s.rev:
        out["events"] = s.events_from(s.oldest)
    return out


def test_snapshot_roundtrip() -> None:
    s = Store(hist=5)
    for i in range(12):
        mset(s, f"/d{i % 3}/f{i % 4}", bytes([i, 0, 255]) + b"\xff\xfe")
        if i % 5 == 0:
            mdel(s, f"/d{i % 3}/f{i % 4}")
    snap = orjson.loads(orjson.dumps(s.snapshot()))
    t = Store.restore(snap, hist=5)
    assert every_read(t) == every_read(s)
    assert t.history_bytes == s.history_bytes
    # Both go on identically, trimming included.
    for st in (s, t):
        mset(st, "/d0/f0", b"more")
        mdel(st, "/d1/f1")
    assert every_read(t) == every_read(s)
    assert t.snapshot() == s.snapshot()


def test_snapshot_of_empty_store() -> None:
    s = Store()
    t = Store.restore(orjson.loads(orjson.dumps(s.snapshot())))
    assert t.rev == 0 and t.oldest == 1
    assert t.getdir("/") == []
    assert mset(t, "/a").rev == 1


def test_restore_with_smaller_hist_trims() -> None:
    s = Store(hist=10)
    for i in range(10):
        mset(s, "/a", str(i).encode())
    t = Store.restore(s.snapshot(), hist=3)
    assert t.oldest == 8
    assert t.get("/a", rev=8) == (b"7", 8)
    with pytest.raises(errors.TooLate):
        t.get("/a", rev=7)


def test_restore_rejects_bad_snapshots() -> None:
    s = Store()
    mset(s, "/a")
    snap = s.snapshot()
    with pytest.raises(ValueError):
        Store.restore({**snap, "v": 99})
    with pytest.raises(ValueError):
        Store.restore({**snap, "events": []})
    with pytest.raises(ValueError):
        Store.restore({**snap, "rev": 5})


def test_a_walk_is_small_by_the_work_it_takes_not_only_by_its_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`walk_small` answers at once only what costs a few ms to gather: few
    candidates, and few names read to find them (`/*/x*` matching nothing
    may still read every name of the tree); the rest goes stepped."""
    monkeypatch.setattr(store_mod, "_WALK_CAP", 10)
    s = Store()
    for i in range(30):
        mset(s, f"/d{i % 2}/f{i}")
    mset(s, "/small/a")
    assert s.walk_small("/small/*") == [("/small/a", 31, b"v")]
    assert s.walk_small("/d1/f1") == [("/d1/f1", 2, b"v")]  # a literal path
    assert s.walk_small("/d*/x*") is None  # reads 30 names to find none
    assert s.walk_small("/**") is None  # 31 candidates
    assert s.walk("/d*/x*") == [] and len(s.walk("/**")) == 31
