"""A node's data dir: lock, format version, identity, the durable log, snapshots.

Blocking file I/O behind a small interface; the node calls it from its event
loop (an fsync of a small append costs about 0.1 ms).

Layout of DIR:

    LOCK                          flock'ed while a process uses the dir; holds its pid
    FORMAT                        "doozer-data 2\\n", written when the dir is created
    meta                          the node's identity: a framed JSON object (below)
    log-<first seq>.wal           log segments; records are numbered from 0 at creation
    snap-<instance>-<seq>.snap    a snapshot covering every record numbered below <seq>
    next-segment.tmp              the next segment, made ready ahead of the roll
    *.tmp                         a file being written (removed when the dir is opened)

Numbers in names are zero-padded to 20 digits, so names sort in numeric order.
Integers on disk are little-endian.

Segment: a 16-byte header (magic b"DZWAL\\0\\0\\2", u64 seq `first` of its
first record), then records, each `[u32 length][u32 salt][u32 crc][payload]`:
the payload the orjson encoding of the record (a JSON array, never empty),
`crc` = crc32(payload) started from `first mod 2**32`, and `salt` the same for
every record of the segment: bytes b0..b3 = 0x80 | (m >> 7i) & 0x7f, where
m = ((first * 0x9E3779B97F4A7C15) mod 2**64) >> 36. The records end at the
first frame without the salt: zeros, or what the file held in an earlier use.
A segment is rolled (the next one started) once it reaches `segment_bytes`
(64 MiB); a snapshot does not roll it. A new segment's file is written full of
zeros first (where the disk has twice the space free), so that appends
overwrite written blocks and their fdatasync commits no metadata; a segment
that a snapshot has made obsolete becomes the next segment's file instead of
being deleted (recycled), which saves writing those zeros and the discard a
delete would cost. The salt and the crc's start value keep the old records
of a recycled file from passing for new ones.

Format version 1 segments (magic b"DZWAL\\0\\0\\1", frames
`[u32 length][u32 crc32(payload)]`, zeros after the last) are still read, and
the active one is appended to in its format; the dir's FORMAT line becomes 2
when it is opened, so that an older doozer refuses it rather than misread it.

Snapshot and meta files: a 32-byte header (8-byte magic b"DZSNAP\\0\\1" or
b"DZMETA\\0\\1", u64 seq, u64 payload length, u32 crc32(payload), u32 crc32 of
the 28 header bytes before it), then the payload (orjson). Both are written
atomically: temp file, fsync, rename, fsync of the dir.

Recovery (`load`):
- The newest snapshot (highest seq) must be intact. If it is not, `load`
  raises CorruptionError: it does not fall back to an older snapshot, because
  the log after an older one may have been compacted by the host (records that
  drop state the newer snapshot holds), so replaying it could silently lose data.
  An older snapshot only survives a crash in the middle of `save_snapshot`.
- The log from the snapshot's seq on must be complete: segments contiguous,
  every record intact. A bad record in the last segment with no valid record
  anywhere after it is a torn tail (a write cut short by a crash): it is cut
  off (the file truncated there, or in a filled segment the frame's header
  zeroed), and a note is logged and kept in `DataDir.notes` (in version 2, a
  frame torn before its 12-byte header reached the disk is indistinguishable
  from the log's end, and ends it without a note). A bad record followed by a valid one, a bad
  record in an older segment, a missing segment: CorruptionError naming the
  file and the byte offset.
- An I/O error (disk full, EIO) during `sync` truncates the segment back to its
  last durable size and keeps the records pending, so a later `sync` writes them
  again; during `save_snapshot` the temp file is removed. What was durable stays
  intact either way.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import logging
import os
import re
import struct
import threading
import zlib
from typing import Any, NamedTuple

import orjson

log = logging.getLogger("doozer")

FORMAT_VERSION = 2
READS_FORMATS = (1, 2)  # a version-1 dir is upgraded (to 2) when opened
SEGMENT_BYTES = 64 << 20

_SEG_MAGIC_V1 = b"DZWAL\x00\x00\x01"
_SEG_MAGIC = b"DZWAL\x00\x00\x02"
_SNAP_MAGIC = b"DZSNAP\x00\x01"
_META_MAGIC = b"DZMETA\x00\x01"
_SEG_HDR = struct.Struct("<8sQ")
_FILE_HDR = struct.Struct("<8sQQI")  # followed by the u32 crc of these 28 bytes
_FILE_HDR_SIZE = _FILE_HDR.size + 4
_REC = struct.Struct("<II")  # a version-1 segment's record header
_REC2 = struct.Struct("<III")  # a version-2 segment's: length, salt, crc
_SALT = struct.Struct("<I")
_ZERO_CHUNK = 1 << 20  # bytes of zeros written per call when filling a segment
_SPARE = "next-segment.tmp"  # the next segment, filled ahead (a temp: removed at open)

_SEG_NAME = re.compile(r"log-(\d{20})\.wal")
_SNAP_NAME = re.compile(r"snap-(\d{20})-(\d{20})\.snap")
_IGNORED = {"LOCK", "lost+found"}


class StorageError(Exception):
    """An I/O failure or a data dir that cannot be used; the message says what and where."""


class CorruptionError(StorageError):
    """Data on disk that fails its checks, at `path`, byte `offset`."""

    def __init__(self, path: str, offset: int, what: str) -> None:
        super().__init__(f"{path}, byte offset {offset}: {what}")
        self.path = path
        self.offset = offset


def _seg_name(first: int) -> str:
    return f"log-{first:020d}.wal"


def _snap_name(instance: int, seq: int) -> str:
    return f"snap-{instance:020d}-{seq:020d}.snap"


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _write_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    with memoryview(data) as mv:
        done = 0
        while done < len(mv):
            n = os.pwrite(fd, mv[done:], offset + done)
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += n


# A spare is filled in chunks of this size, each synced, this many seconds
# apart (~17 MB/s: 64 MiB in ~4 s): when a data dir is loaded, or else half
# way into a segment.
# Unpaced, three members filling spares at once slowed fsyncs of the log to
# 20-50 ms; paced, to 5-10 ms now and then while the filling lasts.
_SPARE_CHUNK = 256 << 10
_SPARE_PACE = 0.015


def _preallocate(fd: int, size: int, paced_until: threading.Event | None = None) -> None:
    """Fill a segment with zeros up to `size` (past what it holds), so that
    appends overwrite written space: such an append changes no file size and
    no extent, and its fdatasync commits no metadata. Measured on ext4 here
    (3,000-byte appends, each fdatasync'd): ~0.10 ms into zeros written
    ahead, ~0.15 ms into fallocate'd space (still "unwritten" extents, which
    every append converts in the journal), ~0.15 ms growing the file. 64 MiB
    of zeros take ~0.04 s to write and sync. Best effort: on a disk without
    twice that space free, appends grow the file as before. `paced_until`:
    write _SPARE_CHUNK at a time, each synced, _SPARE_PACE apart, and give up
    once the event is set."""
    try:
        start = os.fstat(fd).st_size
        st = os.fstatvfs(fd)
    except OSError:
        return
    at = start
    # Never take a disk's last free space for this, not even for a moment.
    if at >= size or st.f_bavail * st.f_frsize < 2 * (size - at):
        return
    chunk = _ZERO_CHUNK if paced_until is None else _SPARE_CHUNK
    zeros = memoryview(bytes(min(chunk, size - at)))
    try:
        while at < size:
            n = os.pwrite(fd, zeros[: size - at], at)
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            at += n
            if paced_until is not None:
                os.fdatasync(fd)
                if paced_until.wait(_SPARE_PACE):
                    raise OSError(errno.ECANCELED, "stopped")
        # Now, not with the first append: that one's fsync would flush them all.
        os.fdatasync(fd)
    except OSError:
        try:
            os.ftruncate(fd, start)  # give back what a nearly full disk has left
        except OSError:
            pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise StorageError(f"cannot read {path}: {_why(e)}") from e


def _decode_framed(path: str, data: bytes, magic: bytes) -> tuple[int, Any]:
    """(seq, payload object) of a snapshot or meta file; CorruptionError if bad."""
    if len(data) < _FILE_HDR_SIZE:
        raise CorruptionError(path, len(data), f"file ends inside its {_FILE_HDR_SIZE}-byte header")
    got_magic, seq, length, crc = _FILE_HDR.unpack_from(data)
    (hcrc,) = struct.unpack_from("<I", data, _FILE_HDR.size)
    if zlib.crc32(data[: _FILE_HDR.size]) != hcrc:
        raise CorruptionError(path, 0, "header checksum mismatch")
    if got_magic != magic:
        raise CorruptionError(path, 0, f"bad magic {got_magic!r} (want {magic!r})")
    end = _FILE_HDR_SIZE + length
    if len(data) != end:
        raise CorruptionError(
            path, min(len(data), end), f"file is {len(data)} bytes, its header says {end}"
        )
    payload = memoryview(data)[_FILE_HDR_SIZE:]
    if zlib.crc32(payload) != crc:
        raise CorruptionError(path, _FILE_HDR_SIZE, f"checksum mismatch in the {length}-byte body")
    try:
        return seq, orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise CorruptionError(path, _FILE_HDR_SIZE, f"body is not valid JSON ({e})") from e


def _valid_frame_after(data: bytes, after: int) -> int | None:
    """Offset of an intact record starting after `after`, if any: tells corruption
    (good data follows) from a torn tail (nothing good follows)."""
    n = len(data)
    find = data.find
    p = find(b"[", after + _REC.size + 1)
    while p >= 0:
        start = p - _REC.size
        length, crc = _REC.unpack_from(data, start)
        end = p + length
        if (
            length > 0
            and end <= n
            and data[end - 1] == 0x5D  # "]": records are JSON arrays
            and zlib.crc32(memoryview(data)[p:end]) == crc
        ):
            return start
        p = find(b"[", p + 1)
    return None


def _salt(first: int) -> int:
    """The salt of a version-2 segment that starts at record `first`. Every
    record frame in the segment carries it, so that the frames a recycled
    file holds from its earlier use (as a segment with another first record)
    end the log rather than pass for records. Each byte is >= 0x80, which the
    JSON of a record (base64 values, ASCII paths) seldom holds, so the search
    for a frame after a bad one (`_frame_after_v2`) meets few false starts."""
    m = ((first * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> 36  # 28 well-mixed bits
    return int.from_bytes(bytes(0x80 | ((m >> (7 * i)) & 0x7F) for i in range(4)), "little")


def _seed(first: int) -> int:
    """The crc32 start value of a version-2 segment's records: a leftover frame
    whose salt matched by chance still fails its checksum (for one payload,
    distinct start values always give distinct crcs)."""
    return first & 0xFFFFFFFF


def _frame_after_v2(data: bytes, after: int, salt: int, seed: int) -> int | None:
    """Offset of an intact record of this (version-2) segment starting after
    `after`, if any: tells corruption from a torn tail or the log's end."""
    n = len(data)
    key = _SALT.pack(salt)
    p = data.find(key, after + 5)  # the salt sits 4 bytes into a frame
    while p >= 0:
        start = p - 4
        length, _, crc = _REC2.unpack_from(data, start)
        end = start + _REC2.size + length
        if (
            length > 0
            and end <= n
            and data[end - 1] == 0x5D  # "]": records are JSON arrays
            and zlib.crc32(memoryview(data)[start + _REC2.size : end], seed) == crc
        ):
            return start
        p = data.find(key, p + 1)
    return None


class _Spare:
    """The next segment's file, ready before the active one is full, so that
    rolling over costs a header and a rename, not a stall of ~0.04 s (~0.2 s
    with three members rolling at once) on the thread that writes the log.
    Either a segment that a snapshot made obsolete (recycled: its blocks are
    written already, and deleting it would cost the disk a discard of them),
    or a new file filled with zeros on a helper thread, paced."""

    def __init__(self, path: str, size: int, recycled: bool = False) -> None:
        self.path = path
        self.size = size
        self.ok = recycled
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if recycled:
            self.done.set()
        else:
            self._thread = threading.Thread(target=self._fill, name="doozer-segment", daemon=True)
            self._thread.start()

    def _fill(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _preallocate(fd, self.size, paced_until=self._stop)
                self.ok = os.fstat(fd).st_size >= self.size
            finally:
                os.close(fd)
        except OSError:
            pass
        finally:
            self.done.set()

    def stop(self, timeout: float) -> None:
        """Stop filling (the file is left as a temp) and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


class DataDir:
    """One node's data dir, locked for as long as it is open.

    Use: `open`, then `write_meta` if `is_new()`, then `load()` once, then any
    number of `append` + `sync`, `save_snapshot`; `close`. Not thread-safe.
    """

    def __init__(
        self, path: str, lock_fd: int, segment_bytes: int, preallocate: bool = True
    ) -> None:
        self.path = path
        self._prealloc = preallocate
        self.meta: dict | None = None
        self.notes: list[str] = []  # what recovery repaired (torn tails), also logged
        self._lock_fd: int | None = lock_fd
        self._segment_bytes = segment_bytes
        self._loaded = False
        self._fd: int | None = None  # active segment
        self._seg_path = ""
        self._seg_first = 0
        self._v2 = True  # the active segment's version (1: an upgraded dir's last old one)
        self._salt = 0
        self._seed = 0
        self._size = 0  # durable bytes of the active segment
        self._dirty = False  # the active segment may hold bytes past _size
        self._pending = bytearray()
        self._seq = 0  # seq of the next record appended
        self._snap_seq = 0
        self._snap_path: str | None = None
        self._log_bytes = 0  # framed bytes appended since the snapshot
        self.snapshot_bytes = 0  # size of the current snapshot
        self._spare: _Spare | None = None

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str,
        *,
        create: bool,
        segment_bytes: int = SEGMENT_BYTES,
        preallocate: bool = True,
    ) -> DataDir:
        """Lock the data dir at `path` (made if `create`) and check its format.
        `preallocate`: reserve each segment's full size when it is started."""
        path = os.path.abspath(path)
        if create:
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as e:
                raise StorageError(f"cannot create data dir {path}: {_why(e)}") from e
        elif not os.path.isdir(path):
            raise StorageError(f"no data dir at {path}")
        lock_fd = _lock(path)
        try:
            dd = cls(path, lock_fd, segment_bytes, preallocate)
            dd._check_format(create)
            dd._remove_temps()
            mpath = os.path.join(path, "meta")
            if os.path.exists(mpath):
                _, meta = _decode_framed(mpath, _read(mpath), _META_MAGIC)
                if not isinstance(meta, dict):
                    raise CorruptionError(mpath, _FILE_HDR_SIZE, "meta is not a JSON object")
                dd.meta = meta
        except BaseException:
            os.close(lock_fd)
            raise
        return dd

    def _check_format(self, create: bool) -> None:
        fpath = os.path.join(self.path, "FORMAT")
        try:
            with open(fpath, "rb") as f:
                text = f.read(256)
        except FileNotFoundError:
            others = sorted(set(os.listdir(self.path)) - _IGNORED)
            if others:
                raise StorageError(
                    f"{self.path} is not a doozer data dir (no FORMAT file, but it holds "
                    f"{', '.join(others[:5])}{' ...' if len(others) > 5 else ''})"
                ) from None
            if not create:
                raise StorageError(
                    f"{self.path} is not a doozer data dir (no FORMAT file)"
                ) from None
            self._write_atomic("FORMAT", f"doozer-data {FORMAT_VERSION}\n".encode())
            return
        except OSError as e:
            raise StorageError(f"cannot read {fpath}: {_why(e)}") from e
        m = re.fullmatch(rb"doozer-data (\d+)\n?", text)
        if m is None:
            raise StorageError(f"{fpath}: not a doozer data dir format line: {text[:40]!r}")
        v = int(m.group(1))
        if v not in READS_FORMATS:
            raise StorageError(
                f"{self.path} has data format version {v}; this doozer reads versions "
                f"{', '.join(map(str, READS_FORMATS))}"
            )
        if v != FORMAT_VERSION:
            # Version 1 segments stay readable; new ones are version 2, which
            # an older doozer must refuse by this line rather than misread.
            self._write_atomic("FORMAT", f"doozer-data {FORMAT_VERSION}\n".encode())

    def _remove_temps(self) -> None:
        for name in os.listdir(self.path):
            if name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(self.path, name))
                except OSError as e:
                    log.warning("cannot remove %s: %s", name, _why(e))

    def is_new(self) -> bool:
        """True until `write_meta` has been called on this dir."""
        return self.meta is None

    def write_meta(self, meta: dict) -> None:
        """Replace the node's identity record (atomically)."""
        self._framed("meta", _META_MAGIC, 0, orjson.dumps(meta))
        self.meta = dict(meta)

    # -- recovery --------------------------------------------------------------

    def load(self) -> tuple[dict | None, list[list]]:
        """The newest snapshot (None if there is none) and every record appended
        after it, in order. Cuts off a torn tail (see `notes`); raises
        CorruptionError for anything else that fails its checks."""
        if self._loaded:
            raise RuntimeError("DataDir.load() called twice")
        names = os.listdir(self.path)
        snaps = sorted(
            (int(m.group(2)), int(m.group(1)), n)
            for n in names
            if (m := _SNAP_NAME.fullmatch(n)) is not None
        )
        segs = sorted(
            (int(m.group(1)), n) for n in names if (m := _SEG_NAME.fullmatch(n)) is not None
        )
        snap: dict | None = None
        start = 0
        if snaps:
            seq, _, name = snaps[-1]
            spath = os.path.join(self.path, name)
            hseq, snap = _decode_framed(spath, _read(spath), _SNAP_MAGIC)
            if hseq != seq:
                raise CorruptionError(spath, 8, f"header says seq {hseq}, the name {seq}")
            if not isinstance(snap, dict):
                raise CorruptionError(spath, _FILE_HDR_SIZE, "snapshot is not a JSON object")
            start = seq
            self._snap_path = spath
            self.snapshot_bytes = os.path.getsize(spath)
        # Segments wholly before the snapshot: those followed by one starting at or
        # before it. They are obsolete and not read.
        live = [s for k, s in enumerate(segs) if k + 1 == len(segs) or segs[k + 1][0] > start]
        records: list[list] = []
        expect = start  # seq of the next record the log must hold
        end_off = 0
        # Decoding builds millions of lists, all kept: cyclic GC passes over them
        # would cost several times the decoding itself.
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            for k, (first, name) in enumerate(live):
                spath = os.path.join(self.path, name)
                if first > expect or (k and first != expect):
                    raise CorruptionError(
                        spath,
                        0,
                        f"the log is missing records {expect}..{first - 1} "
                        f"(this segment starts at record {first})"
                        if first > expect
                        else f"segment starts at record {first}, the one before ends at {expect}",
                    )
                count, end_off, v2 = self._scan(spath, first, start, k + 1 == len(live), records)
                expect = first + count
        finally:
            if gc_was_on:
                gc.enable()
        self._seq = max(expect, start)
        self._snap_seq = start
        if live and expect >= start:
            first, name = live[-1]
            self._open_segment(os.path.join(self.path, name), first, end_off, v2)
        else:
            self._new_segment()
        # Only now that everything checked out: drop what the snapshot made obsolete.
        self._drop_obsolete()
        if self._spare is None and self._prealloc:
            # Filled now, while a starting node is likely idle, rather than
            # under load later (after this, spares are mostly recycled).
            self._spare = _Spare(os.path.join(self.path, _SPARE), self._segment_bytes)
        self._loaded = True
        return snap, records

    def _scan(
        self, path: str, first: int, start: int, last: bool, out: list[list]
    ) -> tuple[int, int, bool]:
        """Check every record of one segment; append those numbered >= start to `out`.
        Returns (records in the segment, end offset of its intact records, whether
        it is a version-2 segment)."""
        data = _read(path)
        n = len(data)
        hdr = _SEG_HDR.size
        # (the header check first: counting a preallocated segment's zeros costs)
        if n < hdr or (last and not any(data[:hdr]) and data.count(0) == n):
            if not last:
                raise CorruptionError(path, n, f"file ends inside its {hdr}-byte header")
            # A crash while the segment was being created: it holds no record.
            self._note(f"{path}: rewrote a segment header cut short by a crash ({n} bytes)")
            self._rewrite_header(path, first)
            return 0, hdr, True
        magic, hfirst = _SEG_HDR.unpack_from(data)
        if magic not in (_SEG_MAGIC, _SEG_MAGIC_V1):
            raise CorruptionError(path, 0, f"bad magic {magic!r} (want {_SEG_MAGIC!r})")
        if hfirst != first:
            raise CorruptionError(path, 8, f"header says first record {hfirst}, the name {first}")
        v2 = magic == _SEG_MAGIC
        count, off, kept, bad = self._frames(path, data, first, start, out, v2)
        if bad:
            if not last:
                raise CorruptionError(path, off, bad)
            self._note(
                f"{path}: cut off a torn record at byte offset {off} ({bad}), "
                f"the tail of a write cut short by a crash"
            )
            # A torn record at the end of the file goes with the file's tail; one
            # inside a filled (or recycled) segment has its header zeroed, so
            # that the segment keeps its written blocks.
            if (
                v2
                and n - off >= _REC2.size
                and off + _REC2.size + _REC2.unpack_from(data, off)[0] < n
            ):
                self._clear(path, off, _REC2.size)
            else:
                self._truncate(path, off)
        self._log_bytes += kept
        return count, off, v2

    def _frames(
        self, path: str, data: bytes, first: int, start: int, out: list[list], v2: bool
    ) -> tuple[int, int, int, str]:
        """The records of a segment. Version 2: `[u32 length][u32 salt][u32
        crc32(payload, seed)]` frames, ending at the first frame without the
        segment's salt (zeros, or what the file held in an earlier use).
        Version 1: `[u32 length][u32 crc32(payload)]` frames, then zeros or the
        end of the file. Returns (records, end offset, bytes kept, why the
        tail is bad or "")."""
        n = len(data)
        mv = memoryview(data)
        size = _REC2.size if v2 else _REC.size
        unpack2, unpack1 = _REC2.unpack_from, _REC.unpack_from
        crc32 = zlib.crc32
        loads = orjson.loads
        salt, seed = (_salt(first), _seed(first)) if v2 else (0, 0)
        skip = start - first
        off = _SEG_HDR.size
        count = 0
        kept = 0
        bad = ""
        while n - off >= size:
            if v2:
                length, fsalt, crc = unpack2(data, off)
            else:
                (length, crc), fsalt = unpack1(data, off), salt
            end = off + size + length
            if fsalt != salt:
                # The end of the log, unless this is a record of ours whose
                # salt alone was damaged.
                if length > 0 and end <= n and crc32(mv[off + size : end], seed) == crc:
                    bad = "record salt damaged"
                break
            if length == 0:
                # (version 1: zeros to the end of the file are preallocated
                # space never written, the end of the log)
                if v2 or data.count(0, off) != n - off:
                    bad = "zero record length"
                break
            if end > n:
                bad = f"record of {length} bytes runs past the end of the file"
                break
            payload = mv[off + size : end]
            if crc32(payload, seed) != crc:
                bad = "record checksum mismatch"
                break
            if count >= skip:
                try:
                    out.append(loads(payload))
                except orjson.JSONDecodeError as e:
                    raise CorruptionError(path, off, f"record is not valid JSON ({e})") from e
                kept += end - off
            count += 1
            off = end
        if not v2 and not bad and 0 < n - off < size and data.count(0, off) != n - off:
            bad = "record header cut short"  # at the end of the file: ours, torn
        # (In version 2, a few bytes at the end that hold no frame may be what a
        # recycled file held before; like any frame without the salt, they end
        # the log, torn or not.)
        # Wherever the records stop, none of this segment may follow: else a
        # damaged frame (its salt, say) would silently cut the log short.
        if v2:
            good = _frame_after_v2(data, off, salt, seed)
        else:
            good = _valid_frame_after(data, off) if bad else None
        if good is not None:
            why = bad or "a frame without the segment's salt"
            raise CorruptionError(
                path, off, f"{why}, followed by an intact record at offset {good}"
            )
        return count, off, kept, bad

    def _note(self, text: str) -> None:
        log.warning("%s", text)
        self.notes.append(text)

    def _truncate(self, path: str, size: int) -> None:
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StorageError(f"cannot truncate {path} to {size} bytes: {_why(e)}") from e

    def _clear(self, path: str, off: int, size: int) -> None:
        """Zero a torn frame's header: the log ends there from now on, and the
        segment keeps its written blocks (truncating would give them back)."""
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                _write_all(fd, bytes(size), off)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StorageError(f"cannot clear {size} bytes at {off} in {path}: {_why(e)}") from e

    def _rewrite_header(self, path: str, first: int) -> None:
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, 0)
                _write_all(fd, _SEG_HDR.pack(_SEG_MAGIC, first), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StorageError(f"cannot repair {path}: {_why(e)}") from e

    # -- the log ---------------------------------------------------------------

    def append(self, records: list[list]) -> None:
        """Buffer records (JSON arrays) for the next `sync`. No I/O."""
        if not self._loaded:
            raise RuntimeError("DataDir.append() before load()")
        buf = self._pending
        before = len(buf)
        crc32 = zlib.crc32
        dumps = orjson.dumps
        v2, salt, seed = self._v2, self._salt, self._seed
        pack = _REC2.pack if v2 else _REC.pack
        try:
            for rec in records:
                p = dumps(rec)
                if p[:1] != b"[":
                    raise TypeError(f"a log record must be a list, not {type(rec).__name__}")
                if v2:
                    buf += pack(len(p), salt, crc32(p, seed))
                else:
                    buf += pack(len(p), crc32(p))
                buf += p
        except BaseException:
            del buf[before:]  # all of the call's records or none
            raise
        self._seq += len(records)
        self._log_bytes += len(buf) - before

    def sync(self) -> None:
        """Write and fsync every record appended so far: one write, one fsync.
        StorageError on failure; the records stay pending for the next call."""
        if not self._loaded:
            raise RuntimeError("DataDir.sync() before load()")
        data = self._pending
        if not data and not self._dirty:
            return
        fd = self._fd
        assert fd is not None
        try:
            if self._dirty:
                os.ftruncate(fd, self._size)
                self._dirty = False
            if data:
                self._dirty = True
                _write_all(fd, data, self._size)
                os.fdatasync(fd)
                self._dirty = False
        except OSError as e:
            # Never leave a partial batch behind what is durable; retry writes it all.
            try:
                os.ftruncate(fd, self._size)
                self._dirty = False
            except OSError:
                pass
            # A view of the buffer may live on in the traceback; append to a copy.
            self._pending = bytearray(data)
            raise StorageError(
                f"cannot write {len(data)} bytes to {self._seg_path}: {_why(e)}"
            ) from e
        self._size += len(data)
        self._pending = bytearray()
        if self._size >= self._segment_bytes:
            try:
                self._new_segment()
            except StorageError as e:
                # The records are durable; keep using this segment and roll later.
                log.warning("cannot start a new log segment: %s", e)
        elif self._spare is None and self._prealloc and self._size >= self._segment_bytes // 2:
            # No spare, none recycled (no snapshot yet covers a segment): fill one.
            self._spare = _Spare(os.path.join(self.path, _SPARE), self._segment_bytes)

    def pending_bytes(self) -> int:
        """Bytes appended but not yet synced."""
        return len(self._pending)

    def log_bytes_since_snapshot(self) -> int:
        """Framed bytes of the records after the last snapshot (pending included)."""
        return self._log_bytes

    def _open_segment(self, path: str, first: int, size: int, v2: bool) -> None:
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as e:
            raise StorageError(f"cannot open {path}: {_why(e)}") from e
        if self._prealloc:
            _preallocate(fd, self._segment_bytes)
        self._switch(fd, path, first, size, v2)

    def _new_segment(self) -> None:
        """Start a segment at the next seq; it is durable (dir fsynced) on return."""
        assert not self._pending
        first = self._seq
        path = os.path.join(self.path, _seg_name(first))
        spare, self._spare = self._spare, None
        if spare is not None and not spare.done.is_set():
            self._spare = spare  # still filling: for the next roll
            spare = None
        fd = -1
        try:
            if spare is not None and spare.ok:
                fd = os.open(spare.path, os.O_WRONLY)
                _write_all(fd, _SEG_HDR.pack(_SEG_MAGIC, first), 0)
                os.fdatasync(fd)
                os.rename(spare.path, path)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                _write_all(fd, _SEG_HDR.pack(_SEG_MAGIC, first), 0)
                if self._prealloc:
                    _preallocate(fd, self._segment_bytes)
                os.fdatasync(fd)  # the header, whatever became of the zeros
            _fsync_dir(self.path)
        except OSError as e:
            if fd >= 0:
                os.close(fd)
                for gone in (path, spare.path if spare is not None else None):
                    if gone is not None:
                        try:
                            os.unlink(gone)
                        except OSError:
                            pass
            raise StorageError(f"cannot create log segment {path}: {_why(e)}") from e
        self._switch(fd, path, first, _SEG_HDR.size, True)

    def _switch(self, fd: int, path: str, first: int, size: int, v2: bool) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._seg_path = path
        self._seg_first = first
        self._v2 = v2
        self._salt = _salt(first)
        self._seed = _seed(first)
        self._size = size
        self._dirty = False

    # -- snapshots -------------------------------------------------------------

    @property
    def seq(self) -> int:
        """Records appended so far (synced or not): a position in the log."""
        return self._seq

    def save_snapshot(self, snap: dict | EncodedSnapshot, seq: int | None = None) -> None:
        """Durably store `snap` (a JSON-able dict, or one already encoded; its
        "instance" names the file) as
        covering the records before `seq` (default: every record appended so far;
        those from `seq` on are replayed over it at load); then drop the log and
        snapshots it makes obsolete. Syncs pending records first. StorageError on
        failure, with the previous snapshot and the log intact."""
        if not self._loaded:
            raise RuntimeError("DataDir.save_snapshot() before load()")
        self.sync()
        if seq is None:
            seq = self._seq
        elif not self._snap_seq <= seq <= self._seq:
            # Older than the snapshot we hold (one installed meanwhile): keeping
            # it would drop the newer one as obsolete.
            raise ValueError(f"snapshot at record {seq} is outside {self._snap_seq}..{self._seq}")
        if isinstance(snap, EncodedSnapshot):
            instance, parts = snap
        else:
            instance = int(snap.get("instance", 0))
            try:
                parts = [orjson.dumps(snap)]
            except TypeError as e:
                raise ValueError(f"snapshot is not JSON-able: {e}") from e
        name = _snap_name(instance, seq)
        size = self._framed(name, _SNAP_MAGIC, seq, *parts)
        self._snap_path = os.path.join(self.path, name)
        self._snap_seq = seq
        self._log_bytes = 0
        self.snapshot_bytes = _FILE_HDR_SIZE + size
        # The active segment goes on: records after the snapshot follow in it,
        # and load skips those before. Starting a new one here would cost a
        # segment's worth of zeros per snapshot.
        self._drop_obsolete()

    def _drop_obsolete(self) -> None:
        """Remove snapshots but the current one, and segments whose every record is
        covered by it. Best effort: a leftover is removed at the next chance."""
        names = os.listdir(self.path)
        current = os.path.basename(self._snap_path) if self._snap_path else None
        segs = sorted(int(m.group(1)) for n in names if (m := _SEG_NAME.fullmatch(n)))
        doomed = [n for n in names if _SNAP_NAME.fullmatch(n) and n != current]
        covered = [
            _seg_name(first)
            for k, first in enumerate(segs)
            if first < self._seg_first and segs[k + 1] <= self._snap_seq
        ]
        if covered and self._spare is None and self._prealloc:
            # The newest becomes the next segment; see _Spare.
            name = covered.pop()
            src, dst = os.path.join(self.path, name), os.path.join(self.path, _SPARE)
            try:
                if os.path.getsize(src) >= self._segment_bytes:
                    os.rename(src, dst)
                    self._spare = _Spare(dst, self._segment_bytes, recycled=True)
                else:
                    covered.append(name)
            except OSError as e:
                log.warning("cannot recycle obsolete %s: %s", name, _why(e))
                covered.append(name)
        for n in doomed + covered:
            try:
                os.unlink(os.path.join(self.path, n))
            except OSError as e:
                log.warning("cannot remove obsolete %s: %s", n, _why(e))

    # -- small files -------------------------------------------------------------

    def _framed(self, name: str, magic: bytes, seq: int, *payload: bytes) -> int:
        """Write the payload (the concatenation of the parts) framed; its size."""
        crc = size = 0
        for part in payload:
            crc = zlib.crc32(part, crc)
            size += len(part)
        header = _FILE_HDR.pack(magic, seq, size, crc)
        header += struct.pack("<I", zlib.crc32(header))
        self._write_atomic(name, header, *payload)
        return size

    def _write_atomic(self, name: str, *parts: bytes) -> None:
        """Temp file, fsync, rename, fsync the dir: `name` is old or new, never torn."""
        final = os.path.join(self.path, name)
        tmp = final + ".tmp"
        fd = -1
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            off = 0
            for part in parts:
                _write_all(fd, part, off)
                off += len(part)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, final)
            _fsync_dir(self.path)
        except OSError as e:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise StorageError(f"cannot write {final}: {_why(e)}") from e

    # -- closing -----------------------------------------------------------------

    def close(self) -> None:
        """Release the files and the lock. Records not synced are dropped."""
        self._loaded = False
        if self._spare is not None:
            self._spare.stop(10)  # no thread writes in the dir once it is unlocked
            self._spare = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> DataDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EncodedSnapshot(NamedTuple):
    """A snapshot already encoded as JSON, in parts (a big one is never joined)."""

    instance: int
    parts: list[bytes]


def _lock(path: str) -> int:
    """Take DIR/LOCK (flock, exclusive) and write our pid in it; the fd holds it."""
    lpath = os.path.join(path, "LOCK")
    try:
        fd = os.open(lpath, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StorageError(f"cannot open {lpath}: {_why(e)}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = b""
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            try:
                holder = os.pread(fd, 32, 0).strip()
            except OSError:
                pass
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StorageError(f"cannot lock {lpath}: {_why(e)}") from e
        who = f"process {holder.decode()}" if holder.isdigit() else "another process"
        raise StorageError(f"data dir {path} is in use by {who}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the lock is what counts; the pid is for the message above
    return fd
