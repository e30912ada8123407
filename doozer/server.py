"""Client connections: framing, tags, pipelining, access, cancellation, and
bounded output.

One `asyncio.Protocol` per connection (Streams are ~5x slower for JSON lines).
Requests are read without waiting for earlier ones; each response goes out as
soon as it is ready, tagged, so responses may come out of order. Memory per
connection is bounded three ways: a partial line is capped at `max_line`, at
most `MAX_INFLIGHT` requests are outstanding before reading pauses, and a
client that stops reading stops being read from (and a watcher whose output
backs up is cut off with TOO_LATE rather than buffered forever). Partial lines
are bounded across connections too: see `Connection._line_cap`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson

from doozer import errors, protocol
from doozer.errors import DoozerError
from doozer.node import Node
from doozer.paths import compile_glob
from doozer.protocol import LineBuffer, ProtocolError, Request

log = logging.getLogger("doozer")

MAX_INFLIGHT = 4096  # outstanding requests per connection before reading pauses
WRITE_HIGH = 1 << 20  # pause reading while this much output waits
WATCH_BACKLOG = 8 << 20  # a watcher whose output backs up this far is cut off
HARD_BACKLOG = 64 << 20  # a connection whose output backs up this far is dropped
STUCK_BACKLOG = 4 << 20  # a connection with this much unread output ...
STUCK_GRACE = 30.0  # ... that reads none of it for this long (s) is dropped
OUTPUT_BUDGET = 256 << 20  # unread output of all clients that holds big answers back
INPUT_BUDGET = 256 << 20  # unfinished request lines of all clients, past which ...
SMALL_LINE = 64 << 10  # ... a partial line may hold only this much (and before ACCESS)
LINGER = 0.5  # s a shutting-down node waits for clients to close after its FIN
QUIET = 0.05  # s without a request before a shutting-down node sends its FIN
FD_MARGIN = 64  # warn when a client's descriptor comes this close to the limit
# TCP keepalive on client connections: a client whose host vanished, or that
# closed while a WAIT or WATCH of a quiet path was open, is found gone within
# ~90 s (Go servers, etcd's among them, probe every 15 s).
KEEPALIVE = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 6}
TCP_CLOSE = 7  # tcpi_state of a connection reset or timed out
FD_WARN_EVERY = 60.0  # s


def _fd_limit() -> int:
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return 1 << 30
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


PeerAccept = Callable[[asyncio.Transport, dict, bytes], asyncio.Protocol | None]


def _keepalive(sock: Any) -> None:
    opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    opts += [
        (socket.IPPROTO_TCP, getattr(socket, k), v)
        for k, v in KEEPALIVE.items()
        if hasattr(socket, k)
    ]
    for level, name, value in opts:
        try:
            sock.setsockopt(level, name, value)
        except OSError:
            pass


def _dead(sock: Any) -> bool:
    """Whether the kernel has given up on this connection (reset, or timed
    out by keepalive): what the loop would see on its next read or write."""
    try:
        if hasattr(socket, "TCP_INFO"):
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == TCP_CLOSE
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
    except OSError:
        return True


class ClientCall:
    """One request's way back to its connection (the node's `Call`)."""

    __slots__ = ("cancel", "conn", "done", "has_tag", "prefix", "tag")

    def __init__(self, conn: Connection, tag: Any, has_tag: bool) -> None:
        self.conn = conn
        self.tag = tag
        self.has_tag = has_tag
        self.done = False
        self.cancel: Callable[[], None] | None = None
        self.prefix: bytes | None = None

    def _finish(self) -> None:
        self.done = True
        self.conn._finished(self)

    def ok(self, resp: dict) -> None:
        if self.done:
            return
        self._finish()
        if self.has_tag:
            resp = {"tag": self.tag, **resp}
        self.conn.write(orjson.dumps(resp, option=orjson.OPT_APPEND_NEWLINE))

    def ok_parts(self, resp: dict, key: str, parts: list[bytes]) -> None:
        if self.done:
            return
        self._finish()
        conn = self.conn
        # Laid out as ok() would: {"tag":…,"<key>":…,<resp>}
        head = b'{"tag":%s,' % orjson.dumps(self.tag) if self.has_tag else b"{"
        conn.write(b'%s"%s":' % (head, key.encode()))
        for p in parts:  # a big answer: written as it is, never joined
            conn.write(p)
        conn.write(
            b"," + orjson.dumps(resp, option=orjson.OPT_APPEND_NEWLINE)[1:] if resp else b"}\n"
        )

    def fail(self, code: str, detail: str) -> None:
        if self.done:
            return
        self._finish()
        self.conn.write(protocol.error_line(code, detail, self.tag, self.has_tag))

    def event(self, body: bytes, final: bool) -> bool:
        if self.done:
            return False
        conn = self.conn
        if not final and conn.backlog() > WATCH_BACKLOG:
            log.warning("client %s: watch %r cut off, its output backed up", conn.peer, self.tag)
            self.fail(errors.TOO_LATE, "watch output backed up: the client is not reading")
            return False
        if self.has_tag:
            if self.prefix is None:
                self.prefix = b'{"tag":' + orjson.dumps(self.tag) + b","
            line = self.prefix + body[1:] + b"\n"
        else:
            line = body + b"\n"
        if final:
            self._finish()
        conn.write(line)
        return True

    def set_cancel(self, cancel: Callable[[], None]) -> None:
        self.cancel = cancel

    def gone(self) -> bool:
        conn = self.conn
        t = conn.transport
        return conn.closed or conn._draining or t is None or t.is_closing()


class Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.node = server.node
        self.transport: asyncio.Transport | None = None
        self.buf = LineBuffer(server.max_line)
        self.calls: dict[Any, ClientCall] = {}
        self.inflight = 0
        self.authed = server.secret is None
        self.first = True
        self.closed = False
        self._write_paused = False
        self._read_paused = False
        self.peer = ""
        # Output is coalesced: everything answered while handling one chunk of
        # input (or in one loop iteration) goes out in one transport.write.
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._in_data = False
        self._flush_scheduled = False
        self._eof = False  # the client has sent all it will (a half-close)
        self._draining = False  # shutting down: our side is shut, input is dropped
        self.gone: asyncio.Future[None] | None = None  # set when the connection is lost
        self.stuck_since: float | None = None  # unread output, no progress since (Server)
        self.stuck_low = 0
        self.held = 0  # bytes of an unfinished request line buffered (in server.input_held)
        self.held_seen = 0  # as the reader sweep last saw it, and since when
        self.held_seen_at = 0.0
        self._cap_why = ""  # why the line cap is below max_line, for TOO_LARGE
        self.buf.max_line = self._line_cap()

    # -- transport events -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            _keepalive(sock)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if sock is not None:
            self.server.check_fd(sock.fileno())
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._hold(0)
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)
        self.server.connections.discard(self)
        calls, self.calls = self.calls, {}
        for call in calls.values():
            if call.cancel is not None:
                call.cancel()
            call.done = True

    def eof_received(self) -> bool:
        """The client will send nothing more: `printf ... | nc -N` half-closes
        after its last line, while its writes are still being decided. Answer
        every request read (a last line without its newline too), and close
        once none is outstanding; a WATCH or WAIT goes on until it ends or the
        client goes. (Closing at once, asyncio's default, dropped the answers.)"""
        if self._draining:
            return False  # it has read our answers and closed: close
        self._eof = True
        if self.buf.pending():
            self.data_received(b"\n")
        else:
            self._flush()
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return  # shutting down: read only so that closing sends no RST
        if self.first:
            nl = data.find(b"\n")
            if nl >= 0 and self._maybe_peer(data[:nl], data[nl + 1 :]):
                return
        self._in_data = True
        buf = self.buf
        server = self.server
        if server.input_held - self.held > INPUT_BUDGET or buf.max_line != server.max_line:
            buf.max_line = self._line_cap()
        try:
            for line in buf.feed(data):
                if self.closed:
                    return
                self.first = False
                self._line(line)
        finally:
            self._in_data = False
            if buf.pending() != self.held:
                self._hold(buf.pending())
            self._flush()

    def _line_cap(self) -> int:
        """The longest line this connection may send now. Lines are buffered
        until their newline, and a node with a thousand clients each halfway
        through a 4 MiB line would hold 4 GB: so a client may send a long line
        only once it has passed ACCESS (if the node has a secret) and while
        all clients together hold under INPUT_BUDGET of unfinished lines.
        Otherwise SMALL_LINE, plenty for any request but a big value."""
        server = self.server
        if not self.authed:
            self._cap_why = " before ACCESS"
        elif server.input_held - self.held > INPUT_BUDGET:
            self._cap_why = (
                f" while the node holds {INPUT_BUDGET >> 20} MiB of unfinished request lines"
                " (send it again later)"
            )
        else:
            self._cap_why = ""
            return server.max_line
        return min(SMALL_LINE, server.max_line)

    def _hold(self, n: int) -> None:
        self.server.input_held += n - self.held
        self.held = n

    # -- requests ---------------------------------------------------------

    def _maybe_peer(self, first: bytes, rest: bytes) -> bool:
        if b'"peer"' not in first or self.server.peer_accept is None:
            return False
        try:
            hello = orjson.loads(first)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(hello, dict) or hello.get("peer") != 1:
            return False
        self.server.connections.discard(self)
        assert self.transport is not None
        proto = self.server.peer_accept(self.transport, hello, rest)
        if proto is not None:
            self.transport.set_protocol(proto)
        self.closed = True
        return True

    def _line(self, line: bytes | None) -> None:
        if line is None:
            self.write(
                protocol.error_line(
                    errors.TOO_LARGE, f"line over the {self.buf.max_line}-byte limit{self._cap_why}"
                )
            )
            self.buf.max_line = self._line_cap()  # the next line's
            return
        if not line.strip():
            return  # blank lines are harmless (netcat users press enter)
        self.server.requests += 1
        try:
            req = protocol.parse(line, self.server.max_value)
        except ProtocolError as e:
            self.write(
                protocol.error_line(
                    e.code, e.detail, getattr(e, "tag", None), getattr(e, "has_tag", False)
                )
            )
            return
        if req.has_tag and req.tag in self.calls:
            self.write(
                protocol.error_line(
                    errors.TAG_IN_USE, f"tag {req.tag!r} is outstanding", req.tag, True
                )
            )
            return
        if not self.authed and req.verb not in protocol.OPEN_VERBS:
            self.write(
                protocol.error_line(
                    errors.PERMISSION, "send ACCESS with the secret first", req.tag, req.has_tag
                )
            )
            return
        try:
            protocol.check_args(req)
        except ProtocolError as e:
            self.write(protocol.error_line(e.code, e.detail, req.tag, req.has_tag))
            return
        except DoozerError as e:
            self.write(protocol.error_line(e.code, e.detail, req.tag, req.has_tag))
            return
        verb = req.verb
        if verb == "ACCESS":
            self._access(req)
            return
        if verb == "CANCEL":
            self._cancel(req)
            return
        call = ClientCall(self, req.tag, req.has_tag)
        if req.has_tag:
            self.calls[req.tag] = call
        self.inflight += 1
        if self.inflight >= MAX_INFLIGHT:
            self._update_reading()
        try:
            self.server.dispatch(req, call)
        except DoozerError as e:
            call.fail(e.code, e.detail)
        except Exception as e:  # a bug must not take the node down
            log.exception("request failed: %s", req.raw)
            call.fail(errors.OTHER, f"internal error: {type(e).__name__}")

    def _access(self, req: Request) -> None:
        secret = self.server.secret
        given = req.value or b""
        resp: dict = {"tag": req.tag} if req.has_tag else {}
        if secret is None or hmac.compare_digest(given, secret):
            self.authed = True
            self.buf.max_line = self._line_cap()  # a long line may follow in this chunk
            self.write(protocol.line(resp))
        else:
            self.write(protocol.error_line(errors.PERMISSION, "wrong secret", req.tag, req.has_tag))

    def _cancel(self, req: Request) -> None:
        call = self.calls.get(req.other_tag)
        if call is not None and call.cancel is not None and not call.done:
            call.cancel()
        self.write(protocol.line({"tag": req.tag} if req.has_tag else {}))

    def _finished(self, call: ClientCall) -> None:
        if call.has_tag and self.calls.get(call.tag) is call:
            del self.calls[call.tag]
        self.inflight -= 1
        if self._read_paused and self.inflight < MAX_INFLIGHT // 2:
            self._update_reading()

    # -- output -------------------------------------------------------------

    def backlog(self) -> int:
        t = self.transport
        return self._out_bytes + (t.get_write_buffer_size() if t is not None else 0)

    def write(self, data: bytes) -> None:
        if self.closed or self._draining:
            return
        self._out.append(data)
        self._out_bytes += len(data)
        if not self._in_data and not self._flush_scheduled:
            self._flush_scheduled = True
            self.server.flush_soon(self)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        t = self.transport
        if not out:
            if self._eof and self.inflight == 0:
                self.close()
            return
        if t is None or self.closed:
            out.clear()
            return
        size = self._out_bytes
        if len(out) == 1:
            t.write(out[0])
        elif size < WRITE_HIGH:
            t.write(b"".join(out))  # many small answers: one buffer
        else:
            t.writelines(out)  # a big answer's parts: never copied whole
        out.clear()
        self._out_bytes = 0
        # Judge what was left unread before this write: one large answer (a
        # SNAPSHOT of a big tree) is fine, a client that never reads is not.
        if t.get_write_buffer_size() - size > HARD_BACKLOG:
            log.warning("client %s dropped: %d bytes of output unread", self.peer, HARD_BACKLOG)
            self.closed = True
            t.abort()
        elif self._eof and self.inflight == 0:
            self.close()  # half-closed and all answered: close once written

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or self.closed:
            return
        want_pause = self._write_paused or self.inflight >= MAX_INFLIGHT
        if want_pause and not self._read_paused:
            self._read_paused = True
            t.pause_reading()
        elif not want_pause and self._read_paused:
            self._read_paused = False
            t.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def finish(self) -> None:
        """Shutdown: send what is answered, then shut our side (FIN), and drop
        whatever the client still sends until it closes. Closing with unread
        input would send an RST instead, and the client's kernel would throw
        away answers its application had not read yet (acks of writes among
        them)."""
        t = self.transport
        if t is None or self.closed or self._draining:
            return
        self._flush()
        self._draining = True
        self._out.clear()
        self.gone = asyncio.get_running_loop().create_future()
        if t.can_write_eof() and not t.is_closing():
            t.write_eof()
            t.resume_reading()  # even if paused for backlog: drain to EOF
        else:
            t.close()


class Server:
    def __init__(
        self,
        node: Node,
        *,
        secret: bytes | None = None,
        max_line: int = protocol.MAX_LINE,
        max_value: int = protocol.MAX_VALUE,
        peer_accept: PeerAccept | None = None,
        dispatch: Callable[[Request, ClientCall], None] | None = None,
    ) -> None:
        self.node = node
        self.secret = secret
        self.max_line = max_line
        self.max_value = max_value
        self.peer_accept = peer_accept
        self.dispatch = dispatch or node.dispatch
        self.connections: set[Connection] = set()
        self.requests = 0  # lines taken as requests, ever (see quiesce)
        self._server: asyncio.base_events.Server | None = None
        # Connections answered outside their own data_received (a write
        # decided, a watch fired) are flushed together at the end of the loop
        # iteration: one callback for all, not one per connection.
        self._dirty: list[Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Past the open-file limit new clients are refused in silence (the
        # event loop closes what it cannot accept): say so before that.
        self._fd_warn_at = _fd_limit() - FD_MARGIN
        self._fd_warned = -FD_WARN_EVERY
        self._reader_sweep: asyncio.TimerHandle | None = None
        self.input_held = 0  # bytes of unfinished request lines, all connections
        node.hold_big_answers_while(self.output_backed_up)

    def output_backed_up(self) -> bool:
        """All clients together leave more than OUTPUT_BUDGET of their answers
        unread: build no more big ones (a WALK of a million files is 156 MB)
        until they read, or are dropped for reading nothing (`_sweep_readers`)."""
        return sum(c.backlog() for c in self.connections) > OUTPUT_BUDGET

    def _sweep_readers(self) -> None:
        """Drop a connection that has left STUCK_BACKLOG or more of its output
        unread and read none of it for STUCK_GRACE seconds: its answers hold
        memory for nobody. A slow reader that makes progress stays."""
        loop = asyncio.get_running_loop()
        self._reader_sweep = loop.call_later(1.0, self._sweep_readers)
        now = loop.time()
        for conn in list(self.connections):
            self._sweep_input(conn, now)
            if (conn._eof or conn._read_paused) and self._sweep_dead(conn):
                continue
            backlog = conn.backlog()
            if backlog < STUCK_BACKLOG:
                conn.stuck_since = None
            elif conn.stuck_since is None or backlog < conn.stuck_low:
                conn.stuck_since, conn.stuck_low = now, backlog  # (new) progress
            elif now - conn.stuck_since > STUCK_GRACE and conn.transport is not None:
                log.warning(
                    "client %s dropped: %d bytes of answers unread for %.0fs",
                    conn.peer,
                    backlog,
                    STUCK_GRACE,
                )
                conn.closed = True
                conn.transport.abort()

    def _sweep_dead(self, conn: Connection) -> bool:
        """A connection not being read (the client half-closed, or reading is
        paused) is not told when the client goes: nothing reads the socket's
        error. A client that closed while its WAIT or WATCH of a quiet path was
        open held its descriptor and its waits for good. Keepalive (or an
        answer written into the closed socket) makes the kernel reset such a
        connection; drop it here once it has."""
        t = conn.transport
        sock = t.get_extra_info("socket") if t is not None else None
        if sock is None or conn.closed or not _dead(sock):
            return False
        conn.closed = True
        t.abort()  # type: ignore[union-attr]
        return True

    def _sweep_input(self, conn: Connection, now: float) -> None:
        """Drop a connection whose unfinished line of SMALL_LINE or more has
        not grown for STUCK_GRACE seconds: it holds memory (and a share of
        INPUT_BUDGET) for a request that is not coming."""
        held = conn.held
        if held < SMALL_LINE:
            conn.held_seen = 0
        elif held != conn.held_seen:
            conn.held_seen, conn.held_seen_at = held, now
        elif now - conn.held_seen_at > STUCK_GRACE and conn.transport is not None:
            log.warning(
                "client %s dropped: a request line unfinished at %d bytes for %.0fs",
                conn.peer,
                held,
                STUCK_GRACE,
            )
            conn.closed = True
            conn.transport.abort()

    def check_fd(self, fd: int) -> None:
        # descriptors are handed out lowest first: a high one means few are left
        if fd >= self._fd_warn_at:
            now = time.monotonic()
            if now - self._fd_warned >= FD_WARN_EVERY:
                self._fd_warned = now
                log.warning(
                    "%d client connections: near the open-file limit (%d), new clients"
                    " will be refused; raise it (LimitNOFILE=, ulimit -n)",
                    len(self.connections),
                    self._fd_warn_at + FD_MARGIN,
                )

    def flush_soon(self, conn: Connection) -> None:
        dirty = self._dirty
        if not dirty:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self.flush_now)
        dirty.append(conn)

    def flush_now(self) -> None:
        """Write what connections have queued; also runs as the scheduled flush."""
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            try:
                conn._flush()
            except Exception:
                # one connection's failure must not leave the others' answers
                # unwritten (their flush is marked scheduled: none would come)
                log.exception("writing to client %s failed", conn.peer)
                conn._flush_scheduled = False
                conn.closed = True
                if conn.transport is not None:
                    conn.transport.abort()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), host, port, reuse_address=True, backlog=1024
        )
        sock = self._server.sockets[0]
        addr = sock.getsockname()
        self._reader_sweep = loop.call_later(1.0, self._sweep_readers)
        return addr[0], addr[1]

    async def quiesce(self, quiet: float = QUIET, most: float = LINGER) -> None:
        """Shutdown, once the node refuses everything: keep answering (each
        request gets a definite UNAVAILABLE) until clients have sent nothing
        for `quiet` seconds, at most `most`. Closing at once, a client that
        sent its next request just as our FIN left got no answer, only a
        closed connection, and could not tell whether its write was made:
        one such write per active client at every graceful restart."""
        loop = asyncio.get_running_loop()
        end = loop.time() + most
        seen = -1
        while self.connections and loop.time() < end and self.requests != seen:
            seen = self.requests
            await asyncio.sleep(quiet)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._reader_sweep is not None:
            self._reader_sweep.cancel()
            self._reader_sweep = None

    async def close(self, linger: float = LINGER) -> None:
        self.stop_accepting()
        conns = list(self.connections)
        for conn in conns:
            conn.finish()
        # Clients that read what we sent close when they see our FIN; give
        # them a moment, then close the rest.
        waiting = [c.gone for c in conns if c.gone is not None and not c.closed]
        if waiting:
            await asyncio.wait(waiting, timeout=linger)
        for conn in conns:
            conn.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except TimeoutError:
                pass


__all__ = ["ClientCall", "Connection", "Server", "compile_glob"]
