"""Clients and the history they record.

Each client runs one operation at a time against one node (moving to a random
other one, as a real client would, when the node is unreachable, slow or says
UNAVAILABLE, and now and then anyway, so that clients never bunch up on one
node and availability is measured from where a quorum is): GET, SET, conditional SET
(at the rev it last saw) and DEL on a small set of keys, every value unique.
Each key serves a bounded number of operations before a fresh one replaces
it, so each key's history stays small enough to check exhaustively.

Outcomes are honest:
- ok: the node answered (REV_MISMATCH on a conditional write is an answer);
- fail: the node answered with an error that says nothing happened, or the
  request never left (no connection);
- info (indeterminate): a write sent with no answer (timeout, connection
  lost), or UNAVAILABLE saying the outcome is unknown. It may take effect at
  any time after its call, or never.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from tests.jepsen.conn import Conn
from tests.lincheck import Op

OK, FAIL, INFO = "ok", "fail", "info"
KEY_DIR = "/jepsen"


@dataclass(slots=True)
class Rec:
    """One operation as the client saw it; times in seconds since the run began."""

    id: int
    client: str
    node: int
    kind: str  # get | set | del
    key: str
    call: float
    value: str | None = None
    expect: int = -1  # the condition rev of a write; -1 unconditional
    ret: float | None = None
    outcome: str = ""
    output: Any = None  # get: (value or None, rev); write: new rev or "REV_MISMATCH"
    err: str = ""

    @property
    def is_write(self) -> bool:
        return self.kind != "get"

    def to_op(self) -> Op | None:
        """The lincheck op, or None for an op that certainly had no effect."""
        if self.outcome == FAIL or (self.outcome == INFO and not self.is_write):
            return None
        ret = self.ret if self.outcome == OK else None
        who = f"{self.client}@n{self.node}"
        if self.kind == "get":
            return Op("get", self.key, self.call, ret, output=self.output, client=who)
        return Op(
            self.kind,
            self.key,
            self.call,
            ret,
            value=self.value,
            expect=self.expect,
            output=self.output if ret is not None else None,
            client=who,
        )

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "client": self.client,
                "node": self.node,
                "kind": self.kind,
                "key": self.key,
                "value": self.value,
                "expect": self.expect,
                "call": round(self.call, 6),
                "ret": None if self.ret is None else round(self.ret, 6),
                "outcome": self.outcome,
                "output": self.output,
                "err": self.err,
            }
        )


def classify(rec: Rec, resp: dict[str, Any]) -> None:
    """Set the outcome and output of an answered op from the node's response."""
    code = resp.get("err_code")
    if code is None and "rev" in resp:
        rec.outcome = OK
        if rec.kind == "get":
            v = resp.get("value")
            rec.output = (v if v else None, resp["rev"])
        else:
            rec.output = resp["rev"]
        return
    rec.err = f"{code}: {resp.get('err_detail', '')}" if code else f"odd answer {resp!r}"
    if code == "REV_MISMATCH" and rec.is_write and rec.expect != -1:
        rec.outcome = OK
        rec.output = "REV_MISMATCH"
    elif rec.is_write and code == "UNAVAILABLE" and "outcome is unknown" in rec.err:
        rec.outcome = INFO
    elif code is None:
        rec.outcome = INFO if rec.is_write else FAIL  # not a protocol answer: trust nothing
    else:
        rec.outcome = FAIL


class History:
    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.recs: list[Rec] = []
        self._ids = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def begin(self, client: str, node: int, kind: str, key: str, **kw: Any) -> Rec:
        self._ids += 1
        rec = Rec(self._ids, client, node, kind, key, self.now(), **kw)
        self.recs.append(rec)
        return rec

    def ops(self, recs: Iterable[Rec] | None = None) -> list[Op]:
        out = []
        for r in self.recs if recs is None else recs:
            op = r.to_op()
            if op is not None:
                out.append(op)
        return out

    def counts(self, exclude: set[int] | frozenset[int] = frozenset()) -> Counter[str]:
        c: Counter[str] = Counter()
        for r in self.recs:
            if r.id in exclude:
                continue
            c[r.outcome] += 1
            c[f"{r.kind}:{r.outcome}"] += 1
        return c

    def write_ok_times(self) -> list[float]:
        """Completion times of writes that certainly took effect, sorted."""
        return sorted(
            r.ret  # type: ignore[misc]
            for r in self.recs
            if r.is_write and r.outcome == OK and isinstance(r.output, int)
        )

    def dump(self, path: str) -> None:
        with open(path, "wb") as f:
            for r in self.recs:
                f.write(r.to_json() + b"\n")


class KeySpace:
    """`active` keys in use; each retired after `per_key` operations."""

    def __init__(self, active: int, per_key: int) -> None:
        self.per_key = per_key
        self.used: list[str] = []
        self.active: list[str] = []
        self.count: dict[str, int] = {}
        for _ in range(active):
            self.active.append(self._fresh())

    def _fresh(self) -> str:
        key = f"{KEY_DIR}/k{len(self.used)}"
        self.used.append(key)
        self.count[key] = 0
        return key

    def pick(self, rng: random.Random) -> str:
        i = rng.randrange(len(self.active))
        key = self.active[i]
        self.count[key] += 1
        if self.count[key] >= self.per_key:
            self.active[i] = self._fresh()
        return key


@dataclass
class WorkloadConfig:
    clients: int = 10
    keys: int = 4
    per_key: int = 120
    op_timeout: float = 1.5  # the request's own timeout; the client waits 1 s longer
    think: float = 0.02  # mean pause between a client's ops
    hop_every: int = 200  # ops before a client moves to another node anyway


class Workload:
    def __init__(
        self,
        cfg: WorkloadConfig,
        history: History,
        targets: Callable[[], list[tuple[int, str]]],
        seed: int,
    ) -> None:
        self.cfg = cfg
        self.history = history
        self.targets = targets  # (node index, address) of every started node
        self.keys = KeySpace(cfg.keys, cfg.per_key)
        self.seed = seed
        self.stopping = False
        self.connect_failures = 0
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for c in range(self.cfg.clients):
            self.tasks.append(asyncio.create_task(self._client(c)))

    async def stop(self) -> None:
        """Let every client finish its op in flight (each is bounded by its timeout)."""
        self.stopping = True
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def _op(self, rng: random.Random, cid: int, n: int, seen: dict[str, int]) -> dict[str, Any]:
        key = self.keys.pick(rng)
        r = rng.random()
        if r < 0.4:
            return {"verb": "GET", "path": key}
        value = f"c{cid}-{n}"
        if r < 0.65:
            return {"verb": "SET", "path": key, "value": value, "rev": -1}
        if r < 0.9:
            return {"verb": "SET", "path": key, "value": value, "rev": seen.get(key, 0)}
        rev = seen.get(key, 0) if r < 0.93 and key in seen else -1
        return {"verb": "DEL", "path": key, "rev": rev}

    def _away(self, rng: random.Random, hop: int) -> int:
        """The hop to a random node other than the current one."""
        n = len(self.targets())
        return hop + 1 + rng.randrange(n - 1) if n > 1 else hop

    async def _client(self, cid: int) -> None:
        cfg = self.cfg
        rng = random.Random(self.seed * 7919 + cid)
        name = f"c{cid}"
        seen: dict[str, int] = {}  # key -> rev last seen by this client
        conn: Conn | None = None
        hop = cid
        node = -1
        done_here = 0
        n = 0
        while not self.stopping:
            if conn is None or done_here >= cfg.hop_every:
                if conn is not None:
                    conn.close()
                    conn = None
                    hop += 1
                targets = self.targets()
                node, addr = targets[hop % len(targets)]
                try:
                    conn = await Conn.open(addr, 1.0)
                except (OSError, TimeoutError):
                    self.connect_failures += 1
                    hop = self._away(rng, hop)
                    await asyncio.sleep(rng.uniform(0.05, 0.2))
                    continue
                done_here = 0
            n += 1
            done_here += 1
            req = self._op(rng, cid, n, seen)
            verb = req["verb"].lower()
            rec = self.history.begin(
                name,
                node,
                verb,
                req["path"],
                value=req.get("value"),
                expect=req.get("rev", -1) if verb != "get" else -1,
            )
            req["timeout"] = cfg.op_timeout
            try:
                conn.send(req)
            except (OSError, RuntimeError) as e:  # RuntimeError: uvloop, handle closed
                rec.ret, rec.outcome, rec.err = self.history.now(), FAIL, f"not sent: {e!r}"
                conn.close()
                conn = None
                hop = self._away(rng, hop)
                continue
            try:
                resp = await conn.recv(cfg.op_timeout + 1.0)
            except (OSError, TimeoutError, ValueError) as e:
                rec.ret = self.history.now()
                rec.outcome = INFO
                rec.err = f"no answer: {e!r}"
                conn.close()
                conn = None
                hop = self._away(rng, hop)
                continue
            rec.ret = self.history.now()
            classify(rec, resp)
            if resp.get("err_code") == "UNAVAILABLE":
                conn.close()  # this node cannot serve now: try another
                conn = None
                hop = self._away(rng, hop)
            if rec.outcome == OK:
                if rec.kind == "get":
                    seen[rec.key] = rec.output[1]
                elif isinstance(rec.output, int):
                    seen[rec.key] = rec.output if rec.kind == "set" else 0
            if cfg.think:
                await asyncio.sleep(rng.expovariate(1 / cfg.think))
