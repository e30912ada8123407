"""Real `doozer serve` processes for tests: free ports, readiness with a
deadline, and cleanup of the whole process group."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(
    host: str, port: int, deadline_s: float = 15.0, proc: subprocess.Popen | None = None
) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} did not accept within {deadline_s}s")


_LOG_ROOT: Path | None = None


def log_root() -> Path:
    """One dir per test process holding every node's log and working dir,
    removed when the process exits (DOOZER_KEEP_LOGS=1 keeps it): a dir per
    node, never removed, had left thousands behind in /tmp."""
    global _LOG_ROOT
    if _LOG_ROOT is None:
        _LOG_ROOT = Path(tempfile.mkdtemp(prefix="doozer-test-"))
        if not os.environ.get("DOOZER_KEEP_LOGS"):
            atexit.register(shutil.rmtree, _LOG_ROOT, True)
    return _LOG_ROOT


class NodeProc:
    """One node process. `args` are extra serve flags."""

    def __init__(
        self,
        *args: str,
        port: int | None = None,
        host: str = "127.0.0.1",
        env: dict | None = None,
        cmd: list[str] | None = None,
        mem: bool = True,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.addr = f"{host}:{self.port}"
        self.logdir = Path(tempfile.mkdtemp(prefix="node-", dir=log_root()))
        self.logfile = self.logdir / "node.log"
        base = cmd or [sys.executable, "-m", "doozer"]
        flags = ["serve", "-l", self.addr, "-w", "off"]
        if mem:
            flags.append("--mem")
        self.argv = base + flags + list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> NodeProc:
        self._log = open(self.logfile, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.logdir,
            start_new_session=True,
        )
        if wait:
            wait_port(self.host, self.port, proc=self.proc)
        return self

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL the group if it lingers. Returns the exit code."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            rc = self.proc.wait(5)
        self.signal(signal.SIGKILL)  # anything left in the group
        self._log.close()
        return rc

    def kill(self) -> None:
        if self.proc is not None:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)
            self._log.close()

    def rss_kb(self) -> int:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def __enter__(self) -> NodeProc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Raw:
    """A netcat-style client: one JSON object per line, with deadlines."""

    def __init__(self, addr: str, timeout: float = 10.0) -> None:
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout

    def send(self, obj: dict | bytes | str) -> None:
        if isinstance(obj, dict):
            data = orjson.dumps(obj) + b"\n"
        elif isinstance(obj, str):
            data = obj.encode()
        else:
            data = obj
        self.sock.sendall(data)

    def recv_line(self, timeout: float | None = None) -> bytes:
        end = time.monotonic() + (timeout or self.timeout)
        if b"\n" not in self.buf:
            # Chunks kept apart until the line ends: a 100 MB line read by
            # rescanning a growing buffer would take minutes.
            chunks = [self.buf]
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no line within deadline; have {chunks[0][:200]!r}")
                self.sock.settimeout(left)
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError(f"connection closed; have {chunks[0][:200]!r}")
                chunks.append(chunk)
                if b"\n" in chunk:
                    break
            self.buf = b"".join(chunks)
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def recv(self, timeout: float | None = None) -> dict:
        return orjson.loads(self.recv_line(timeout))

    def call(self, obj: dict, timeout: float | None = None) -> dict:
        self.send(obj)
        return self.recv(timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(cond, deadline_s: float = 20.0, what: str = "condition", interval: float = 0.05):
    """Poll `cond` until it returns a truthy value or the deadline passes."""
    end = time.monotonic() + deadline_s
    last_exc: Exception | None = None
    while time.monotonic() < end:
        try:
            v = cond()
            if v:
                return v
        except (OSError, ValueError, KeyError) as e:
            last_exc = e
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {deadline_s}s (last error: {last_exc!r})")


def call(addr: str, req: dict, timeout: float = 5.0) -> dict:
    with Raw(addr, timeout=timeout) as r:
        return r.call(req, timeout)


def wait_roles(nodes: list[NodeProc], roles: list[str], what: str) -> None:
    """Until the nodes' roles (SELF), sorted, are `roles`."""
    wait_for(
        lambda: sorted(call(n.addr, {"verb": "SELF"})["role"] for n in nodes) == roles, 30, what
    )


def wait_three_members(nodes: list[NodeProc]) -> None:
    """Until the three nodes are one leader and two members."""
    wait_roles(nodes, ["leader", "member", "member"], "three members in force")


class Cluster:
    """N real nodes, the second and later joining the first with -a."""

    def __init__(
        self,
        n: int,
        *extra: str,
        cals: int | None = None,
        env: dict | None = None,
        advertise: dict[int, str] | None = None,
    ) -> None:
        self.extra = list(extra)
        self.cals = cals if cals is not None else n
        self.env = env
        self.nodes: list[NodeProc] = []
        self.n = n
        self.advertise = advertise or {}

    def start(self) -> Cluster:
        first = self._node(0, [f"--cals={self.cals}"])
        first.start()
        self.nodes.append(first)
        for i in range(1, self.n):
            node = self._node(i, ["-a", first.addr])
            node.start()
            self.nodes.append(node)
        self.wait_members(min(self.n, self.cals))
        self.settle()
        return self

    def settle(self, alpha: int = 32) -> None:
        """Make the latest membership change govern the log: a change takes
        effect alpha instances after the one that decided it."""
        addr = self.nodes[0].addr
        with Raw(addr, timeout=10) as r:
            for _ in range(alpha + 2):
                assert "rev" in r.call({"verb": "NOP", "timeout": 5}), "NOP failed"

    def _node(self, i: int, flags: list[str]) -> NodeProc:
        port = free_port()
        adv = self.advertise.get(i)
        args = [*self.extra, *flags, "--election-timeout", "0.5"]
        if adv:
            args += ["--advertise", adv]
        return NodeProc(*args, port=port, env=self.env)

    def add(self, *flags: str) -> NodeProc:
        node = NodeProc(
            *self.extra,
            "--election-timeout",
            "0.5",
            "-a",
            self.live()[0].addr,
            *flags,
            env=self.env,
        )
        node.start()
        self.nodes.append(node)
        return node

    def live(self) -> list[NodeProc]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def selves(self) -> dict[str, dict]:
        out = {}
        for n in self.live():
            try:
                out[n.addr] = call(n.addr, {"verb": "SELF"}, 2)
            except OSError:
                pass
        return out

    def leader(self) -> NodeProc | None:
        for n in self.live():
            try:
                if call(n.addr, {"verb": "SELF"}, 2).get("role") == "leader":
                    return n
            except OSError:
                continue
        return None

    def wait_members(self, k: int, deadline: float = 30.0) -> None:
        def ok() -> bool:
            s = self.selves()
            members = [x for x in s.values() if x.get("role") in ("leader", "member")]
            leaders = {x.get("leader") for x in s.values()}
            return len(members) >= k and len(leaders) == 1 and "" not in leaders

        wait_for(ok, deadline, f"{k} members agreeing on a leader")

    def stop(self) -> None:
        for n in self.nodes:
            try:
                n.stop(5)
            except Exception:
                n.kill()

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
