"""The frozen binary's launcher processes, and dying with them.

The one-file executable runs as a chain of processes: the staticx launcher
(the pid a shell's `$!` or a supervisor knows), PyInstaller's bootloader,
then the Python process that does the work. They pass SIGTERM and SIGINT
down, but SIGKILL cannot be passed on (nor does staticx pass SIGHUP): a
launcher killed that way left the node running as an orphan, holding its
port and data dir, so `kill -9 PID` did not stop it and a restart found
both taken. Each launcher only exits after its child, so a launcher gone
first was killed; the node then dies as abruptly (no handover, no
clean-up: what a kill -9 means).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

log = logging.getLogger("doozer")

_MAX_CHAIN = 4  # staticx, bootloader; a little room for other wrappers


def _cmdline(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    # pid (comm) state ppid ...: comm may hold spaces and parentheses
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def launchers() -> list[int]:
    """The chain of processes above this one that launched it with the same
    arguments (the frozen binary's launchers), nearest first."""
    me = _cmdline(os.getpid())
    out: list[int] = []
    pid = os.getppid()
    while me is not None and pid > 1 and len(out) < _MAX_CHAIN:
        cmd = _cmdline(pid)
        if cmd is None or cmd[1:] != me[1:]:
            break
        out.append(pid)
        pid = _ppid(pid)
    return out


def die_with_launchers(loop: asyncio.AbstractEventLoop) -> None:
    """In the frozen binary, exit at once (SIGKILL) when a launcher is gone."""
    if not getattr(sys, "frozen", False) or not hasattr(os, "pidfd_open"):
        return
    chain = launchers()
    for pid in chain:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            _gone(pid)  # exited between the look and the open
            return
        loop.add_reader(fd, _gone, pid)
    if chain and os.getppid() != chain[0]:
        _gone(chain[0])  # reparented while we looked: it is gone


def _gone(pid: int) -> None:
    log.error("launcher process %d is gone (killed): stopping as abruptly", pid)
    os.kill(os.getpid(), signal.SIGKILL)
