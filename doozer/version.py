"""Version stamp. The frozen build overwrites _stamp.py with the git commit."""

from __future__ import annotations

import platform
import sys

__version__ = "0.1.0"


def commit() -> str:
    try:
        from doozer._stamp import COMMIT  # written by the release build

        return COMMIT
    except ImportError:
        return "unknown"


def describe() -> str:
    frozen = " (frozen)" if getattr(sys, "frozen", False) else ""
    return (
        f"doozer {__version__}{frozen}\n"
        f"commit {commit()}\n"
        f"python {platform.python_version()} ({platform.python_implementation()})\n"
        f"platform {sys.platform}-{platform.machine()}"
    )
