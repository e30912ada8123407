"""The web viewer's server: static page over HTTP, sessions over WebSocket, the
node's events fanned out to every page, and a status push once a second."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
from collections import deque

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from doozer.node import Node
from doozer.store import Event
from doozer.version import __version__
from doozer.web import wire
from doozer.web.assets import Assets, request_refusal, response, text_response
from doozer.web.session import Session

log = logging.getLogger("doozer")

WS_PATH = "/ws"
MAX_IN = 64 << 10  # the page sends only small requests
WRITE_LIMIT = 256 << 10  # websockets' own buffer; our queue sits on top (see session)
STATUS_EVERY = 1.0
RATE_SAMPLES = 60  # one a second: the last minute
EVENTS_PER_MESSAGE = 1000

# Test hook, read at start: GET /debug/drop[?hold=1] aborts every viewer socket
# (and with hold refuses new ones until GET /debug/release).
DEBUG_ENV = "DOOZER_WEB_DEBUG"


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bad web viewer address {addr!r}: want HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _is_loopback_bind(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebViewer:
    def __init__(self, node: Node, secret: bytes | None, debug: bool = False) -> None:
        self.node = node
        self.secret = secret
        self.debug = debug
        self.addr = ""
        self.sessions: set[Session] = set()
        # Every event with rev <= flushed_rev has been handed to the subscribed
        # sessions; later ones are in _pending (or not applied yet).
        self.flushed_rev = node.store.rev
        self._pending: list[Event] = []
        self._flush_handle: asyncio.Handle | None = None
        self._count = 0  # events since the last rate sample
        self._rates: deque[float] = deque(maxlen=RATE_SAMPLES)
        self._assets = Assets()
        self._server: Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._loopback_only = False
        self._hold = False
        self._closed = False

    async def listen(self, host: str, port: int) -> None:
        self._loopback_only = _is_loopback_bind(host)
        self._server = await serve(
            self._session,
            host,
            port,
            process_request=self._process_request,
            compression=None,  # deflating every event per page costs the node CPU
            max_size=MAX_IN,
            write_limit=WRITE_LIMIT,
            close_timeout=2,
            server_header=f"doozer/{__version__}",
            logger=_quiet_logger(),
        )
        sock = next(iter(self._server.sockets))
        h, p = sock.getsockname()[:2]
        self.addr = f"[{h}]:{p}" if sock.family == socket.AF_INET6 else f"{h}:{p}"
        self.node.on_event(self._on_event)
        self.node.on_reset(self._on_reset)
        self.node.watched_by(lambda: any(s.subscribed for s in self.sessions))
        self._ticker = asyncio.create_task(self._tick())

    async def close(self) -> None:
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    # -- HTTP -------------------------------------------------------------------

    def _process_request(self, conn: ServerConnection, req: Request) -> Response | None:
        why = request_refusal(
            req.headers.get("Host"), req.headers.get("Origin"), self._loopback_only
        )
        if why is not None:
            return text_response(403, "Forbidden", why + "\n")
        path = req.path.split("?", 1)[0]
        if path == WS_PATH:
            if self._hold:
                return text_response(503, "Service Unavailable", "held by /debug/drop\n")
            return None  # the WebSocket handshake goes on
        if self.debug and path.startswith("/debug/"):
            return self._debug(path, req.path)
        asset = self._assets.get(path)
        if asset is None:
            return text_response(404, "Not Found", f"no such page: {path}\n")
        return response(200, "OK", asset[0], asset[1])

    def _debug(self, path: str, target: str) -> Response:
        if path == "/debug/drop":
            self._hold = "hold=1" in target
            n = len(self.sessions)
            for s in list(self.sessions):
                s.abort()
            return text_response(200, "OK", f"dropped {n}\n")
        if path == "/debug/release":
            self._hold = False
            return text_response(200, "OK", "released\n")
        return text_response(404, "Not Found", "no such debug hook\n")

    # -- sessions ---------------------------------------------------------------

    async def _session(self, conn: ServerConnection) -> None:
        s = Session(self, conn)
        self.sessions.add(s)
        try:
            await s.run()
        finally:
            self.sessions.discard(s)

    def hello(self, authed: bool) -> bytes:
        node = self.node
        return wire.message(
            "hello",
            version=__version__,
            node=node.node_id,
            incarnation=node.incarnation,
            auth=not authed,
            rev=self.flushed_rev,
            oldest=node.store.oldest,
        )

    def status_message(self) -> bytes:
        try:
            status = self.node.status()
        except Exception:  # a status bug must not take the viewer down with it
            log.exception("web viewer: node status failed")
            status = {"id": self.node.node_id, "rev": self.node.store.rev, "cal": {}, "nodes": []}
        return wire.message("status", **status, rate=list(self._rates), rate_every=STATUS_EVERY)

    # -- events -----------------------------------------------------------------

    def _on_event(self, ev: Event) -> None:
        """Called by the node for every applied event, in rev order."""
        self._count += 1
        if self._closed:
            return
        if not self._pending and not any(s.subscribed for s in self.sessions):
            self.flushed_rev = ev.rev
            return
        self._pending.append(ev)
        if self._flush_handle is None:
            # one message per loop turn, however many events the batch held
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _on_reset(self) -> None:
        """The node skipped events (it installed a snapshot): pages following
        the tree load it whole again, at the new rev."""
        self._pending = []
        self.flushed_rev = self.node.store.rev
        for s in self.sessions:
            if s.subscribed and not s.closed:
                s.reload()

    def _flush(self) -> None:
        self._flush_handle = None
        events, self._pending = self._pending, []
        if not events:
            return
        subs = [s for s in self.sessions if s.subscribed and not s.closed]
        for i in range(0, len(events), EVENTS_PER_MESSAGE):
            part = events[i : i + EVENTS_PER_MESSAGE]
            msg = wire.message("evs", events=[wire.event_entry(e) for e in part])
            for s in subs:
                s.push_events(msg)
        self.flushed_rev = events[-1].rev

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(STATUS_EVERY)
            now = loop.time()
            self._rates.append(round(self._count / max(now - last, 1e-3), 1))
            self._count = 0
            last = now
            authed = [s for s in self.sessions if s.authed and not s.closed]
            if authed:
                msg = self.status_message()
                for s in authed:
                    s.push_status(msg)


def _quiet_logger() -> logging.Logger:
    """websockets logs every plain HTTP answer at INFO; keep only its warnings."""
    lg = logging.getLogger("doozer.web.websockets")
    lg.setLevel(logging.WARNING)
    return lg


async def start(addr: str, node: Node, secret: bytes | None, explicit: bool) -> WebViewer | None:
    """Serve the viewer at `addr`. The default address taken (`explicit` False):
    log it and return None. An explicit address that cannot be served: OSError."""
    try:
        host, port = split_addr(addr)
    except ValueError as e:
        raise OSError(str(e)) from None
    viewer = WebViewer(node, secret, debug=os.environ.get(DEBUG_ENV) == "1")
    try:
        await viewer.listen(host, port)
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        if explicit:
            err = OSError(f"web viewer: cannot listen on {addr}: {why}")
            err.errno = e.errno
            raise err from e
        if e.errno == errno.EADDRINUSE:
            log.warning("web viewer: %s in use; running without it", addr)
        else:
            log.warning("web viewer: cannot listen on %s (%s); running without it", addr, why)
        return None
    log.info("web viewer on http://%s/", viewer.addr)
    return viewer
