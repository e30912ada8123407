"""The acceptor's answers to phase 1: what it has accepted or learned above a point."""

from __future__ import annotations

import orjson

from .ballot import wire
from .durable import DurableState


def size_of(value: object) -> int:
    """Bytes of a value on the wire (orjson is what the peer links speak)."""
    return len(orjson.dumps(value))


def report(
    ds: DurableState, commit: int, max_decided: int, start: int, limit: int | None
) -> tuple[list, int | None]:
    """Entries for a promise: [[i, ballot, v]] accepted, [[i, None, v]] decided, above
    max(start - 1, commit), in instance order, at most `limit` bytes (at least one entry).
    Returns (entries, next instance to ask for if the reply was cut short)."""
    lo = max(start, commit + 1)
    keys = {i for i in ds.accepted if i >= lo}
    if max_decided >= lo:
        keys.update(i for i in range(lo, max_decided + 1) if i in ds.decided)
    out: list = []
    size = 0
    for i in sorted(keys):
        v = ds.decided.get(i)
        if v is not None:
            e = [i, None, v]
        else:
            b, v = ds.accepted[i]
            e = [i, wire(b), v]
        if limit is not None:
            s = size_of(v) + 32
            if out and size + s > limit:
                return out, i
            size += s
        out.append(e)
    return out, None
