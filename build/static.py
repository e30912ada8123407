"""Run staticx so that the same input gives the same output, byte for byte.

staticx (0.14) stores its archive members with the time they were copied into
its scratch dir (the program and libnssfix.so), so two runs over one input
differ. This sets every member's mtime to SOURCE_DATE_EPOCH (the release
script passes the commit time) before staticx writes it; nothing else in the
archive varies between runs.

Usage: python build/static.py [staticx options] PROG OUTPUT
"""

from __future__ import annotations

import os
import sys
import tarfile

from staticx.__main__ import main

EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))

_addfile = tarfile.TarFile.addfile


def _addfile_fixed_time(self: tarfile.TarFile, tarinfo: tarfile.TarInfo, *args, **kwargs):
    tarinfo.mtime = EPOCH
    return _addfile(self, tarinfo, *args, **kwargs)


tarfile.TarFile.addfile = _addfile_fixed_time  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "staticx"
    main()
