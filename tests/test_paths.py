"""Paths and globs: validation, matching against an independent reference, prefixes."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doozer import errors, paths


@pytest.mark.parametrize(
    "p",
    ["/", "/a", "/a/b", "/A-Z_0.9", "/ctl/cal/0", "/...", "/-", "/a/b/c/d/e/f"],
)
def test_valid_paths(p: str) -> None:
    assert paths.valid_path(p)
    paths.check_path(p)


@pytest.mark.parametrize(
    "p",
    ["", "a", "a/b", "//", "/a/", "/a//b", "/a b", "/é", "/a*", "/a?", "/a\n", "\n/a", "/a\\b", 5],
)
def test_invalid_paths(p: str) -> None:
    assert not paths.valid_path(p)
    with pytest.raises(errors.BadPath):
        paths.check_path(p)


def test_parent() -> None:
    assert paths.parent("/a") == "/"
    assert paths.parent("/a/b") == "/a"
    assert paths.parent("/a/b/c") == "/a/b"


SPEC_CASES = [
    ("/a/**", "/a/b", True),
    ("/a/**", "/a/b/c", True),
    ("/a/**", "/a", False),
    ("/a/**/c", "/a/b/c", True),
    ("/a/**/c", "/a/c", False),
    ("/a/**/c", "/a/b/d/c", True),
    ("/a/*", "/a/b", True),
    ("/a/*", "/a/b/c", False),
    ("/a/*", "/a", False),
    ("/a*", "/a", True),
    ("/a*", "/abc", True),
    ("/a*", "/ab/c", False),
    ("/a**", "/ab/c", True),
    ("/a**", "/a", True),
    ("/?", "/a", True),
    ("/?", "/", False),
    ("/?", "/ab", False),
    ("/a?c", "/abc", True),
    ("/a?c", "/a/c", False),
    ("/*/b", "/x/b", True),
    ("/*/b", "/b", False),
    ("/**", "/x", True),
    ("/**", "/x/y/z", True),
    ("/**", "/", True),  # zero characters after the slash
    ("/a.b", "/a.b", True),
    ("/a.b", "/axb", False),  # `.` is literal, not a regex dot
    ("/a-b", "/a-b", True),
    ("/", "/", True),
    ("/", "/a", False),
]


@pytest.mark.parametrize(("g", "p", "want"), SPEC_CASES)
def test_glob_cases(g: str, p: str, want: bool) -> None:
    assert paths.compile_glob(g)(p) is want
    toks = paths._tokens(g)
    # Both engines agree whichever one compile_glob picked.
    assert paths._regex_matcher(toks)(p) is want
    assert paths._nfa_matcher(toks)(p) is want


@pytest.mark.parametrize(
    "g", ["", "a", "*", "**", "/a/", "//", "/a//*", "/a b", "/[ab]", "/a\n", 7]
)
def test_bad_glob(g: str) -> None:
    with pytest.raises(errors.BadPath):
        paths.compile_glob(g)


def test_compile_glob_is_cached() -> None:
    assert paths.compile_glob("/x/*/y") is paths.compile_glob("/x/*/y")


def test_two_stars_on_a_long_path_use_the_linear_matcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """`re` backtracks quadratically with two stars: `/**a**ab` took 53 ms
    against a 4,000-character path. Long paths go to the NFA."""
    real = paths._regex_matcher

    def guarded(toks: list[tuple[int, str]]) -> Callable[[str], bool]:
        m = real(toks)

        def match(p: str) -> bool:
            assert len(p) <= paths._REGEX_PATH_MAX, "a long path went to the backtracking matcher"
            return m(p)

        return match

    monkeypatch.setattr(paths, "_regex_matcher", guarded)
    m = paths.compile_glob("/**q**qz")  # compiled nowhere else: not in the cache yet
    assert m("/" + "q" * 4000) is False
    assert m("/" + "q" * 4000 + "z") is True
    assert m("/qqz") is True and m("/q/q/z") is False


def test_many_stars_use_the_linear_matcher() -> None:
    # With backtracking this would take ~C(400, 9) steps; the NFA is linear.
    g = "/**a**a**a**a**a**a**a**a**b"
    m = paths.compile_glob(g)
    assert m("/" + "a" * 400) is False
    assert m("/" + "a" * 400 + "b") is True
    assert paths.compile_glob("/*a*a*a*a*a*a*a*b")("/" + "a" * 400) is False


def test_name_matcher_matches_one_name() -> None:
    m = paths.name_matcher("a*b?")
    assert m("ab_") and m("axxbc") and not m("ab") and not m("a/bc")
    assert paths.name_matcher("x")("x") and not paths.name_matcher("x")("xy")


def test_is_literal_and_under() -> None:
    assert paths.is_literal("/a/b")
    assert not paths.is_literal("/a/*")
    assert paths.under("/a/b", "/a")
    assert paths.under("/a", "/a")
    assert paths.under("/a", "/")
    assert not paths.under("/ab", "/a")
    assert not paths.under("/a", "/a/b")


# ---- property: both engines agree with a reference written differently ----


@cache
def ref_match(g: str, p: str) -> bool:
    """Recursive backtracking over the glob text."""
    if not g:
        return not p
    if g.startswith("**"):
        return any(ref_match(g[2:], p[i:]) for i in range(len(p) + 1))
    if g[0] == "*":
        i = 0
        while True:
            if ref_match(g[1:], p[i:]):
                return True
            if i == len(p) or p[i] == "/":
                return False
            i += 1
    if g[0] == "?":
        return bool(p) and p[0] != "/" and ref_match(g[1:], p[1:])
    return bool(p) and p[0] == g[0] and ref_match(g[1:], p[1:])


names = st.text(alphabet="ab.", min_size=1, max_size=3)
path_st = st.one_of(
    st.just("/"), st.lists(names, min_size=1, max_size=4).map(lambda ns: "/" + "/".join(ns))
)
glob_name = st.lists(st.sampled_from(["a", "b", ".", "?", "*", "**"]), min_size=1, max_size=4).map(
    "".join
)
glob_st = st.one_of(
    st.just("/"),
    st.lists(glob_name, min_size=1, max_size=4).map(lambda ns: "/" + "/".join(ns)),
)


@settings(max_examples=600, deadline=None)
@given(glob_st, path_st)
def test_glob_matches_reference(g: str, p: str) -> None:
    assert paths.valid_glob(g)
    want = ref_match(g, p)
    assert paths.compile_glob(g)(p) is want
    toks = paths._tokens(g)
    assert paths._regex_matcher(toks)(p) is want
    assert paths._nfa_matcher(toks)(p) is want
