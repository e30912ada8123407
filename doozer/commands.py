"""The client commands of the `doozer` CLI, after the original doozer tool.

Exit status: 0 on success, 1 for a rev mismatch, 2 for any other error
(`Error: CODE: detail` on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from doozer import errors, uri
from doozer.client import Client, Event

Body = Callable[[Client, argparse.Namespace], Awaitable[int]]

GLOB_HELP = """\
Glob rules: '?' matches one character of a name, '*' zero or more characters
within one name, '**' zero or more characters of any kind ('/' included);
anything else matches itself.
"""

EVENT_FORMAT = """\
Each change is printed as a record:

  <path> <rev> <set|del> <len> LF <body> LF

<len> is the body's length in bytes (0 for del), LF a line feed; the body is
written raw, so read exactly <len> bytes after the first line.
"""

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from `2.5` (seconds) or a Go-style duration such as `1m30s`, `500ms`."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNIT[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise argparse.ArgumentTypeError(f"bad duration {text!r}") from None
    if seconds < 0 or seconds != seconds:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}")
    return seconds


def _out(data: bytes) -> None:
    sys.stdout.buffer.write(data)


def _line(text: str | int) -> None:
    _out(f"{text}\n".encode())


def _fail(code: str, detail: str) -> int:
    print(f"Error: {code}: {detail}", file=sys.stderr)
    return 1 if code == errors.REV_MISMATCH else 2


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _runner(body: Body) -> Callable[[argparse.Namespace], int]:
    """Wrap a command body: connect, run it, map errors to exit statuses."""

    def run(args: argparse.Namespace) -> int:
        try:
            addrs, secret = uri.resolve(args.addr)
        except uri.BadURI as e:
            return _fail("BAD_URI", str(e))
        # -t bounds the wait of wait/watch; elsewhere, connecting and the call.
        timeout = (
            10.0 if args.timeout is None or args.command in ("wait", "watch") else args.timeout
        )

        async def session() -> int:
            c = Client(addrs, secret=secret, timeout=timeout)
            try:
                await c.connect()
                return await body(c, args)
            finally:
                await c.close()

        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                status = runner.run(session())
            sys.stdout.flush()
            return status
        except errors.DoozerError as e:
            return _fail(e.code, e.detail)
        except BrokenPipeError:
            _quiet_stdout()
            return 0

    return run


def _quiet_stdout() -> None:
    # The reader went away (`doozer watch ... | head`): exit without a
    # second EPIPE traceback when Python flushes stdout at exit.
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _read_stdin() -> bytes:
    return sys.stdin.buffer.read()


def _parse_rev(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad rev {text!r}: want an integer") from None


def _timeout(args: argparse.Namespace) -> float | None:
    return args.timeout


# -- command bodies -----------------------------------------------------------


async def _get(c: Client, args: argparse.Namespace) -> int:
    value, _ = await c.get(args.path, args.rev)
    _out(value)
    return 0


async def _write(c: Client, args: argparse.Namespace, rev: int) -> int:
    _line(await c.set(args.path, _read_stdin(), rev, timeout=_timeout(args)))
    return 0


async def _set(c: Client, args: argparse.Namespace) -> int:
    return await _write(c, args, args.old_rev)


async def _add(c: Client, args: argparse.Namespace) -> int:
    return await _write(c, args, 0)


async def _del(c: Client, args: argparse.Namespace) -> int:
    _line(await c.delete(args.path, args.old_rev, timeout=_timeout(args)))
    return 0


async def _touch(c: Client, args: argparse.Namespace) -> int:
    value, rev = await c.get(args.path)
    _line(await c.set(args.path, value, rev, timeout=_timeout(args)))
    return 0


async def _stat(c: Client, args: argparse.Namespace) -> int:
    length, rev = await c.stat(args.path, args.rev)
    if rev == 0:
        return _fail(errors.NOENT, f"no such file or directory: {args.path}")
    _line(f"d {length}" if rev == -2 else f"{rev} {length}")
    return 0


def _join(parent: str, name: str) -> str:
    return parent.rstrip("/") + "/" + name


async def _find(c: Client, args: argparse.Namespace) -> int:
    top = await c.stat(args.path, args.rev)
    if top.rev == 0:
        return _fail(errors.NOENT, f"no such file or directory: {args.path}")
    rev = args.rev if args.rev is not None else top.snap_rev  # one snapshot for the whole tree
    gate = asyncio.Semaphore(64)  # bound the requests in flight on a wide tree

    async def stat(path: str) -> bool:
        async with gate:
            return (await c.stat(path, rev)).is_dir

    async def tree(path: str) -> list[str]:
        async with gate:
            names = await c.getdir(path, rev)
        kids = [_join(path, n) for n in names]
        dirs = await asyncio.gather(*(stat(k) for k in kids))
        subs = await asyncio.gather(
            *(tree(k) if d else _leaf(k) for k, d in zip(kids, dirs, strict=True))
        )
        return [path] + [p for sub in subs for p in sub]

    paths = await tree(args.path) if top.is_dir else [args.path]
    _out("".join(p + "\n" for p in paths).encode())
    return 0


async def _leaf(path: str) -> list[str]:
    return [path]


async def _ls(c: Client, args: argparse.Namespace) -> int:
    names = await c.getdir(args.path, args.rev)
    _out("".join(n + "\n" for n in names).encode())
    return 0


def _print_event(ev: Event) -> None:
    kind = "del" if ev.is_del else "set"
    _out(f"{ev.path} {ev.rev} {kind} {len(ev.value)}\n".encode() + ev.value + b"\n")
    sys.stdout.buffer.flush()


async def _wait(c: Client, args: argparse.Namespace) -> int:
    _print_event(await c.wait(args.glob, args.rev, timeout=args.timeout))
    return 0


async def _watch(c: Client, args: argparse.Namespace) -> int:
    if args.count is not None and args.count <= 0:
        return 0
    seen = 0
    async with c.watch(args.glob, args.rev) as w:
        async for ev in w:
            _print_event(ev)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return 0


async def _rev(c: Client, args: argparse.Namespace) -> int:
    _line(await c.rev(timeout=_timeout(args)))
    return 0


async def _nop(c: Client, args: argparse.Namespace) -> int:
    _line(await c.nop(timeout=_timeout(args)))
    return 0


async def _self(c: Client, args: argparse.Namespace) -> int:
    info = await c.self_info(timeout=_timeout(args))
    _line(info.get("id") or "")
    return 0


# -- parsers ------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection options")
    g.add_argument(
        "-a",
        dest="addr",
        action="append",
        metavar="ADDR",
        help="a node's host:port, a comma-separated list, or a doozer:?ca=HOST:PORT&sk=SECRET "
        "URI; repeatable (default: $DOOZER_URI, else 127.0.0.1:8046; secret: the URI's sk, "
        "else $DOOZER_SECRET)",
    )
    g.add_argument(
        "-r",
        dest="rev",
        type=_parse_rev,
        default=None,
        metavar="REV",
        help="read at this rev (get, stat, ls, find); start at this rev (wait, watch)",
    )
    g.add_argument(
        "-t",
        dest="timeout",
        type=parse_duration,
        default=None,
        metavar="TIMEOUT",
        help="seconds or a duration like 1m30s: for wait, how long to wait; otherwise the "
        "deadline for connecting and for the request (default 10s)",
    )
    return p


def add_parsers(sub: Any) -> None:
    """Add the client commands to the `doozer` subparsers."""
    common = [_common()]

    def cmd(name: str, body: Body, short: str, long: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            parents=common,
            help=short,
            description=long + "\nExit status: 0 on success, 1 on a rev mismatch, 2 otherwise.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=_runner(body), command=name)
        return p

    p = cmd(
        "get", _get, "read a file", "Prints the body of the file at PATH (raw bytes, as stored).\n"
    )
    p.add_argument("path", metavar="PATH")

    p = cmd(
        "set",
        _set,
        "write a file",
        "Sets the body of the file at PATH to stdin.\n\n"
        "If REV is lower than the file's rev, no change is made (rev mismatch);\n"
        "REV -1 writes unconditionally, 0 only creates. Prints the new rev.\n",
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument("old_rev", metavar="REV", type=_parse_rev)

    p = cmd(
        "add",
        _add,
        "create a file if it does not exist",
        "Sets the body of the file at PATH to stdin only if the file does not exist\n"
        "(set PATH 0). Prints the new rev.\n",
    )
    p.add_argument("path", metavar="PATH")

    p = cmd(
        "del",
        _del,
        "delete a file",
        "Deletes the file at PATH. If REV is lower than the file's rev, no change\n"
        "is made (rev mismatch); REV -1 deletes unconditionally. Prints the rev.\n",
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument("old_rev", metavar="REV", type=_parse_rev)

    p = cmd(
        "touch",
        _touch,
        "bump a file's rev",
        "Rewrites the file at PATH with its own body, giving it a new rev; creates\n"
        "it empty if missing. Prints the new rev.\n",
    )
    p.add_argument("path", metavar="PATH")

    p = cmd(
        "stat",
        _stat,
        "print a file's rev and length",
        "Prints '<rev> <len>' for a file, 'd <count>' for a directory.\n"
        "A missing PATH is an error (NOENT).\n",
    )
    p.add_argument("path", metavar="PATH")

    p = cmd(
        "find",
        _find,
        "list a tree",
        "Prints PATH and every file and directory under it, one path per line,\n"
        "depth first, names sorted, all read at one rev.\n",
    )
    p.add_argument("path", metavar="PATH")

    p = cmd("ls", _ls, "list a directory", "Prints the names in directory PATH, one per line.\n")
    p.add_argument("path", metavar="PATH")

    p = cmd(
        "wait",
        _wait,
        "wait for a change",
        "Prints the next change to a file matching GLOB (with -r, the first change\n"
        "at or after REV; with -t, gives up after TIMEOUT: exit 2, TIMEOUT).\n\n"
        + EVENT_FORMAT
        + "\n"
        + GLOB_HELP,
    )
    p.add_argument("glob", metavar="GLOB")

    p = cmd(
        "watch",
        _watch,
        "print changes as they happen",
        "Prints every change to a file matching GLOB, from the next one on (with\n"
        "-r, from REV on), until interrupted (or -n changes were printed).\n\n"
        + EVENT_FORMAT
        + "\n"
        + GLOB_HELP,
    )
    p.add_argument("glob", metavar="GLOB")
    p.add_argument(
        "-n", dest="count", type=int, default=None, metavar="N", help="stop after N changes"
    )

    cmd("rev", _rev, "print the current rev", "Prints the cluster's current rev.\n")
    cmd(
        "nop",
        _nop,
        "run a consensus round",
        "Runs a no-op through consensus (a barrier) and prints the rev at its place.\n",
    )
    cmd("self", _self, "print the node's id", "Prints the id of the node answering.\n")
