"""The tree of files, its revs, its history window and its events. Pure.

Layout, chosen so that current reads and writes cost a dict lookup or a walk
up the path, and history costs memory only for what changed in the window:

- `_files`: path -> (value, file_rev) for every file now; `_dirs`: dir path ->
  set of child names for every directory now (`/` always).
- `_fhist`: path -> _Versions of the file's *previous* states: entry (R, old)
  means "before rev R the file was `old`" ((value, rev), or None: absent).
  The state at rev r is the `old` of the first entry with R > r, or the
  current state when there is none.
- `_dhist`: dir path -> _Versions of child-set changes: (R, (name, added,
  count_before)). Counts give existence at an old rev by bisection; names
  undone backwards from the current set give an old listing.
- `_events`: the event of every rev in [oldest, rev], contiguous.

When rev `o` stops being readable, entries with R <= new oldest are dropped:
the event at that rev names the one path (and its chain of ancestors) whose
entries carry that R, so trimming is O(depth) per rev.

History bytes (for `hist_bytes`): per rev in the window, `_EVENT_COST` +
len(path) for the event, plus the length of the value the change superseded
(a value now held only by history). The current tree is not counted.
"""

from __future__ import annotations

import base64
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from doozer import errors
from doozer.mutation import CLOBBER, DEL, NOP, SET, Mutation
from doozer.paths import check_path, compile_glob, glob_prefix, is_literal, under, valid_path

FLAG_SET = 4
FLAG_DEL = 8

DIR_REV = -2
DEFAULT_HIST = 2000
SNAPSHOT_VERSION = 1

# Rough per-event overhead in bytes (Event object, deque slot, history entries).
_EVENT_COST = 160

_MISSING: tuple[bytes, int] = (b"", 0)


@dataclass(slots=True)
class Event:
    """The change made at one rev."""

    rev: int
    path: str
    value: bytes | None  # None: deleted
    flags: int  # FLAG_SET or FLAG_DEL


@dataclass(slots=True)
class Applied:
    """The outcome of applying one mutation."""

    rev: int  # the new rev on success; the unchanged store rev otherwise (and for NOP)
    err: str | None = None  # REV_MISMATCH, ISDIR, NOTDIR (BAD_PATH for an invalid path)
    detail: str = ""
    event: Event | None = None  # the change, if the mutation consumed a rev


class _Versions:
    """Changes of one path within the window, in rev order."""

    __slots__ = ("olds", "revs")

    def __init__(self) -> None:
        self.revs: list[int] = []
        self.olds: list = []


def _parent(p: str) -> str:
    i = p.rfind("/")
    return p[:i] if i else "/"


def _check_range(offset: int, limit: int | None) -> None:
    if offset < 0 or (limit is not None and limit < 0):
        raise errors.RangeError_(None, "negative offset or limit")


def _page(items: list, offset: int, limit: int | None) -> list:
    # Always a new list: `items` may be a cached listing.
    if limit is None:
        return items[offset:]
    return items[offset : offset + limit]


class Store:
    """The doozer tree with per-file revs, a global rev and a history window.

    `apply` is the only mutator. Reads take `rev=None` (current) or a rev in
    [oldest, rev]; older: `TooLate`; rev 0: `TooLate`; negative: `BadRequest`;
    a rev above `rev` is a caller bug (`ValueError`): the node waits first.
    """

    __slots__ = (
        "_dhist",
        "_dirs",
        "_events",
        "_fhist",
        "_files",
        "_hist_bytes",
        "_sorted",
        "hist",
        "hist_bytes",
        "oldest",
        "rev",
    )

    def __init__(self, hist: int = DEFAULT_HIST, hist_bytes: int | None = None) -> None:
        if hist < 1:
            raise ValueError("hist must be at least 1")
        self.hist = hist
        self.hist_bytes = hist_bytes
        self.rev = 0
        # Oldest readable rev. Exceeds `rev` only while the store is empty (rev 0).
        self.oldest = 1
        self._files: dict[str, tuple[bytes, int]] = {}
        self._dirs: dict[str, set[str]] = {"/": set()}
        self._sorted: dict[str, list[str]] = {}  # dir -> sorted names, dropped on change
        self._fhist: dict[str, _Versions] = {}
        self._dhist: dict[str, _Versions] = {}
        self._events: deque[Event] = deque()
        self._hist_bytes = 0

    # ---- writes ----

    def apply(self, m: Mutation) -> Applied:
        """Apply one decided mutation. Deterministic; never raises for a bad mutation."""
        op = m.op
        if op == SET:
            return self._set(m.path, m.rev, m.value)
        if op == DEL:
            return self._del(m.path, m.rev)
        if op == NOP:
            return Applied(self.rev)
        raise ValueError(f"unknown mutation op {op!r}")

    def _set(self, p: str, cond: int, value: bytes) -> Applied:
        files = self._files
        cur = files.get(p)
        if cur is not None:
            if cond != CLOBBER and cond < cur[1]:
                return Applied(self.rev, errors.REV_MISMATCH, f"{p} is at rev {cur[1]}")
        else:
            if not valid_path(p):
                return Applied(self.rev, errors.BAD_PATH, f"bad path {p!r}")
            if p in self._dirs:
                return Applied(self.rev, errors.ISDIR, f"{p} is a directory")
            f = self._file_ancestor(p)
            if f is not None:
                return Applied(self.rev, errors.NOTDIR, f"{f} is a file")
        rev = self.rev + 1
        self.rev = rev
        files[p] = (value, rev)
        oldest = self.oldest
        # History holds the states before revs > oldest (only rev 1 of a fresh store is not).
        if rev > oldest:
            h = self._fhist.get(p)
            if h is None:
                h = self._fhist[p] = _Versions()
            h.revs.append(rev)
            h.olds.append(cur)
        if cur is None:
            self._link(p, rev, rev > oldest)
            self._hist_bytes += _EVENT_COST + len(p)
        else:
            self._hist_bytes += _EVENT_COST + len(p) + len(cur[0])
        ev = Event(rev, p, value, FLAG_SET)
        self._events.append(ev)
        if rev - oldest >= self.hist or self.hist_bytes is not None:
            self._trim()
        return Applied(rev, None, "", ev)

    def _del(self, p: str, cond: int) -> Applied:
        files = self._files
        cur = files.get(p)
        if cur is None:
            if not valid_path(p):
                return Applied(self.rev, errors.BAD_PATH, f"bad path {p!r}")
            if p in self._dirs:
                return Applied(self.rev, errors.ISDIR, f"{p} is a directory")
            f = self._file_ancestor(p)
            if f is not None:
                return Applied(self.rev, errors.NOTDIR, f"{f} is a file")
            # Nothing to delete, and any condition >= 0 accepts rev 0.
            return Applied(self.rev)
        if cond != CLOBBER and cond < cur[1]:
            return Applied(self.rev, errors.REV_MISMATCH, f"{p} is at rev {cur[1]}")
        rev = self.rev + 1
        self.rev = rev
        del files[p]
        # A DEL is never rev 1, so its history is always recorded.
        self._unlink(p, rev)
        h = self._fhist.get(p)
        if h is None:
            h = self._fhist[p] = _Versions()
        h.revs.append(rev)
        h.olds.append(cur)
        ev = Event(rev, p, None, FLAG_DEL)
        self._events.append(ev)
        self._hist_bytes += _EVENT_COST + len(p) + len(cur[0])
        if rev - self.oldest >= self.hist or self.hist_bytes is not None:
            self._trim()
        return Applied(rev, None, "", ev)

    def _file_ancestor(self, p: str) -> str | None:
        """The first ancestor of missing `p` that is a file, if any (current tree)."""
        dirs = self._dirs
        files = self._files
        d = p
        while True:
            d = _parent(d)
            if d in dirs:
                return None
            if d in files:
                return d

    def _dir_change(self, d: str, name: str, added: bool, before: int, rev: int) -> None:
        h = self._dhist.get(d)
        if h is None:
            h = self._dhist[d] = _Versions()
        h.revs.append(rev)
        h.olds.append((name, added, before))

    def _link(self, p: str, rev: int, record: bool = True) -> None:
        """Enter new file `p` in its directory, creating missing directories."""
        dirs = self._dirs
        cache = self._sorted
        while True:
            i = p.rfind("/")
            d = p[:i] if i else "/"
            name = p[i + 1 :]
            kids = dirs.get(d)
            if cache:
                cache.pop(d, None)
            if kids is not None:
                if record:
                    self._dir_change(d, name, True, len(kids), rev)
                kids.add(name)
                return
            dirs[d] = {name}
            if record:
                self._dir_change(d, name, True, 0, rev)
            p = d

    def _unlink(self, p: str, rev: int) -> None:
        """Remove `p` from its directory, removing directories left empty (never `/`)."""
        dirs = self._dirs
        while True:
            i = p.rfind("/")
            d = p[:i] if i else "/"
            name = p[i + 1 :]
            kids = dirs[d]
            self._sorted.pop(d, None)
            self._dir_change(d, name, False, len(kids), rev)
            kids.discard(name)
            if kids or d == "/":
                return
            del dirs[d]
            p = d

    # ---- history window ----

    def _trim(self) -> None:
        while self.rev - self.oldest >= self.hist:
            self._drop_oldest()
        budget = self.hist_bytes
        if budget is not None:
            while self._hist_bytes > budget and self.oldest < self.rev:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        """Make oldest + 1 (<= rev) the oldest readable rev; drop what only older reads need."""
        events = self._events
        # events[0] is at rev `oldest`; the next event's history entries (the states
        # before it) are needed by no read at oldest + 1 or later.
        gone = events.popleft()
        ev = events[0]
        r = ev.rev
        p = ev.path
        fhist = self._fhist
        h = fhist[p]
        del h.revs[0]
        old = h.olds.pop(0)
        if not h.revs:
            del fhist[p]
        n = _EVENT_COST + len(gone.path)
        if old is not None:
            n += len(old[0])
        self._hist_bytes -= n
        self.oldest = r
        # The directory changes of rev r form a chain from p's parent upward.
        dhist = self._dhist
        while dhist and p != "/":
            i = p.rfind("/")
            p = p[:i] if i else "/"
            dh = dhist.get(p)
            if dh is None or dh.revs[0] != r:
                break
            del dh.revs[0]
            del dh.olds[0]
            if not dh.revs:
                del dhist[p]

    def _at(self, rev: int | None) -> int | None:
        """Validate a read rev; None when the read is of the current tree."""
        if rev is None or (rev == self.rev and rev):
            return None
        if rev < 0:
            raise errors.BadRequest(None, f"negative rev {rev}")
        if rev > self.rev:
            raise ValueError(f"rev {rev} is ahead of the store (at {self.rev})")
        if rev < self.oldest or rev == 0:
            raise errors.TooLate(
                None, f"rev {rev} is older than the history (oldest {self.oldest})"
            )
        return rev

    def _file_at(self, p: str, rev: int) -> tuple[bytes, int] | None:
        h = self._fhist.get(p)
        if h is not None and h.revs[-1] > rev:
            return h.olds[bisect_right(h.revs, rev)]
        return self._files.get(p)

    def _dir_count_at(self, d: str, rev: int) -> int:
        """Number of entries of `d` at `rev`; 0: not a directory (unless `/`)."""
        h = self._dhist.get(d)
        if h is not None and h.revs[-1] > rev:
            return h.olds[bisect_right(h.revs, rev)][2]
        kids = self._dirs.get(d)
        return len(kids) if kids is not None else 0

    def _names_at(self, d: str, rev: int) -> set[str]:
        kids = set(self._dirs.get(d, ()))
        h = self._dhist.get(d)
        if h is not None and h.revs[-1] > rev:
            i = bisect_right(h.revs, rev)
            for name, added, _ in reversed(h.olds[i:]):
                if added:
                    kids.discard(name)
                else:
                    kids.add(name)
        return kids

    def _is_dir_at(self, d: str, rev: int) -> bool:
        return d == "/" or self._dir_count_at(d, rev) > 0

    def _notdir_at(self, p: str, rev: int | None) -> str | None:
        """The first ancestor of `p` that is a file at `rev`, if any."""
        d = p
        while d != "/":
            d = _parent(d)
            if rev is None:
                if d in self._dirs:
                    return None
                if d in self._files:
                    return d
            else:
                if self._is_dir_at(d, rev):
                    return None
                if self._file_at(d, rev) is not None:
                    return d
        return None

    # ---- reads ----

    def get(self, path: str, rev: int | None = None) -> tuple[bytes, int]:
        """(value, file_rev); missing or through a file: (b"", 0); a directory: IsDir."""
        r = self._at(rev)
        if r is None:
            st = self._files.get(path)
            if st is not None:
                return st
            check_path(path)
            if path in self._dirs:
                raise errors.IsDir(None, f"{path} is a directory")
            return _MISSING
        st = self._file_at(path, r)
        if st is not None:
            return st
        check_path(path)
        if self._is_dir_at(path, r):
            raise errors.IsDir(None, f"{path} is a directory")
        return _MISSING

    def stat(self, path: str, rev: int | None = None) -> tuple[int, int]:
        """File: (length, file_rev); directory: (entry count, -2); missing: (0, 0)."""
        r = self._at(rev)
        if r is None:
            st = self._files.get(path)
            if st is not None:
                return len(st[0]), st[1]
            check_path(path)
            kids = self._dirs.get(path)
            if kids is not None:
                return len(kids), DIR_REV
            return 0, 0
        st = self._file_at(path, r)
        if st is not None:
            return len(st[0]), st[1]
        check_path(path)
        n = self._dir_count_at(path, r)
        if n or path == "/":
            return n, DIR_REV
        return 0, 0

    def getdir(
        self, path: str, rev: int | None = None, offset: int = 0, limit: int | None = None
    ) -> list[str]:
        """Entry names of directory `path`, sorted; NoEnt if missing, NotDir if a file
        or through a file."""
        r = self._at(rev)
        check_path(path)
        _check_range(offset, limit)
        if r is None:
            names = self._sorted.get(path)
            if names is None:
                kids = self._dirs.get(path)
                if kids is not None:
                    names = self._sorted[path] = sorted(kids)
            if names is not None:
                return _page(names, offset, limit)
            is_file = path in self._files
        else:
            if self._is_dir_at(path, r):
                return _page(sorted(self._names_at(path, r)), offset, limit)
            is_file = self._file_at(path, r) is not None
        if is_file:
            raise errors.NotDir(None, f"{path} is a file")
        f = self._notdir_at(path, r)
        if f is not None:
            raise errors.NotDir(None, f"{f} is a file")
        raise errors.NoEnt(None, f"{path} does not exist")

    def walk(
        self, glob: str, rev: int | None = None, offset: int = 0, limit: int | None = None
    ) -> list[tuple[str, int, bytes]]:
        """Every file matching `glob`, sorted by path: (path, file_rev, value)."""
        r = self._at(rev)
        match = compile_glob(glob)
        _check_range(offset, limit)
        prefix = glob_prefix(glob)
        if is_literal(glob):
            paths = [glob]
        else:
            paths = [p for p in self._candidates(prefix, r) if match(p)]
            paths.sort()
        out = []
        if r is None:
            files = self._files
            for p in paths:
                st = files.get(p)
                if st is not None:
                    out.append((p, st[1], st[0]))
        else:
            for p in paths:
                st = self._file_at(p, r)
                if st is not None:
                    out.append((p, st[1], st[0]))
        return _page(out, offset, limit)

    def _candidates(self, prefix: str, rev: int | None) -> Iterator[str]:
        """Paths that may be files under `prefix` at `rev` (a superset, unordered)."""
        if prefix == "/":
            yield from self._files
        elif prefix in self._files:
            yield prefix
        elif prefix in self._dirs:
            yield from self._subtree(prefix)
        if rev is not None:
            files = self._files
            for p in self._fhist:
                if p not in files and under(p, prefix):
                    yield p

    def _subtree(self, d: str) -> Iterator[str]:
        dirs = self._dirs
        files = self._files
        stack = [d]
        while stack:
            d = stack.pop()
            base = d if d != "/" else ""
            for name in dirs[d]:
                p = f"{base}/{name}"
                if p in files:
                    yield p
                if p in dirs:
                    stack.append(p)

    def events_from(self, rev: int) -> list[Event]:
        """Every event with event.rev >= `rev` (empty if `rev` > the store's rev);
        TooLate if events from `rev` on are no longer all held."""
        if rev > self.rev:
            return []
        events = self._events
        if not events or rev < events[0].rev:
            raise errors.TooLate(
                None, f"rev {rev} is older than the history (oldest {self.oldest})"
            )
        return list(islice(events, rev - events[0].rev, None))

    def iter_files(self, rev: int | None = None) -> Iterator[tuple[str, int, bytes]]:
        """Every file at `rev` (default: the current rev, fixed at the call), sorted by
        path, as (path, file_rev, value). Stays consistent if mutations are applied
        between items, as long as `rev` stays in the window (TooLate otherwise)."""
        if rev is None:
            rev = self.rev
        else:
            self._at(rev)
        paths = set(self._files)
        paths.update(self._fhist)
        return self._iter_files(sorted(paths), rev)

    def _iter_files(self, paths: list[str], rev: int) -> Iterator[tuple[str, int, bytes]]:
        for p in paths:
            if rev < self.oldest and rev:
                raise errors.TooLate(None, f"rev {rev} fell out of the history")
            st = self._file_at(p, rev)
            if st is not None:
                yield p, st[1], st[0]

    @property
    def history_bytes(self) -> int:
        """Bytes held only by history, as counted against `hist_bytes`."""
        return self._hist_bytes

    def __len__(self) -> int:
        """Number of files now."""
        return len(self._files)

    # ---- snapshots ----

    def snapshot(self) -> dict:
        """A JSON-able dict that `Store.restore` rebuilds this store from, history
        window included: the tree at the oldest readable rev and the events of every
        rev from there on. Values are standard base64 strings.

        {"v": 1, "rev": N, "oldest": o,
         "files": [[path, file_rev, value_b64], ...],   # tree at min(o, N), sorted
         "events": [[rev, path, value_b64 or None], ...]}  # revs o..N; None: delete
        """
        b64 = base64.b64encode
        files = []
        if self.rev:
            files = [[p, fr, b64(v).decode("ascii")] for p, fr, v in self.iter_files(self.oldest)]
        events = [
            [e.rev, e.path, None if e.value is None else b64(e.value).decode("ascii")]
            for e in self._events
        ]
        return {
            "v": SNAPSHOT_VERSION,
            "rev": self.rev,
            "oldest": self.oldest,
            "files": files,
            "events": events,
        }

    @classmethod
    def restore(cls, d: dict, hist: int = DEFAULT_HIST, hist_bytes: int | None = None) -> Store:
        """Rebuild a store from `snapshot()`. Reads in the snapshot's window answer as
        the original did (a smaller `hist` or `hist_bytes` trims the window)."""
        if d.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown snapshot version {d.get('v')!r}")
        s = cls(hist, hist_bytes)
        rev = int(d["rev"])
        oldest = int(d["oldest"])
        base = min(oldest, rev)
        b64d = base64.b64decode
        for p, fr, v in d["files"]:
            if not valid_path(p) or not 0 < fr <= base:
                raise ValueError(f"bad snapshot file entry {p!r}")
            if p in s._files or p in s._dirs or s._file_ancestor(p) is not None:
                raise ValueError(f"conflicting snapshot file entry {p!r}")
            s._files[p] = (b64d(v), fr)
            s._link(p, 0, record=False)
        s.rev = base
        if rev:
            s.oldest = oldest
            if not d["events"] or d["events"][0][0] != oldest:
                raise ValueError("snapshot lacks the event at its oldest rev")
        for er, p, v in d["events"]:
            if er <= base:
                if er != base or s._events:
                    raise ValueError(f"unexpected snapshot event at rev {er}")
                s._events.append(
                    Event(
                        er, p, None if v is None else b64d(v), FLAG_DEL if v is None else FLAG_SET
                    )
                )
                s._hist_bytes += _EVENT_COST + len(p)
                continue
            a = s._del(p, CLOBBER) if v is None else s._set(p, CLOBBER, b64d(v))
            if a.rev != er or a.event is None:
                raise ValueError(f"snapshot event at rev {er} does not replay")
        if s.rev != rev:
            raise ValueError(f"snapshot ends at rev {s.rev}, not {rev}")
        return s
