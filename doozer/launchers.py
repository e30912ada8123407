"""The frozen binary's launcher processes, and dying with them.

The one-file executable runs as a chain of processes: the staticx launcher
(the pid a shell's `$!` or a supervisor knows), PyInstaller's bootloader,
then the Python process that does the work. They pass SIGTERM and SIGINT
down, but SIGKILL cannot be passed on (nor does staticx pass SIGHUP): a
launcher killed that way left the node running as an orphan, holding its
port and data dir, so `kill -9 PID` did not stop it and a restart found
both taken. Each launcher only exits after its child, so a launcher gone
first was killed; the node then dies as abruptly (no handover, no
clean-up: what a kill -9 means). Only what the dead launcher would have
removed is removed first: its extraction dir (13-19 MB in $TMPDIR, left
behind at every such kill otherwise).

A kill of the whole process group at once (`kill -9 -PGID`, a cgroup kill)
leaves nobody to remove those dirs. So each process marks its own dirs with
its pid and start time (OWNER), and at start removes the marked dirs of
processes that are gone.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import stat
import sys
import threading
from collections.abc import Iterable

log = logging.getLogger("doozer")

_MAX_CHAIN = 4  # staticx, bootloader; a little room for other wrappers
OWNER = ".doozer-owner"  # in an extraction dir: "PID STARTTIME" of the process using it


def _cmdline(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def _stat(pid: int) -> list[bytes] | None:
    """/proc/PID/stat from field 3 (state) on, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            st = f.read()
    except OSError:
        return None
    # pid (comm) state ppid ...: comm may hold spaces and parentheses
    return st[st.rindex(b")") + 2 :].split()


def _ppid(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


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


def die_with_launchers() -> None:
    """In the frozen binary, exit at once (SIGKILL) when a launcher is gone.
    A daemon thread waits on the launchers' pidfds, so every command is
    covered (a node, a WATCH, a bench), whatever loop it runs."""
    if not getattr(sys, "frozen", False) or not hasattr(os, "pidfd_open"):
        return
    chain = launchers()
    top = os.environ.get("STATICX_PROG_PATH")
    staticx, certain = _find_runner(chain, top) if top and chain else (None, False)
    owned = extraction_dirs(
        chain, getattr(sys, "_MEIPASS", None), os.environ.get("STATICX_BUNDLE_DIR"), staticx
    )
    claim_and_sweep(owned.values())
    fds: dict[int, int] = {}
    for pid in chain:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            _gone([pid], owned)  # exited between the look and the open
        except OSError:
            return  # no pidfds here (a kernel before 5.3: ENOSYS): cannot follow them
    if chain and os.getppid() != chain[0]:
        _gone([chain[0]], owned)  # reparented while we looked: it is gone
    if staticx is None and certain:
        _gone([0], owned)  # the staticx launcher (the top pid) died before we looked
    if fds:
        threading.Thread(
            target=_wait, args=(fds, owned), name="doozer-launchers", daemon=True
        ).start()


def extraction_dirs(
    chain: list[int], meipass: str | None, bundle: str | None, staticx_pid: int | None
) -> dict[int, str]:
    """Which launcher removes which dir once its child exits: PyInstaller's
    bootloader (the nearest) its _MEI dir, staticx (the launcher running the
    binary itself; 0 when it is not among them: already gone) its bundle.
    Only dirs of those names: nothing else is ever removed."""
    owned: dict[int, str] = {}
    if chain and meipass and os.path.basename(meipass).startswith("_MEI"):
        owned[chain[0]] = meipass
    if bundle and os.path.basename(bundle).startswith("staticx-"):
        owned[staticx_pid or 0] = bundle
    return owned


def claim_and_sweep(dirs: Iterable[str]) -> None:
    """Mark our extraction dirs as ours, then remove, beside them, those of
    earlier doozer processes that are gone. Only dirs of the extraction kinds,
    of this user, that carry the mark of a process that no longer runs."""
    mine = [d for d in dirs if d]
    started = _start_time(os.getpid())
    if started is None:
        return  # no /proc to tell the living from the dead
    me = f"{os.getpid()} {started}"
    parents = set()
    for d in mine:
        try:
            with open(os.path.join(d, OWNER), "w") as f:
                f.write(me)
        except OSError:
            continue
        parents.add(os.path.dirname(d))
    for parent in parents:
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            d = os.path.join(parent, name)
            if name.startswith(("_MEI", "staticx-")) and d not in mine and _stale(d):
                shutil.rmtree(d, ignore_errors=True)


def _stale(d: str) -> bool:
    try:
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return False
        with open(os.path.join(d, OWNER)) as f:
            pid, start = f.read().split()
        return _start_time(int(pid)) != start  # gone, or its pid taken by another
    except (OSError, ValueError):
        return False  # unmarked (not ours, or not yet marked) or unreadable: leave it


def _start_time(pid: int) -> str | None:
    fields = _stat(pid)
    if not fields or fields[0] in (b"Z", b"X"):
        return None  # gone, or dead and not yet reaped (its parent was killed with it)
    return fields[19].decode()  # field 22: start time


def _find_runner(chain: list[int], path: str) -> tuple[int | None, bool]:
    """The launcher whose executable is `path` (None if none is), and whether
    that is certain: a launcher that cannot be looked at might be it."""
    try:
        want = os.stat(path)
    except OSError:
        return None, False
    certain = True
    for pid in chain:
        try:
            st = os.stat(f"/proc/{pid}/exe")
        except FileNotFoundError:
            continue  # exited
        except OSError:
            certain = False
            continue
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            return pid, True
    return None, certain


def _wait(fds: dict[int, int], owned: dict[int, str]) -> None:
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    p.poll()
    _gone([fds[fd] for fd, _ in p.poll(0)], owned)  # every launcher gone by now


def _gone(pids: list[int], owned: dict[int, str]) -> None:
    for pid in pids:
        who = f"launcher process {pid}" if pid else "launcher process (the top one)"
        log.error("%s is gone (killed): stopping as abruptly", who)
    for pid in pids:
        d = owned.get(pid)
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)  # what that launcher would have removed
    os.kill(os.getpid(), signal.SIGKILL)
