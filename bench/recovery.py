"""Durability figures: crash recovery from a long log, and snapshot size and time.

    python bench/recovery.py [--mutations N] [--files N] [--only log|snapshot]
                             [--workdir DIR] [--keep] [--json FILE]

log (default N = 1,000,000): one durable single-member `doozer serve` that never
snapshots (--snap-revs/--snap-bytes set huge), so every mutation stays in the
write-ahead log. `doozer bench set -n N` fills it; the node is killed with
SIGKILL; the data dir's size is recorded (apparent bytes and allocated bytes:
log segments are preallocated to 64 MiB); the node is restarted on the same dir
and timed from its exec until it answers REV, and until that REV equals the rev
read before the kill. Its "resumed" log line is shown.

snapshot (default N = 100,000 files): in this process, a Store(hist=2000) of N
files of 100-byte values over 1000 directories; the snapshot dict the node
writes ({"instance", "node", "durable"}) is built and saved with
DataDir.save_snapshot (orjson, temp file, fsync, rename); the dir is reopened,
load() and Store.restore() timed, and the restored store checked.

Both parts use the code of the checkout this file is in (sys.path and
PYTHONPATH), not whatever doozer is installed. Everything runs under a temp dir
(inside --workdir if given) that is removed at the end unless --keep. Run it
under `nice` on a shared machine; every process it starts is stopped on exit,
error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doozer.consensus import DurableState
from doozer.mutation import SET, Mutation
from doozer.storage import DataDir
from doozer.store import Store

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
HIST = 2000
VALUE_SIZE = 100
DIRS = 1000
POLL_SLEEP = 0.05


# --- processes ---------------------------------------------------------------


def child_env() -> dict[str, str]:
    # The editable install may point at another checkout: force this one.
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def start_group(argv: list[str], out: Any, err: Any) -> subprocess.Popen:
    """A child in a session of its own, so that its whole group (the bench's
    worker processes included) can be signalled at once."""
    return subprocess.Popen(
        argv, stdout=out, stderr=err, env=child_env(), cwd=ROOT, start_new_session=True
    )


def kill_group(p: subprocess.Popen | None, sig: int = signal.SIGKILL, wait: float = 10.0) -> None:
    """Signal p's group; after SIGTERM, SIGKILL whatever lingers. Idempotent."""
    if p is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, sig)
    try:
        p.wait(wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(5)
    # Children that outlived the leader still belong to its group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)


@contextlib.contextmanager
def group(argv: list[str], out: Any, err: Any) -> Iterator[subprocess.Popen]:
    p = start_group(argv, out, err)
    try:
        yield p
    finally:
        kill_group(p, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_mem_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a live process, in KiB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


# --- the wire ---------------------------------------------------------------------


def call(port: int, req: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One request on a fresh connection; OSError/TimeoutError if no answer."""
    end = time.monotonic() + timeout
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(orjson.dumps(req) + b"\n")
        buf = b""
        while b"\n" not in buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply")
            s.settimeout(left)
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            buf += chunk
    return orjson.loads(buf.partition(b"\n")[0])


def rev_of(port: int, timeout: float = 10.0) -> int:
    r = call(port, {"verb": "REV"}, timeout)
    if "rev" not in r:
        raise RuntimeError(f"REV failed: {r}")
    return int(r["rev"])


def wait_serving(
    port: int, proc: subprocess.Popen, t0: float, deadline_s: float, want_rev: int | None = None
) -> dict[str, Any]:
    """Poll REV until the node answers (and, with want_rev, until it reports
    it). Times are seconds since t0 (perf_counter)."""
    end = time.monotonic() + deadline_s
    first: tuple[float, int] | None = None
    errs: dict[str, int] = {}
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode} while starting")
        try:
            r = call(port, {"verb": "REV"}, timeout=max(0.1, min(5.0, end - time.monotonic())))
        except (OSError, ValueError):
            r = {}
        now = time.perf_counter() - t0
        if "rev" in r:
            rev = int(r["rev"])
            if first is None:
                first = (now, rev)
            # Past want_rev also ends the wait: the caller reports the mismatch.
            if want_rev is None or rev >= want_rev:
                return {
                    "first_answer_s": first[0],
                    "first_rev": first[1],
                    "rev_match_s": now,
                    "rev": rev,
                    "errors": errs,
                }
        elif "err_code" in r:
            errs[r["err_code"]] = errs.get(r["err_code"], 0) + 1
        time.sleep(POLL_SLEEP)
    raise TimeoutError(
        f"node did not serve{'' if want_rev is None else f' rev {want_rev}'} within "
        f"{deadline_s:.0f}s (first answer: {first}, errors: {errs})"
    )


# --- disk ---------------------------------------------------------------------------


def dir_usage(path: Path) -> dict[str, Any]:
    """Apparent bytes (sum of sizes), allocated bytes (du-style), and the files."""
    apparent = allocated = 0
    files: dict[str, int] = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            apparent += st.st_size
            allocated += st.st_blocks * 512
            files[p.name] = st.st_size
    return {"apparent_bytes": apparent, "allocated_bytes": allocated, "files": files}


def log_times(text: str, t_exec: float) -> dict[str, float]:
    """Seconds from the exec (wall clock t_exec) to the node's "resumed"
    (state loaded, listening) and "leader is" lines, from their timestamps
    (local time, ms)."""
    out: dict[str, float] = {}
    for ln in text.splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}) doozer: (.*)", ln)
        if m is None:
            continue
        when = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp() - t_exec
        if "resumed from" in m.group(2):
            out.setdefault("resumed_line_s", round(when, 3))
        elif m.group(2).startswith("leader is"):
            out.setdefault("leader_line_s", round(when, 3))
    return out


def log_used_bytes(data: Path) -> int:
    """Bytes of the log segments up to their last record: the rest of each
    preallocated segment is zeros, and a record ends in "]", never a zero."""
    used = 0
    for p in data.glob("log-*.wal"):
        used += len(p.read_bytes().rstrip(b"\0"))
    return used


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# --- part 1: recovery from the log ------------------------------------------------------


def serve_argv(port: int, data: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "doozer",
        "serve",
        "-l",
        f"{HOST}:{port}",
        "-w",
        "off",
        "-d",
        str(data),
        # Never snapshot: every mutation stays in the write-ahead log.
        "--snap-revs",
        "1000000000",
        "--snap-bytes",
        "1000000000000",
        "--log-level",
        "info",
    ]


def fill(port: int, n: int, work: Path, timeout: float) -> dict[str, Any]:
    """`doozer bench set -n n`; its JSON row. --warmup 0 so that every SET it
    sends counts (warmup SETs would be mutations outside -n)."""
    argv = [
        sys.executable,
        "-m",
        "doozer",
        "bench",
        "-a",
        f"{HOST}:{port}",
        "set",
        "-n",
        str(n),
        "-c",
        "16",
        "-p",
        "64",
        "--procs",
        "2",
        "--warmup",
        "0",
        "--json",
    ]
    out_path, err_path = work / "bench.out", work / "bench.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err, group(argv, out, err) as p:
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the fill did not finish within {timeout:.0f}s") from None
    if rc != 0:
        raise RuntimeError(f"doozer bench exited {rc}: {err_path.read_text()[-2000:]}")
    return orjson.loads(out_path.read_bytes())["results"][0]


def run_log(n: int, work: Path, restart_timeout: float) -> dict[str, Any]:
    data = work / "node-data"
    port = free_port()
    res: dict[str, Any] = {"mutations_requested": n}
    log1, log2 = work / "node-1.log", work / "node-2.log"
    node: subprocess.Popen | None = None
    t_exec = 0.0
    try:
        with open(log1, "wb") as lf:
            t0 = time.perf_counter()
            node = start_group(serve_argv(port, data), subprocess.DEVNULL, lf)
        # An empty node's start: the floor under the restart time below.
        res["fresh_start_s"] = round(wait_serving(port, node, t0, 60)["first_answer_s"], 3)
        rev0 = rev_of(port)

        t = time.perf_counter()
        row = fill(port, n, work, timeout=max(1800.0, n / 100))
        fill_s = time.perf_counter() - t
        rev_before = rev_of(port)
        # Every SET is one rev; SETs in flight when -n was reached also land.
        logged = rev_before - rev0
        res.update(
            bench_ops=row["ops"],
            bench_errors=row["errors"],
            bench_error_codes=row["error_codes"],
            bench_ops_per_s=row["ops_per_s"],
            mutations=logged,
            fill_s=round(fill_s, 3),
            fill_per_s=round(logged / fill_s, 1),
            rev_before_kill=rev_before,
            node_mem_kb_before_kill=proc_mem_kb(node.pid),
        )

        kill_group(node, signal.SIGKILL)
        node = None
        usage = dir_usage(data)
        res.update(
            data_apparent_bytes=usage["apparent_bytes"],
            data_allocated_bytes=usage["allocated_bytes"],
            log_used_bytes=log_used_bytes(data),
            log_segments=sum(1 for f in usage["files"] if f.endswith(".wal")),
            snapshots=sum(1 for f in usage["files"] if f.endswith(".snap")),
            data_files=usage["files"],
        )

        with open(log2, "wb") as lf:
            t0, t_exec = time.perf_counter(), time.time()  # just before the exec
            node = start_group(serve_argv(port, data), subprocess.DEVNULL, lf)
        w = wait_serving(port, node, t0, restart_timeout, want_rev=rev_before)
        res.update(
            restart_first_answer_s=round(w["first_answer_s"], 3),
            restart_first_rev=w["first_rev"],
            restart_serving_s=round(w["rev_match_s"], 3),
            rev_after_restart=w["rev"],
            rev_ok=w["rev"] == rev_before,
            restart_rev_errors=w["errors"],
            node_mem_kb_after_restart=proc_mem_kb(node.pid),
        )
    finally:
        kill_group(node, signal.SIGTERM)
    text = log2.read_text(errors="replace")
    res.update(log_times(text, t_exec))
    # "resumed" is the node's own line; the others are what recovery repaired.
    res["node_log"] = [
        ln for ln in text.splitlines() if re.search(r"resumed|torn|cut short|rewrote", ln)
    ]
    return res


def print_log(r: dict[str, Any]) -> None:
    mem0 = r["node_mem_kb_before_kill"]
    mem1 = r["node_mem_kb_after_restart"]
    print("== recovery from the write-ahead log (no snapshot) ==")
    print(
        f"mutations          {r['mutations']:,} (bench: {r['bench_ops']:,} ops counted, "
        f"{r['bench_errors']} errors {r['bench_error_codes'] or ''})"
    )
    print(
        f"fill               {r['fill_s']:.1f} s, {r['fill_per_s']:,.0f} mutations/s "
        f"(bench's own figure {r['bench_ops_per_s']:,.0f} ops/s)"
    )
    print(
        f"data dir           {r['data_apparent_bytes']:,} bytes ({mib(r['data_apparent_bytes'])}),"
        f" allocated {r['data_allocated_bytes']:,} ({mib(r['data_allocated_bytes'])});"
        f" {r['log_segments']} log segments, {r['snapshots']} snapshots"
    )
    print(
        f"log content        {r['log_used_bytes']:,} bytes ({mib(r['log_used_bytes'])}), "
        f"{r['log_used_bytes'] / max(r['mutations'], 1):.0f} bytes/mutation"
    )
    print(
        f"restart            first REV answer {r['restart_first_answer_s']:.3f} s "
        f"(rev {r['restart_first_rev']:,}); serving rev before kill "
        f"{r['restart_serving_s']:.3f} s after exec (an empty node's start: "
        f"{r['fresh_start_s']:.3f} s)"
    )
    print(
        f"rev check          before kill {r['rev_before_kill']:,}, after restart "
        f"{r['rev_after_restart']:,}: {'OK' if r['rev_ok'] else 'MISMATCH'}"
    )
    print(
        f"node memory        before kill RSS {mem0.get('VmRSS', 0) / 1024:.0f} MiB; after "
        f"restart RSS {mem1.get('VmRSS', 0) / 1024:.0f} MiB, peak {mem1.get('VmHWM', 0) / 1024:.0f}"
        " MiB"
    )
    if "resumed_line_s" in r:
        print(
            f"restart steps      'resumed' (loaded, listening) at {r['resumed_line_s']:.3f} s, "
            f"'leader is' at {r.get('leader_line_s', float('nan')):.3f} s (node log timestamps)"
        )
    for ln in r["node_log"]:
        print(f"node log           {ln}")


# --- part 2: snapshot of a big tree ----------------------------------------------------


def run_snapshot(n: int, work: Path) -> dict[str, Any]:
    res: dict[str, Any] = {"files": n, "value_size": VALUE_SIZE, "hist": HIST}
    store = Store(hist=HIST)
    t = time.perf_counter()
    apply = store.apply
    for i in range(n):
        value = (b"%08d" % i * (VALUE_SIZE // 8 + 1))[:VALUE_SIZE]
        apply(Mutation(SET, f"/snap/d{i % DIRS:03d}/f{i:07d}", -1, value))
    res["build_store_s"] = round(time.perf_counter() - t, 3)
    rev, count = store.rev, len(store)

    t = time.perf_counter()
    # The shape cluster.save_snapshot writes; a sole member's meta, and an empty
    # acceptor state (a real node's also holds the decided instances not yet
    # compacted, so its snapshot can be larger).
    snap = {
        "instance": rev,
        "node": {
            "store": store.snapshot(),
            "origins": [],
            "meta": {"instance": rev, "schedule": [], "cluster_id": "bench", "name": "bench"},
        },
        "durable": DurableState(base=rev).to_json(),
    }
    res["snapshot_dict_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    orjson.dumps(snap)
    res["encode_s"] = round(time.perf_counter() - t, 3)  # also inside save_snapshot

    ddir = work / "snap-data"
    dd = DataDir.open(str(ddir), create=True)
    try:
        dd.write_meta({"node_id": "bench", "cluster_name": "bench", "cluster_id": "bench"})
        dd.load()
        t = time.perf_counter()
        dd.save_snapshot(snap)
        res["save_snapshot_s"] = round(time.perf_counter() - t, 3)
        res["snapshot_bytes"] = dd.snapshot_bytes
    finally:
        dd.close()
    snap_files = list(ddir.glob("snap-*.snap"))
    res["snapshot_file_bytes"] = sum(p.stat().st_size for p in snap_files)
    # Freed first: collections over the original's objects would slow what follows.
    del snap, store
    gc.collect()
    # The snapshot file alone (read, orjson decode past the 32-byte header):
    # load() below also scans the preallocated 64 MiB log segment.
    t = time.perf_counter()
    orjson.loads(memoryview(snap_files[0].read_bytes())[32:])
    res["snapshot_read_decode_s"] = round(time.perf_counter() - t, 3)

    dd = DataDir.open(str(ddir), create=False)
    try:
        t = time.perf_counter()
        saved, records = dd.load()
        res["load_s"] = round(time.perf_counter() - t, 3)
    finally:
        dd.close()
    assert saved is not None
    t = time.perf_counter()
    restored = Store.restore(saved["node"]["store"], hist=HIST)
    res["restore_s"] = round(time.perf_counter() - t, 3)
    res.update(
        rev=rev,
        restored_rev=restored.rev,
        restored_files=len(restored),
        log_records_after=len(records),
        ok=restored.rev == rev and len(restored) == count == n,
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    return res


def print_snapshot(r: dict[str, Any]) -> None:
    print(f"== snapshot of {r['files']:,} files of {r['value_size']} bytes (hist {r['hist']}) ==")
    print(f"build store        {r['build_store_s']:.3f} s ({r['files']:,} SETs, in process)")
    print(f"snapshot dict      {r['snapshot_dict_s']:.3f} s (Store.snapshot + wrapper)")
    print(
        f"save_snapshot      {r['save_snapshot_s']:.3f} s (of which orjson encode ~"
        f"{r['encode_s']:.3f} s; then write, fsync, rename)"
    )
    print(
        f"snapshot file      {r['snapshot_file_bytes']:,} bytes ({mib(r['snapshot_file_bytes'])}),"
        f" {r['snapshot_file_bytes'] / r['files']:.0f} bytes/file"
    )
    print(
        f"load               {r['load_s']:.3f} s (DataDir.load; the snapshot file's read and "
        f"decode alone: {r['snapshot_read_decode_s']:.3f} s)"
    )
    print(f"restore            {r['restore_s']:.3f} s (Store.restore)")
    print(
        f"check              rev {r['rev']:,} -> {r['restored_rev']:,}, files "
        f"{r['restored_files']:,}: {'OK' if r['ok'] else 'MISMATCH'}"
    )
    print(f"peak RSS           {r['peak_rss_mib']:.0f} MiB (this process)")


# --- main ------------------------------------------------------------------------------


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so every finally stops its processes.
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutations", type=int, default=1_000_000, help="log part: SETs to log")
    ap.add_argument("--files", type=int, default=100_000, help="snapshot part: files in the store")
    ap.add_argument("--only", choices=("log", "snapshot"), help="run one part only")
    ap.add_argument("--workdir", help="make the temp dir in DIR (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="leave the temp dir behind")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    ap.add_argument(
        "--restart-timeout", type=float, default=900.0, help="seconds allowed for the restart"
    )
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, _terminate)

    if a.workdir:
        os.makedirs(a.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="doozer-recovery-", dir=a.workdir))
    out: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        if a.only in (None, "log"):
            out["log"] = run_log(a.mutations, work, a.restart_timeout)
            print_log(out["log"])
        if a.only in (None, "snapshot"):
            out["snapshot"] = run_snapshot(a.files, work)
            print_snapshot(out["snapshot"])
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if a.json:
        Path(a.json).write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
    ok = out.get("log", {}).get("rev_ok", True) and out.get("snapshot", {}).get("ok", True)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)
