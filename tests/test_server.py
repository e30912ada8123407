"""Every verb and error code of protocol.md against a real node process."""

from __future__ import annotations

import base64
import contextlib
import itertools
import socket
import time

import pytest

from tests.nodeproc import NodeProc, Raw

_n = itertools.count()


def fresh(prefix: str = "t") -> str:
    return f"/test/{prefix}{next(_n)}"


@pytest.fixture
def c(node):
    with Raw(node.addr) as r:
        yield r


def test_set_get_and_revs(c):
    p = fresh()
    r1 = c.call({"tag": 1, "verb": "SET", "path": p, "value": "v1", "rev": 0})
    assert r1["tag"] == 1 and r1["rev"] > 0
    g = c.call({"tag": 2, "verb": "GET", "path": p})
    assert g == {"tag": 2, "value": "v1", "rev": r1["rev"], "snap_rev": g["snap_rev"]}
    assert g["snap_rev"] >= r1["rev"]
    mm = c.call({"tag": 3, "verb": "SET", "path": p, "value": "x", "rev": 0})
    assert mm["err_code"] == "REV_MISMATCH" and str(r1["rev"]) in mm["err_detail"]
    r2 = c.call({"verb": "SET", "path": p, "value": "v2", "rev": r1["rev"]})
    assert r2["rev"] == c.call({"verb": "REV"})["rev"]
    old = c.call({"verb": "GET", "path": p, "rev": r1["rev"]})
    assert old["value"] == "v1" and old["snap_rev"] == r1["rev"]
    r3 = c.call({"verb": "SET", "path": p, "value": "v3"})  # unconditional
    assert r3["rev"] == r2["rev"] + 1
    assert "tag" not in r3


def test_missing_file_and_paths_through_files(c):
    p = fresh()
    assert c.call({"verb": "GET", "path": p}) | {"snap_rev": 0} == {
        "value": "",
        "rev": 0,
        "snap_rev": 0,
    }
    c.call({"verb": "SET", "path": p, "value": "f"})
    g = c.call({"verb": "GET", "path": p + "/x"})
    assert g["rev"] == 0 and g["value"] == ""
    s = c.call({"verb": "STAT", "path": p + "/x"})
    assert (s["len"], s["rev"]) == (0, 0)
    assert c.call({"verb": "SET", "path": p + "/x", "value": "a"})["err_code"] == "NOTDIR"
    assert c.call({"verb": "DEL", "path": p + "/x"})["err_code"] == "NOTDIR"
    assert c.call({"verb": "GETDIR", "path": p + "/x"})["err_code"] == "NOTDIR"
    assert c.call({"verb": "GETDIR", "path": p})["err_code"] == "NOTDIR"


def test_directories(c):
    d = fresh("d")
    c.call({"verb": "SET", "path": d + "/b/c", "value": "1"})
    c.call({"verb": "SET", "path": d + "/a", "value": "22"})
    assert c.call({"verb": "GET", "path": d})["err_code"] == "ISDIR"
    assert c.call({"verb": "SET", "path": d, "value": "x"})["err_code"] == "ISDIR"
    assert c.call({"verb": "DEL", "path": d})["err_code"] == "ISDIR"
    st = c.call({"verb": "STAT", "path": d})
    assert (st["len"], st["rev"]) == (2, -2)
    st = c.call({"verb": "STAT", "path": d + "/a"})
    assert st["len"] == 2
    assert c.call({"verb": "GETDIR", "path": d})["entries"] == ["a", "b"]
    assert c.call({"verb": "GETDIR", "path": d, "offset": 1})["entries"] == ["b"]
    assert c.call({"verb": "GETDIR", "path": d, "limit": 1})["entries"] == ["a"]
    assert c.call({"verb": "GETDIR", "path": d, "limit": 0})["entries"] == []
    assert c.call({"verb": "GETDIR", "path": d, "offset": 9})["entries"] == []
    assert c.call({"verb": "GETDIR", "path": d + "/zz"})["err_code"] == "NOENT"
    # deleting the last file removes the directory
    c.call({"verb": "DEL", "path": d + "/b/c"})
    assert c.call({"verb": "GETDIR", "path": d + "/b"})["err_code"] == "NOENT"
    assert c.call({"verb": "GETDIR", "path": d})["entries"] == ["a"]


def test_del_rules(c):
    p = fresh()
    r = c.call({"verb": "SET", "path": p, "value": "x"})["rev"]
    assert c.call({"verb": "DEL", "path": p, "rev": r - 1})["err_code"] == "REV_MISMATCH"
    d = c.call({"verb": "DEL", "path": p, "rev": r})
    assert d["rev"] == r + 1
    # a missing file with an accepted rev: success, no rev consumed
    before = c.call({"verb": "REV"})["rev"]
    assert c.call({"verb": "DEL", "path": p, "rev": 0}) == {"rev": before}
    assert c.call({"verb": "REV"})["rev"] == before


def test_nop_is_a_barrier_and_consumes_no_rev(c):
    before = c.call({"verb": "REV"})["rev"]
    assert c.call({"verb": "NOP"})["rev"] == before
    assert c.call({"verb": "REV", "stale": True})["rev"] == before


def test_walk(c):
    d = fresh("w")
    for name, v in [("/a/x", "1"), ("/a/y/z", "2"), ("/b", "3")]:
        c.call({"verb": "SET", "path": d + name, "value": v})
    w = c.call({"verb": "WALK", "path": d + "/**"})
    assert [f["path"] for f in w["files"]] == [d + "/a/x", d + "/a/y/z", d + "/b"]
    assert [f["value"] for f in w["files"]] == ["1", "2", "3"]
    assert all(f["rev"] > 0 for f in w["files"])
    assert [f["path"] for f in c.call({"verb": "WALK", "path": d + "/*"})["files"]] == [d + "/b"]
    assert [f["path"] for f in c.call({"verb": "WALK", "path": d + "/a/?"})["files"]] == [
        d + "/a/x"
    ]
    pg = c.call({"verb": "WALK", "path": d + "/**", "offset": 1, "limit": 1})
    assert [f["path"] for f in pg["files"]] == [d + "/a/y/z"]


def test_binary_values(c):
    p = fresh()
    raw = bytes(range(256))
    c.call({"verb": "SET", "path": p, "value_b64": base64.b64encode(raw).decode()})
    g = c.call({"verb": "GET", "path": p})
    assert "value" not in g and base64.b64decode(g["value_b64"]) == raw


def test_history_too_late_and_future_rev(c):
    p = fresh()
    assert c.call({"verb": "GET", "path": p, "rev": 0})["err_code"] == "TOO_LATE"
    now = c.call({"verb": "REV"})["rev"]
    fut = c.call({"verb": "GET", "path": p, "rev": now + 1000, "timeout": 0.2})
    assert fut["err_code"] == "TIMEOUT"
    # a read at a future rev is answered when the rev arrives
    c.send({"tag": "f", "verb": "GET", "path": p, "rev": now + 1})
    c.send({"tag": "s", "verb": "SET", "path": p, "value": "later"})
    got = {r["tag"]: r for r in (c.recv(), c.recv())}
    assert got["f"]["value"] == "later"


def test_wait_and_watch(c):
    d = fresh("ww")
    c.send({"tag": "w", "verb": "WAIT", "path": d + "/**"})
    c.send({"tag": "s", "verb": "SET", "path": d + "/x", "value": "1"})
    got = {r["tag"]: r for r in (c.recv(), c.recv())}
    assert got["w"]["path"] == d + "/x" and got["w"]["flags"] == 4
    assert got["w"]["rev"] == got["s"]["rev"] and got["w"]["value"] == "1"
    r = got["s"]["rev"]
    # WAIT at a past rev is answered from history
    past = c.call({"verb": "WAIT", "path": d + "/*", "rev": r})
    assert past["rev"] == r
    # WATCH from a past rev replays, then follows live, in order
    c.send({"tag": "st", "verb": "WATCH", "path": d + "/*", "rev": r})
    first = c.recv()
    assert first["tag"] == "st" and first["rev"] == r
    c.send({"tag": "d", "verb": "DEL", "path": d + "/x"})
    got = [c.recv(), c.recv()]
    ev = next(g for g in got if g["tag"] == "st")
    assert ev["flags"] == 8 and ev["rev"] == r + 1
    # WATCH needs a tag; duplicate outstanding tag is refused
    assert c.call({"verb": "WATCH", "path": "/**"})["err_code"] == "MISSING_ARG"
    assert c.call({"tag": "st", "verb": "GET", "path": "/"})["err_code"] == "TAG_IN_USE"
    # CANCEL ends the stream with CANCELLED
    c.send({"tag": "c", "verb": "CANCEL", "other_tag": "st"})
    got = {r["tag"]: r for r in (c.recv(), c.recv())}
    assert got["st"]["err_code"] == "CANCELLED" and "err_code" not in got["c"]
    # the tag is free again; cancelling an unknown tag succeeds
    assert c.call({"tag": "st", "verb": "CANCEL", "other_tag": "nope"}) == {"tag": "st"}
    # WAIT with a timeout and no change
    t = c.call({"verb": "WAIT", "path": d + "/none", "timeout": 0.1})
    assert t["err_code"] == "TIMEOUT"


def test_wait_and_watch_too_late(c):
    assert c.call({"verb": "WAIT", "path": "/**", "rev": 0})["err_code"] == "TOO_LATE"
    assert c.call({"tag": 1, "verb": "WATCH", "path": "/**", "rev": 0})["err_code"] == "TOO_LATE"


def test_tags_are_echoed_exactly_and_pipelined_out_of_order(c):
    p = fresh()
    c.send({"tag": "1", "verb": "WAIT", "path": p})
    c.send({"tag": 1, "verb": "GET", "path": p})
    first = c.recv()
    assert first["tag"] == 1  # the GET overtook the WAIT
    c.send({"verb": "SET", "path": p, "value": "x"})
    got = [c.recv(), c.recv()]
    assert {type(g.get("tag")) for g in got} == {str, type(None)}


def test_pipelined_writes_apply_in_order(c):
    p = fresh()
    for i in range(50):
        c.send({"tag": i, "verb": "SET", "path": p, "value": str(i)})
    revs = {}
    for _ in range(50):
        r = c.recv()
        revs[r["tag"]] = r["rev"]
    assert [revs[i] for i in range(50)] == sorted(revs.values())
    assert c.call({"verb": "GET", "path": p})["value"] == "49"


def test_self(c, node):
    s = c.call({"verb": "SELF"})
    assert s["addr"] == node.addr and s["role"] == "leader" and s["leader"] == s["value"]


def test_ctl_written_at_start(c):
    s = c.call({"verb": "SELF"})
    me = s["value"]
    assert c.call({"verb": "GET", "path": "/ctl/name"})["value"] == "local"
    assert c.call({"verb": "GET", "path": "/ctl/cal/0"})["value"] == me
    assert c.call({"verb": "GET", "path": f"/ctl/node/{me}/addr"})["value"] == s["addr"]
    assert set(c.call({"verb": "GETDIR", "path": f"/ctl/node/{me}"})["entries"]) >= {
        "addr",
        "hostname",
        "version",
    }


def test_ctl_write_rules(c):
    me = c.call({"verb": "SELF"})["value"]
    assert c.call({"verb": "SET", "path": "/ctl/name", "value": "x"})["err_code"] == "PERMISSION"
    assert (
        c.call({"verb": "SET", "path": f"/ctl/node/{me}/addr", "value": "x"})["err_code"]
        == "PERMISSION"
    )
    assert c.call({"verb": "DEL", "path": "/ctl/cal/0"})["err_code"] == "PERMISSION"
    assert c.call({"verb": "SET", "path": "/ctl/cal/0", "value": ""})["err_code"] == "PERMISSION"
    assert (
        c.call({"verb": "SET", "path": "/ctl/cal/7", "value": "nobody"})["err_code"] == "PERMISSION"
    )
    r = c.call({"verb": "SET", "path": "/ctl/cal/7", "value": "", "rev": 0})
    assert "rev" in r, r
    assert "rev" in c.call({"verb": "DEL", "path": "/ctl/cal/7"})


def test_bad_input_keeps_connection(c):
    c.send(b"not json at all\n")
    assert c.recv()["err_code"] == "BAD_REQUEST"
    c.send(b"\x00\xff\xfe garbage \x80\n")
    assert c.recv()["err_code"] == "BAD_REQUEST"
    c.send(b'{"verb":"frob","tag":5}\n')
    assert c.recv() == {"tag": 5, "err_code": "UNKNOWN_VERB", "err_detail": "unknown verb 'frob'"}
    c.send(b'{"verb":"GET","path":"/x","tag":{"a":1}}\n')
    r = c.recv()
    assert r["err_code"] == "BAD_REQUEST" and "tag" not in r
    c.send(b"\n\r\n")  # blank lines are ignored
    assert c.call({"verb": "GET", "path": "bad"})["err_code"] == "BAD_PATH"
    assert (
        c.call({"verb": "SET", "path": "/ok", "value": "x", "value_b64": "eA=="})["err_code"]
        == "BAD_REQUEST"
    )
    assert c.call({"verb": "REV"})["rev"] > 0


def test_huge_line_then_normal_request(node):
    with Raw(node.addr) as r:
        big = b'{"verb":"SET","path":"/big","value":"' + b"x" * (5 << 20) + b'"}\n'
        r.send(big + b'{"verb":"REV","tag":2}\n')
        first = r.recv()
        assert first["err_code"] == "TOO_LARGE"
        assert r.recv()["tag"] == 2


def test_value_over_limit(c):
    r = c.call({"verb": "SET", "path": fresh(), "value": "x" * ((1 << 20) + 1)})
    assert r["err_code"] == "TOO_LARGE"


def test_max_value_fits(c):
    p = fresh()
    v = "y" * (1 << 20)
    assert "rev" in c.call({"verb": "SET", "path": p, "value": v})
    assert c.call({"verb": "GET", "path": p})["value"] == v


def test_abrupt_disconnects_do_not_hurt(node):
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", node.port))
        s.sendall(
            b'{"tag":1,"verb":"WATCH","path":"/**"}\n{"verb":"SET","path":"/ab","value":"1"}\n{"verb":"GE'
        )
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    with Raw(node.addr) as r:
        assert r.call({"verb": "GET", "path": "/ab"})["value"] == "1"


def _half_close(port: int, data: bytes, timeout: float = 10.0) -> list[dict]:
    """Send `data`, shut our side (as `printf ... | nc -N` does), read to EOF."""
    import json

    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):  # the node closes once all is answered
            got += chunk
    finally:
        s.close()
    return [json.loads(line) for line in got.splitlines()]


def test_a_half_closed_connection_gets_every_answer_then_is_closed(node):
    """`printf 'SET..\nSET..\nGET..\n' | nc -N`: the client shuts its side
    right after the last line, while the writes are still being decided."""
    a, b = fresh(), fresh()
    got = _half_close(
        node.port,
        b'{"verb":"SET","path":"%s","value":"1"}\n{"tag":2,"verb":"SET","path":"%s","value":"2"}\n'
        b'{"tag":3,"verb":"GET","path":"%s"}\n{"verb":"NOSUCH"}\n'
        % (a.encode(), b.encode(), a.encode()),
    )
    assert len(got) == 4, got
    assert {r.get("tag") for r in got} == {None, 2, 3}
    assert [r["err_code"] for r in got if "err_code" in r] == ["UNKNOWN_VERB"]
    sets = [r for r in got if r.get("tag") in (None, 2) and "rev" in r and "value" not in r]
    assert len(sets) == 2
    # a last request without its newline is a request too
    got = _half_close(node.port, b'{"verb":"GET","path":"%s"}' % b.encode())
    assert got[0]["value"] == "2"
    assert _half_close(node.port, b"") == []


def test_a_half_closed_connection_keeps_its_wait(node):
    p = fresh()
    s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    try:
        s.sendall(b'{"tag":"w","verb":"WAIT","path":"%s"}\n' % p.encode())
        s.shutdown(socket.SHUT_WR)
        with Raw(node.addr) as r:
            rev = r.call({"verb": "SET", "path": p, "value": "x"})["rev"]
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    finally:
        s.close()
    assert got.count(b"\n") == 1 and b'"tag":"w"' in got and b'"rev":%d' % rev in got


def _fd_limited_node(soft: int, hard: int) -> NodeProc:
    """A node started under this open-file limit."""
    import sys

    code = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
        "os.execv(sys.executable, [sys.executable, '-m', 'doozer', *sys.argv[1:]])"
    )
    return NodeProc(cmd=[sys.executable, "-c", code])


def _clients_answered(port: int, n: int) -> int:
    """Open n connections at once, send REV on each: how many got an answer."""
    socks = []
    answered = 0
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b'{"verb":"REV"}\n')
            socks.append(s)
        deadline = time.monotonic() + 20
        for s in socks:  # a refused client is closed: recv ends at once
            s.settimeout(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(OSError):
                answered += b'"rev"' in s.recv(4096)
    finally:
        for s in socks:
            s.close()
    return answered


def test_more_clients_than_the_soft_fd_limit():
    """Started under the usual soft limit (here 256 of a hard 4096), a node
    raises it: 600 clients at once are all served."""
    with _fd_limited_node(256, 4096) as n:
        assert _clients_answered(n.port, 600) == 600
        assert "open-file limit raised from 256 to 4096" in n.log()


def test_running_out_of_descriptors_is_logged_and_survived():
    """At the hard limit (256 here) new clients are refused; the node says so,
    and serves again once clients leave."""
    with _fd_limited_node(256, 256) as n:
        assert 150 < _clients_answered(n.port, 300) < 300
        assert "near the open-file limit (256)" in n.log()
        with Raw(n.addr) as r:
            assert "rev" in r.call({"verb": "REV"})


def test_ipv6_node_advertises_a_bracketed_address():
    """A node on [::1] says where it is as '[::1]:port', the form every
    client and peer parses (not '::1:port')."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "doozer", "serve", "-l", f"[::1]:{port}", "-w", "off", "--mem"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                c = socket.create_connection(("::1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        with c:
            c.sendall(b'{"verb":"SELF"}\n')
            assert b'"addr":"[::1]:%d"' % port in c.recv(4096)
    finally:
        proc.kill()
        proc.wait()


def test_readme_netcat_session(node):
    """The README's netcat session, verbatim, on a node of its own."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(r"<!-- netcat-session -->\n```\n(.*?)```", readme, re.S)
    assert block, "README has no netcat session block"
    lines = [ln for ln in block.group(1).splitlines() if ln.strip()]
    assert lines[0].startswith("$ nc ")
    with NodeProc() as fresh_node, Raw(fresh_node.addr) as r:
        i = 1
        while i < len(lines):
            r.send(lines[i] + "\n")
            expect = lines[i + 1]
            got = r.recv_line().decode()
            assert got == expect
            i += 2


class TestAccess:
    def test_secret(self):
        with NodeProc(env={"DOOZER_SECRET": "s3cret"}) as n, Raw(n.addr) as r:
            assert r.call({"verb": "GET", "path": "/x"})["err_code"] == "PERMISSION"
            assert "rev" in r.call({"verb": "REV"})
            assert "value" in r.call({"verb": "SELF"})
            # PERMISSION comes before MISSING_ARG and BAD_PATH
            assert r.call({"verb": "GET"})["err_code"] == "PERMISSION"
            assert r.call({"verb": "ACCESS", "value": "wrong"})["err_code"] == "PERMISSION"
            assert r.call({"tag": 1, "verb": "ACCESS", "value": "s3cret"}) == {"tag": 1}
            assert r.call({"verb": "ACCESS", "value": "wrong"})["err_code"] == "PERMISSION"
            assert r.call({"verb": "GET", "path": "/x"})["rev"] == 0  # still granted

    def test_access_without_secret_succeeds(self, c):
        assert c.call({"verb": "ACCESS", "value": "anything"}) == {}


def test_readonly_node():
    with NodeProc("--readonly") as n, Raw(n.addr) as r:
        assert r.call({"verb": "SET", "path": "/x", "value": "1"})["err_code"] == "READONLY"
        assert r.call({"verb": "SET", "path": "bad", "value": "1"})["err_code"] == "BAD_PATH"
        assert r.call({"verb": "GET", "path": "/ctl/name"})["value"] == "local"


def test_sigterm_exits_zero_with_inflight_wait():
    n = NodeProc().start()
    with Raw(n.addr) as r:
        r.send({"tag": 1, "verb": "WAIT", "path": "/never"})
        r.call({"verb": "REV"})
        assert n.stop() == 0
        assert "shutting down" in n.log()


def test_sigterm_under_pipelined_writes_ends_with_eof_not_reset():
    """A client pipelining writes into a node that is being stopped gets every
    answer the node wrote, then EOF. Closing with its requests unread used to
    send an RST, and the client's kernel dropped answers not yet read."""
    import json
    import signal
    import threading

    for _ in range(3):
        n = NodeProc().start()
        s = socket.create_connection(("127.0.0.1", n.port), timeout=10)
        stop = threading.Event()

        def send(s: socket.socket = s, stop: threading.Event = stop) -> None:
            i = 0
            with contextlib.suppress(OSError):
                while not stop.is_set() and i < 20_000:
                    s.sendall(b'{"tag":%d,"verb":"SET","path":"/p/%d","value":"v"}\n' % (i, i % 9))
                    i += 1
                    time.sleep(0.0005)

        sender = threading.Thread(target=send)
        sender.start()
        got = b""
        try:
            while len(got) < 20_000:  # some answers first
                chunk = s.recv(65536)
                assert chunk, "the node closed before it was stopped"
                got += chunk
            n.signal(signal.SIGTERM)
            while chunk := s.recv(65536):
                got += chunk
        finally:
            stop.set()
            sender.join()
            s.close()
            assert n.stop() == 0
        lines = got.splitlines()
        assert len(lines) > 100
        assert all("tag" in json.loads(line) for line in lines)


def test_watcher_that_never_reads_is_cut_off_and_others_finish(node):
    """200 concurrent connections doing mixed work, one a watcher that never
    reads: node memory stays bounded and the others finish."""
    import threading

    slow = socket.create_connection(("127.0.0.1", node.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(b'{"tag":"w","verb":"WATCH","path":"/load/**"}\n')
    with Raw(node.addr) as r:
        r.call({"verb": "NOP"})  # the WATCH is registered before the load starts
    rss0 = node.rss_kb()
    errors_seen: list[str] = []
    value = "v" * 4000
    rounds = 250

    def worker(i: int) -> None:
        try:
            with Raw(node.addr) as w:
                for j in range(rounds):
                    p = f"/load/{i}/{j % 7}"
                    w.send({"tag": 1, "verb": "SET", "path": p, "value": value})
                    w.send({"tag": 2, "verb": "GET", "path": p})
                    got = {w.recv()["tag"], w.recv()["tag"]}
                    assert got == {1, 2}
        except Exception as e:  # reported below
            errors_seen.append(f"{i}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(199)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    assert errors_seen == []
    grown_mb = (node.rss_kb() - rss0) / 1024
    unread_mb = 199 * rounds * len(value) / 2**20
    # ~190 MB of events went to a watcher that read nothing: the node must
    # have cut it off rather than buffered them.
    assert grown_mb < min(80, unread_mb / 2), f"node grew {grown_mb:.0f} MB"
    # it was cut off (its TOO_LATE sits behind megabytes it never read)
    assert "cut off, its output backed up" in node.log()
    slow.close()
    with Raw(node.addr) as r:
        assert "rev" in r.call({"verb": "REV"})
