"""A small file system per node's data dir, so that a nemesis can fill it up.

Each is an ext4 image on the real disk, loop-mounted on the node's data dir:
fsyncs still reach the disk (a tmpfs would make them free and change every
timing in the run), and "full" is the kernel's own ENOSPC. Needs root,
mkfs.ext4 and loop devices; `why_not()` says what is missing.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

SIZE_MB = 256  # a run's log and snapshots take a few MB; the image is sparse


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.path.exists("/dev/loop-control"):
        return "needs loop devices"
    return None


class LoopDisk:
    def __init__(self, mountpoint: Path, image: Path, size_mb: int = SIZE_MB) -> None:
        self.mountpoint = mountpoint
        self.image = image
        self.size_mb = size_mb
        self.filler = mountpoint / "jepsen-filler"
        self.mounted = False

    def setup(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size_mb << 20)
        _run("mkfs.ext4", "-q", "-F", str(self.image))
        _run("mount", "-o", "loop", str(self.image), str(self.mountpoint))
        self.mounted = True

    def fill(self) -> int:
        """Take every byte that can be taken; returns how many."""

        def free() -> int:
            st = os.statvfs(self.mountpoint)
            return st.f_bfree * st.f_frsize

        before = free()
        with open(self.filler, "ab") as f:
            fd = f.fileno()
            try:
                # ext4 keeps a reserve even from root: this fails once it has
                # taken what it could, which is what we want
                os.posix_fallocate(fd, os.fstat(fd).st_size, before)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
            for chunk in (1 << 20, 64 << 10, 4 << 10):  # then the rest, to the block
                block = b"\0" * chunk
                while True:
                    try:
                        if os.pwrite(fd, block, os.fstat(fd).st_size) < chunk:
                            break
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
        return before - free()

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def teardown(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
            self.mounted = False
        self.image.unlink(missing_ok=True)


def _run(*argv: str) -> None:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip() or p.returncode}")
