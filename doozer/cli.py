"""The `doozer` command line: `serve`, the client commands, `bench`, `version`.

Each subcommand lives in the module that owns it; this module only dispatches.
"""

from __future__ import annotations

import argparse
import sys

from doozer.launchers import die_with_launchers


def build_parser() -> argparse.ArgumentParser:
    from doozer import version

    p = argparse.ArgumentParser(
        prog="doozer",
        description="doozer coordination store",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=version.describe())
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    from doozer import serve

    serve.add_parser(sub)

    try:
        from doozer import commands
    except ImportError:
        commands = None
    if commands is not None:
        commands.add_parsers(sub)

    from doozer import backup

    backup.add_parsers(sub)

    try:
        from doozer import bench
    except ImportError:
        bench = None
    if bench is not None:
        bench.add_parser(sub)

    v = sub.add_parser("version", help="print version, commit, Python and platform")
    v.set_defaults(func=lambda args: print(version.describe()) or 0)
    return p


_GLOBAL_OPTS = ("-a", "-r", "-t", "--addr", "--rev", "--timeout")


def hoist_global_options(argv: list[str]) -> list[str]:
    """`doozer -a ADDR get /x` means `doozer get -a ADDR /x`: the original's
    global flags may come before the command."""
    moved: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _GLOBAL_OPTS and i + 1 < len(argv):
            moved += argv[i : i + 2]
            i += 2
        elif arg.split("=", 1)[0] in _GLOBAL_OPTS and "=" in arg:
            moved.append(arg)
            i += 1
        else:
            break
    if not moved or i >= len(argv):
        return argv
    return [argv[i], *moved, *argv[i + 1 :]]


def main(argv: list[str] | None = None) -> int:
    import multiprocessing

    multiprocessing.freeze_support()  # `doozer bench --procs` in the frozen binary
    die_with_launchers()  # the frozen binary: a kill -9 of its top pid stops us too
    parser = build_parser()
    args = parser.parse_args(hoist_global_options(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
