"""The data dir: framing, group commit, recovery, snapshots, locking, full disks."""

from __future__ import annotations

import errno
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import orjson
import pytest

from doozer.storage import CorruptionError, DataDir, EncodedSnapshot, StorageError
from tests.faultyfs import FaultyOS

ROOT = Path(__file__).resolve().parent.parent
SEG_HDR = 16
SNAP_HDR = 32


def recs(n: int, start: int = 0, size: int = 100) -> list[list]:
    """Records shaped like the replica's accept records, about 150 bytes framed."""
    return [
        ["a", i, [3, "node-a"], [[1, f"/k/{i}", -1, "v" * size]]] for i in range(start, start + n)
    ]


# The format-level tests below look at exact file sizes: they run without
# preallocation; the preallocated tests say so.
def fresh(path: Path, **kw) -> DataDir:
    kw.setdefault("preallocate", False)
    d = DataDir.open(str(path), create=True, **kw)
    assert d.load() == (None, [])
    return d


def reopen(path: Path, **kw) -> tuple[DataDir, dict | None, list[list]]:
    kw.setdefault("preallocate", False)
    d = DataDir.open(str(path), create=False, **kw)
    try:
        snap, got = d.load()
    except BaseException:
        d.close()  # a failed load leaves the dir open: the caller closes it
        raise
    return d, snap, got


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("log-*.wal"))


def snapshots(path: Path) -> list[Path]:
    return sorted(path.glob("snap-*.snap"))


REC_HDR = 12


def salt_and_seed(data: bytes) -> tuple[int, int]:
    """A version-2 segment's salt and crc start value, as the format documents them."""
    magic, first = struct.unpack_from("<8sQ", data)
    assert magic == b"DZWAL\0\0\2"
    m = ((first * 0x9E3779B97F4A7C15) % (1 << 64)) >> 36
    salt = sum((0x80 | (m >> (7 * i)) & 0x7F) << (8 * i) for i in range(4))
    return salt, first % (1 << 32)


def frames(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every record in a segment, parsed from the documented
    format; the records end at the first frame without the segment's salt."""
    salt, seed = salt_and_seed(data)
    out = []
    off = SEG_HDR
    while off + REC_HDR <= len(data):
        length, fsalt, crc = struct.unpack_from("<III", data, off)
        if fsalt != salt:
            break
        end = off + REC_HDR + length
        assert zlib.crc32(data[off + REC_HDR : end], seed) == crc
        out.append((off, end))
        off = end
    return out


def flip(path: Path, i: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[i] ^= 0x41
    path.write_bytes(bytes(data))
    return bytes(data)


# -- basics ------------------------------------------------------------------------


def test_round_trip_meta_records_and_snapshot(tmp_path: Path) -> None:
    d = fresh(tmp_path / "d")
    assert d.is_new()
    d.write_meta({"node_id": "n1", "cluster_name": "local", "cluster_id": "c1"})
    assert not d.is_new()
    d.append(recs(3))
    d.sync()
    d.append([["p", [1, "é☃"]], ["x", None, True, 1.5, {"k": [1, 2]}]])
    d.sync()
    d.close()

    d, snap, got = reopen(tmp_path / "d")
    assert d.meta == {"node_id": "n1", "cluster_name": "local", "cluster_id": "c1"}
    assert snap is None
    assert got == [*recs(3), ["p", [1, "é☃"]], ["x", None, True, 1.5, {"k": [1, 2]}]]
    d.save_snapshot({"instance": 7, "node": {"store": {"files": []}}, "durable": {"base": 7}})
    assert d.log_bytes_since_snapshot() == 0
    d.append(recs(2, 10))
    d.sync()
    assert d.log_bytes_since_snapshot() > 0
    d.close()

    d, snap, got = reopen(tmp_path / "d")
    assert snap == {"instance": 7, "node": {"store": {"files": []}}, "durable": {"base": 7}}
    assert got == recs(2, 10)
    assert d.notes == []
    d.close()


def test_a_snapshot_frozen_earlier_covers_only_the_records_before_it(tmp_path: Path) -> None:
    """A big snapshot is encoded while the log goes on: it is saved as of the
    log position of its freeze, in parts, and the records appended after
    that position are replayed over it at load."""
    d = fresh(tmp_path / "d")
    d.append(recs(3))
    d.sync()
    frozen_at = d.seq
    d.append(recs(2, 10))  # written while the snapshot was encoded
    parts = [b'{"instance":', b"5", b',"x":"', b"y" * 100_000, b'"}']
    d.save_snapshot(EncodedSnapshot(5, parts), frozen_at)
    d.append(recs(1, 20))
    d.sync()
    with pytest.raises(ValueError):  # older than the snapshot now held
        d.save_snapshot({"instance": 4}, frozen_at - 1)
    with pytest.raises(ValueError):  # ahead of the log
        d.save_snapshot({"instance": 6}, d.seq + 1)
    d.close()

    d, snap, got = reopen(tmp_path / "d")
    assert snap == {"instance": 5, "x": "y" * 100_000}
    assert got == [*recs(2, 10), *recs(1, 20)]
    d.close()


def test_records_must_be_lists_and_load_comes_first(tmp_path: Path) -> None:
    d = DataDir.open(str(tmp_path / "d"), create=True)
    with pytest.raises(RuntimeError):
        d.append(recs(1))
    d.load()
    with pytest.raises(TypeError):
        d.append([["fine"], {"not": "a list"}])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        d.append([["fine"], [object()]])
    assert d.pending_bytes() == 0  # a failed append adds nothing
    d.append(recs(1))
    d.sync()
    with pytest.raises(RuntimeError):
        d.load()
    d.close()
    d, _, got = reopen(tmp_path / "d")
    d.close()
    assert got == recs(1)


def test_group_commit_is_one_write_and_one_fsync(tmp_path: Path, fos: FaultyOS) -> None:
    d = fresh(tmp_path / "d")
    fos.calls.clear()
    for r in recs(1000):
        d.append([r])
    assert fos.calls["pwrite"] == 0 and fos.calls["fdatasync"] == 0  # append is no I/O
    assert d.pending_bytes() > 1000 * 100
    d.sync()
    assert fos.calls["pwrite"] == 1
    assert fos.calls["fdatasync"] + fos.calls["fsync"] == 1
    assert d.pending_bytes() == 0
    d.sync()  # nothing pending: no I/O
    assert fos.calls["pwrite"] == 1
    d.close()
    d, _, got = reopen(tmp_path / "d")
    assert got == recs(1000)
    d.close()


# -- torn tails and corruption -------------------------------------------------------


def test_torn_tail_cut_at_every_offset_of_the_last_record(tmp_path: Path) -> None:
    path = tmp_path / "d"
    d = fresh(path)
    d.append(recs(5))
    d.sync()
    d.close()
    (seg,) = segments(path)
    pristine = seg.read_bytes()
    start, end = frames(pristine)[-1]
    assert end == len(pristine)
    for cut in range(start, end):
        seg.write_bytes(pristine[:cut])
        d, _, got = reopen(path)
        d.close()
        assert got == recs(4), cut
        if cut >= start + REC_HDR:
            assert len(d.notes) == 1 and f"byte offset {start}" in d.notes[0], (cut, d.notes)
            assert str(seg) in d.notes[0]
            assert seg.stat().st_size == start
        else:
            # less than a frame header: no frame at all, the log's end (in a
            # recycled file such bytes may be left from its earlier use)
            assert d.notes == []
    # the repaired log goes on from there
    d, _, _ = reopen(path)
    d.append(recs(1, 99))
    d.sync()
    d.close()
    d, _, got = reopen(path)
    d.close()
    assert got == [*recs(4), *recs(1, 99)]


def written(data: bytes) -> int:
    """Where the records of a preallocated segment end (zeros follow)."""
    return frames(data)[-1][1] if frames(data) else SEG_HDR


PRE = {"preallocate": True, "segment_bytes": 64 << 10}


def five_records(path: Path) -> Path:
    """A fresh preallocated dir holding records 0..4; its one segment."""
    d = fresh(path, **PRE)
    d.append(recs(5))
    d.sync()
    d.close()
    (seg,) = segments(path)
    return seg


def test_preallocated_segments_end_where_the_zeros_start(tmp_path: Path) -> None:
    path = tmp_path / "d"
    seg = five_records(path)
    data = seg.read_bytes()
    assert len(data) == 64 << 10  # the whole segment reserved up front
    assert not data[written(data) :].strip(b"\0")
    d, _, got = reopen(path, **PRE)
    assert got == recs(5) and d.notes == []  # unwritten space is no torn tail
    for k in range(12):  # on past several rolls
        d.append(recs(100, 5 + 100 * k))
        d.sync()
    d.close()
    assert len(segments(path)) > 2
    assert all(s.stat().st_size >= 64 << 10 for s in segments(path))
    d, _, got = reopen(path, **PRE)
    d.close()
    assert got == recs(1205) and d.notes == []


def test_torn_tail_in_a_preallocated_segment_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "d"
    seg = five_records(path)
    pristine = seg.read_bytes()
    end = written(pristine)
    start = frames(pristine[:end])[-1][0]
    for cut in (start + 1, start + 8, start + 20, end - 1):
        # a crash mid-write: part of the record reached the disk, zeros after it
        seg.write_bytes(pristine[:cut] + bytes(len(pristine) - cut))
        d, _, got = reopen(path, **PRE)
        assert got == recs(4), cut
        if cut < start + 8:
            # not even the frame's salt made it: as if nothing had been written
            assert d.notes == [], (cut, d.notes)
        else:
            assert len(d.notes) == 1 and f"byte offset {start}" in d.notes[0], (cut, d.notes)
        # the segment keeps its size (its written blocks); a torn frame is zeroed
        assert seg.stat().st_size == len(pristine)
        assert d.notes == [] or not seg.read_bytes()[start : start + 12].strip(b"\0")
        d.append(recs(1, 99))  # and the log goes on from the cut
        d.sync()
        d.close()
        d, _, got = reopen(path, **PRE)
        d.close()
        assert got == [*recs(4), *recs(1, 99)] and d.notes == []


SPARE = "next-segment.tmp"


def fill_until_roll(d: DataDir, path: Path, n: int, k: int = 20) -> int:
    """Append records n, n+1, ... until a new segment starts; the next n."""
    before = len(segments(path))
    for _ in range(1000):
        d.append(recs(k, n))
        n += k
        d.sync()
        if d._spare is not None:  # a spare being filled: done before the roll
            assert d._spare.done.wait(10)
        if len(segments(path)) > before:
            return n
    raise AssertionError("no roll")


def test_a_segment_a_snapshot_covers_is_recycled_and_its_records_never_return(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d"
    d = fresh(path, **PRE)
    n = fill_until_roll(d, path, 0)
    old = segments(path)[0]
    ino, size = old.stat().st_ino, old.stat().st_size
    assert size >= 64 << 10
    d.save_snapshot({"instance": 1})  # covers the first segment: the next one's file
    assert not old.exists() and (path / SPARE).stat().st_ino == ino
    snap_at = n
    n = fill_until_roll(d, path, n)
    new = segments(path)[-1]
    assert new.stat().st_ino == ino and new.stat().st_size == size  # no new blocks
    d.append(recs(2, n))  # a few records, over the file's old ones
    d.sync()
    d.close()
    data = new.read_bytes()
    assert len(frames(data)) == 2 and data[frames(data)[-1][1] :].strip(b"\0")  # old frames
    d, snap, got = reopen(path, **PRE)
    d.close()
    assert snap == {"instance": 1} and got == recs(n + 2 - snap_at, snap_at)
    assert d.notes == []


def test_bytes_after_the_last_frame_of_an_older_segment_are_no_damage(tmp_path: Path) -> None:
    """A recycled file can be longer than what its new records fill: the few
    bytes left after the last frame, fewer than a frame header, are its old
    content, not a torn record (a kill -9 stress run found this)."""
    path = tmp_path / "d"
    d = fresh(path, segment_bytes=2048)
    n = fill_until_roll(d, path, 0, k=5)
    d.close()
    older = segments(path)[0]
    for tail in (b"\x07", b"junk", b"\xff" * (REC_HDR - 1)):
        older.write_bytes(older.read_bytes()[: frames(older.read_bytes())[-1][1]] + tail)
        d, _, got = reopen(path, segment_bytes=2048)
        d.close()
        assert got == recs(n) and d.notes == []


def test_old_frames_whose_salt_matches_by_chance_still_fail_their_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from doozer import storage

    monkeypatch.setattr(storage, "_salt", lambda first: 0x80808080)  # every segment alike
    path = tmp_path / "d"
    d = fresh(path, **PRE)
    n = fill_until_roll(d, path, 0)
    d.save_snapshot({"instance": 1})
    snap_at = n
    n = fill_until_roll(d, path, n)
    d.append(recs(2, n))
    d.sync()
    d.close()
    d, _, got = reopen(path, **PRE)
    d.close()
    assert got == recs(n + 2 - snap_at, snap_at) and d.notes == []


def test_a_spare_segment_is_filled_ahead_of_the_roll(tmp_path: Path) -> None:
    path = tmp_path / "d"
    d = fresh(path, **PRE)
    # started when the dir was loaded, on a helper thread
    assert d._spare is not None and d._spare.done.wait(10) and d._spare.ok
    assert (path / SPARE).stat().st_size == 64 << 10
    assert not (path / SPARE).read_bytes().strip(b"\0")
    ino = (path / SPARE).stat().st_ino
    n = fill_until_roll(d, path, 0)
    assert segments(path)[-1].stat().st_ino == ino
    d.close()
    d, _, got = reopen(path, **PRE)
    d.close()
    assert got == recs(n) and d.notes == []


def test_a_version_1_dir_is_read_and_goes_on_in_version_2(tmp_path: Path) -> None:
    """Segments of format 1 (frames `[u32 length][u32 crc32]`, no salt) load,
    the active one takes more such frames, and the next segment is version 2."""
    path = tmp_path / "d"
    fresh(path).close()
    (seg,) = segments(path)
    v1 = bytearray(struct.pack("<8sQ", b"DZWAL\0\0\1", 0))
    for r in recs(3):
        payload = orjson.dumps(r)
        v1 += struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
    seg.write_bytes(bytes(v1))
    (path / "FORMAT").write_bytes(b"doozer-data 1\n")
    d, _, got = reopen(path, segment_bytes=2048)
    assert got == recs(3)
    d.append(recs(2, 3))
    d.sync()
    d.close()
    d, _, got = reopen(path, segment_bytes=2048)
    assert got == recs(5)
    assert seg.read_bytes()[: len(v1)] == bytes(v1)  # appended to in its own format
    n = fill_until_roll(d, path, 5, k=5)
    d.close()
    assert segments(path)[-1].read_bytes()[:8] == b"DZWAL\0\0\2"
    d, _, got = reopen(path, segment_bytes=2048)
    d.close()
    assert got == recs(n) and d.notes == []


def test_zeros_inside_a_preallocated_segment_with_records_after_are_corruption(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d"
    seg = five_records(path)
    data = bytearray(seg.read_bytes())
    start, end = frames(bytes(data[: written(bytes(data))]))[2]
    data[start:end] = bytes(end - start)  # a middle record wiped to zeros
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as e:
        reopen(path, **PRE)
    assert str(seg) in str(e.value) and f"offset {start}" in str(e.value)


def test_flipped_byte_in_the_last_record_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "d"
    d = fresh(path)
    d.append(recs(5))
    d.sync()
    d.close()
    (seg,) = segments(path)
    pristine = seg.read_bytes()
    start, end = frames(pristine)[-1]
    for i in range(start, end):
        seg.write_bytes(pristine)
        flip(seg, i)
        d, _, got = reopen(path)
        d.close()
        assert got == recs(4), i
        assert len(d.notes) == 1 and "torn" in d.notes[0], (i, d.notes)
        assert seg.stat().st_size == start


def test_flipped_byte_in_the_middle_of_a_segment_refuses_to_load(tmp_path: Path) -> None:
    path = tmp_path / "d"
    d = fresh(path)
    d.append(recs(10))
    d.sync()
    d.close()
    (seg,) = segments(path)
    pristine = seg.read_bytes()
    start, end = frames(pristine)[4]
    for i in range(start, end):
        seg.write_bytes(pristine)
        damaged = flip(seg, i)
        with pytest.raises(CorruptionError) as ei:
            reopen(path)
        assert ei.value.path == str(seg) and ei.value.offset == start, i
        assert str(seg) in str(ei.value) and f"offset {start}" in str(ei.value)
        assert seg.read_bytes() == damaged  # nothing cut off
    # the lock was released by every failed load
    seg.write_bytes(pristine)
    d, _, got = reopen(path)
    d.close()
    assert got == recs(10)


def test_damage_in_an_older_segment_or_a_missing_segment_refuses_to_load(tmp_path: Path) -> None:
    path = tmp_path / "d"
    d = fresh(path, segment_bytes=2048)
    for k in range(10):
        d.append(recs(4, 4 * k))
        d.sync()
    d.close()
    segs = segments(path)
    assert len(segs) >= 3
    first = segs[0].read_bytes()
    start, end = frames(first)[-1]  # the last record of an older segment is no tail
    flip(segs[0], end - 3)
    with pytest.raises(CorruptionError) as ei:
        reopen(path, segment_bytes=2048)
    assert ei.value.path == str(segs[0]) and ei.value.offset == start
    segs[0].write_bytes(first)

    # an older segment cut short at a record boundary: records are missing
    segs[0].write_bytes(first[:start])
    with pytest.raises(CorruptionError) as ei:
        reopen(path, segment_bytes=2048)
    assert ei.value.path == str(segs[1]) and "missing" in str(ei.value)
    segs[0].write_bytes(first)

    middle = segs[1].read_bytes()
    segs[1].unlink()
    with pytest.raises(CorruptionError) as ei:
        reopen(path, segment_bytes=2048)
    assert ei.value.path == str(segs[2]) and "missing" in str(ei.value)
    segs[1].write_bytes(middle)
    d, _, got = reopen(path, segment_bytes=2048)
    d.close()
    assert got == recs(40)


def test_segment_header_cut_short_by_a_crash_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "d"
    d = fresh(path, segment_bytes=1024)
    d.append(recs(10))
    d.sync()  # rolls: a new empty segment follows
    d.close()
    last = segments(path)[-1]
    assert last.stat().st_size == SEG_HDR
    for cut in (0, 7, SEG_HDR - 1):
        last.write_bytes(last.read_bytes()[:cut])
        d, _, got = reopen(path, segment_bytes=1024)
        assert got == recs(10) and len(d.notes) == 1
        d.close()
        assert last.stat().st_size == SEG_HDR
    d, _, _ = reopen(path, segment_bytes=1024)
    d.append(recs(1, 10))
    d.sync()
    d.close()
    d, _, got = reopen(path, segment_bytes=1024)
    d.close()
    assert got == recs(11)


def test_flipped_byte_in_a_snapshot_refuses_to_load(tmp_path: Path) -> None:
    """No fallback to an older snapshot: the log after it may have been compacted."""
    path = tmp_path / "d"
    d = fresh(path)
    d.append(recs(3))
    d.save_snapshot({"instance": 1, "v": "old"})
    (older,) = snapshots(path)
    kept = older.read_bytes()
    d.append(recs(3, 3))
    d.save_snapshot({"instance": 2, "v": "x" * 1000})
    d.close()
    older.write_bytes(kept)  # as if a crash had stopped the clean-up
    (_, snap) = snapshots(path)
    pristine = snap.read_bytes()
    for i in [*range(SNAP_HDR), SNAP_HDR, SNAP_HDR + 500, len(pristine) - 1]:
        snap.write_bytes(pristine)
        flip(snap, i)
        with pytest.raises(CorruptionError) as ei:
            reopen(path)
        assert ei.value.path == str(snap), i
        assert str(snap) in str(ei.value)
    for cut in (0, SNAP_HDR - 1, SNAP_HDR, len(pristine) - 1):
        snap.write_bytes(pristine[:cut])
        with pytest.raises(CorruptionError):
            reopen(path)
    snap.write_bytes(pristine + b"\n")
    with pytest.raises(CorruptionError):
        reopen(path)
    snap.write_bytes(pristine)
    d, s, got = reopen(path)
    d.close()
    assert s == {"instance": 2, "v": "x" * 1000} and got == []
    assert snapshots(path) == [snap]  # the older one is gone once the newer one loaded


def test_corrupt_meta_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "d"
    d = fresh(path)
    d.write_meta({"node_id": "n1"})
    d.close()
    flip(path / "meta", SNAP_HDR + 3)
    with pytest.raises(CorruptionError) as ei:
        DataDir.open(str(path), create=False)
    assert ei.value.path == str(path / "meta")


# -- snapshots, segments -----------------------------------------------------------------

CRASHER = """
import os, sys
sys.path.insert(0, sys.argv[3])
from doozer import storage

real = storage.os
point = sys.argv[2]


class Crash:
    def __getattr__(self, name):
        return getattr(real, name)

    def replace(self, src, dst):
        if point == "before-rename":
            os._exit(3)
        real.replace(src, dst)

    def unlink(self, p):
        if point == "before-cleanup" and not p.endswith(".tmp"):
            os._exit(3)
        real.unlink(p)


d = storage.DataDir.open(sys.argv[1], create=False)
d.load()
d.append([["late", 1], ["late", 2]])
d.sync()
storage.os = Crash()
d.save_snapshot({"instance": 9, "v": "new" * 10000})
os._exit(0)
"""


@pytest.mark.parametrize("point", ["before-rename", "before-cleanup"])
def test_crash_inside_save_snapshot_leaves_a_whole_state(tmp_path: Path, point: str) -> None:
    path = tmp_path / "d"
    d = fresh(path)
    d.append(recs(3))
    d.save_snapshot({"instance": 4, "v": "old"})
    d.append(recs(2, 3))
    d.sync()
    d.close()
    r = subprocess.run(
        [sys.executable, "-c", CRASHER, str(path), point, str(ROOT)],
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 3, r.stderr.decode()
    if point == "before-rename":
        assert list(path.glob("*.tmp")), "the crash came after the temp file was written"
    d, snap, got = reopen(path)
    d.close()
    assert not list(path.glob("*.tmp"))
    if point == "before-rename":
        assert snap == {"instance": 4, "v": "old"}
        assert got == [*recs(2, 3), ["late", 1], ["late", 2]]
    else:
        assert snap == {"instance": 9, "v": "new" * 10000}
        assert got == []
    assert len(snapshots(path)) == 1 and len(segments(path)) == 1


def test_segments_roll_and_a_snapshot_removes_what_it_covers(tmp_path: Path) -> None:
    path = tmp_path / "d"
    d = fresh(path, segment_bytes=4096)
    for k in range(20):
        d.append(recs(5, 5 * k))
        d.sync()
    segs = segments(path)
    assert len(segs) >= 3
    # segment names are their first record's seq, and records run on across them
    firsts = [int(s.name[4:-4]) for s in segs]
    assert firsts[0] == 0 and firsts == sorted(firsts)
    assert sum(len(frames(s.read_bytes())) for s in segs) == 100
    d.close()
    d, snap, got = reopen(path, segment_bytes=4096)
    assert snap is None and got == recs(100)
    size = d.log_bytes_since_snapshot()
    assert size == sum(s.stat().st_size - SEG_HDR for s in segs)

    d.append(recs(1, 100))  # pending records are covered by the snapshot too
    assert d.snapshot_bytes == 0
    d.save_snapshot({"instance": 50, "x": 1})
    # only the active segment is left, and the snapshot does not roll it: the
    # records it covers there are skipped at load
    (active,) = segments(path)
    assert 0 < int(active.name[4:-4]) <= 100 and active.name == segs[-1].name
    assert [s.name for s in snapshots(path)] == [f"snap-{50:020d}-{101:020d}.snap"]
    # the host spaces snapshots by their size: it knows the current one's
    assert d.snapshot_bytes == snapshots(path)[0].stat().st_size
    d.append(recs(3, 200))
    d.sync()
    d.close()
    d, snap, got = reopen(path, segment_bytes=4096)
    assert d.snapshot_bytes == snapshots(path)[0].stat().st_size
    d.close()
    assert snap == {"instance": 50, "x": 1} and got == recs(3, 200)


def test_snapshot_with_the_same_instance_replaces_and_records_since_are_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d"
    d = fresh(path)
    d.save_snapshot({"instance": 0})  # empty log: nothing to roll
    d.save_snapshot({"instance": 0, "again": True})
    d.append(recs(2))
    d.sync()
    d.close()
    d, snap, got = reopen(path)
    d.close()
    assert snap == {"instance": 0, "again": True} and got == recs(2)
    assert len(snapshots(path)) == 1


# -- locking and format --------------------------------------------------------------------

HOLDER = """
import sys
sys.path.insert(0, sys.argv[2])
from doozer.storage import DataDir
d = DataDir.open(sys.argv[1], create=False)
print("ready", flush=True)
sys.stdin.read()
d.close()
"""


def _readline(proc: subprocess.Popen, deadline_s: float) -> bytes:
    assert proc.stdout is not None
    end = time.monotonic() + deadline_s
    line = b""
    while not line.endswith(b"\n"):
        left = end - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise TimeoutError(f"no line from the child (have {line!r})")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 100)
            if not chunk:
                raise EOFError(f"child closed stdout (have {line!r})")
            line += chunk
    return line


def test_lock_names_the_process_that_holds_the_dir(tmp_path: Path) -> None:
    path = tmp_path / "d"
    fresh(path).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(ROOT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert _readline(proc, 30) == b"ready\n"
        with pytest.raises(StorageError, match=f"is in use by process {proc.pid}$"):
            DataDir.open(str(path), create=True)
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    d = DataDir.open(str(path), create=False)  # free again
    with pytest.raises(StorageError, match=f"in use by process {os.getpid()}"):
        DataDir.open(str(path), create=False)
    d.close()


WRITER = """
import sys
sys.path.insert(0, sys.argv[2])
from doozer.storage import DataDir
d = DataDir.open(sys.argv[1], create=True)
snap, got = d.load()
n = (snap["n"] if snap else 0) + len(got)
k = 0
while True:
    batch = [["r", n + i, "x" * (i * 37 % 300)] for i in range(k % 7 + 1)]
    d.append(batch)
    d.sync()
    n += len(batch)
    k += 1
    if k % 40 == 0:
        d.save_snapshot({"instance": k, "n": n})
    print(n, flush=True)
"""


def test_kill_9_loses_no_synced_record(tmp_path: Path) -> None:
    path = tmp_path / "d"
    rng = random.Random(4)
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(ROOT)],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            acked = 0
            target = rng.randrange(1, 300)
            end = time.monotonic() + 30
            while acked < target:  # records the writer reported synced
                assert time.monotonic() < end, "writer too slow"
                line = _readline(proc, end - time.monotonic())
                acked = int(line.split()[-1])
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        d, snap, got = reopen(path)
        d.close()
        base = snap["n"] if snap else 0
        assert [r[1] for r in got] == list(range(base, base + len(got)))
        assert base + len(got) >= acked


def test_format_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "d"
    fresh(path).close()
    assert (path / "FORMAT").read_bytes() == b"doozer-data 2\n"
    (path / "FORMAT").write_bytes(b"doozer-data 3\n")
    with pytest.raises(StorageError, match="format version 3"):
        DataDir.open(str(path), create=True)
    # version 1 (segments without salts) is read, and the dir marked version 2
    # before a version-2 segment can be written into it
    (path / "FORMAT").write_bytes(b"doozer-data 1\n")
    DataDir.open(str(path), create=False).close()
    assert (path / "FORMAT").read_bytes() == b"doozer-data 2\n"
    (path / "FORMAT").write_bytes(b"something else")
    with pytest.raises(StorageError, match="FORMAT"):
        DataDir.open(str(path), create=True)
    (path / "FORMAT").unlink()
    with pytest.raises(StorageError, match="not a doozer data dir"):
        DataDir.open(str(path), create=True)  # holds files, but no FORMAT
    with pytest.raises(StorageError, match="no data dir"):
        DataDir.open(str(tmp_path / "nope"), create=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StorageError, match="no FORMAT"):
        DataDir.open(str(tmp_path / "empty"), create=False)


# -- I/O errors -----------------------------------------------------------------------------


def _seg_size(path: Path) -> int:
    return segments(path)[-1].stat().st_size


def test_disk_full_in_sync_keeps_what_was_durable_and_retries(
    tmp_path: Path, fos: FaultyOS
) -> None:
    path = tmp_path / "d"
    d = fresh(path)
    d.append(recs(3))
    d.sync()
    size = _seg_size(path)
    fos.space = 200  # part of the next batch fits
    d.append(recs(3, 3))
    with pytest.raises(StorageError, match="No space left") as ei:
        d.sync()
    assert segments(path)[-1].name in str(ei.value)
    assert _seg_size(path) == size  # the partial batch was taken back
    with pytest.raises(StorageError):
        d.sync()
    d.append(recs(1, 6))  # appends go on while the disk is full
    fos.space = None
    d.sync()
    d.close()
    d, _, got = reopen(path)
    d.close()
    assert got == recs(7) and d.notes == []


def test_fsync_error_rewrites_the_batch_on_retry(tmp_path: Path, fos: FaultyOS) -> None:
    path = tmp_path / "d"
    d = fresh(path)
    d.append(recs(2))
    d.sync()
    size = _seg_size(path)
    fos.fail["fdatasync"] = errno.EIO
    d.append(recs(2, 2))
    with pytest.raises(StorageError, match="Input/output error"):
        d.sync()
    assert _seg_size(path) == size
    del fos.fail["fdatasync"]
    fos.calls.clear()
    d.sync()
    assert fos.calls["pwrite"] == 1  # written again, not just fsynced again
    d.close()
    d, _, got = reopen(path)
    d.close()
    assert got == recs(4)  # once each


def test_failed_sync_that_cannot_truncate_leaves_a_torn_tail_at_worst(
    tmp_path: Path, fos: FaultyOS
) -> None:
    path = tmp_path / "d"
    d = fresh(path)
    d.append(recs(2))
    d.sync()
    fos.space = 100
    fos.fail["ftruncate"] = errno.EIO
    d.append(recs(2, 2))
    with pytest.raises(StorageError):
        d.sync()
    d.close()  # a crash now
    fos.space = None
    del fos.fail["ftruncate"]
    d, _, got = reopen(path)
    assert got == recs(2) and len(d.notes) == 1
    d.close()

    # without a crash, the next sync takes the partial write back first
    d, _, _ = reopen(path)
    fos.space = 100
    fos.fail["ftruncate"] = errno.EIO
    d.append(recs(2, 2))
    with pytest.raises(StorageError):
        d.sync()
    fos.space = None
    del fos.fail["ftruncate"]
    d.sync()
    d.close()
    d, _, got = reopen(path)
    d.close()
    assert got == recs(4) and d.notes == []


def test_disk_full_in_save_snapshot_keeps_the_old_state(tmp_path: Path, fos: FaultyOS) -> None:
    path = tmp_path / "d"
    d = fresh(path)
    d.append(recs(2))
    d.save_snapshot({"instance": 1, "v": "old"})
    d.append(recs(2, 2))
    d.sync()
    before = sorted(p.name for p in path.iterdir())
    fos.space = 1000
    with pytest.raises(StorageError, match="No space left"):
        d.save_snapshot({"instance": 2, "v": "x" * 5000})
    assert sorted(p.name for p in path.iterdir()) == before  # no temp file left behind
    fos.space = None
    d.append(recs(1, 4))
    d.sync()
    d.close()
    d, snap, got = reopen(path)
    assert snap == {"instance": 1, "v": "old"} and got == recs(3, 2)
    d.save_snapshot({"instance": 2, "v": "new"})  # works again with room
    d.close()
    d, snap, got = reopen(path)
    d.close()
    assert snap == {"instance": 2, "v": "new"} and got == []


def test_roll_that_cannot_create_a_segment_goes_on_in_the_old_one(
    tmp_path: Path, fos: FaultyOS
) -> None:
    path = tmp_path / "d"
    d = fresh(path, segment_bytes=1024)
    fos.fail_create = (".wal", errno.ENOSPC)
    d.append(recs(10))
    d.sync()  # durable; the roll fails quietly
    assert len(segments(path)) == 1
    d.save_snapshot({"instance": 3})  # the snapshot lands; its new segment does not
    d.append(recs(2, 10))
    d.sync()
    fos.fail_create = None
    d.append(recs(10, 12))
    d.sync()  # rolls now
    assert len(segments(path)) == 2
    d.close()
    d, snap, got = reopen(path, segment_bytes=1024)
    d.close()
    assert snap == {"instance": 3} and got == recs(12, 10)


@pytest.fixture
def tmpfs(tmp_path: Path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        timeout=30,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)


def test_full_tmpfs(tmpfs: Path) -> None:
    path = tmpfs / "d"
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * (256 << 10))
    d = fresh(path)
    synced: list[list] = []
    err = None
    for k in range(2000):  # 1 MiB fills long before
        batch = recs(8, 8 * k, size=1000)
        d.append(batch)
        try:
            d.sync()
        except StorageError as e:
            err = e
            break
        synced += batch
    assert err is not None and "No space left" in str(err)
    with pytest.raises(StorageError, match="No space left"):
        d.save_snapshot({"instance": 1, "v": "x" * 300_000})
    assert not list(path.glob("*.tmp"))
    d.close()  # a stop with the batch unsynced: nothing durable is harmed
    d, snap, got = reopen(path)
    assert snap is None and got == synced and d.notes == []
    d.append(batch)
    with pytest.raises(StorageError):
        d.sync()  # still full
    filler.unlink()  # space returns
    d.sync()
    d.close()
    d, _, got = reopen(path)
    d.close()
    assert got == [*synced, *batch]
