"""The doozer-vs-etcd comparison tooling: the etcd client's HTTP framing and
the summary's arithmetic always; a tiny end-to-end run of bench/compare.py
only where etcd is installed (bench/compare.sh installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import compare  # noqa: E402
import etcdload  # noqa: E402


def _resp(body: bytes, status: int = 200) -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        len(body),
        body,
    )


def _chunked(*chunks: bytes) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for c in chunks:
        out += b"%x\r\n%s\r\n" % (len(c), c)
    return out + b"0\r\n\r\n"


def test_parse_response_content_length_pipelined_and_partial() -> None:
    data = _resp(b'{"a":1}') + _resp(b'{"error":"x"}', 503)
    s1, b1, end1 = etcdload.parse_response(data, 0)  # type: ignore[misc]
    assert (s1, b1) == (200, b'{"a":1}')
    s2, b2, end2 = etcdload.parse_response(data, end1)  # type: ignore[misc]
    assert (s2, b2, end2) == (503, b'{"error":"x"}', len(data))
    # Every strict prefix of a response is incomplete.
    one = _resp(b'{"a":1}')
    assert all(etcdload.parse_response(one[:k], 0) is None for k in range(len(one)))


def test_parse_response_chunked() -> None:
    data = _chunked(b'{"a":', b"1}") + _resp(b"{}")
    status, body, end = etcdload.parse_response(data, 0)  # type: ignore[misc]
    assert (status, body) == (200, b'{"a":1}')
    assert etcdload.parse_response(data, end)[1] == b"{}"  # type: ignore[index]
    whole = _chunked(b"xy")
    assert all(etcdload.parse_response(whole[:k], 0) is None for k in range(len(whole)))


def test_chunk_stream_splits_lines_across_chunks_and_reads() -> None:
    raw = _chunked(b'{"result":{"created":true}}\n{"result":', b'{"events":[]}}\n')[:-5]
    for step in (1, 3, len(raw)):
        cs = etcdload.ChunkStream()
        lines: list[bytes] = []
        for i in range(0, len(raw), step):
            lines += cs.feed(raw[i : i + step])
        assert [orjson.loads(x) for x in lines] == [
            {"result": {"created": True}},
            {"result": {"events": []}},
        ]
        assert cs.status == 200


def _row(system: str, case: str, ops: float, p50: float, rnd: int) -> dict:
    return {
        "system": system,
        "case": case,
        "round": rnd,
        "ops_per_s": ops,
        "latency_ms": {"p50": p50, "p99": 2 * p50},
        "client_cpu": 0.1,
        "server_cores": 1.0,
        "errors": 0,
    }


def test_summary_takes_medians_and_judges_targets() -> None:
    rows = [
        _row("doozer", "set-64", 30_000, 1.0, 0),
        _row("doozer", "set-64", 10_000, 1.0, 1),
        _row("doozer", "set-64", 20_000, 1.0, 2),
        _row("etcd", "set-64", 7_000, 1.0, 0),
        _row("etcd", "set-64", 5_000, 1.0, 1),
        _row("doozer", "seq-set", 1, 0.5, 0),
        _row("etcd", "seq-set", 1, 0.8, 0),
    ]
    items = {it["metric"]: it for it in compare.summary(rows)}
    s = items["SET/s, 64 clients"]
    assert (s["doozer"], s["etcd"]) == (20_000, 6_000)
    assert s["ratio"] == pytest.approx(20_000 / 6_000)
    assert s["met"] == "yes"
    p = items["sequential SET p50 (ms)"]
    assert p["ratio"] == pytest.approx(0.625) and p["met"] == "NO"
    assert "linearizable GET/s, 64 clients" not in items  # no rows, no line
    table = compare.format_summary(list(items.values()))
    assert "3.33" in table and "0.62" in table


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd not installed (bench/compare.sh)")
def test_compare_end_to_end_tiny(tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "compare.py"),
            "-d",
            "0.5",
            "--warmup",
            "0.2",
            "--rounds",
            "1",
            "--cases",
            "seq-set,set-16",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=80,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "doozer/etcd" in p.stdout and "How this is kept fair" in p.stdout
    res = orjson.loads(out.read_bytes())
    seen = {(r["system"], r["case"]) for r in res["rows"]}
    assert seen == {(s, c) for s in ("doozer", "etcd") for c in ("seq-set", "set-16")}
    for r in res["rows"]:
        assert r["ops"] > 0 and r["errors"] == 0, r
    assert {it["metric"] for it in res["summary"]} >= {
        "sequential SET p50 (ms)",
        "SET/s, 16 clients",
    }
    # Everything it started is gone, and its work dir with it.
    for pid in res["pids"]["doozer"] + res["pids"]["etcd"]:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), pid
    assert not (tmp_path / "work").exists()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True
