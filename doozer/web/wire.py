"""How the viewer puts files, events and errors into WebSocket messages. Pure.

Values are cut to a preview so a big tree stays a small load; the page asks
for a file's full body with `get` when someone opens it.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from doozer.store import Event

PREVIEW = 256  # bytes of each body sent with loads and events


def put_value(out: dict[str, Any], value: bytes, limit: int | None) -> None:
    """`value` (text) or `value_b64` (binary) as in the client protocol, plus
    `len`, and `cut: true` when only the first `limit` bytes are carried."""
    out["len"] = len(value)
    body = value
    if limit is not None and len(value) > limit:
        body = value[:limit]
        out["cut"] = True
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        out["value_b64"] = base64.b64encode(body).decode("ascii")
    else:
        # a cut may split a character: drop the partial tail, never mangle
        out["value"] = body.decode("utf-8", "ignore")


def file_entry(path: str, rev: int, value: bytes) -> dict[str, Any]:
    f: dict[str, Any] = {"path": path, "rev": rev}
    put_value(f, value, PREVIEW)
    return f


def event_entry(ev: Event) -> dict[str, Any]:
    e: dict[str, Any] = {"rev": ev.rev, "path": ev.path, "flags": ev.flags}
    if ev.value is not None:
        put_value(e, ev.value, PREVIEW)
    return e


def message(op: str, **fields: Any) -> bytes:
    return orjson.dumps({"op": op, **fields})


def error(code: str, detail: str, req_id: Any = None) -> bytes:
    if req_id is None:
        return orjson.dumps({"op": "error", "code": code, "detail": detail})
    return orjson.dumps({"op": "error", "id": req_id, "code": code, "detail": detail})
