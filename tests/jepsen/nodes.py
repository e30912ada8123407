"""The node processes: start, kill -9, pause, restart, memory; their logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.jepsen.network import Network


class Node:
    """One `doozer serve` process (its own session, so signals reach the whole group)."""

    def __init__(self, idx: int, net: Network, root: Path, flags: list[str]) -> None:
        self.idx = idx
        self.name = f"n{idx}"
        self.net = net
        self.addr = net.listen(idx)
        self.dir = root / self.name
        self.datadir = self.dir / "data"
        self.logfile = self.dir / "node.log"
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "doozer", "serve", "-l", self.addr, "-w", "off"]
        if net.advertise(idx) != self.addr:
            argv += ["--advertise", net.advertise(idx)]
        self.argv = [*argv, *flags]
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.expect_down = True  # the runner stopped it (or never started it)
        self.starts = 0
        self.max_rss_kb = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        with open(self.logfile, "ab") as log:
            stamp = time.strftime("%H:%M:%S")
            log.write(f"==== jepsen: start #{self.starts} at {stamp}\n".encode())
            log.flush()
            # a node's working directory is its own dir: nothing lands in the checkout
            self.proc = subprocess.Popen(
                self.net.command(self.idx, self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.paused = False
        self.expect_down = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _group(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """kill -9 the process group and reap it."""
        self.expect_down = True
        if self.proc is None:
            return
        self._group(signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.paused = False

    def pause(self) -> None:
        self._group(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._group(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """Graceful stop, then make sure nothing of the group is left."""
        self.expect_down = True
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self._group(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._group(signal.SIGKILL)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def rss_kb(self) -> int:
        if not self.running():
            return 0
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kb = int(line.split()[1])
                        self.max_rss_kb = max(self.max_rss_kb, kb)
                        return kb
        except (OSError, ValueError):
            pass
        return 0

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
