"""`doozer snapshot save` from a real node, `doozer snapshot restore` into a data dir."""

from __future__ import annotations

import argparse
import struct
import zlib
from pathlib import Path

import orjson
import pytest

from doozer import backup
from doozer.consensus.durable import DurableState
from doozer.storage import DataDir
from doozer.store import Store
from tests.nodeproc import NodeProc, Raw, free_port


def run(*argv: str) -> int:
    p = argparse.ArgumentParser(prog="doozer")
    backup.add_parsers(p.add_subparsers(dest="command"))
    args = p.parse_args(list(argv))
    return args.func(args)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOOZER_SECRET", raising=False)
    monkeypatch.delenv("DOOZER_URI", raising=False)


@pytest.fixture(scope="module")
def live():
    """A node with files of many revs, an overwritten file and a deleted one."""
    n = NodeProc().start()
    try:
        with Raw(n.addr) as r:
            for i in range(30):
                assert "rev" in r.call(
                    {"verb": "SET", "path": f"/app/d{i % 3}/f{i}", "value": f"v{i}", "rev": -1}
                )
            first = r.call({"verb": "SET", "path": "/app/changing", "value": "one", "rev": -1})
            r.call({"verb": "SET", "path": "/app/changing", "value": "two", "rev": -1})
            r.call({"verb": "SET", "path": "/gone", "value": "x", "rev": -1})
            r.call({"verb": "DEL", "path": "/gone", "rev": -1})
            r.call({"verb": "SET", "path": "/empty", "value": "", "rev": -1})
        yield n, first["rev"]
    finally:
        assert n.stop() == 0, n.log()


def walk(addr: str, rev: int) -> dict[str, tuple[int, str]]:
    with Raw(addr) as r:
        resp = r.call({"verb": "WALK", "path": "/**", "rev": rev})
    return {f["path"]: (f["rev"], f.get("value", "")) for f in resp["files"]}


def saved(path: Path) -> dict:
    """The backup's body, parsed from the documented layout."""
    data = path.read_bytes()
    magic, version, crc, length = struct.unpack_from("<8sIIQ", data)
    assert (magic, version) == (b"DZBACKUP", 1)
    assert len(data) == 24 + length and zlib.crc32(data[24:]) == crc
    return orjson.loads(data[24:])


def test_save_then_restore_keeps_every_file_and_rev(live, tmp_path: Path, capsys) -> None:
    node, old_rev_of_changing = live
    f = tmp_path / "b.bak"
    assert run("snapshot", "save", str(f), "-a", node.addr) == 0
    out = capsys.readouterr().out
    body = saved(f)
    rev = body["rev"]
    want = walk(node.addr, rev)
    assert out == f"saved rev {rev} ({len(want)} files) to {f}\n"
    assert body["files"] == len(want)
    old_meta = body["snapshot"]["meta"]
    old_id = old_meta["cluster_id"]
    old_node = next(iter(p.split("/")[3] for p in want if p.startswith("/ctl/node/")))

    d = tmp_path / "restored"
    assert run("snapshot", "restore", str(f), "-d", str(d)) == 0
    out = capsys.readouterr().out
    with DataDir.open(str(d), create=False) as dd:
        meta = dd.meta
        snap, records = dd.load()
        assert dd.notes == []
    assert records == [] and snap is not None and meta is not None
    new_id = meta["node_id"]
    assert meta["cluster_name"] == "local" and meta["cluster_id"] != old_id
    assert new_id != old_node and len(new_id) == 16
    assert f"node {new_id}" in out and "doozer serve -d" in out

    # consensus state: the snapshot's instance, the new node its only member
    inst = old_meta["instance"]
    assert snap["instance"] == inst
    ds = DurableState.from_json(snap["durable"])
    assert ds.base == inst and ds.schedule == [(inst + 1, frozenset({new_id}))]
    assert ds.accepted == {} and ds.decided == {}
    nmeta = snap["node"]["meta"]
    assert nmeta["instance"] == inst and nmeta["cluster_id"] == meta["cluster_id"]
    assert nmeta["schedule"] == [[inst + 1, [new_id]]] and nmeta["name"] == "local"

    # every file outside /ctl with its value and rev; history reads still answer
    store = Store.restore(snap["node"]["store"], hist=100_000)
    got = {p: (r, v.decode()) for p, r, v in store.walk("/**")}
    for p, rv in want.items():
        if not p.startswith("/ctl/"):
            assert got.pop(p) == rv, p
    assert store.get("/app/changing", old_rev_of_changing) == (b"one", old_rev_of_changing)
    # /ctl rewritten for the new node, at revs after the backup's
    assert got.pop("/ctl/name") == want["/ctl/name"]  # unchanged name keeps its rev
    ctl = got
    assert set(ctl) == {
        "/ctl/cal/0",
        "/ctl/cal/1",
        "/ctl/cal/2",
        f"/ctl/node/{new_id}/addr",
        f"/ctl/node/{new_id}/hostname",
        f"/ctl/node/{new_id}/version",
    }
    assert all(r > rev for r, _ in ctl.values())
    assert ctl["/ctl/cal/0"][1] == new_id and ctl["/ctl/cal/1"][1] == ""
    assert ctl[f"/ctl/node/{new_id}/addr"][1] == ""
    changes = store.events_from(rev + 1)
    assert store.rev == rev + len(changes) and all(e.path.startswith("/ctl/") for e in changes)
    assert any(e.path == f"/ctl/node/{old_node}/addr" and e.value is None for e in changes)


def test_restore_with_a_name_and_one_slot(live, tmp_path: Path, capsys) -> None:
    node, _ = live
    f = tmp_path / "b.bak"
    assert run("snapshot", "save", str(f), "-a", node.addr) == 0
    rev = saved(f)["rev"]
    d = tmp_path / "r"
    assert run("snapshot", "restore", str(f), "-d", str(d), "-c", "prod", "--cals", "1") == 0
    with DataDir.open(str(d), create=False) as dd:
        snap, _ = dd.load()
        assert dd.meta is not None and dd.meta["cluster_name"] == "prod"
    store = Store.restore(snap["node"]["store"], hist=100_000)
    assert [p for p, _, _ in store.walk("/ctl/cal/*")] == ["/ctl/cal/0"]
    value, name_rev = store.get("/ctl/name")
    assert value == b"prod" and name_rev > rev
    assert snap["node"]["meta"]["name"] == "prod"


def test_restore_refuses_a_dir_with_data_and_a_damaged_file(live, tmp_path: Path, capsys) -> None:
    node, _ = live
    f = tmp_path / "b.bak"
    assert run("snapshot", "save", str(f), "-a", node.addr) == 0
    d = tmp_path / "r"
    d.mkdir()
    (d / "something").write_text("x")
    assert run("snapshot", "restore", str(f), "-d", str(d)) == 2
    assert "already holds data" in capsys.readouterr().err
    assert sorted(p.name for p in d.iterdir()) == ["something"]

    good = f.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 1
    f.write_bytes(bytes(bad))
    e = tmp_path / "e"
    assert run("snapshot", "restore", str(f), "-d", str(e)) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    f.write_bytes(good[:-1])
    assert run("snapshot", "restore", str(f), "-d", str(e)) == 2
    assert "truncated" in capsys.readouterr().err
    f.write_bytes(b"hello")
    assert run("snapshot", "restore", str(f), "-d", str(e)) == 2
    assert "not a doozer backup" in capsys.readouterr().err
    assert not e.exists()


def test_progress_on_stderr(live, tmp_path: Path, capsys, monkeypatch) -> None:
    node, _ = live
    monkeypatch.setattr(backup, "PROGRESS_STEP", 512)
    f = tmp_path / "b.bak"
    assert run("snapshot", "save", str(f), "-a", node.addr) == 0
    err = capsys.readouterr().err
    assert f"received from {node.addr}:" in err and "MiB" in err
    assert run("snapshot", "restore", str(f), "-d", str(tmp_path / "r")) == 0
    err = capsys.readouterr().err
    assert "reading" in err and "checked rev" in err


def test_save_with_a_secret_and_from_nowhere(tmp_path: Path, capsys) -> None:
    f = tmp_path / "b.bak"
    with NodeProc(env={"DOOZER_SECRET": "s3cret"}) as node:
        assert run("snapshot", "save", str(f), "-a", node.addr) == 2
        assert "PERMISSION" in capsys.readouterr().err and not f.exists()
        assert run("snapshot", "save", str(f), "-a", f"doozer:?ca={node.addr}&sk=s3cret") == 0
        sf = tmp_path / "secret"
        sf.write_text("s3cret\n")
        g = tmp_path / "c.bak"
        assert run("snapshot", "save", str(g), "-a", node.addr, "--secret-file", str(sf)) == 0
        # `doozer -a URI snapshot save FILE`, as the cli hoists it
        h = tmp_path / "d.bak"
        assert run("snapshot", "-a", f"doozer:?ca={node.addr}&sk=s3cret", "save", str(h)) == 0
        assert saved(h)["files"] == saved(g)["files"]
    assert saved(f)["rev"] >= 1
    assert run("snapshot", "save", str(f), "-a", f"127.0.0.1:{free_port()}", "-t", "5") == 2
    assert "no node answered" in capsys.readouterr().err
