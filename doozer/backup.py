"""`doozer snapshot save` and `doozer snapshot restore`: backups of a live tree.

`save` asks a live node for SNAPSHOT (linearizable unless --stale: the state
at one rev) and writes it to FILE. `restore` turns FILE into a new data dir:
a new single-member cluster with every file and file rev of the backup, and
/ctl rewritten for its new node at revs after the backup's.

Backup file (version 1), integers little-endian:

    offset 0    8 bytes   magic b"DZBACKUP"
    offset 8    u32       format version (1)
    offset 12   u32       crc32 of the body
    offset 16   u64       body length
    offset 24   body      orjson object: {"rev": N, "files": K, "saved_at": ISO-8601 UTC,
                          "saved_from": ADDR, "snapshot": <the node's SNAPSHOT answer>}

The file is exactly 24 + body length bytes. It is written to FILE.tmp, fsynced
and renamed, so FILE is either the old file or a whole new one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import secrets
import socket
import struct
import sys
import zlib
from collections.abc import Callable
from typing import Any

import orjson

from doozer import errors, uri
from doozer.commands import parse_duration
from doozer.consensus.durable import DurableState
from doozer.consensus.membership import schedule_to_wire
from doozer.mutation import CLOBBER, DEL, SET, Mutation
from doozer.storage import DataDir, StorageError
from doozer.store import DEFAULT_HIST, Store
from doozer.version import __version__

MAGIC = b"DZBACKUP"
VERSION = 1
_HDR = struct.Struct("<8sIIQ")

PROGRESS_STEP = 8 << 20  # bytes between progress lines; smaller trees print none
_IGNORED = {"lost+found"}


class BackupError(Exception):
    """A backup that cannot be read, saved or restored; the message says why."""


# -- the file ------------------------------------------------------------------


def encode(body: dict) -> bytes:
    data = orjson.dumps(body)
    return _HDR.pack(MAGIC, VERSION, zlib.crc32(data), len(data)) + data


def decode(data: bytes, name: str = "backup") -> dict:
    """The body of a backup file; BackupError if it fails any check."""
    if len(data) < _HDR.size:
        raise BackupError(f"{name}: not a doozer backup (only {len(data)} bytes)")
    magic, version, crc, length = _HDR.unpack_from(data)
    if magic != MAGIC:
        raise BackupError(f"{name}: not a doozer backup (magic {magic!r})")
    if version != VERSION:
        raise BackupError(f"{name}: backup format version {version}; this doozer reads {VERSION}")
    if len(data) != _HDR.size + length:
        raise BackupError(
            f"{name}: file is {len(data)} bytes, its header says {_HDR.size + length} "
            "(truncated or appended to)"
        )
    body = memoryview(data)[_HDR.size :]
    if zlib.crc32(body) != crc:
        raise BackupError(f"{name}: checksum mismatch: the file is damaged")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BackupError(f"{name}: body is not valid JSON ({e})") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("snapshot"), dict):
        raise BackupError(f"{name}: body holds no snapshot")
    return obj


def write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise BackupError(f"cannot write {path}: {e.strerror or e}") from e


def restore_store(snapshot: dict) -> Store:
    """The snapshot's store, with its whole history window kept."""
    st = snapshot.get("store")
    if not isinstance(st, dict):
        raise BackupError("the snapshot holds no store")
    window = int(st.get("rev", 0)) - int(st.get("oldest", 1)) + 2
    try:
        return Store.restore(st, hist=max(DEFAULT_HIST, window))
    except (ValueError, KeyError, TypeError) as e:
        raise BackupError(f"the snapshot's store does not load: {e}") from e


# -- save ------------------------------------------------------------------------


class _Progress:
    """Bytes received, on stderr, every PROGRESS_STEP bytes."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.total = 0
        self.said = 0
        self.next = PROGRESS_STEP

    def add(self, n: int) -> None:
        self.total += n
        if self.total >= self.next:
            self.next = self.total + PROGRESS_STEP
            self.say()

    def say(self) -> None:
        self.said = self.total
        print(f"{self.what} {self.total / (1 << 20):.1f} MiB", file=sys.stderr, flush=True)


def fetch(
    addr: str,
    secret: str | None,
    *,
    stale: bool = False,
    timeout: float = 60.0,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """The SNAPSHOT answer of the node at `addr`: {"snapshot": ..., "rev": N}.
    `timeout` bounds connecting and each wait for data. DoozerError if the node
    answers with an error; OSError if it cannot be reached."""
    host, port = uri.split_host_port(addr)
    reqs: list[dict] = []
    if secret:
        reqs.append({"tag": 0, "verb": "ACCESS", "value": secret})
    snap_req: dict[str, Any] = {"tag": 1, "verb": "SNAPSHOT"}
    if stale:
        snap_req["stale"] = True
    reqs.append(snap_req)
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"".join(orjson.dumps(r) + b"\n" for r in reqs))
        buf = bytearray()
        got: dict[Any, dict] = {}
        scanned = 0
        while 1 not in got:
            i = buf.find(b"\n", scanned)
            if i < 0:
                scanned = len(buf)
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise ConnectionError(f"{addr} closed the connection after {len(buf)} bytes")
                buf += chunk
                if progress is not None:
                    progress(len(chunk))
                continue
            resp = orjson.loads(memoryview(buf)[:i])
            del buf[: i + 1]
            scanned = 0
            if "err_code" in resp:
                raise errors.DoozerError(resp["err_code"], resp.get("err_detail", ""))
            got[resp.get("tag")] = resp
    resp = got[1]
    if not isinstance(resp.get("snapshot"), dict) or not isinstance(resp.get("rev"), int):
        raise errors.DoozerError(errors.BAD_REQUEST, f"{addr} sent no snapshot")
    return resp


def _read_secret_file(path: str) -> str | None:
    with open(path, "rb") as f:
        return f.read().strip().decode() or None


def save(args: argparse.Namespace) -> int:
    specs = [*(args.addr or []), *(getattr(args, "top_addr", None) or [])]
    timeout = args.timeout or getattr(args, "top_timeout", None) or 60.0
    try:
        addrs, secret = uri.resolve(specs or None)
        if args.secret_file:
            secret = _read_secret_file(args.secret_file)
    except (uri.BadURI, OSError, UnicodeDecodeError) as e:
        return _fail(str(e))
    resp = None
    last = ""
    for addr in addrs:
        prog = _Progress(f"received from {addr}:")
        try:
            resp = fetch(addr, secret, stale=args.stale, timeout=timeout, progress=prog.add)
        except errors.DoozerError as e:
            hint = "; --stale saves a possibly stale copy" if e.code == errors.UNAVAILABLE else ""
            return _fail(f"{addr}: {e.code}: {e.detail}{hint}")
        except (OSError, ValueError) as e:
            last = f"{addr}: {e}"
            continue
        if prog.said and prog.said != prog.total:
            prog.say()
        break
    if resp is None:
        return _fail(f"no node answered ({last})")
    snapshot, rev = resp["snapshot"], resp["rev"]
    try:
        files = len(restore_store(snapshot))  # also proves the snapshot loads
    except BackupError as e:
        return _fail(f"{addr}: {e}")
    body = {
        "rev": rev,
        "files": files,
        "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "saved_from": addr,
        "snapshot": snapshot,
    }
    try:
        write_atomic(args.file, encode(body))
    except BackupError as e:
        return _fail(str(e))
    print(f"saved rev {rev} ({files} files) to {args.file}")
    return 0


# -- restore ---------------------------------------------------------------------


def seed(
    snapshot: dict, *, name: str | None, cals: int | None, node_id: str, cluster_id: str
) -> tuple[dict, str, Store]:
    """The data dir snapshot of a new single-member cluster seeded from `snapshot`
    (a node's SNAPSHOT answer): (dir snapshot, cluster name, restored store).

    Every file keeps its value and rev; /ctl is rewritten at revs after the
    snapshot's: the old /ctl/node entries removed, this node's added (addr
    empty: the node writes its own at start), /ctl/cal/0 this node and
    /ctl/cal/1.. empty slots (`cals` in all; default: as many as the backup had).
    """
    store = restore_store(snapshot)
    meta = snapshot.get("meta") or {}
    instance = int(meta.get("instance", 0))
    old_name = store.get("/ctl/name")[0].decode("utf-8", "replace") or meta.get("name") or "local"
    name = name or old_name
    old_cal = store.walk("/ctl/cal/*")
    if cals is None:
        cals = max(1, len(old_cal))
    muts = [Mutation(DEL, p, CLOBBER) for p, _, _ in store.walk("/ctl/node/**")]
    muts += [
        Mutation(DEL, p, CLOBBER)
        for p, _, _ in old_cal
        if not (p[len("/ctl/cal/") :].isdigit() and int(p[len("/ctl/cal/") :]) < cals)
    ]
    if store.get("/ctl/name")[0] != name.encode():
        muts.append(Mutation(SET, "/ctl/name", CLOBBER, name.encode()))
    node = f"/ctl/node/{node_id}"
    muts += [
        Mutation(SET, f"{node}/addr", CLOBBER, b""),
        Mutation(SET, f"{node}/hostname", CLOBBER, socket.gethostname().encode()),
        Mutation(SET, f"{node}/version", CLOBBER, __version__.encode()),
        Mutation(SET, "/ctl/cal/0", CLOBBER, node_id.encode()),
    ]
    muts += [Mutation(SET, f"/ctl/cal/{k}", CLOBBER, b"") for k in range(1, cals)]
    for m in muts:
        applied = store.apply(m)
        if applied.err:
            raise BackupError(f"cannot rewrite {m.path}: {applied.err}: {applied.detail}")
    schedule = [(instance + 1, frozenset({node_id}))]
    durable = DurableState(base=instance, schedule=schedule)
    node_snap = {
        "store": store.snapshot(),
        "origins": [],
        "meta": {
            "instance": instance,
            "schedule": schedule_to_wire(schedule),
            "cluster_id": cluster_id,
            "name": name,
        },
    }
    return {"instance": instance, "node": node_snap, "durable": durable.to_json()}, name, store


def _holds_data(path: str) -> list[str]:
    try:
        return sorted(set(os.listdir(path)) - _IGNORED)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return [path]


def restore(args: argparse.Namespace) -> int:
    path = args.data_dir
    try:
        size = os.path.getsize(args.file)
        loud = size >= PROGRESS_STEP
        if loud:
            _say(f"reading {args.file} ({size / (1 << 20):.1f} MiB)")
        with open(args.file, "rb") as f:
            body = decode(f.read(), args.file)
    except OSError as e:
        return _fail(f"cannot read {args.file}: {e.strerror or e}")
    except BackupError as e:
        return _fail(str(e))
    if args.cals is not None and args.cals < 1:
        return _fail("--cals must be at least 1")
    there = _holds_data(path)
    if there:
        return _fail(
            f"{path} already holds data ({', '.join(there[:5])}{' ...' if len(there) > 5 else ''});"
            " restore into a new or empty dir"
        )
    node_id = secrets.token_hex(8)
    cluster_id = secrets.token_hex(8)
    try:
        snap, name, store = seed(
            body["snapshot"],
            name=args.cluster,
            cals=args.cals,
            node_id=node_id,
            cluster_id=cluster_id,
        )
    except BackupError as e:
        return _fail(f"{args.file}: {e}")
    if loud:
        _say(f"checked rev {body.get('rev')}: {len(store)} files; writing {path}")
    try:
        with DataDir.open(path, create=True) as dd:
            old, recs = dd.load()
            if not dd.is_new() or old is not None or recs:
                return _fail(f"{path} already holds data; restore into a new or empty dir")
            dd.save_snapshot(snap)
            # meta last: a dir with meta is a complete restore
            dd.write_meta(
                {
                    "node_id": node_id,
                    "cluster_name": name,
                    "cluster_id": cluster_id,
                    "restored_from": os.path.abspath(args.file),
                    "restored_rev": body.get("rev"),
                }
            )
    except StorageError as e:
        return _fail(f"{e} (remove {path} before trying again)")
    print(
        f"restored rev {body.get('rev')} ({len(store)} files) into {path} as cluster {name!r} "
        f"(id {cluster_id}), node {node_id} its only member, at rev {store.rev}; "
        f"start it with: doozer serve -d {path} -c {name}"
    )
    return 0


# -- command line ------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _fail(text: str) -> int:
    print(f"Error: {text}", file=sys.stderr)
    return 2


def add_parsers(sub: Any) -> None:
    """Add `snapshot save` and `snapshot restore` to the `doozer` subparsers."""
    p = sub.add_parser(
        "snapshot",
        help="back up a live tree to a file, or restore a backup as a new cluster",
        description="Back up a live node's tree (save) or seed a new cluster's data dir "
        "from a backup (restore).",
    )
    # `doozer -a ADDR snapshot save FILE` reaches us as `snapshot -a ADDR save FILE`
    # (cli hoists the original's global flags to just after the command).
    p.add_argument("-a", dest="top_addr", action="append", metavar="ADDR", help=argparse.SUPPRESS)
    p.add_argument("-t", dest="top_timeout", type=parse_duration, help=argparse.SUPPRESS)
    ss = p.add_subparsers(dest="snapshot_command", metavar="ACTION", required=True)

    s = ss.add_parser(
        "save",
        help="save a live node's tree, consistent at one rev, to FILE",
        description="Save a live node's tree, with every file's rev and the history "
        "window, consistent at one rev, to FILE (written atomically).",
    )
    s.add_argument("file", metavar="FILE")
    s.add_argument(
        "-a",
        dest="addr",
        action="append",
        metavar="ADDR",
        help="a node's host:port, a comma-separated list, or a doozer:?ca=HOST:PORT&sk=SECRET "
        "URI; repeatable (default: $DOOZER_URI, else 127.0.0.1:8046; secret: the URI's sk, "
        "else $DOOZER_SECRET)",
    )
    s.add_argument("--secret-file", metavar="FILE", help="file holding the access secret")
    s.add_argument(
        "--stale",
        action="store_true",
        help="take the node's own state without a quorum read (works without a quorum)",
    )
    s.add_argument(
        "-t",
        dest="timeout",
        type=parse_duration,
        default=None,
        metavar="TIMEOUT",
        help="seconds or a duration like 1m30s: deadline for connecting and for each wait "
        "on data (default 60s)",
    )
    s.set_defaults(func=save)

    r = ss.add_parser(
        "restore",
        help="seed a new single-member cluster's data dir from FILE",
        description="Create data dir DIR for a new cluster whose only member is a new node: "
        "every file and file rev of the backup is kept, and /ctl is rewritten for the new "
        "node at revs after the backup's. Start it with `doozer serve -d DIR`.",
    )
    r.add_argument("file", metavar="FILE")
    r.add_argument("-d", "--data-dir", dest="data_dir", required=True, metavar="DIR")
    r.add_argument(
        "-c", dest="cluster", metavar="NAME", help="cluster name (default: the backup's /ctl/name)"
    )
    r.add_argument(
        "--cals",
        type=int,
        metavar="N",
        help="consensus slots of the new cluster, slot 0 its node (default: as many as the "
        "backup's)",
    )
    r.set_defaults(func=restore)
