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
import binascii
import heapq
import itertools
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

import orjson

from doozer import errors
from doozer.mutation import CLOBBER, DEL, NOP, SET, Mutation
from doozer.paths import check_path, compile_glob, is_literal, name_matcher, under, valid_path

FLAG_SET = 4
FLAG_DEL = 8

DIR_REV = -2
DEFAULT_HIST = 2000
SNAPSHOT_VERSION = 1

# Rough per-event overhead in bytes (Event object, deque slot, history entries).
_EVENT_COST = 160

_MISSING: tuple[bytes, int] = (b"", 0)


_T = TypeVar("_T")

_SORT_RUN = 4096  # keys sorted per step of a frozen walk: ~1.5 ms here
_WALK_CAP = 10_000  # WALK candidates gathered at once (a few ms); more go frozen
_ENCODE_BATCH = 500  # files b64-encoded per step of a snapshot: ~1 ms


def last(steps: Iterator[_T | None]) -> _T:
    """Run stepped work to its end at once: its final result."""
    out = deque(steps, maxlen=1)
    assert out and out[0] is not None
    return out[0]


class FrozenTree:
    """The files of a store at one rev (`Store.freeze`), never changed after."""

    __slots__ = ("files", "rev")

    def __init__(self, files: dict[str, tuple[bytes, int]], rev: int) -> None:
        self.files = files
        self.rev = rev

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, size: int = 1000) -> Iterator[list[tuple[str, int, bytes]]]:
        """Every file as (path, file_rev, value), sorted by path, `size` at a time,
        in bounded steps (see `sorted_batches`)."""
        files = self.files
        for keys in sorted_batches(files, size):
            yield [(p, (st := files[p])[1], st[0]) for p in keys]


def sorted_batches(keys: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    """`keys`, sorted, `size` at a time; each step costs a bounded amount of
    work: first one sorted run of keys per step (yielding an empty batch), then
    one batch per step, merged from the runs. So a million keys never stall a
    caller for more than a few ms. `keys` must not change meanwhile."""
    it = iter(keys)
    runs = []
    while run := sorted(islice(it, _SORT_RUN)):
        runs.append(run)
        yield []
    merged: Iterator[str] = heapq.merge(*runs) if len(runs) > 1 else iter(runs[0] if runs else ())
    while batch := list(islice(merged, size)):
        yield batch


def _matching(
    batches: Iterator[list[tuple[str, int, bytes]]], match: Callable[[str], bool]
) -> Iterator[list[tuple[str, int, bytes]]]:
    for batch in batches:
        yield [f for f in batch if match(f[0])]


def _paged(batches: Iterator[list[_T]], offset: int, limit: int | None) -> Iterator[list[_T]]:
    """`batches` from the `offset`-th item, at most `limit` items in all."""
    left = limit
    for batch in batches:
        if offset:
            skip = min(offset, len(batch))
            offset -= skip
            batch = batch[skip:]
        if left is not None:
            if len(batch) >= left:
                yield batch[:left]
                return
            left -= len(batch)
        yield batch


def _encode_snapshot(
    head: bytes, tree: FrozenTree, events: list[Event]
) -> Iterator[list[bytes] | None]:
    b64 = binascii.b2a_base64
    dumps = orjson.dumps
    parts = [head]
    sep = b""
    for batch in tree.batches(_ENCODE_BATCH):
        if batch:
            rows = [[p, fr, b64(v, newline=False).decode("ascii")] for p, fr, v in batch]
            parts.append(sep + dumps(rows)[1:-1])
            sep = b","
        yield None
    parts.append(b'],"events":[')
    sep = b""
    for k in range(0, len(events), _ENCODE_BATCH):
        erows = [
            [
                e.rev,
                e.path,
                None if e.value is None else b64(e.value, newline=False).decode("ascii"),
            ]
            for e in events[k : k + _ENCODE_BATCH]
        ]
        parts.append(sep + dumps(erows)[1:-1])
        sep = b","
        yield None
    parts.append(b"]}")
    yield parts


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
        return list(itertools.chain.from_iterable(self.getdir_batches(path, rev, offset, limit)))

    def getdir_batches(
        self, path: str, rev: int | None = None, offset: int = 0, limit: int | None = None
    ) -> Iterator[list[str]]:
        """`getdir` in sorted batches of bounded work each, as `walk_batches`:
        a directory of a million entries is copied at once (~20 ms) and sorted
        in steps."""
        page = self.getdir_small(path, rev, offset, limit)
        if page is not None:
            return iter([page])
        r = self._at(rev)
        names = set(self._dirs[path]) if r is None else self._names_at(path, r)
        return _paged(sorted_batches(names), offset, limit)

    def getdir_small(
        self, path: str, rev: int | None = None, offset: int = 0, limit: int | None = None
    ) -> list[str] | None:
        """`getdir`, if the directory has at most `_WALK_CAP` entries or its
        sorted listing is cached (one of the current tree, kept until the
        directory changes); else None (see `getdir_batches`)."""
        r = self._at(rev)
        check_path(path)
        _check_range(offset, limit)
        if r is None:
            names = self._sorted.get(path)
            if names is not None:
                return _page(names, offset, limit)
            kids = self._dirs.get(path)
            if kids is not None:
                if len(kids) > _WALK_CAP:
                    return None
                names = self._sorted[path] = sorted(kids)
                return _page(names, offset, limit)
            is_file = path in self._files
        else:
            if self._dir_count_at(path, r) > _WALK_CAP:
                return None
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
        return list(itertools.chain.from_iterable(self.walk_batches(glob, rev, offset, limit)))

    def walk_batches(
        self, glob: str, rev: int | None = None, offset: int = 0, limit: int | None = None
    ) -> Iterator[list[tuple[str, int, bytes]]]:
        """`walk` in sorted batches, each step of bounded work (see
        `FrozenTree.batches`; empty batches are pauses). The state is the one
        at this call, however late the steps run."""
        page = self.walk_small(glob, rev, offset, limit)
        if page is not None:
            return iter([page])
        steps = _matching(self.freeze(rev).batches(), compile_glob(glob))
        return _paged(steps, offset, limit)

    def walk_small(
        self, glob: str, rev: int | None = None, offset: int = 0, limit: int | None = None
    ) -> list[tuple[str, int, bytes]] | None:
        """`walk`, if it has at most `_WALK_CAP` candidates; else None (see
        `walk_batches`). Costs a few ms at most: candidates are gathered
        through the directories the glob names, so `/locks/*` costs what
        `/locks` holds, not what the tree holds, and the gathering stops
        past the cap."""
        r = self._at(rev)
        match = compile_glob(glob)
        _check_range(offset, limit)
        paths = []
        if is_literal(glob):
            paths.append(glob)
        else:
            work = 0
            for c in self._glob_candidates(glob, r):
                if isinstance(c, int):
                    work += c
                else:
                    paths.append(c)
                if len(paths) > _WALK_CAP or work > 2 * _WALK_CAP:
                    return None
        out = []
        for p in sorted(paths):
            st = self._files.get(p) if r is None else self._file_at(p, r)
            if st is not None and match(p):
                out.append((p, st[1], st[0]))
        return _page(out, offset, limit)

    def _glob_candidates(self, glob: str, rev: int | None) -> Iterator[str | int]:
        """Paths that may be files matching `glob` at `rev` (a superset, unordered),
        found by following the glob's names down the tree: a name without a
        wildcard is looked up, one with `*` or `?` filters a directory's
        entries, and from a name with `**` on every file below is a candidate.
        An int, before a directory's entries are filtered, is their number: the
        work about to be done, for the caller to stop first if that is too much
        (`/*/*/x*` may match nothing yet read a million names)."""
        names = glob.split("/")[1:]
        last = len(names) - 1
        stack = [("/", 0)]
        while stack:
            d, k = stack.pop()
            name = names[k]
            if "**" in name:
                yield from self._files_under(d, rev)
                continue
            base = d if d != "/" else ""
            if is_literal(name):
                kids: Iterable[str] = (name,)
            else:
                yield len(self._dirs.get(d, ())) if rev is None else self._dir_count_at(d, rev)
                m = name_matcher(name)
                kids = [n for n in self._names(d, rev) if m(n)]
            for n in kids:
                p = f"{base}/{n}"
                if k == last:
                    yield p
                elif (p in self._dirs) if rev is None else self._is_dir_at(p, rev):
                    stack.append((p, k + 1))

    def _names(self, d: str, rev: int | None) -> Iterable[str]:
        if rev is None:
            return self._dirs.get(d, ())
        return self._names_at(d, rev)

    def _files_under(self, d: str, rev: int | None) -> Iterator[str]:
        """Paths that may be files under directory `d` at `rev` (a superset)."""
        if d == "/":
            yield from self._files
        elif d in self._dirs:
            yield from self._subtree(d)
        if rev is not None:
            files = self._files
            for p in self._fhist:
                if p not in files and under(p, d):
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

    def freeze(self, rev: int | None = None) -> FrozenTree:
        """The files at `rev` (default: the current rev), copied so that they can
        be walked in small steps while the store moves on. TooLate if `rev` is
        older than the history."""
        if rev is None:
            rev = self.rev
        else:
            self._at(rev)
        # A dict copy shares the values: ~30 ms per million files here, where
        # sorting the live tree would stall the caller for most of a second.
        files = self._files.copy()
        for p, h in self._fhist.items():
            if h.revs[-1] > rev:
                st = h.olds[bisect_right(h.revs, rev)]
                if st is None:
                    files.pop(p, None)
                else:
                    files[p] = st
        return FrozenTree(files, rev)

    def iter_files(self, rev: int | None = None) -> Iterator[tuple[str, int, bytes]]:
        """Every file at `rev` (default: the current rev, fixed at the call), sorted by
        path, as (path, file_rev, value); unaffected by later mutations."""
        return itertools.chain.from_iterable(self.freeze(rev).batches())

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
        return orjson.loads(b"".join(last(self.snapshot_steps())))

    def snapshot_steps(self) -> Iterator[list[bytes] | None]:
        """`snapshot()` as JSON, in small steps: the state is frozen by this call,
        each step of the iterator costs a few ms at most and yields None, and the
        last yields the JSON in parts (joined, a million files would be copied
        whole once more). The store may change between steps."""
        tree = self.freeze(min(self.oldest, self.rev)) if self.rev else FrozenTree({}, 0)
        events = list(self._events)
        head = b'{"v":%d,"rev":%d,"oldest":%d,"files":[' % (SNAPSHOT_VERSION, self.rev, self.oldest)
        return _encode_snapshot(head, tree, events)

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
