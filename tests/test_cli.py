"""The `doozer` client commands: in-process against the fake node, and as
`python -m doozer` subprocesses against a real node when there is one."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from doozer import cli
from doozer.commands import parse_duration
from tests.test_client import HAVE_SERVER, ROOT, FakeCluster, dead_addr, start_node

Doozer = Callable[..., tuple[int, bytes, str]]


def in_process(argv: list[str], stdin: bytes, env: dict[str, str]) -> tuple[int, bytes, str]:
    out, err = io.BytesIO(), io.BytesIO()
    saved = sys.stdin, sys.stdout, sys.stderr, dict(os.environ)
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    sys.stdout = io.TextIOWrapper(out, write_through=True)
    sys.stderr = io.TextIOWrapper(err, write_through=True)
    os.environ.pop("DOOZER_URI", None)
    os.environ.pop("DOOZER_SECRET", None)
    os.environ.update(env)
    try:
        rc = cli.main(argv)
        sys.stdout.flush()
        return rc, out.getvalue(), err.getvalue().decode()
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved[:3]
        os.environ.clear()
        os.environ.update(saved[3])


def subprocess_run(argv: list[str], stdin: bytes, env: dict[str, str]) -> tuple[int, bytes, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DOOZER_URI", "DOOZER_SECRET")}
    p = subprocess.run(
        [sys.executable, "-m", "doozer", *argv],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env={**base, **env},
        timeout=30,
    )
    return p.returncode, p.stdout, p.stderr.decode()


@pytest.fixture(params=["fake", "real"])
def doozer(request: pytest.FixtureRequest) -> Iterator[Doozer]:
    """doozer(cmd, *args, stdin=b"", env={}) -> (status, stdout, stderr), with -a set."""
    if request.param == "fake":
        cluster = FakeCluster(1)
        ctx: Any = None
        addr, runner = cluster.addrs[0], in_process
    else:
        if not HAVE_SERVER:
            pytest.skip("doozer/server.py does not exist yet")
        cluster = None
        ctx = start_node()
        addr, runner = ctx.__enter__(), subprocess_run

    def call(cmd: str, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> Any:
        return runner([cmd, "-a", addr, *args], stdin, env or {})

    call.addr = addr  # type: ignore[attr-defined]
    call.raw = runner  # type: ignore[attr-defined]
    try:
        yield call
    finally:
        if cluster is not None:
            cluster.close()
        if ctx is not None:
            ctx.__exit__(None, None, None)


def rev_of(result: tuple[int, bytes, str]) -> int:
    status, out, err = result
    assert status == 0, err
    return int(out)


def test_write_and_read_commands(doozer: Doozer) -> None:
    r1 = rev_of(doozer("add", "/t/a", stdin=b"hello"))
    status, out, err = doozer("add", "/t/a", stdin=b"again")
    assert status == 1 and err.startswith("Error: REV_MISMATCH: ")
    assert doozer("get", "/t/a") == (0, b"hello", "")
    r2 = rev_of(doozer("set", "/t/b/c", "-1", stdin=b"\x00\xff\n"))
    assert r2 == r1 + 1
    assert doozer("get", "/t/b/c")[1] == b"\x00\xff\n"
    assert doozer("get", "-r", str(r1), "/t/b/c")[1] == b""  # not yet written at r1
    assert doozer("set", "/t/a", str(r1 - 1), stdin=b"x")[0] == 1
    assert doozer("stat", "/t/a") == (0, f"{r1} 5\n".encode(), "")
    assert doozer("stat", "/t") == (0, b"d 2\n", "")
    status, out, err = doozer("stat", "/t/none")
    assert (status, out) == (2, b"") and err.startswith("Error: NOENT: ")
    assert doozer("ls", "/t") == (0, b"a\nb\n", "")
    assert doozer("find", "/t") == (0, b"/t\n/t/a\n/t/b\n/t/b/c\n", "")
    assert doozer("find", "/t/a") == (0, b"/t/a\n", "")
    assert doozer("find", "-r", str(r1), "/t") == (0, b"/t\n/t/a\n", "")
    r3 = rev_of(doozer("touch", "/t/a"))
    assert (
        doozer("get", "/t/a")[1] == b"hello" and doozer("stat", "/t/a")[1] == f"{r3} 5\n".encode()
    )
    r4 = rev_of(doozer("touch", "/t/new"))
    assert doozer("stat", "/t/new")[1] == f"{r4} 0\n".encode()
    assert doozer("del", "/t/new", str(r4 - 1))[0] == 1
    r5 = rev_of(doozer("del", "/t/new", str(r4)))
    assert rev_of(doozer("rev")) == r5 == r4 + 1
    assert rev_of(doozer("nop")) == r5
    status, out, _ = doozer("self")
    assert status == 0 and out.endswith(b"\n") and len(out) > 1
    status, _, err = doozer("ls", "/t/nothing")
    assert status == 2 and err.startswith("Error: NOENT: ")
    status, _, err = doozer("get", "bad")
    assert status == 2 and err.startswith("Error: BAD_PATH: ")


def test_wait_and_watch_records(doozer: Doozer) -> None:
    r1 = rev_of(doozer("set", "/w/a", "-1", stdin=b"one\ntwo"))
    r2 = rev_of(doozer("set", "/w/b", "-1", stdin=b""))
    r3 = rev_of(doozer("del", "/w/a", "-1"))
    assert doozer("wait", "-r", str(r1), "/w/*") == (
        0,
        f"/w/a {r1} set 7\none\ntwo\n".encode(),
        "",
    )
    assert doozer("wait", "-r", str(r1 + 1), "/w/a")[1] == f"/w/a {r3} del 0\n\n".encode()
    status, out, _ = doozer("watch", "-n", "3", "-r", str(r1), "/w/**")
    assert status == 0
    assert out == (f"/w/a {r1} set 7\none\ntwo\n/w/b {r2} set 0\n\n/w/a {r3} del 0\n\n".encode())
    status, out, err = doozer("wait", "-t", "50ms", "/w/never")
    assert (status, out) == (2, b"") and err.startswith("Error: TIMEOUT: ")


def test_address_from_env_uri(doozer: Doozer) -> None:
    env = {"DOOZER_URI": f"doozer:?ca={dead_addr()}&ca={doozer.addr}"}  # type: ignore[attr-defined]
    # No -a: $DOOZER_URI is used, and its dead first address is skipped.
    status, out, err = doozer.raw(["rev"], b"", env)  # type: ignore[attr-defined]
    assert status == 0, err
    assert int(out) >= 0


def test_unreachable() -> None:
    status, out, err = in_process(["rev", "-a", dead_addr(), "-t", "2"], b"", {})
    assert (status, out) == (2, b"") and err.startswith("Error: UNAVAILABLE: ")
    status, _, err = in_process(["rev", "-a", "doozer:?sk=x"], b"", {})
    assert status == 2 and "Error: BAD_URI: " in err


def test_env_uri_used_without_a() -> None:
    cluster = FakeCluster(1)
    try:
        uri = f"doozer:?ca={dead_addr()}&ca={cluster.addrs[0]}"
        assert in_process(["rev"], b"", {"DOOZER_URI": uri}) == (0, b"0\n", "")
        # -a wins over $DOOZER_URI.
        status, _, err = in_process(["rev", "-a", dead_addr(), "-t", "2"], b"", {"DOOZER_URI": uri})
        assert status == 2 and "UNAVAILABLE" in err
    finally:
        cluster.close()


def test_secret_from_uri_and_env() -> None:
    cluster = FakeCluster(1, secret="pw")
    addr = cluster.addrs[0]
    try:
        status, _, err = in_process(["rev", "-a", addr], b"", {})
        assert status == 0  # REV needs no ACCESS
        status, _, err = in_process(["get", "-a", addr, "/x"], b"", {})
        assert status == 2 and err.startswith("Error: PERMISSION: ")
        assert in_process(["get", "-a", f"doozer:?ca={addr}&sk=pw", "/x"], b"", {})[0] == 0
        assert in_process(["get", "-a", addr, "/x"], b"", {"DOOZER_SECRET": "pw"})[0] == 0
    finally:
        cluster.close()


def test_help_documents_formats() -> None:
    p = cli.build_parser()
    sub = next(a for a in p._actions if a.dest == "command")
    helps = {name: sp.format_help() for name, sp in sub.choices.items()}  # type: ignore[attr-defined]
    for name in (
        "get",
        "set",
        "add",
        "del",
        "touch",
        "stat",
        "find",
        "ls",
        "wait",
        "watch",
        "rev",
        "nop",
        "self",
    ):
        assert name in helps and "-a ADDR" in helps[name] and "-r REV" in helps[name]
    assert "<path> <rev> <set|del> <len>" in helps["watch"]
    assert "<path> <rev> <set|del> <len>" in helps["wait"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2", 2.0), ("0.5", 0.5), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), ("10us", 1e-5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "x", "1x", "-1", "1m 2s", "s", "nan"])
def test_parse_duration_rejects(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_serve_refuses_mem_with_a_data_dir(tmp_path: Any) -> None:
    """--mem keeps nothing on disk: a data dir given beside it is a mistake to
    report, not a flag to drop silently."""
    d = tmp_path / "data"
    status, _, err = subprocess_run(["serve", "--mem", "-d", str(d), "-w", "off"], b"", {})
    assert status == 2 and "--mem" in err and str(d) in err
    assert not d.exists()


def test_serve_with_a_port_in_use_stops_before_joining(tmp_path: Any) -> None:
    """A taken client port, or a taken web port given explicitly, stops the
    node before it joins anyone or creates its data dir."""
    import socket

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        for flags, said in (
            (["-l", addr, "-w", "off"], f"cannot listen on {addr}: Address already in use"),
            (["-l", "127.0.0.1:0", "-w", addr], f"web viewer: cannot listen on {addr}"),
        ):
            d = tmp_path / "data"
            argv = ["serve", *flags, "-d", str(d), "-a", dead_addr()]
            status, _, err = subprocess_run(argv, b"", {})
            assert status == 1 and said in err, err
            assert "join" not in err and not d.exists()


def test_serve_refuses_a_max_value_members_cannot_pass_each_other() -> None:
    from doozer.serve import MAX_VALUE_BETWEEN_MEMBERS as most

    argv = ["serve", "-l", "127.0.0.1:0", "-w", "off", "--mem", "--max-value", str(most + 1)]
    status, _, err = subprocess_run(argv, b"", {})
    assert status == 2 and f"the largest value that fits is {most} bytes" in err, err


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--timeout", "0"], "--timeout: must be at least"),
        (["--election-timeout", "0"], "--election-timeout: must be at least"),
        (["--hist", "0"], "--hist: must be at least 1"),  # was a traceback
        (["--cals", "0"], "--cals: must be at least 1"),
        (["--max-line", "10"], "--max-line: must be at least 4096"),
        (["--request-timeout", "0"], "--request-timeout: must be at least"),
        (["--snap-revs", "0"], "--snap-revs: must be at least 1"),
        (["--election-timeout", "nan"], "--election-timeout: must be at least"),
        (["--timeout", "1.5"], "--timeout 1.5 is under twice --election-timeout 1"),
    ],
)
def test_serve_refuses_numbers_below_their_floor(flags: list[str], said: str) -> None:
    """Zero or negative timeouts, history and slot counts were taken: a
    --timeout below the ping interval took live members' slots, and --hist 0
    ended in a traceback."""
    argv = ["serve", "-l", "127.0.0.1:0", "-w", "off", "--mem", *flags]
    status, _, err = subprocess_run(argv, b"", {})
    assert status == 2 and said in err, err


def test_serve_refuses_to_join_itself(tmp_path: Any) -> None:
    """-a with the node's own address would retry for ever: say what is wrong."""
    d = tmp_path / "data"
    argv = ["serve", "-l", "127.0.0.1:18999", "-w", "off", "-d", str(d), "-a", "127.0.0.1:18999"]
    status, _, err = subprocess_run(argv, b"", {})
    assert status == 2 and "is this node's own address" in err, err
    assert not d.exists()


def test_serve_refuses_a_malformed_attach_address(tmp_path: Any) -> None:
    """A malformed -a was dialed as a host name, and retried for ever."""
    d = tmp_path / "data"
    for bad in ("127.0.0.1:9650;127.0.0.1:9651", "127.0.0.1", "host:99999", "::1:80"):
        argv = ["serve", "-l", "127.0.0.1:0", "-w", "off", "-d", str(d), "-a", bad]
        status, _, err = subprocess_run(argv, b"", {})
        assert status == 2 and "-a: bad address" in err, (bad, err)
        assert not d.exists()


@pytest.mark.skipif(not HAVE_SERVER, reason="needs the server")
def test_serve_joins_through_an_address_list_that_names_itself(tmp_path: Any) -> None:
    """The same comma-separated -a list on every node's command line: each
    skips its own address and joins through the others."""
    from tests.nodeproc import NodeProc, Raw, free_port

    with NodeProc() as first:
        port = free_port()
        peers = f"{first.addr},127.0.0.1:{port}"
        with NodeProc("-a", peers, port=port) as second, Raw(second.addr) as c:
            assert c.call({"verb": "SET", "path": "/x", "value": "1"}).get("rev"), second.log()
            with Raw(first.addr) as c1:
                got = c1.call({"verb": "GET", "path": "/x"})
            assert got.get("value") == "1", got


def test_all_vote_turns_thrifty_accepts_off() -> None:
    from doozer.cluster import make_config

    p = cli.build_parser()
    assert make_config(p.parse_args(["serve"])).thrifty
    assert not make_config(p.parse_args(["serve", "--all-vote"])).thrifty


CHAIN = """
import json, os, subprocess, sys
level = int(os.environ.get("LEVEL", "0"))
if level < 2:  # a launcher: the same command line, one level down
    env = {**os.environ, "LEVEL": str(level + 1)}
    sys.exit(subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[1:]], env=env).returncode)
sys.path.insert(0, sys.argv[2])
from doozer.launchers import launchers
print(json.dumps([launchers(), os.getppid()]))
"""


def test_launchers_are_the_ancestors_with_the_same_command_line() -> None:
    """The frozen binary's chain (staticx, bootloader, Python) run the same
    arguments: the node finds its launchers, nearest first, and stops at the
    first ancestor that is something else (here the test itself)."""
    import json

    out = subprocess.run(
        [sys.executable, "-c", CHAIN, CHAIN, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    chain, parent = json.loads(out)
    assert len(chain) == 2 and chain[0] == parent, out
    assert os.getpid() not in chain


def test_without_pidfds_a_frozen_process_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel before 5.3 has no pidfd_open (ENOSYS): the loaders cannot be
    followed, and that must not be taken for their death."""
    import errno as _errno

    from doozer import launchers

    def nosys(pid: int) -> int:
        raise OSError(_errno.ENOSYS, "Function not implemented")

    killed: list[list[int]] = []
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(launchers, "launchers", lambda: [os.getppid()])
    monkeypatch.setattr(launchers.os, "pidfd_open", nosys)
    monkeypatch.setattr(launchers, "_gone", lambda pids, owned: killed.append(pids))
    launchers.die_with_launchers()
    assert killed == []


def test_extraction_dirs_of_processes_gone_are_swept_and_no_others(tmp_path: Path) -> None:
    """A kill of the whole group leaves both extraction dirs behind, with
    nobody to remove them: the next frozen process removes such dirs, and
    only those (marked with the pid and start time of a process now gone)."""
    from doozer.launchers import OWNER, _start_time, claim_and_sweep

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    dead_pid = int(done.stdout)

    def made(name: str, owner: str | None) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "payload").write_bytes(b"x")
        if owner is not None:
            (d / OWNER).write_text(owner)
        return d

    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; not reaped yet
    end = time.monotonic() + 30
    while _state(zombie.pid) != "Z":
        assert time.monotonic() < end, "the child did not exit"
        time.sleep(0.01)
    mine = [made("_MEImine", None), made("staticx-mine", None)]
    gone = [made("_MEIgone", f"{dead_pid} 1"), made("staticx-gone", f"{dead_pid} 1")]
    # killed with its parent, its zombie not yet reaped: /proc still shows it
    with open(f"/proc/{zombie.pid}/stat", "rb") as f:
        zstart = f.read().rsplit(b")", 1)[1].split()[19].decode()
    gone.append(made("_MEIzombie", f"{zombie.pid} {zstart}"))
    reused = made("_MEIreused", "1 -1")  # pid 1 lives, but started at another time
    live = made("_MEIlive", f"1 {_start_time(1)}")
    kept = [
        live,
        made("_MEIunmarked", None),  # another app's, or one not yet marked
        made("_MEIjunk", "not a pid"),
        made("other", f"{dead_pid} 1"),  # not an extraction dir
    ]
    (tmp_path / "_MEIfile").write_text(f"{dead_pid} 1")
    claim_and_sweep(str(d) for d in mine)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {d.name for d in mine + kept} | {"_MEIfile"}, left
    assert not reused.exists() and not any(d.exists() for d in gone)
    me = f"{os.getpid()} {_start_time(os.getpid())}"
    assert all((d / OWNER).read_text() == me for d in mine)
    zombie.wait()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()


def test_a_killed_launcher_s_extraction_dir_is_the_one_removed() -> None:
    """Each launcher removes one dir after its child exits: the bootloader
    (the nearest) its _MEI dir, staticx its bundle. A dead launcher's dir is
    removed by the node instead, and only a dir of that kind."""
    from doozer.launchers import extraction_dirs

    mei, bundle = "/tmp/x/_MEI123abc", "/tmp/x/staticx-AbCdEf"
    assert extraction_dirs([11, 10], mei, bundle, 10) == {11: mei, 10: bundle}
    # staticx not among the launchers (gone before the node looked): key 0
    assert extraction_dirs([11], mei, bundle, None) == {11: mei, 0: bundle}
    # a plain one-file build: no bundle; an unfrozen or odd layout: nothing
    assert extraction_dirs([11], mei, None, None) == {11: mei}
    assert extraction_dirs([11], "/opt/app/_internal", "/home/u", None) == {}
    assert extraction_dirs([], mei, None, None) == {}
