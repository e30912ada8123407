"""Smoke-test (and optionally measure) a frozen doozer executable.

Runs the binary the way a user on a machine without Python would: copied
into an empty directory, started with an empty environment (`env -i`), in
its own session so that the whole process group (staticx bootloader,
PyInstaller bootloader, Python) can be cleaned up. Talks to the node with a
raw socket, one JSON line at a time, as `nc` would.

Usage:
  python build/smoke.py BINARY                # version + serve/REV/SET/GET/SIGTERM
  python build/smoke.py BINARY --measure 15   # also: cold start to REV, idle RSS

Exit status 0 when every check passed; a failed check says what broke.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_DEADLINE = 20.0  # seconds for a node to answer its first REV
STOP_DEADLINE = 15.0  # seconds for a node to exit after SIGTERM


class SmokeError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, req: dict, timeout: float = 5.0) -> dict:
    """Send one JSON line, read one JSON line back (netcat style)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise SmokeError(f"connection closed before a response to {req}")
            buf += chunk
    return json.loads(buf)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def group_rss(pgid: int) -> tuple[int, float]:
    """Number of processes in the group and their summed RSS in MiB."""
    if Path("/proc/self/stat").exists():
        rows = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                # the fields after "(comm)": state ppid pgrp ...
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) != pgid:
                    continue
                status = (entry / "status").read_text()
            except OSError:
                continue
            rss = re.search(r"^VmRSS:\s+(\d+)", status, re.M)
            rows.append(int(rss.group(1)) if rss else 0)
    else:  # macOS: no /proc
        out = subprocess.run(["ps", "-A", "-o", "pgid=,rss="], capture_output=True, text=True)
        rows = [
            int(r) for g, r in (line.split() for line in out.stdout.splitlines()) if int(g) == pgid
        ]
    return len(rows), sum(rows) / 1024


class Node:
    """One `serve --mem -w off` process group started from the binary."""

    def __init__(self, binary: Path, cwd: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        # A file, not a pipe: nobody reads the node's log while it runs.
        self.log = cwd / f"node-{self.port}.log"
        with self.log.open("wb") as log:
            self.t0 = time.monotonic()
            self.proc = subprocess.Popen(
                [str(binary), "serve", "-l", f"127.0.0.1:{self.port}", "--mem", "-w", "off"],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def wait_rev(self) -> tuple[float, dict]:
        """Poll until the node answers REV; seconds from exec, and the answer."""
        deadline = self.t0 + START_DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SmokeError(f"node exited with {self.proc.returncode}: {self.log_text()}")
            try:
                resp = request(self.port, {"verb": "REV"}, timeout=1.0)
                return time.monotonic() - self.t0, resp
            except OSError:
                time.sleep(0.002)
        raise SmokeError(f"no REV answer within {START_DEADLINE}s")

    def stop(self) -> tuple[int, bool]:
        """SIGTERM to the top process only (it must forward it): the exit status,
        and whether any process of the group outlived the top one."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            raise SmokeError("node did not exit after SIGTERM") from None
        left = group_alive(self.proc.pid)
        self.kill()
        return code, left

    def kill(self) -> None:
        """Make sure nothing of the group survives (the Python child included)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=STOP_DEADLINE)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace").strip()


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SmokeError(what)
    print(f"ok   {what}")


def smoke(binary: Path, workdir: Path, env: dict[str, str]) -> None:
    out = subprocess.run(
        [str(binary), "version"], cwd=workdir, env=env, capture_output=True, text=True, timeout=60
    )
    check(out.returncode == 0, f"`version` exits 0 (got {out.returncode}: {out.stderr.strip()})")
    check("(frozen)" in out.stdout and "commit " in out.stdout, "`version` says frozen, commit")
    print(re.sub(r"(?m)^", "     ", out.stdout.rstrip()))

    node = Node(binary, workdir, env)
    try:
        _, rev = node.wait_rev()
        check(isinstance(rev.get("rev"), int), f"REV answers a rev: {rev}")
        got = request(node.port, {"verb": "SET", "path": "/smoke", "value": "frozen", "rev": 0})
        check(isinstance(got.get("rev"), int) and got["rev"] > rev["rev"], f"SET: {got}")
        back = request(node.port, {"verb": "GET", "path": "/smoke"})
        check(back.get("value") == "frozen" and back.get("rev") == got["rev"], f"GET: {back}")
        code, left = node.stop()
        check(code == 0, f"SIGTERM: exit status {code}")
        check(not left, "no process of the group left behind")
    finally:
        node.kill()


def measure(binary: Path, workdir: Path, env: dict[str, str], runs: int) -> None:
    starts, rss = [], []
    for _ in range(runs):
        node = Node(binary, workdir, env)
        try:
            seconds, _ = node.wait_rev()
            starts.append(seconds)
            time.sleep(1.0)  # let start-up settle before reading idle RSS
            procs, mib = group_rss(node.proc.pid)
            rss.append(mib)
            code, left = node.stop()
            if code != 0 or left:
                raise SmokeError(f"SIGTERM: exit status {code}, group left behind: {left}")
        finally:
            node.kill()
    print(
        f"cold start to REV: median {statistics.median(starts) * 1000:.0f} ms "
        f"(min {min(starts) * 1000:.0f}, max {max(starts) * 1000:.0f}, {runs} runs)"
    )
    print(f"idle RSS, all {procs} processes of the group: median {statistics.median(rss):.1f} MiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary", type=Path)
    ap.add_argument("--measure", type=int, metavar="RUNS", default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="doozer-smoke-") as tmp:
        # An empty directory holding only the binary, and an empty environment
        # but for TMPDIR (extraction) when the caller set one.
        workdir = Path(tmp)
        binary = workdir / "doozer"
        shutil.copy2(args.binary, binary)
        env = {k: os.environ[k] for k in ("TMPDIR",) if k in os.environ}
        try:
            smoke(binary, workdir, env)
            if args.measure:
                measure(binary, workdir, env, args.measure)
        except SmokeError as e:
            print(f"FAIL {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
