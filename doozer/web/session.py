"""One browser's WebSocket: its requests, and its bounded, ordered output.

Everything the page receives goes through one queue, in order: plain messages,
batches of events, and two lazily produced streams (a full load, a tree at a
rev) that are read from the store chunk by chunk as the socket drains, so a
10k-file tree is never held in memory as one message. Events that arrive
while a load is being sent queue behind it. The queue is bounded in bytes: a
page that stops reading is disconnected rather than buffered for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from doozer import errors, stepper
from doozer.errors import DoozerError
from doozer.web import wire

if TYPE_CHECKING:
    from doozer.web.viewer import WebViewer

log = logging.getLogger("doozer")

OUT_LIMIT = 8 << 20  # bytes queued for one page before it is cut off
CHUNK_FILES = 500  # files per `files` / `at` message
CHUNK_BYTES = 256 << 10
REPLAY_MAX = 20_000  # events replayed on catch-up; beyond that a full load is cheaper
RECENT = 50  # events sent with a load, for the feed
CLOSE_TOO_SLOW = 1013  # "try again later": the page reconnects and catches up
CLOSE_WAIT = 2.0


@dataclass(slots=True)
class _Events:
    msg: bytes


@dataclass(slots=True)
class _Load:
    rev: int
    gen: int


@dataclass(slots=True)
class _At:
    req_id: Any
    rev: int


_Item = bytes | _Events | _Load | _At


class Session:
    def __init__(self, viewer: WebViewer, conn: ServerConnection) -> None:
        self.viewer = viewer
        self.conn = conn
        self.authed = viewer.secret is None
        self.subscribed = False
        self.closed = False
        self._out: deque[_Item] = deque()
        self._out_bytes = 0
        self._status: bytes | None = None
        self._wake = asyncio.Event()
        self._gen = 0  # subscription generation: a newer `sub` supersedes a load in progress
        self._at_id: Any = None
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._slice_end = 0.0  # when a load's current slice of work is used up (_pace)

    # -- life ----------------------------------------------------------------

    async def run(self) -> None:
        self._writer = asyncio.create_task(self._write_loop())
        try:
            self._push(self.viewer.hello(self.authed))
            if self.authed:
                self._push(self.viewer.status_message())
            async for raw in self.conn:
                if self.closed:
                    break
                self._handle(raw)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await self._writer

    def abort(self) -> None:
        """Drop the connection at once, as a network failure would."""
        self.closed = True
        transport = self.conn.transport
        if transport is not None:
            transport.abort()

    def _too_slow(self) -> None:
        if self.closed:
            return
        self.closed = True
        log.warning("web viewer: %s stopped reading; disconnected", self._peer())
        self._out.clear()
        self._out_bytes = 0
        if self._writer is not None:
            self._writer.cancel()
        self._closer = asyncio.get_running_loop().create_task(self._close_slow())

    async def _close_slow(self) -> None:
        # The close frame waits behind the unread output; do not wait long for it.
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                await self.conn.close(CLOSE_TOO_SLOW, "output backed up: the page stopped reading")
        except TimeoutError:
            self.abort()

    def _peer(self) -> str:
        try:
            host, port = self.conn.remote_address[:2]
            return f"{host}:{port}"
        except Exception:
            return "a page"

    # -- output ----------------------------------------------------------------

    def _push(self, item: _Item) -> None:
        if self.closed:
            return
        size = _size(item)
        if self._out_bytes + size > OUT_LIMIT:
            self._too_slow()
            return
        self._out_bytes += size
        self._out.append(item)
        self._wake.set()

    def push_events(self, msg: bytes) -> None:
        if self.subscribed:
            self._push(_Events(msg))

    def push_status(self, msg: bytes) -> None:
        """Status is latest-wins: a page that is behind gets the newest, once."""
        if not self.closed and self.authed:
            self._status = msg
            self._wake.set()

    def _drop_queued_events(self) -> None:
        kept: deque[_Item] = deque()
        for item in self._out:
            if isinstance(item, _Events):
                self._out_bytes -= _size(item)
            else:
                kept.append(item)
        self._out = kept

    async def _send(self, msg: bytes) -> None:
        await self.conn.send(msg.decode())

    async def _pace(self) -> None:
        """Between chunks of a load: a big tree's load is seconds of work, and
        sending does not wait while the socket takes it all, so give the loop
        a gap after each slice (as `doozer.stepper` does), or the node would
        stall (300k files: 0.8 s without a write answered)."""
        now = time.perf_counter()
        if now >= self._slice_end:
            await asyncio.sleep(stepper.GAP)
            self._slice_end = time.perf_counter() + stepper.SLICE

    async def _write_loop(self) -> None:
        try:
            await self._write_items()
        except (asyncio.CancelledError, ConnectionClosed):
            raise
        except Exception:
            # a page that silently stopped getting updates would be worse than none
            log.exception("web viewer: sending to %s failed; disconnecting it", self._peer())
            self.abort()

    async def _write_items(self) -> None:
        while True:
            if self._status is not None:
                msg, self._status = self._status, None
                await self._send(msg)
                continue
            if not self._out:
                await self._wake.wait()
                self._wake.clear()
                continue
            item = self._out.popleft()
            self._out_bytes -= _size(item)
            if isinstance(item, bytes):
                await self._send(item)
            elif isinstance(item, _Events):
                await self._send(item.msg)
            elif isinstance(item, _Load):
                await self._send_load(item)
            else:
                await self._send_at(item)

    def _files(self, rev: int) -> Iterator[list[tuple[str, int, bytes]]]:
        """The files at `rev`, frozen now (TooLate if the rev left the history),
        in sorted batches of bounded work each (see `FrozenTree.batches`)."""
        store = self.viewer.node.store
        if rev == 0:
            return iter(())
        return store.freeze(None if rev == store.rev else rev).batches()

    def _chunks(
        self, batches: Iterator[list[tuple[str, int, bytes]]]
    ) -> Iterator[list[dict[str, Any]] | None]:
        """The files of `batches`, a few hundred per chunk; None after a step
        that filled no chunk, for the caller to pace itself (a big tree is
        sorted over many steps)."""
        chunk: list[dict[str, Any]] = []
        size = 0
        for batch in batches:
            full = False
            for path, rev, value in batch:
                chunk.append(wire.file_entry(path, rev, value))
                size += len(path) + min(len(value), wire.PREVIEW) + 48
                if len(chunk) >= CHUNK_FILES or size >= CHUNK_BYTES:
                    yield chunk
                    chunk, size, full = [], 0, True
            if not full:
                yield None
        yield chunk  # the last, maybe empty

    async def _send_load(self, load: _Load) -> None:
        store = self.viewer.node.store
        while load.gen == self._gen:
            rev = load.rev
            try:
                chunks = self._chunks(self._files(rev))
                count = len(store) if rev == store.rev else None
                await self._send(wire.message("load", rev=rev, oldest=store.oldest, count=count))
                for chunk in chunks:
                    if load.gen != self._gen:
                        return
                    if chunk:
                        await self._send(wire.message("files", files=chunk))
                    await self._pace()
                await self._send(wire.message("loaded", rev=rev, recent=self._recent(rev)))
                return
            except errors.TooLate:
                # The rev left the history before we froze it (a slow page, a fast
                # writer). Start over at the newest rev handed out; every event queued so far
                # is at or below it, so it is dropped, not repeated.
                self._drop_queued_events()
                load.rev = self.viewer.flushed_rev

    def _recent(self, rev: int) -> list[dict[str, Any]]:
        """The last few events up to `rev`, for the page's feed of mutations."""
        store = self.viewer.node.store
        start = max(store.oldest, rev - RECENT + 1, 1)
        try:
            events = store.events_from(start) if rev else []
        except errors.TooLate:
            return []
        return [wire.event_entry(ev) for ev in events if ev.rev <= rev]

    async def _send_at(self, at: _At) -> None:
        if at.req_id != self._at_id:
            return  # superseded by a newer request (the slider moved on)
        try:
            held: list[dict[str, Any]] | None = None
            for chunk in self._chunks(self._files(at.rev)):
                if at.req_id != self._at_id:
                    return
                await self._pace()
                if chunk is None:
                    continue
                if held is not None:
                    await self._send(
                        wire.message("at", id=at.req_id, rev=at.rev, files=held, done=False)
                    )
                held = chunk
            await self._send(wire.message("at", id=at.req_id, rev=at.rev, files=held, done=True))
        except DoozerError as e:
            await self._send(wire.error(e.code, e.detail, at.req_id))

    # -- requests -----------------------------------------------------------

    def _handle(self, raw: str | bytes) -> None:
        try:
            req = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._push(wire.error(errors.BAD_REQUEST, "not JSON"))
            return
        if not isinstance(req, dict):
            self._push(wire.error(errors.BAD_REQUEST, "not a JSON object"))
            return
        op = req.get("op")
        req_id = req.get("id")
        if op == "auth":
            self._auth(req)
            return
        if not self.authed:
            self._push(wire.error(errors.PERMISSION, "send auth with the secret first", req_id))
            return
        handler = _OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            self._push(wire.error(errors.UNKNOWN_VERB, f"unknown op {op!r}", req_id))
            return
        try:
            handler(self, req)
        except DoozerError as e:
            self._push(wire.error(e.code, e.detail, req_id))

    def _auth(self, req: dict[str, Any]) -> None:
        secret = self.viewer.secret
        given = req.get("secret")
        if not isinstance(given, str):
            self._push(wire.error(errors.BAD_REQUEST, "auth needs secret (a string)"))
            return
        if secret is None or hmac.compare_digest(given.encode(), secret):
            was = self.authed
            self.authed = True
            self._push(wire.message("auth", ok=True))
            if not was:
                self._push(self.viewer.status_message())
        else:
            self._push(wire.message("auth", ok=False, detail="wrong secret"))

    def _sub(self, req: dict[str, Any]) -> None:
        """Follow the tree: from rev `from` on if the history still holds it
        (`catchup`, then the events), else a full load, then live events."""
        store = self.viewer.node.store
        top = self.viewer.flushed_rev
        start = req.get("from")
        self._gen += 1
        self._drop_queued_events()
        self.subscribed = True
        if isinstance(start, int) and not isinstance(start, bool) and 1 <= start <= top + 1:
            try:
                events = store.events_from(start) if start <= top else []
            except errors.TooLate:
                events = None
            if events is not None and len(events) <= REPLAY_MAX:
                self._push(wire.message("catchup", **{"from": start, "rev": top}))
                batch: list[dict[str, Any]] = []
                for ev in events:
                    if ev.rev > top:
                        break  # still pending in the viewer: it comes live
                    batch.append(wire.event_entry(ev))
                    if len(batch) >= 1000:
                        self._push(_Events(wire.message("evs", events=batch)))
                        batch = []
                if batch:
                    self._push(_Events(wire.message("evs", events=batch)))
                return
        self._push(_Load(top, self._gen))

    def reload(self) -> None:
        """Load the whole tree again (the node skipped events), then follow."""
        self._gen += 1
        self._drop_queued_events()
        self._push(_Load(self.viewer.flushed_rev, self._gen))

    def _at(self, req: dict[str, Any]) -> None:
        store = self.viewer.node.store
        rev = _int_field(req, "rev")
        if rev is None or rev <= 0:
            raise errors.BadRequest(None, "at needs rev (a positive integer)")
        if rev > store.rev:
            raise errors.RangeError_(None, f"rev {rev} is past the node's rev {store.rev}")
        if rev < store.oldest:
            raise errors.TooLate(
                None, f"rev {rev} is older than the history (oldest {store.oldest})"
            )
        self._at_id = req.get("id")
        self._push(_At(self._at_id, rev))

    def _get(self, req: dict[str, Any]) -> None:
        store = self.viewer.node.store
        path = req.get("path")
        if not isinstance(path, str):
            raise errors.BadRequest(None, "get needs path (a string)")
        rev = _int_field(req, "rev")
        if rev is not None and rev > store.rev:
            raise errors.RangeError_(None, f"rev {rev} is past the node's rev {store.rev}")
        value, file_rev = store.get(path, rev)
        out: dict[str, Any] = {"op": "value", "id": req.get("id"), "path": path, "rev": file_rev}
        wire.put_value(out, value, None)
        self._push(orjson.dumps(out))


def _size(item: _Item) -> int:
    if isinstance(item, bytes):
        return len(item)
    if isinstance(item, _Events):
        return len(item.msg)
    return 64  # a stream's marker; the stream itself is read as the socket drains


def _int_field(req: dict[str, Any], name: str) -> int | None:
    v = req.get(name)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise errors.BadRequest(None, f"{name} must be an integer")
    return v


_OPS = {"sub": Session._sub, "at": Session._at, "get": Session._get}
