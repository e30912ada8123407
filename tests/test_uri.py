from __future__ import annotations

import pytest

from doozer import uri


def test_parse_uri() -> None:
    assert uri.parse_uri("doozer:?ca=10.0.0.1:8046") == (["10.0.0.1:8046"], None)
    assert uri.parse_uri("doozer:?ca=a:1&ca=b:2&sk=s%2Bk") == (["a:1", "b:2"], "s+k")
    assert uri.parse_uri("doozer:?ca=a:1,b:2&cn=x") == (["a:1", "b:2"], None)
    assert uri.parse_uri("doozer:?sk=&ca=[::1]:8046") == (["[::1]:8046"], "")


@pytest.mark.parametrize(
    "bad",
    ["http://x", "doozer:", "doozer:?sk=x", "doozer:?ca=host", "doozer:?ca=h:0", "doozer:?ca"],
)
def test_parse_uri_rejects(bad: str) -> None:
    with pytest.raises(uri.BadURI):
        uri.parse_uri(bad)


def test_split_host_port() -> None:
    assert uri.split_host_port("127.0.0.1:8046") == ("127.0.0.1", 8046)
    assert uri.split_host_port("[::1]:9") == ("::1", 9)
    assert uri.split_host_port(":8046") == ("127.0.0.1", 8046)
    for bad in ("x", "x:", "x:y", "x:70000", "::1:80"):
        with pytest.raises(uri.BadURI):
            uri.split_host_port(bad)


def test_parse_accepts_lists_and_uris() -> None:
    assert uri.parse(" a:1, b:2 ") == (["a:1", "b:2"], None)
    assert uri.parse("doozer:?ca=a:1&sk=k") == (["a:1"], "k")
    with pytest.raises(uri.BadURI):
        uri.parse(",")


def test_resolve_order() -> None:
    env = {"DOOZER_URI": "doozer:?ca=e:1&sk=env"}
    assert uri.resolve(None, {}) == ([uri.DEFAULT_ADDR], None)
    assert uri.resolve([], env) == (["e:1"], "env")
    # -a wins over $DOOZER_URI; addresses from several -a are concatenated once each.
    assert uri.resolve(["a:1", "doozer:?ca=b:2&ca=a:1&sk=k"], env) == (["a:1", "b:2"], "k")
    assert uri.resolve(["a:1"], env) == (["a:1"], None)
    assert uri.resolve(["a:1"], {"DOOZER_SECRET": "s"}) == (["a:1"], "s")
    assert uri.resolve(["doozer:?ca=a:1&sk=k"], {"DOOZER_SECRET": "s"}) == (["a:1"], "k")
    assert uri.resolve(None, {"DOOZER_URI": "h:5"}) == (["h:5"], None)
