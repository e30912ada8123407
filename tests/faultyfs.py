"""A fault-injecting stand-in for the `os` module as one module sees it.

    fos = FaultyOS()
    monkeypatch.setattr(doozer.storage, "os", fos)
    fos.space = 100          # the disk takes 100 more bytes, then ENOSPC
    fos.fail["fdatasync"] = errno.EIO
    fos.delay["fdatasync"] = 0.05  # a slow disk: each call sleeps first

Everything not overridden is the real `os`. Calls are counted in `fos.calls`.
"""

from __future__ import annotations

import errno
import os
import time
from collections import Counter
from typing import Any


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class FaultyOS:
    def __init__(self) -> None:
        self.space: int | None = None  # bytes writes may still add; None: unlimited
        self.fail: dict[str, int] = {}  # function name -> errno it raises
        self.fail_create: tuple[str, int] | None = None  # (name suffix, errno) for O_CREAT
        self.calls: Counter[str] = Counter()
        self.delay: dict[str, float] = {}  # function name -> seconds it sleeps first

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _check(self, name: str) -> None:
        self.calls[name] += 1
        pause = self.delay.get(name)
        if pause:
            time.sleep(pause)
        code = self.fail.get(name)
        if code is not None:
            raise _err(code)

    def _room(self, n: int) -> int:
        """How much of an n-byte write fits; a full disk writes a prefix, then ENOSPC."""
        if self.space is None:
            return n
        if self.space == 0:
            raise _err(errno.ENOSPC)
        k = min(n, self.space)
        self.space -= k
        return k

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        self._check("pwrite")
        k = self._room(len(data))
        return os.pwrite(fd, memoryview(data)[:k], offset)

    def write(self, fd: int, data: Any) -> int:
        self._check("write")
        k = self._room(len(data))
        return os.write(fd, memoryview(data)[:k])

    def fsync(self, fd: int) -> None:
        self._check("fsync")
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._check("fdatasync")
        os.fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        self._check("ftruncate")
        os.ftruncate(fd, size)

    def replace(self, src: str, dst: str) -> None:
        self._check("replace")
        os.replace(src, dst)

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        self.calls["open"] += 1
        if self.fail_create is not None and flags & os.O_CREAT:
            suffix, code = self.fail_create
            if path.endswith(suffix):
                raise _err(code)
        return os.open(path, flags, mode)
