"""The pure protocol layer: framing and validation."""

from __future__ import annotations

import orjson
import pytest

from doozer import errors
from doozer.mutation import SET, Mutation
from doozer.protocol import LineBuffer, ProtocolError, check_args, encode_value, parse


def feed_all(buf: LineBuffer, *chunks: bytes) -> list:
    out = []
    for c in chunks:
        out.extend(buf.feed(c))
    return out


def test_lines_split_across_chunks_and_crlf():
    b = LineBuffer(100)
    assert feed_all(b, b'{"a"', b":1}\r\n{}", b"\n") == [b'{"a":1}', b"{}"]


def test_long_line_is_reported_once_and_skipped():
    b = LineBuffer(10)
    out = feed_all(b, b"x" * 8, b"y" * 8, b"z" * 100, b"\n{}\n")
    assert out == [None, b"{}"]
    assert b.pending() == 0


def test_long_line_in_one_chunk():
    b = LineBuffer(10)
    assert feed_all(b, b"x" * 50 + b"\nok\n") == [None, b"ok"]


def err(line: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        req = parse(line)
        check_args(req)
    return e.value


@pytest.mark.parametrize(
    "line,code",
    [
        (b"nope", errors.BAD_REQUEST),
        (b"[1,2]", errors.BAD_REQUEST),
        (b'"str"', errors.BAD_REQUEST),
        (b'{"verb":1}', errors.BAD_REQUEST),
        (b'{"verb":"GET","path":5}', errors.BAD_REQUEST),
        (b'{"verb":"GET","path":"/a","rev":"1"}', errors.BAD_REQUEST),
        (b'{"verb":"GET","path":"/a","rev":true}', errors.BAD_REQUEST),
        (b'{"verb":"GET","path":"/a","rev":-1}', errors.BAD_REQUEST),
        (b'{"verb":"SET","path":"/a","value":"x","rev":-2}', errors.BAD_REQUEST),
        (b'{"verb":"GET","path":"/a","stale":1}', errors.BAD_REQUEST),
        (b'{"verb":"GET","path":"/a","timeout":"1"}', errors.BAD_REQUEST),
        (b'{"verb":"GET","path":"/a","timeout":-1}', errors.BAD_REQUEST),
        (b'{"verb":"GET","tag":[1]}', errors.BAD_REQUEST),
        (b'{"verb":"GET","tag":1.5}', errors.BAD_REQUEST),
        (b'{"verb":"SET","path":"/a","value":"x","value_b64":"eA=="}', errors.BAD_REQUEST),
        (b'{"verb":"SET","path":"/a","value_b64":"!!"}', errors.BAD_REQUEST),
        (b'{"verb":"CANCEL","other_tag":null}', errors.BAD_REQUEST),
        (b'{"verb":"FROB"}', errors.UNKNOWN_VERB),
        (b"{}", errors.MISSING_ARG),
        (b'{"verb":"GET"}', errors.MISSING_ARG),
        (b'{"verb":"SET","path":"/a"}', errors.MISSING_ARG),
        (b'{"verb":"WATCH","path":"/a"}', errors.MISSING_ARG),
        (b'{"verb":"WAIT"}', errors.MISSING_ARG),
        (b'{"verb":"CANCEL"}', errors.MISSING_ARG),
        (b'{"verb":"GET","path":"a"}', errors.BAD_PATH),
        (b'{"verb":"GET","path":"/a/"}', errors.BAD_PATH),
        (b'{"verb":"GET","path":"/a//b"}', errors.BAD_PATH),
        (b'{"verb":"GET","path":"/a b"}', errors.BAD_PATH),
        (b'{"verb":"GET","path":"/a*"}', errors.BAD_PATH),
        (b'{"verb":"WALK","path":"**"}', errors.BAD_PATH),
        (b'{"verb":"GETDIR","path":"/","offset":-1}', errors.RANGE),
        (b'{"verb":"WALK","path":"/**","limit":-1}', errors.RANGE),
    ],
)
def test_bad_requests(line, code):
    assert err(line).code == code


def test_paths_too_long_or_too_deep_are_refused_with_a_short_detail():
    """Directories are implicit and keyed by their whole path: one SET of a
    path 20,000 names deep took 370 MB on every node. Requests are held to
    MAX_PATH bytes and MAX_DEPTH names; the store itself still applies
    whatever was decided before the limits."""
    from doozer.paths import MAX_DEPTH, MAX_PATH
    from doozer.store import Store

    ok_deep = "/a" * MAX_DEPTH
    ok_long = "/" + "n" * (MAX_PATH - 1)
    for verb, p in (("SET", ok_deep), ("SET", ok_long), ("WALK", ok_deep)):
        check_args(parse(orjson.dumps({"verb": verb, "path": p, "value": ""})))
    for verb, p, why in (
        ("SET", ok_deep + "/a", "deeper"),
        ("GET", ok_long + "n", "longer"),
        ("WATCH", "/" + "*" * MAX_PATH, "longer"),
        ("SET", "/a" * 1_000_000, "longer"),
    ):
        e = err(orjson.dumps({"verb": verb, "path": p, "value": "", "tag": 1}))
        assert e.code == errors.BAD_PATH and why in e.detail, (verb, why, e.detail)
        assert len(e.detail) < 200
    s = Store()
    assert s.apply(Mutation(SET, ok_deep + "/a", -1, b"v")).err is None  # decided earlier


def test_tags_are_bounded_and_an_overlong_one_is_not_echoed():
    """A tag is held as long as its request (a WAIT may wait for ever, 4096 to
    a connection): 300 WAITs with 1 MB tags held 300 MB of a node."""
    from doozer.protocol import MAX_TAG

    ok = "t" * MAX_TAG
    assert parse(orjson.dumps({"verb": "REV", "tag": ok})).tag == ok
    e = err(orjson.dumps({"verb": "REV", "tag": ok + "t"}))
    assert e.code == errors.BAD_REQUEST and "tag longer" in e.detail
    assert not getattr(e, "has_tag", False)  # the answer carries no 4 KB echo
    e = err(orjson.dumps({"verb": "CANCEL", "other_tag": ok + "t"}))
    assert e.code == errors.BAD_REQUEST


def test_error_keeps_a_valid_tag():
    e = err(b'{"tag":"t","verb":"GET","path":7}')
    assert e.tag == "t" and e.has_tag


def test_value_limit():
    with pytest.raises(ProtocolError) as e:
        parse(b'{"verb":"SET","path":"/a","value":"' + b"x" * 11 + b'"}', max_value=10)
    assert e.value.code == errors.TOO_LARGE


def test_verb_case_insensitive_and_extra_fields_ignored():
    req = parse(b'{"verb":"gEt","path":"/a","color":"blue"}')
    check_args(req)
    assert req.verb == "GET"


def test_values_utf8_and_binary():
    assert parse(b'{"verb":"SET","path":"/a","value":"\\u00e9"}').value == "é".encode()
    assert parse(b'{"verb":"SET","path":"/a","value_b64":"/w=="}').value == b"\xff"
    r: dict = {}
    encode_value(r, b"\xff\x00")
    assert r == {"value_b64": "/wA="}
    r = {}
    encode_value(r, "é".encode())
    assert r == {"value": "é"}
