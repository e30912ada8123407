"""The client wire protocol, sans I/O: line framing, request validation, responses.

Validation runs in the order the spec fixes for competing errors:
BAD_REQUEST/TOO_LARGE, UNKNOWN_VERB (here, in `parse`), then TAG_IN_USE and
PERMISSION (connection state, in the server), then MISSING_ARG, BAD_PATH/RANGE
(here, in `check_args`), then READONLY and the rest (the node).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from doozer import errors
from doozer.paths import compile_glob, path_too_big, shown, valid_path

MAX_LINE = 4 << 20
MAX_VALUE = 1 << 20
# A tag lives as long as its request: a WAIT may wait for ever, 4096 to a
# connection. Unbounded, 300 WAITs with 1 MB tags held 300 MB of a node.
MAX_TAG = 4096

# Verbs and the fields they require. Extra verbs beyond the spec are documented
# in docs/protocol.md.
VERBS: dict[str, tuple[str, ...]] = {
    "GET": ("path",),
    "SET": ("path", "value"),
    "DEL": ("path",),
    "REV": (),
    "NOP": (),
    "STAT": ("path",),
    "GETDIR": ("path",),
    "WALK": ("path",),
    "WAIT": ("path",),
    "WATCH": ("path", "tag"),
    "CANCEL": ("other_tag",),
    "SELF": (),
    "ACCESS": ("value",),
    # project additions
    "SNAPSHOT": (),
    "CLUSTER": (),
}
GLOB_VERBS = frozenset(("WALK", "WAIT", "WATCH"))
WRITE_VERBS = frozenset(("SET", "DEL"))
# Verbs answered before ACCESS on a node with a secret.
OPEN_VERBS = frozenset(("ACCESS", "REV", "SELF"))

_INT_FIELDS = ("rev", "offset", "limit")
_STR_FIELDS = ("path", "value", "value_b64")


class ProtocolError(Exception):
    """A request that cannot be served; becomes one error response line."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(slots=True)
class Request:
    verb: str | None
    tag: Any = None  # int | str | None
    has_tag: bool = False
    path: str | None = None
    rev: int | None = None
    value: bytes | None = None
    stale: bool = False
    timeout: float | None = None
    offset: int = 0
    limit: int | None = None
    other_tag: Any = None
    has_other_tag: bool = False
    raw: dict = field(default_factory=dict)


class LineBuffer:
    """Splits a byte stream into lines, bounded by `max_line`.

    `feed` yields each complete line (without the newline), or None in place of
    a line that exceeded the limit; the rest of such a line is skipped up to its
    newline without being buffered.
    """

    __slots__ = ("_buf", "_skipping", "max_line")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False

    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[bytes | None]:
        start = 0
        n = len(data)
        while start < n:
            nl = data.find(b"\n", start)
            if self._skipping:
                if nl < 0:
                    return
                self._skipping = False
                start = nl + 1
                continue
            if nl < 0:
                if len(self._buf) + (n - start) > self.max_line:
                    self._buf.clear()
                    self._skipping = True
                    yield None
                    return
                self._buf += data[start:]
                return
            if self._buf:
                if len(self._buf) + (nl - start) > self.max_line:
                    self._buf.clear()
                    start = nl + 1
                    yield None
                    continue
                self._buf += data[start:nl]
                line = bytes(self._buf)
                self._buf.clear()
            else:
                if nl - start > self.max_line:
                    start = nl + 1
                    yield None
                    continue
                line = data[start:nl]
            start = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            yield line


def _is_int(v: object) -> bool:
    return type(v) is int


def _is_tag(v: object) -> bool:
    return type(v) is int or type(v) is str


def parse(line: bytes, max_value: int = MAX_VALUE) -> Request:
    """Parse one request line. Raises ProtocolError for BAD_REQUEST, TOO_LARGE
    and UNKNOWN_VERB; the error carries the request's tag when it was valid
    (the `tag` attribute of the raised error)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(errors.BAD_REQUEST, f"not valid JSON: {e}") from None
    if type(obj) is not dict:
        raise ProtocolError(errors.BAD_REQUEST, "a request is one JSON object")
    req = Request(verb=None, raw=obj)
    if "tag" in obj:
        tag = obj["tag"]
        if not _is_tag(tag):
            raise ProtocolError(errors.BAD_REQUEST, "tag must be an integer or a string")
        if type(tag) is str and len(tag) > MAX_TAG:
            raise ProtocolError(errors.BAD_REQUEST, f"tag longer than {MAX_TAG} characters")
        req.tag = tag
        req.has_tag = True
    try:
        _fill(req, obj, max_value)
    except ProtocolError as e:
        e.tag = req.tag  # type: ignore[attr-defined]
        e.has_tag = req.has_tag  # type: ignore[attr-defined]
        raise
    return req


def _fill(req: Request, obj: dict, max_value: int) -> None:
    verb = obj.get("verb")
    if verb is not None and type(verb) is not str:
        raise ProtocolError(errors.BAD_REQUEST, "verb must be a string")
    for f in _STR_FIELDS:
        v = obj.get(f)
        if v is not None and type(v) is not str:
            raise ProtocolError(errors.BAD_REQUEST, f"{f} must be a string")
    for f in _INT_FIELDS:
        v = obj.get(f)
        if v is not None and not _is_int(v):
            raise ProtocolError(errors.BAD_REQUEST, f"{f} must be an integer")
    stale = obj.get("stale")
    if stale is not None and type(stale) is not bool:
        raise ProtocolError(errors.BAD_REQUEST, "stale must be true or false")
    req.stale = bool(stale)
    timeout = obj.get("timeout")
    if timeout is not None:
        if type(timeout) not in (int, float):
            raise ProtocolError(errors.BAD_REQUEST, "timeout must be a number of seconds")
        if timeout < 0 or timeout != timeout or timeout == float("inf"):
            raise ProtocolError(errors.BAD_REQUEST, "timeout must be a finite number >= 0")
        req.timeout = float(timeout)
    if "other_tag" in obj:
        ot = obj["other_tag"]
        if not _is_tag(ot) or (type(ot) is str and len(ot) > MAX_TAG):
            raise ProtocolError(
                errors.BAD_REQUEST,
                f"other_tag must be an integer or a string of at most {MAX_TAG} characters",
            )
        req.other_tag = ot
        req.has_other_tag = True
    value = obj.get("value")
    value_b64 = obj.get("value_b64")
    if value is not None and value_b64 is not None:
        raise ProtocolError(errors.BAD_REQUEST, "give value or value_b64, not both")
    if value is not None:
        if len(value) > max_value:  # cheap bound before encoding
            raise ProtocolError(errors.TOO_LARGE, f"value over the {max_value}-byte limit")
        req.value = value.encode("utf-8")
    elif value_b64 is not None:
        try:
            req.value = base64.b64decode(value_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(errors.BAD_REQUEST, "value_b64 is not valid base64") from None
    if req.value is not None and len(req.value) > max_value:
        raise ProtocolError(errors.TOO_LARGE, f"value over the {max_value}-byte limit")
    req.path = obj.get("path")
    req.rev = obj.get("rev")
    off = obj.get("offset")
    if off is not None:
        req.offset = off
    req.limit = obj.get("limit")
    if verb is not None:
        uverb = verb.upper()
        if uverb not in VERBS:
            raise ProtocolError(errors.UNKNOWN_VERB, f"unknown verb {verb!r}")
        req.verb = uverb


def check_args(req: Request) -> None:
    """MISSING_ARG, then BAD_PATH / RANGE / BAD_REQUEST for rev values."""
    verb = req.verb
    if verb is None:
        raise ProtocolError(errors.MISSING_ARG, "missing verb")
    for f in VERBS[verb]:
        if f == "path" and req.path is None:
            raise ProtocolError(errors.MISSING_ARG, f"{verb} needs a path")
        if f == "value" and req.value is None:
            raise ProtocolError(errors.MISSING_ARG, f"{verb} needs value or value_b64")
        if f == "tag" and not req.has_tag:
            raise ProtocolError(errors.MISSING_ARG, f"{verb} needs a tag (to be cancellable)")
        if f == "other_tag" and not req.has_other_tag:
            raise ProtocolError(errors.MISSING_ARG, f"{verb} needs other_tag")
    if req.path is not None and "path" in VERBS[verb]:
        too_big = path_too_big(req.path)
        if too_big is not None:
            raise ProtocolError(errors.BAD_PATH, too_big)
        if verb in GLOB_VERBS:
            try:
                compile_glob(req.path)
            except errors.DoozerError as e:
                raise ProtocolError(errors.BAD_PATH, e.detail) from None
        elif not valid_path(req.path):
            raise ProtocolError(errors.BAD_PATH, f"invalid path {shown(req.path)}")
    if req.offset < 0 or (req.limit is not None and req.limit < 0):
        raise ProtocolError(errors.RANGE, "offset and limit must be >= 0")
    rev = req.rev
    if rev is not None:
        if verb in WRITE_VERBS:
            if rev < -1:
                raise ProtocolError(errors.BAD_REQUEST, "rev on a write must be >= -1")
        elif rev < 0:
            raise ProtocolError(errors.BAD_REQUEST, "rev must be >= 0")


def encode_value(resp: dict, value: bytes) -> None:
    """Put a body into a response: `value` when UTF-8, else `value_b64`."""
    try:
        resp["value"] = value.decode("utf-8")
    except UnicodeDecodeError:
        resp["value_b64"] = base64.b64encode(value).decode("ascii")


def error_line(code: str, detail: str, tag: Any = None, has_tag: bool = False) -> bytes:
    if has_tag:
        return orjson.dumps({"tag": tag, "err_code": code, "err_detail": detail}) + b"\n"
    return orjson.dumps({"err_code": code, "err_detail": detail}) + b"\n"


def line(resp: dict) -> bytes:
    return orjson.dumps(resp) + b"\n"
