"""The asyncio client for doozer's JSON-lines protocol.

One TCP connection carries every request, tagged with an integer from the
client and pipelined; responses are matched by tag, in whatever order they
come. On a lost connection the client dials the next address of its list.
A read (and NOP, SELF, ACCESS, and a WAIT from a known rev) whose answer was
lost is sent again on the new connection; a write whose answer was lost is
not: its outcome is unknown, and the caller gets `errors.Unavailable` saying
so. A WATCH resumes after the last event it delivered.

    async with await Client.connect(["127.0.0.1:8046", "127.0.0.1:8047"]) as c:
        rev = await c.set("/a", b"hello", rev=0)
        value, rev = await c.get("/a")
        async with c.watch("/a/**", rev=rev + 1) as w:
            async for ev in w:
                ...
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import orjson

from doozer import errors, uri

# Verbs whose request may be sent again after a lost connection: they change
# nothing (NOP is a barrier; ACCESS is idempotent).
RETRYABLE = frozenset({"GET", "STAT", "GETDIR", "WALK", "REV", "NOP", "SELF", "ACCESS"})

SET_FLAG = 4
DEL_FLAG = 8

# The client-side deadline runs this long past the timeout sent to the node,
# so that the node's own answer (TIMEOUT, UNAVAILABLE) wins when it can.
GRACE = 0.5

_T = TypeVar("_T")


class Got(tuple[bytes, int]):
    """GET's answer: unpacks as `(value, rev)`; `.snap_rev` is the snapshot read from."""

    snap_rev: int

    def __new__(cls, value: bytes, rev: int, snap_rev: int) -> Got:
        self = super().__new__(cls, (value, rev))
        self.snap_rev = snap_rev
        return self

    @property
    def value(self) -> bytes:
        return self[0]

    @property
    def rev(self) -> int:
        return self[1]

    def __repr__(self) -> str:
        return f"Got(value={self[0]!r}, rev={self[1]}, snap_rev={self.snap_rev})"


class Stat(tuple[int, int]):
    """STAT's answer: unpacks as `(len, rev)` (rev -2: a directory, 0: missing)."""

    snap_rev: int

    def __new__(cls, length: int, rev: int, snap_rev: int) -> Stat:
        self = super().__new__(cls, (length, rev))
        self.snap_rev = snap_rev
        return self

    @property
    def len(self) -> int:
        return self[0]

    @property
    def rev(self) -> int:
        return self[1]

    @property
    def is_dir(self) -> bool:
        return self[1] == -2

    def __repr__(self) -> str:
        return f"Stat(len={self[0]}, rev={self[1]}, snap_rev={self.snap_rev})"


class Listing(list[_T]):
    """GETDIR's names or WALK's files; `.rev` is the snapshot they were read from."""

    rev: int

    def __init__(self, items: Iterable[_T], rev: int) -> None:
        super().__init__(items)
        self.rev = rev


class File(NamedTuple):
    path: str
    rev: int
    value: bytes


class Event(NamedTuple):
    """One change, as WAIT and WATCH report it. `value` is b"" for a delete."""

    path: str
    rev: int
    value: bytes
    flags: int

    @property
    def is_set(self) -> bool:
        return bool(self.flags & SET_FLAG)

    @property
    def is_del(self) -> bool:
        return bool(self.flags & DEL_FLAG)


def put_value(msg: dict[str, Any], value: bytes | bytearray | memoryview | str) -> None:
    """Carry a body as `value` when it is valid UTF-8, else as `value_b64`."""
    if isinstance(value, str):
        msg["value"] = value
        return
    raw = bytes(value)
    try:
        msg["value"] = raw.decode()
    except UnicodeDecodeError:
        msg["value_b64"] = base64.b64encode(raw).decode("ascii")


def value_of(msg: dict[str, Any]) -> bytes:
    """The body of a response, from `value` or `value_b64`."""
    b64 = msg.get("value_b64")
    if b64 is not None:
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, TypeError):
            raise errors.Other(None, "node sent bad value_b64") from None
    v = msg.get("value")
    return v.encode() if v else b""


def _event(msg: dict[str, Any]) -> Event:
    return Event(msg.get("path", ""), msg.get("rev", 0), value_of(msg), msg.get("flags", 0))


def _raise_if_error(msg: dict[str, Any]) -> dict[str, Any]:
    code = msg.get("err_code")
    if code is not None:
        raise errors.error_for(code, msg.get("err_detail", ""))
    return msg


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class _Lost(Exception):
    """The connection carrying a request ended before its answer came."""


class _Conn(asyncio.Protocol):
    """One TCP connection: line framing, tag routing, batched writes."""

    def __init__(self, addr: str, on_lost: Callable[[_Conn], None]) -> None:
        self.addr = addr
        self.pending: dict[int, asyncio.Future[dict[str, Any]] | Watch] = {}
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.gone: asyncio.Future[None] = self._loop.create_future()
        self._on_lost = on_lost
        self._buf = bytearray()
        self._scan = 0
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        i = buf.find(b"\n", self._scan)
        if i < 0:
            self._scan = len(buf)
            return
        start = 0
        while i >= 0:
            if i > start:
                self._line(buf[start:i])
            if self.closed:
                return
            start = i + 1
            i = buf.find(b"\n", start)
        del buf[:start]
        self._scan = len(buf)

    def _line(self, line: bytearray) -> None:
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict):
            if line.strip():
                # A node that does not speak the protocol: nothing on this
                # connection can be trusted any more.
                self.abort()
            return
        tag = msg.get("tag")
        sink = self.pending.get(tag)  # type: ignore[arg-type]
        if sink is None:
            return  # an answer nobody waits for any more (deadline passed, cancelled)
        if isinstance(sink, Watch):
            if "err_code" in msg:
                del self.pending[tag]  # type: ignore[arg-type]
            sink._push(msg)
            return
        del self.pending[tag]  # type: ignore[arg-type]
        if not sink.done():
            sink.set_result(msg)

    def send(self, msg: dict[str, Any]) -> None:
        # Requests made in one turn of the loop leave in one write.
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(orjson.dumps(msg, option=orjson.OPT_APPEND_NEWLINE))

    def _flush(self) -> None:
        out, self._out = self._out, []
        t = self.transport
        if out and not self.closed and t is not None and not t.is_closing():
            t.write(b"".join(out))

    def eof_received(self) -> bool:
        return False

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True  # stop reading and sending now; connection_lost follows
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        pending, self.pending = self.pending, {}
        for sink in pending.values():
            if isinstance(sink, Watch):
                sink._lost(self)
            elif not sink.done():
                sink.set_exception(_Lost(f"connection to {self.addr} lost"))
        if not self.gone.done():
            self.gone.set_result(None)
        self._on_lost(self)


class _ConnectMethod:
    """`await Client.connect(addrs, ...)` makes and connects a client;
    `await client.connect()` connects an existing one."""

    def __get__(self, obj: Client | None, cls: type[Client]) -> Callable[..., Awaitable[Client]]:
        if obj is not None:
            return obj._connect

        async def connect(addrs: list[str] | str, **kw: Any) -> Client:
            client = cls(addrs, **kw)
            await client._connect()
            return client

        return connect


class Client:
    """A doozer client. Use from one event loop (asyncio or uvloop).

    `addrs`: one string or a list of them, each a `host:port`, a
    comma-separated list of those, or a `doozer:?ca=...&sk=...` URI; dialled
    in order. `secret`: sent with ACCESS on every connection before anything
    else (if None, a URI's `sk`). `timeout`: bounds connecting, and every call but
    wait/watch that is given no `timeout` of its own.

    Every call takes a keyword `timeout` (seconds): it is sent to the node as
    the request's `timeout`, and the client gives up GRACE seconds after it
    (`Unavailable`; for WAIT, `Timeout`).
    """

    connect = _ConnectMethod()

    def __init__(
        self, addrs: list[str] | str, *, secret: str | None = None, timeout: float = 10.0
    ) -> None:
        self.addrs: list[str] = []
        for spec in [addrs] if isinstance(addrs, str) else addrs:
            more, sk = uri.parse(spec)
            self.addrs.extend(more)
            if secret is None:
                secret = sk
        if not self.addrs:
            raise ValueError("no address to connect to")
        self.secret = secret
        self.timeout = timeout
        self._conn: _Conn | None = None
        self._next = 0  # index in addrs of the next address to dial
        self._dialing: asyncio.Task[_Conn] | None = None
        self._tags = itertools.count(1)
        self._closed = False

    # -- connections --------------------------------------------------------

    @property
    def addr(self) -> str | None:
        """The address of the live connection, if any."""
        c = self._conn
        return c.addr if c is not None and not c.closed else None

    async def _connect(self) -> Client:
        if self.addr is None:
            await self._dial_shared(passes=1)
        return self

    async def _dial_shared(self, passes: int | None) -> _Conn:
        if self._dialing is None or self._dialing.done():
            self._dialing = asyncio.get_running_loop().create_task(self._dial_any(passes))
            # Whoever gave up waiting, the outcome is consumed here.
            self._dialing.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(self._dialing)

    async def _dial_any(self, passes: int | None) -> _Conn:
        """Dial the addresses in turn from `_next`, for `passes` rounds (None:
        until `timeout` has passed, backing off between rounds)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.timeout
        n = len(self.addrs)
        failures: list[str] = []
        delay = 0.02
        rounds = 0
        while True:
            for i in range(n):
                if self._closed:
                    raise errors.Unavailable(None, "client closed")
                left = give_up - loop.time()
                if left <= 0:
                    break
                idx = (self._next + i) % n
                addr = self.addrs[idx]
                try:
                    async with asyncio.timeout(left):
                        conn = await self._dial(addr)
                except errors.Permission:
                    raise
                except (OSError, TimeoutError, _Lost, errors.DoozerError) as e:
                    failures.append(f"{addr}: {e or type(e).__name__}")
                    continue
                if self._closed:
                    conn.abort()
                    raise errors.Unavailable(None, "client closed")
                self._next = idx
                self._conn = conn
                return conn
            rounds += 1
            if (passes is not None and rounds >= passes) or loop.time() + delay >= give_up:
                raise errors.Unavailable(
                    None, "no node reachable (" + "; ".join(failures[-n:]) + ")"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _dial(self, addr: str) -> _Conn:
        host, port = uri.split_host_port(addr)
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Conn(addr, self._lost), host, port)
        if self.secret is not None:
            try:
                await self._send(conn, {"verb": "ACCESS", "value": self.secret}, None)
            except BaseException:
                conn.abort()
                raise
        return conn

    def _lost(self, conn: _Conn) -> None:
        if self._conn is conn:
            self._conn = None
            # Fail over: the next dial starts with the address after this one.
            if conn.addr in self.addrs:
                self._next = (self.addrs.index(conn.addr) + 1) % len(self.addrs)

    async def _live(self, deadline: float | None) -> _Conn:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._closed:
            raise errors.Unavailable(None, "client closed")
        try:
            async with asyncio.timeout_at(deadline):
                return await self._dial_shared(passes=None)
        except TimeoutError:
            raise errors.Unavailable(None, "no node reachable within the timeout") from None

    async def close(self) -> None:
        """Close the connection. Calls in flight fail with Unavailable; watches end."""
        self._closed = True  # a dial in progress sees this and gives up
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            if conn.transport is not None:
                conn.transport.close()
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.shield(conn.gone)
            except TimeoutError:
                conn.abort()

    async def __aenter__(self) -> Client:
        return await self._connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests -----------------------------------------------------------

    async def _send(
        self, conn: _Conn, msg: dict[str, Any], deadline: float | None
    ) -> dict[str, Any]:
        """Send one request on `conn` and wait for its answer (raises _Lost,
        TimeoutError at the deadline, or the answer's typed error)."""
        tag = next(self._tags)
        msg["tag"] = tag
        loop = conn._loop
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        conn.pending[tag] = fut
        conn.send(msg)
        # A bare timer: much cheaper per request than asyncio.timeout().
        timer = None if deadline is None else loop.call_at(deadline, _expire, fut)
        try:
            resp = await fut
        except (TimeoutError, asyncio.CancelledError):
            if conn.pending.pop(tag, None) is not None and msg["verb"] == "WAIT":
                conn.send({"verb": "CANCEL", "other_tag": tag, "tag": next(self._tags)})
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return _raise_if_error(resp)

    async def call(
        self,
        verb: str,
        *,
        timeout: float | None = None,
        retry: bool | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Send any request and return its answer (without `tag`), or raise the
        typed error for its `err_code`. `retry`: may it be sent again after a
        lost connection (default: for the verbs in RETRYABLE). `timeout`
        defaults to the client's, except for WAIT (no timeout)."""
        verb = verb.upper()
        msg: dict[str, Any] = {"verb": verb, **fields}
        if retry is None:
            retry = verb in RETRYABLE or (verb == "WAIT" and fields.get("rev") is not None)
        if timeout is None and verb != "WAIT":
            timeout = self.timeout
        deadline = None
        if timeout is not None:
            msg["timeout"] = timeout
            deadline = asyncio.get_running_loop().time() + timeout + GRACE
        tries = 3 * len(self.addrs) + 3
        while True:
            conn = self._conn
            if conn is None or conn.closed:
                conn = await self._live(deadline)
            try:
                resp = await self._send(conn, msg, deadline)
            except errors.Unavailable as e:
                tries -= 1
                going = e.detail == errors.NOT_CARRIED_OUT or (
                    retry and e.detail.startswith(errors.SHUTTING_DOWN)
                )
                if not going or tries <= 0 or self._closed:
                    raise
                # The node is going away and did not carry this out (or it is
                # a read): send it to the next node. Answers still due on this
                # connection come in before the node closes it.
                self._lost(conn)
                continue
            except _Lost:
                if self._closed:
                    raise errors.Unavailable(None, "client closed") from None
                tries -= 1
                if retry and tries > 0:
                    continue
                if retry:
                    raise errors.Unavailable(None, f"{verb}: connections keep failing") from None
                lost = f"connection to {conn.addr} lost before {verb} was answered"
                if verb == "WAIT":
                    lost += "; a change may have been missed (a WAIT with a rev is retried)"
                else:
                    lost += "; its outcome is unknown"
                raise errors.Unavailable(None, lost) from None
            except TimeoutError:
                if verb == "WAIT":
                    raise errors.Timeout(None, f"no answer within {timeout}s") from None
                what = "" if retry else "; its outcome is unknown"
                raise errors.Unavailable(
                    None, f"{verb}: no answer from {conn.addr} within {timeout}s{what}"
                ) from None
            resp.pop("tag", None)
            return resp

    # -- verbs --------------------------------------------------------------

    async def get(
        self,
        path: str,
        rev: int | None = None,
        *,
        stale: bool = False,
        timeout: float | None = None,
    ) -> Got:
        """The body and rev of the file at `path` (missing: b"", 0)."""
        fields: dict[str, Any] = {"path": path}
        _read_opts(fields, rev, stale)
        r = await self.call("GET", timeout=timeout, **fields)
        return Got(value_of(r), r.get("rev", 0), r.get("snap_rev", r.get("rev", 0)))

    async def set(
        self,
        path: str,
        value: bytes | bytearray | memoryview | str,
        rev: int = -1,
        *,
        timeout: float | None = None,
    ) -> int:
        """Write `path`; `rev` -1: unconditionally, 0: create only, else only if
        the file's rev is not above it. Returns the new rev."""
        fields: dict[str, Any] = {"path": path, "rev": rev}
        put_value(fields, value)
        r = await self.call("SET", timeout=timeout, **fields)
        return int(r["rev"])

    async def delete(self, path: str, rev: int = -1, *, timeout: float | None = None) -> int:
        """Delete the file at `path` (same `rev` rule as set). Returns the rev."""
        r = await self.call("DEL", timeout=timeout, path=path, rev=rev)
        return int(r["rev"])

    async def rev(self, *, stale: bool = False, timeout: float | None = None) -> int:
        """The cluster's current rev (with `stale`, the node's applied rev)."""
        fields: dict[str, Any] = {"stale": True} if stale else {}
        r = await self.call("REV", timeout=timeout, **fields)
        return int(r["rev"])

    async def nop(self, *, timeout: float | None = None) -> int:
        """A consensus barrier; returns the rev at its place in the log."""
        r = await self.call("NOP", timeout=timeout)
        return int(r["rev"])

    async def stat(
        self,
        path: str,
        rev: int | None = None,
        *,
        stale: bool = False,
        timeout: float | None = None,
    ) -> Stat:
        """(len, rev): a file's length and rev; a directory's entry count and -2;
        missing: (0, 0)."""
        fields: dict[str, Any] = {"path": path}
        _read_opts(fields, rev, stale)
        r = await self.call("STAT", timeout=timeout, **fields)
        return Stat(r.get("len", 0), r.get("rev", 0), r.get("snap_rev", r.get("rev", 0)))

    async def getdir(
        self,
        path: str,
        rev: int | None = None,
        offset: int = 0,
        limit: int | None = None,
        *,
        stale: bool = False,
        timeout: float | None = None,
    ) -> Listing[str]:
        """The names in directory `path`, sorted; `.rev` is the snapshot rev."""
        fields: dict[str, Any] = {"path": path}
        _read_opts(fields, rev, stale)
        _page(fields, offset, limit)
        r = await self.call("GETDIR", timeout=timeout, **fields)
        return Listing(r.get("entries", []), r.get("rev", 0))

    async def walk(
        self,
        glob: str,
        rev: int | None = None,
        offset: int = 0,
        limit: int | None = None,
        *,
        stale: bool = False,
        timeout: float | None = None,
    ) -> Listing[File]:
        """Every file matching `glob`, sorted by path; `.rev` is the snapshot rev."""
        fields: dict[str, Any] = {"path": glob}
        _read_opts(fields, rev, stale)
        _page(fields, offset, limit)
        r = await self.call("WALK", timeout=timeout, **fields)
        files = (File(f["path"], f.get("rev", 0), value_of(f)) for f in r.get("files", []))
        return Listing(files, r.get("rev", 0))

    async def wait(
        self, glob: str, rev: int | None = None, *, timeout: float | None = None
    ) -> Event:
        """The first change at or after `rev` (default: the next one) to a path
        matching `glob`. Raises Timeout if `timeout` passes first."""
        fields: dict[str, Any] = {"path": glob}
        if rev is not None:
            fields["rev"] = rev
        return _event(await self.call("WAIT", timeout=timeout, **fields))

    def watch(self, glob: str, rev: int | None = None) -> Watch:
        """Every change to a path matching `glob` from `rev` on (default: from
        the next one), as an async iterator of Events. The WATCH is sent at
        once when connected, so it sees any write sent after this call."""
        return Watch(self, glob, rev)

    async def self_info(self, *, timeout: float | None = None) -> dict[str, Any]:
        """SELF: {"id", "addr", "role", "leader", ...} of the answering node."""
        r = await self.call("SELF", timeout=timeout)
        r["id"] = r.get("value")
        return r

    async def access(self, secret: str, *, timeout: float | None = None) -> None:
        """Present `secret`; it is also sent on every later reconnection."""
        await self.call("ACCESS", timeout=timeout, value=secret)
        self.secret = secret


def _read_opts(fields: dict[str, Any], rev: int | None, stale: bool) -> None:
    if rev is not None:
        fields["rev"] = rev
    if stale:
        fields["stale"] = True


def _page(fields: dict[str, Any], offset: int, limit: int | None) -> None:
    if offset:
        fields["offset"] = offset
    if limit is not None:
        fields["limit"] = limit


_LOST = object()


class Watch:
    """A WATCH stream: `async for ev in watch`, ended by `await watch.cancel()`
    (or leaving `async with`). After a lost connection it resumes on the next
    node from the rev after the last event delivered (or from the rev it was
    started at); a watch started without a rev that loses its connection
    before its first event raises Unavailable, since changes may have been
    missed. A TOO_LATE ends it with errors.TooLate."""

    def __init__(self, client: Client, glob: str, rev: int | None) -> None:
        self._client = client
        self.glob = glob
        self.next_rev = rev  # where a resumed stream must start
        self._conn: _Conn | None = None
        self._tag: int | None = None
        self._queue: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._cancelled = False
        conn = client._conn
        if conn is not None and not conn.closed:
            self._start(conn)

    def _start(self, conn: _Conn) -> None:
        tag = next(self._client._tags)
        msg: dict[str, Any] = {"verb": "WATCH", "path": self.glob, "tag": tag}
        if self.next_rev is not None:
            msg["rev"] = self.next_rev
        conn.pending[tag] = self
        self._conn, self._tag = conn, tag
        conn.send(msg)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _push(self, msg: dict[str, Any]) -> None:
        self._queue.append(msg)
        self._wake()

    def _lost(self, conn: _Conn) -> None:
        if conn is self._conn:
            self._queue.append(_LOST)
            self._wake()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._done:
                raise StopAsyncIteration
            if self._conn is None:
                self._start(await self._client._live(None))
            if not self._queue:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                continue
            item = self._queue.popleft()
            if item is _LOST:
                self._conn = None
                if self._client._closed:
                    self._done = True
                    raise StopAsyncIteration
                if self.next_rev is None:
                    self._done = True
                    raise errors.Unavailable(
                        None,
                        f"watch {self.glob} lost its connection before its first event; "
                        "changes may have been missed (pass rev= to resume exactly)",
                    )
                continue
            code = item.get("err_code")
            if code is not None:
                self._done = True
                raise errors.error_for(code, item.get("err_detail", ""))
            ev = _event(item)
            self.next_rev = ev.rev + 1
            return ev

    async def cancel(self) -> None:
        """End the stream: send CANCEL; iteration stops (buffered events are dropped)."""
        if self._done:
            return
        self._done = self._cancelled = True
        self._queue.clear()
        self._wake()
        conn, tag = self._conn, self._tag
        if conn is None or tag is None or conn.closed:
            return
        conn.pending.pop(tag, None)
        deadline = asyncio.get_running_loop().time() + self._client.timeout
        try:
            await self._client._send(conn, {"verb": "CANCEL", "other_tag": tag}, deadline)
        except (errors.DoozerError, _Lost, TimeoutError):
            pass  # the stream is gone either way

    async def __aenter__(self) -> Watch:
        if self._conn is None and not self._done:
            self._start(await self._client._live(None))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()
