"""`doozer serve`: flags, start-up, signals and logging for one node."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from doozer import protocol
from doozer.mutation import SET, Mutation
from doozer.node import Node
from doozer.peer import MAX_ITEM, MAX_MESSAGE, join_addr
from doozer.runtime import tune_gc
from doozer.sequencer import LocalSequencer
from doozer.server import Server
from doozer.store import Store
from doozer.uri import BadURI, split_addrs
from doozer.version import __version__

log = logging.getLogger("doozer")

DEFAULT_LISTEN = "127.0.0.1:8046"
# The largest value whose write fits one message between members: base64 and
# room for a path of a few KiB (Node._wire_size_check judges each write).
MAX_VALUE_BETWEEN_MEMBERS = (MAX_ITEM - 256 - 4096) * 3 // 4
DEFAULT_WEB = "127.0.0.1:8000"
DEFAULT_DATA_DIR = "./doozer-data"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run a doozer node")
    p.add_argument(
        "-l",
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="ADDR",
        help="address for clients and peers (default %(default)s)",
    )
    p.add_argument(
        "--advertise",
        metavar="ADDR",
        help="address others use to reach this node (default: the listen address)",
    )
    p.add_argument(
        "-a",
        "--attach",
        action="append",
        default=[],
        metavar="ADDR",
        help="join the cluster of this live node (repeatable, or a,b,c; this node's own "
        "address is skipped); when resuming from a data dir, where to find a peer that moved",
    )
    p.add_argument(
        "-c", "--cluster", default=None, metavar="NAME", help="cluster name (default local)"
    )
    p.add_argument(
        "-w",
        "--web",
        default=None,
        metavar="ADDR",
        help=f"web viewer address, or 'off' (default {DEFAULT_WEB})",
    )
    p.add_argument(
        "-d",
        "--data-dir",
        default=None,
        metavar="DIR",
        help=f"data directory (default {DEFAULT_DATA_DIR})",
    )
    p.add_argument("--mem", action="store_true", help="keep nothing on disk")
    p.add_argument(
        "--cals",
        type=_number(int, 1),
        default=3,
        metavar="N",
        help="consensus slots of a new cluster (first node only; default %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=_number(float, 0.1),
        default=60.0,
        metavar="S",
        help="remove a member not heard from for S seconds (default %(default)g)",
    )
    p.add_argument(
        "--election-timeout",
        type=_number(float, 0.05),
        default=1.0,
        metavar="S",
        help="wait on a silent leader before taking over (default %(default)g)",
    )
    p.add_argument(
        "--all-vote",
        action="store_true",
        help="as leader, send every accept to every member (default: to a quorum only,"
        " and to all when a vote is late)",
    )
    p.add_argument(
        "--hist",
        type=_number(int, 1),
        default=2000,
        metavar="N",
        help="revisions of history (default %(default)s)",
    )
    p.add_argument(
        "--hist-bytes",
        type=_number(int, 1),
        default=256 << 20,
        metavar="BYTES",
        help="memory budget for history (default 256 MiB)",
    )
    p.add_argument(
        "--max-value",
        type=_number(int, 0),
        default=protocol.MAX_VALUE,
        metavar="BYTES",
        help="largest file body (default 1 MiB)",
    )
    p.add_argument(
        "--max-line",
        type=_number(int, 4096),
        default=protocol.MAX_LINE,
        metavar="BYTES",
        help="longest request line (default 4 MiB)",
    )
    p.add_argument(
        "--request-timeout",
        type=_number(float, 0.001),
        default=10.0,
        metavar="S",
        help="default timeout of writes and linearizable reads (default %(default)g)",
    )
    p.add_argument(
        "--readonly",
        action="store_true",
        help="an observer: never claims a slot, answers writes READONLY",
    )
    p.add_argument(
        "--secret-file", metavar="FILE", help="file holding the access secret (else $DOOZER_SECRET)"
    )
    p.add_argument(
        "--snap-revs",
        type=_number(int, 1),
        default=20_000,
        metavar="N",
        help="snapshot the store every N revs (default %(default)s), once the log"
        " since the last snapshot is at least half that snapshot's size",
    )
    p.add_argument(
        "--snap-bytes",
        type=_number(int, 1),
        default=64 << 20,
        metavar="BYTES",
        help="... or every BYTES of log (default 64 MiB)",
    )
    p.add_argument(
        "--segment-bytes",
        type=_segment_bytes,
        default=64 << 20,
        metavar="BYTES",
        help="size of a log segment (default 64 MiB; at least 64 KiB): the next starts"
        " once one is full, and a snapshot frees whole segments",
    )
    p.add_argument(
        "--single",
        action="store_true",
        help="run without consensus (one member, never joinable); for measuring the core",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    p.set_defaults(func=run)


def _number(kind: type, lo: float) -> Callable[[str], Any]:
    """An argparse type: a number of `kind`, at least `lo` (a 0 or negative
    timeout, history or slot count made a node that misbehaved quietly, or
    a traceback)."""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not v >= lo:  # NaN too
            raise argparse.ArgumentTypeError(f"must be at least {lo:g}")
        return v

    return parse


def _segment_bytes(text: str) -> int:
    n = int(text)
    if n < 64 << 10:
        raise argparse.ArgumentTypeError("must be at least 65536")
    return n


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bad address {addr!r}: want HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _cannot_listen(addr: str) -> str | None:
    """Why `addr` is certainly not free to listen on (in use, not ours, not
    allowed), else None; anything less clear is left to the real bind."""
    try:
        host, port = split_addr(addr)
    except ValueError:
        return None  # the real start-up says what is wrong with it
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                return os.strerror(e.errno)
    return None


def read_secret(args: argparse.Namespace) -> bytes | None:
    if args.secret_file:
        with open(args.secret_file, "rb") as f:
            return f.read().strip() or None
    env = os.environ.get("DOOZER_SECRET")
    return env.encode() if env else None


def setup_logging(level: str, node_id: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s.%(msecs)03d doozer: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger("doozer")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    args.cluster_explicit = args.cluster is not None
    args.cluster = args.cluster or "local"
    if args.timeout < 2 * args.election_timeout:
        # members hear from each other every election timeout / 5 at least
        log.error(
            "--timeout %g is under twice --election-timeout %g: live members would lose "
            "their slots over a hiccup",
            args.timeout,
            args.election_timeout,
        )
        return 2
    try:
        host, port = split_addr(args.listen)
        if args.advertise:
            split_addr(args.advertise)
        secret = read_secret(args)
    except (ValueError, OSError) as e:
        log.error("%s", e)
        return 2
    if args.mem and args.data_dir is not None:
        log.error("--mem keeps nothing on disk: it cannot be given with -d %s", args.data_dir)
        return 2
    if args.max_value > MAX_VALUE_BETWEEN_MEMBERS:
        log.error(
            "--max-value %d: members pass values to each other in messages of at most "
            "%d bytes, base64-encoded; the largest value that fits is %d bytes",
            args.max_value,
            MAX_MESSAGE,
            MAX_VALUE_BETWEEN_MEMBERS,
        )
        return 2
    if args.data_dir is None:
        args.data_dir = DEFAULT_DATA_DIR
    if args.advertise is None and host in ("0.0.0.0", "::", ""):
        log.error("listening on %s needs --advertise ADDR", args.listen)
        return 2
    own = {(host, port)}
    if args.advertise:
        own.add(split_addr(args.advertise))
    # -a takes lists too (a,b,c), as the client commands and bench do; a
    # malformed one would otherwise be retried for ever as a host name.
    try:
        attach = [a for text in args.attach or () for a in split_addrs(text)]
    except BadURI as e:
        log.error("-a: %s", e)
        return 2
    # The same list on every node's command line is fine: each skips itself.
    args.attach = [a for a in attach if split_addr(a) not in own]
    if attach and not args.attach:
        log.error("-a %s is this node's own address: leave -a out to start a cluster", attach[0])
        return 2
    # A port in use is found now, not after joining the cluster (which
    # writes this node's /ctl/node entries) or creating the data dir.
    # (The default web address is let go with a warning if taken, later.)
    for what, addr in (("", args.listen), ("web viewer: ", args.web)):
        if addr is None or addr == "off":
            continue
        why = _cannot_listen(addr)
        if why is not None:
            log.error("%scannot listen on %s: %s", what, addr, why)
            return 1
    from doozer import runtime

    raised = runtime.raise_fd_limit()
    if raised is not None:
        log.info("open-file limit raised from %d to %d", *raised)
    try:
        return runtime.run_loop(_serve(args, host, port, secret))
    finally:
        # a signal arriving while the loop winds down must not kill us
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)


async def _serve(args: argparse.Namespace, host: str, port: int, secret: bytes | None) -> int:
    install_signal_handlers()
    try:
        return await _start_and_serve(args, host, port, secret)
    except asyncio.CancelledError:
        if _stop is None or not _stop.is_set():
            raise
        log.info("stopped by a signal while starting")
        return 0


async def _start_and_serve(
    args: argparse.Namespace, host: str, port: int, secret: bytes | None
) -> int:
    if not args.single:
        from doozer import cluster

        return await cluster.serve(args, host, port, secret)
    if not args.mem:
        log.warning(
            "durability is not implemented yet: %s is not used; this node keeps its data in memory",
            args.data_dir,
        )
    node_id = secrets.token_hex(8)
    store = Store(hist=args.hist, hist_bytes=args.hist_bytes)
    node = Node(
        node_id=node_id,
        store=store,
        sequencer=LocalSequencer(),
        readonly=args.readonly,
        default_timeout=args.request_timeout,
    )
    server = Server(node, secret=secret, max_line=args.max_line, max_value=args.max_value)
    try:
        bound_host, bound_port = await server.start(host, port)
    except OSError as e:
        log.error("cannot listen on %s: %s", args.listen, e)
        return 1
    node.addr = args.advertise or join_addr(bound_host, bound_port)
    node.start()
    tune_gc()
    await write_initial_ctl(node, args.cluster, args.cals)
    try:
        web = await start_web(args, node, secret)
    except OSError as e:
        log.error("%s", e)
        await shutdown(server, node, None)
        return 1
    log.info(
        "node %s listening on %s (cluster %r, single member)", node_id, node.addr, args.cluster
    )
    code = await wait_for_signal()
    log.info("shutting down")
    await shutdown(server, node, web)
    return code


async def write_initial_ctl(node: Node, cluster_name: str, cals: int) -> None:
    """A new cluster's /ctl: its name, its slots (slot 0 ours), this node."""
    muts = [Mutation(SET, "/ctl/name", -1, cluster_name.encode())]
    muts.append(Mutation(SET, f"/ctl/node/{node.node_id}/addr", -1, node.addr.encode()))
    muts.append(
        Mutation(SET, f"/ctl/node/{node.node_id}/hostname", -1, socket.gethostname().encode())
    )
    muts.append(Mutation(SET, f"/ctl/node/{node.node_id}/version", -1, __version__.encode()))
    muts.append(Mutation(SET, "/ctl/cal/0", -1, node.node_id.encode()))
    for i in range(1, max(cals, 1)):
        muts.append(Mutation(SET, f"/ctl/cal/{i}", 0, b""))
    await propose_all(node, muts)


async def propose_all(node: Node, muts: list[Mutation], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    futs = []
    for m in muts:
        fut = loop.create_future()

        def done(applied, why, fut=fut):  # type: ignore[no-untyped-def]
            if not fut.done():
                fut.set_result((applied, why))

        node.propose(m, done, timeout)
        futs.append(fut)
    for m, (applied, why) in zip(muts, await asyncio.gather(*futs), strict=True):
        if applied is None:
            raise RuntimeError(f"could not write {m.path}: {why}")


async def start_web(args: argparse.Namespace, node: Node, secret: bytes | None):  # type: ignore[no-untyped-def]
    if args.web == "off":
        return None
    from doozer import web

    return await web.start(args.web or DEFAULT_WEB, node, secret, explicit=args.web is not None)


_stop: asyncio.Event | None = None
_main: asyncio.Task | None = None  # the task starting the node, then serving
_serving = False  # start-up is over: a signal now means a graceful stop
_exit_code = 0  # what wait_for_signal returns: set by stop()


def install_signal_handlers() -> None:
    """SIGTERM/SIGINT ask for a graceful stop. Installed before listening and
    never removed: in the frozen binary a group signal arrives twice (directly
    and forwarded by the bootloaders), and the repeat must not kill us."""
    global _stop, _main, _serving, _exit_code
    loop = asyncio.get_running_loop()
    _stop = asyncio.Event()
    _exit_code = 0
    _main = asyncio.current_task()
    _serving = False
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal)


def _on_signal() -> None:
    assert _stop is not None
    _stop.set()
    if not _serving and _main is not None and not _main.done():
        # Still starting: joining through a peer that does not answer can
        # retry for ever, and nothing has been handed out yet. Stop now.
        _main.cancel()


def stop(code: int) -> None:
    """Stop gracefully, as a signal would, and exit with `code`: for a fault
    the node cannot serve through."""
    global _exit_code
    _exit_code = code
    if _stop is not None:
        _stop.set()


async def wait_for_signal() -> int:
    global _serving
    if _stop is None:
        install_signal_handlers()
    assert _stop is not None
    _serving = True
    await _stop.wait()
    return _exit_code


async def shutdown(server: Server, node: Node, web, grace: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    """Stop accepting, give in-flight writes a moment to finish, fail the rest."""
    server.stop_accepting()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while node._pending and loop.time() < deadline:
        await asyncio.sleep(0.01)
    node.close()
    await server.quiesce()
    if web is not None:
        await web.close()
    await server.close()
