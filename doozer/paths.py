"""Paths and globs of the doozer tree.

A path is `/` or one or more `/name` components, a name being one or more
ASCII letters, digits, `.`, `-` or `_`. A glob is a path whose names may also
hold `?` (one character of a name), `*` (zero or more characters within one
name) and `**` (zero or more characters of any kind, `/` included).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from doozer import errors

_PATH_RE = re.compile(r"/|(?:/[A-Za-z0-9._-]+)+")
_GLOB_RE = re.compile(r"/|(?:/[A-Za-z0-9._?*-]+)+")
_WILD = frozenset("?*")

# Directories are implicit, each keyed by its whole path: a SET of a path
# `depth` names deep creates up to `depth` keys as long as it. Unbounded, one
# 80 KB path of 20,000 names took 370 MB on every node (a 4 MiB request line
# would take terabytes). Bounded so, no SET costs much more than the largest
# value: at most 64 x 4096 bytes of directory keys.
MAX_PATH = 4096  # bytes of a path or glob
MAX_DEPTH = 64  # names in a path

# Globs with more star tokens than this are matched by a bit-parallel NFA
# (time linear in the path) instead of `re`, whose backtracking is
# polynomial of degree = number of stars and could stall a node on a hostile
# WATCH glob.
_MAX_REGEX_STARS = 2
# With two stars `re` is quadratic: `/**a**ab` took 53 ms against a path of
# 4,000 characters (the NFA: ~1 ms). Such globs keep `re` for paths up to
# this long (the usual ones, where it is the faster) and the NFA past it.
_REGEX_PATH_MAX = 256

# Token kinds of a compiled glob.
_LIT = 0
_ONE = 1  # ?
_STAR = 2  # *
_STARSTAR = 3  # **


def valid_path(p: str) -> bool:
    """True if `p` is a well-formed path (of any size: see `path_too_big`)."""
    return type(p) is str and _PATH_RE.fullmatch(p) is not None


def path_too_big(p: str) -> str | None:
    """Why a path or glob in a client's request is over MAX_PATH or MAX_DEPTH,
    or None. Checked on requests only: the store applies and restores what
    was decided (or saved) before the limits, whatever its size."""
    if len(p) > MAX_PATH:
        return f"path longer than {MAX_PATH} bytes: {shown(p)}"
    if p.count("/") > MAX_DEPTH:
        return f"path deeper than {MAX_DEPTH} names: {shown(p)}"
    return None


def shown(p: object) -> str:
    """`p` for an error message: a hostile path may be megabytes long."""
    r = repr(p)
    return r if len(r) <= 120 else f"{r[:100]}... ({len(r)} chars)"


def check_path(p: str) -> None:
    """Raise `errors.BadPath` unless `p` is a well-formed path."""
    if not valid_path(p):
        raise errors.BadPath(None, f"bad path {shown(p)}")


def valid_glob(g: str) -> bool:
    return type(g) is str and _GLOB_RE.fullmatch(g) is not None


def parent(p: str) -> str:
    """The directory holding `p` (a valid path other than `/`)."""
    i = p.rfind("/")
    return p[:i] if i else "/"


def _tokens(g: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    i, n = 0, len(g)
    while i < n:
        c = g[i]
        if c == "*":
            if i + 1 < n and g[i + 1] == "*":
                out.append((_STARSTAR, ""))
                i += 2
                continue
            out.append((_STAR, ""))
        elif c == "?":
            out.append((_ONE, ""))
        else:
            out.append((_LIT, c))
        i += 1
    return out


def _regex_matcher(toks: list[tuple[int, str]]) -> Callable[[str], bool]:
    parts = []
    for kind, c in toks:
        if kind == _LIT:
            parts.append(re.escape(c))
        elif kind == _ONE:
            parts.append("[^/]")
        elif kind == _STAR:
            parts.append("[^/]*")
        else:
            parts.append(".*")
    fullmatch = re.compile("".join(parts), re.DOTALL).fullmatch

    def match(path: str) -> bool:
        return fullmatch(path) is not None

    return match


def _nfa_matcher(toks: list[tuple[int, str]]) -> Callable[[str], bool]:
    # Bit i of the state: the first i tokens have matched the text read so far.
    m = len(toks)
    stars = 0
    for i, (kind, _) in enumerate(toks):
        if kind >= _STAR:
            stars |= 1 << i
    final = 1 << m
    masks: dict[str, tuple[int, int]] = {}

    def masks_for(c: str) -> tuple[int, int]:
        step = loop = 0
        for i, (kind, lit) in enumerate(toks):
            if kind == _LIT:
                if lit == c:
                    step |= 1 << i
            elif kind == _ONE:
                if c != "/":
                    step |= 1 << i
            elif kind == _STAR:
                if c != "/":
                    loop |= 1 << i
            else:
                loop |= 1 << i
        masks[c] = (step, loop)
        return step, loop

    def closure(s: int) -> int:
        # A star may match nothing: being before it is being after it.
        while True:
            t = s | ((s & stars) << 1)
            if t == s:
                return s
            s = t

    start = closure(1)

    def match(path: str) -> bool:
        s = start
        for c in path:
            mk = masks.get(c) or masks_for(c)
            s = closure(((s & mk[0]) << 1) | (s & mk[1]))
            if not s:
                return False
        return bool(s & final)

    return match


@lru_cache(maxsize=4096)
def compile_glob(g: str) -> Callable[[str], bool]:
    """A predicate telling whether a path matches glob `g`. Raises `errors.BadPath`."""
    if not valid_glob(g):
        raise errors.BadPath(None, f"bad glob {shown(g)}")
    toks = _tokens(g)
    nstars = sum(1 for kind, _ in toks if kind >= _STAR)
    if nstars <= 1:
        return _regex_matcher(toks)
    if nstars <= _MAX_REGEX_STARS:
        short, linear = _regex_matcher(toks), _nfa_matcher(toks)
        return lambda p: short(p) if len(p) <= _REGEX_PATH_MAX else linear(p)
    return _nfa_matcher(toks)


def name_matcher(name: str) -> Callable[[str], bool]:
    """A predicate telling whether one path name matches `name`, a glob's name
    without `**` (`*` and `?` never cross a `/`)."""
    match = compile_glob("/" + name)
    return lambda n: match("/" + n)


def is_literal(g: str) -> bool:
    """True if glob `g` has no wildcard (it matches only itself)."""
    return not _WILD.intersection(g)


def under(p: str, prefix: str) -> bool:
    """True if path `p` is `prefix` or lies beneath it."""
    if prefix == "/":
        return True
    return p == prefix or (p.startswith(prefix) and p[len(prefix)] == "/")
