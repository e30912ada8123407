"""Peer transport: consensus messages between the nodes of one cluster.

Every node dials every peer it knows and writes only on its own outbound
link; links accepted from peers are receive-only. So there is exactly one
connection per direction and no duelling-connection dedup. Messages are
orjson lines. Each outbound link has its own bounded queue and its own
reconnect loop, so a slow or dead peer never holds up traffic to the
others; when a queue is over budget, the oldest messages are dropped
(consensus tolerates loss and prefers fresh messages).

Handshake: the dialer writes a hello line
    {"peer":1,"proto":1,"cluster":NAME,"cluster_id":ID,"node":ID,"addr":ADDR,"secret":S,
     "to":PEER_ID}
and the acceptor answers one line: either
    {"peer":1,"proto":1,"cluster_id":ID,"node":ITS_ID}
or {"err_code":"PERMISSION","err_detail":...} followed by a close. The node
server reads the hello (the first line of any connection) and hands the
connection to `PeerHub.accept_inbound`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
import socket
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import orjson

from doozer.errors import BAD_REQUEST, OTHER, PERMISSION

PROTO = 1
MiB = 1 << 20

_ANSWER_LIMIT = 64 * 1024  # longest handshake answer the dialer will buffer
MAX_MESSAGE = 16 * MiB  # the largest message a link carries (the receiver's limit too)
# The largest proposal item (one write, in its wire form) that a message can
# carry with room for the envelope (accept, promise or entries) around it.
MAX_ITEM = MAX_MESSAGE - 64 * 1024
_WRITE_CHUNK = 1 * MiB  # coalesced bytes per transport.write
_HIGH_WATER = 1 * MiB  # transport buffer above which we stop writing (pause_writing)
_MAX_NODE_ID = 256
_REFUSAL_MEMORY = 1024  # distinct refused dialers remembered for log rate-limiting

_logger = logging.getLogger("doozer.peer")


def _default_log(line: str) -> None:
    _logger.warning("%s", line)


def join_addr(host: str, port: int) -> str:
    """(host, port) -> 'host:port', or '[v6]:port' for an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_addr(addr: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"bad address {addr!r} (want host:port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


_TCP_RTO_MAX_MS = 44  # linux/tcp.h; not yet in Python's socket module
_RTO_MAX_MS = 1000  # the least the kernel accepts
_TCP_RTO_MIN_US = 45  # linux/tcp.h (Linux >= 6.15)
_RTO_MIN_US = 50_000  # above the receiver's 40 ms delayed ACK: no spurious resends


def _tune_socket(transport: asyncio.BaseTransport, user_timeout: float) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Without a user timeout a black-holed connection retransmits for many
    # minutes, with an RTO that keeps growing: after a partition heals the
    # link could stay silent for tens of seconds. Abort it and redial instead.
    if user_timeout > 0 and hasattr(socket, "TCP_USER_TIMEOUT"):
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout * 1000))
    # Under packet loss the retransmission timeout doubles on every loss of
    # the same segment (0.2, 0.4, ... 120 s): a peer link then stalls for
    # seconds, heartbeats with it, and elections churn; after the loss ends
    # the link stays silent until the grown timer fires. Capping the RTO at
    # 1 s (Linux >= 6.15; older kernels refuse it and keep the default)
    # bounds both. Peer links carry little data, so faster retries cost
    # nothing worth counting.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_RTO_MAX_MS, _RTO_MAX_MS)
    # And the first retry after a loss comes after 200 ms by default, however
    # short the round trip: under steady loss that alone holds heartbeats
    # past the election timeout. The RTO still follows the measured round
    # trip above this floor, so a slow link is not retried early.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_RTO_MIN_US, _RTO_MIN_US)


class _Link:
    """One outbound link: queue, connection state, counters."""

    __slots__ = (
        "addr",
        "attempts",
        "connects",
        "dropped",
        "flush_pending",
        "last_error",
        "paused",
        "peer_id",
        "qbytes",
        "queue",
        "sent",
        "sent_bytes",
        "state",
        "task",
        "transport",
        "up",
    )

    def __init__(self, peer_id: str, addr: str) -> None:
        self.peer_id = peer_id
        self.addr = addr
        self.queue: deque[bytes] = deque()
        self.qbytes = 0
        self.up = False
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.flush_pending = False
        self.sent = 0
        self.sent_bytes = 0
        self.dropped = 0
        self.attempts = 0
        self.connects = 0
        self.state = "new"  # new, up, down, refused: drives logging
        self.last_error = ""
        self.task: asyncio.Task[None] | None = None


class _Dialer(asyncio.Protocol):
    """Protocol of an outbound connection: sends the hello, reads the answer."""

    def __init__(self, hub: PeerHub, link: _Link, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.link = link
        # result: None when accepted, else (kind, detail) with kind "down" or "refused"
        self.handshake: asyncio.Future[tuple[str, str] | None] = loop.create_future()
        self.lost: asyncio.Future[str] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop transports do not subclass asyncio.Transport
        self.transport = transport = cast(asyncio.Transport, transport)
        _tune_socket(transport, self.hub._user_timeout)
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        transport.write(self.hub._hello_to(self.link.peer_id))

    def data_received(self, data: bytes) -> None:
        if self.handshake.done():
            return  # the acceptor has nothing more to say on a receive-only link
        self.buf += data
        i = self.buf.find(b"\n")
        if i < 0:
            if len(self.buf) > _ANSWER_LIMIT:
                self.handshake.set_result(("down", "answer to hello too long"))
            return
        line = bytes(self.buf[:i])
        self.buf.clear()
        self.handshake.set_result(self.hub._check_answer(line, self.link.peer_id))

    def eof_received(self) -> bool | None:
        return None  # the acceptor closing its side means the link is gone

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"connection lost: {exc}" if exc else "closed by peer"
        if not self.handshake.done():
            self.handshake.set_result(("down", why))
        if not self.lost.done():
            self.lost.set_result(why)

    def pause_writing(self) -> None:
        if self.link.transport is self.transport:
            self.link.paused = True

    def resume_writing(self) -> None:
        if self.link.transport is self.transport:
            self.link.paused = False
            self.hub._schedule_flush(self.link)


class _Inbound(asyncio.Protocol):
    """Protocol of an accepted peer link: splits lines, hands messages to the hub."""

    def __init__(self, hub: PeerHub, node: str, transport: asyncio.Transport) -> None:
        self.hub = hub
        self.node = node
        self.transport = transport
        self.buf = bytearray()
        self.scanned = 0  # bytes of buf known to hold no newline
        self.closed = False

    def close(self, why: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        if why:
            self.hub._log(f"peer link from {self.node} closed: {why}")
        self.transport.abort()
        # Unregister now: connection_lost may reach the server's first-line
        # protocol instead if this happens inside accept_inbound.
        self.hub._inbound_lost(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        hub = self.hub
        buf = self.buf
        buf += data
        limit = hub._max_message + 1  # a trailing \r is tolerated
        start = 0
        pos = self.scanned
        while True:
            i = buf.find(b"\n", pos)
            if i < 0:
                break
            n = i - start
            if n > limit:
                self.close(f"message of {n} bytes over the {hub._max_message} byte limit")
                return
            line = memoryview(buf)[start:i]
            start = pos = i + 1
            if n == 0 or (n == 1 and line[0] == 13):
                line.release()
                continue
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError:
                msg = None
            finally:
                line.release()
            if not isinstance(msg, dict):
                self.close("a message that is not a JSON object")
                return
            hub._deliver(self.node, msg, n + 1)
            if self.closed:
                return
        if start:
            del buf[:start]
        if len(buf) > limit:
            self.close(f"message over the {hub._max_message} byte limit")
            return
        self.scanned = len(buf)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.buf = bytearray()
        self.hub._inbound_lost(self)


class PeerHub:
    """All peer links of one node.

    Call `set_peers`, `send`, `broadcast`, `accept_inbound` and `close` from
    the event loop's thread. `send` and `broadcast` never block, never await
    and never raise on a dead or unknown peer.
    """

    def __init__(
        self,
        node_id: str,
        cluster_name: str,
        cluster_id: str,
        *,
        secret: str | None,
        on_message: Callable[[str, dict[str, Any]], None],
        on_peer_up: Callable[[str], None] | None = None,
        on_peer_down: Callable[[str], None] | None = None,
        addr: str = "",
        max_message: int = MAX_MESSAGE,
        queue_bytes: int = 32 * MiB,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        handshake_timeout: float = 3.0,
        user_timeout: float = 10.0,
        rng: random.Random | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        if not cluster_id:
            raise ValueError("cluster_id must not be empty: peers must know the cluster they serve")
        self.node_id = node_id
        self.cluster_name = cluster_name
        self.cluster_id = cluster_id
        self._secret = secret
        self._on_message = on_message
        self._on_peer_up = on_peer_up
        self._on_peer_down = on_peer_down
        self._max_message = max_message
        self._queue_bytes = queue_bytes
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._handshake_timeout = handshake_timeout
        self._user_timeout = user_timeout
        self._rng = rng if rng is not None else random.Random()
        self._loop_arg = loop
        self._log = log if log is not None else _default_log
        self._links: dict[str, _Link] = {}
        self._inbound: dict[str, _Inbound] = {}
        self._rx: dict[str, list[int]] = {}  # node -> [messages, bytes] received
        self._refusals: dict[str, str] = {}  # dialer -> last refusal logged
        self._unknown_dropped = 0
        self._last_msg: dict[str, Any] | None = None
        self._dirty: list[_Link] = []  # links with a flush pending, in order
        self._flush_scheduled = False
        self._last_line = b""
        self._closed = False
        self._tasks_closing: list[asyncio.Task[None]] = []  # cancelled, maybe not yet done
        self._hello = {
            "peer": 1,
            "proto": PROTO,
            "cluster": cluster_name,
            "cluster_id": cluster_id,
            "node": node_id,
            "addr": addr,
            "secret": secret,
        }
        self._answer = self._line(
            {"peer": 1, "proto": PROTO, "cluster_id": cluster_id, "node": node_id}
        )

    # -- public API ----------------------------------------------------------

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        if self._loop_arg is None:
            self._loop_arg = asyncio.get_running_loop()
        return self._loop_arg

    def set_peers(self, addrs: dict[str, str]) -> None:
        """Make the outbound links exactly `addrs` (node id -> address).

        This node's own id is ignored. A peer whose address changed is redialed.
        """
        if self._closed:
            return
        want = {pid: a for pid, a in addrs.items() if pid != self.node_id}
        for pid, link in list(self._links.items()):
            if want.get(pid) != link.addr:
                self._remove_link(link)
        for pid, a in want.items():
            if pid not in self._links:
                split_addr(a)  # refuse a malformed address now, not in the dial loop
                link = _Link(pid, a)
                self._links[pid] = link
                link.task = self._loop.create_task(self._run_link(link), name=f"peer-{pid}")

    def peers(self) -> dict[str, str]:
        return {pid: link.addr for pid, link in self._links.items()}

    def is_up(self, peer_id: str) -> bool:
        link = self._links.get(peer_id)
        return link is not None and link.up

    def send(self, to: str, msg: dict[str, Any]) -> None:
        """Queue `msg` for peer `to`. Dropped (and counted) if `to` is unknown,
        if the message is over `max_message`, or, oldest first, when the peer's
        queue is over budget. Raises only if `msg` cannot be encoded (a bug)."""
        link = self._links.get(to)
        if link is None:
            self._unknown_dropped += 1
            return
        # One message often goes to every member (an accept with its batch):
        # encode it once. The cache holds the dict itself, so its id stays unique.
        if msg is self._last_msg:
            line = self._last_line
        else:
            line = self._line(msg)
            self._last_msg, self._last_line = msg, line
        if self._too_big(line, link):
            return
        self._enqueue(link, line)

    def broadcast(self, msg: dict[str, Any], exclude: tuple[str, ...] = ()) -> None:
        """`send` to every peer (but those in `exclude`), encoding once."""
        line = self._line(msg)
        for pid, link in self._links.items():
            if pid in exclude:
                continue
            if self._too_big(line, link):
                return
            self._enqueue(link, line)

    def accept_inbound(
        self, transport: asyncio.Transport, hello: dict[str, Any], rest: bytes = b""
    ) -> asyncio.Protocol | None:
        """Take over a connection whose first line was `hello` (`"peer": 1`).

        Returns the protocol to install with `transport.set_protocol`, or None
        after answering an error line and closing the transport.
        """
        refusal = self._check_hello(hello)
        if refusal is not None:
            code, detail = refusal
            self._log_refusal(hello, transport, detail)
            transport.write(self._line({"err_code": code, "err_detail": detail}))
            transport.close()
            return None
        node: str = hello["node"]
        self._refusals.pop(node, None)
        old = self._inbound.get(node)
        if old is not None:
            # The dialer keeps one link at a time: an older one is stale (maybe half-open).
            old.close()
        proto = _Inbound(self, node, transport)
        self._inbound[node] = proto
        _tune_socket(transport, self._user_timeout)
        transport.write(self._answer)
        if rest:
            proto.data_received(rest)
        return proto

    def has_inbound(self, node: str) -> bool:
        """An inbound link from `node` is open."""
        return node in self._inbound

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per node id (outbound peers and inbound senders): addr, connected
        (outbound link up), inbound (an inbound link is open), queued_msgs,
        queued_bytes (our queue, bounded by queue_bytes), buffered_bytes (in the
        transport, bounded by its high-water mark + one write), sent, sent_bytes, dropped,
        attempts, connects, last_error, received, received_bytes. Key "" holds
        hub-wide counters: unknown_dropped."""
        out: dict[str, dict[str, Any]] = {}
        for pid in {*self._links, *self._rx, *self._inbound}:
            link = self._links.get(pid)
            buffered = 0
            if link is not None and link.transport is not None:
                buffered = link.transport.get_write_buffer_size()
            rx = self._rx.get(pid, [0, 0])
            out[pid] = {
                "addr": link.addr if link else None,
                "connected": bool(link and link.up),
                "inbound": pid in self._inbound,
                "queued_msgs": len(link.queue) if link else 0,
                "queued_bytes": link.qbytes if link else 0,
                "buffered_bytes": buffered,
                "sent": link.sent if link else 0,
                "sent_bytes": link.sent_bytes if link else 0,
                "dropped": link.dropped if link else 0,
                "attempts": link.attempts if link else 0,
                "connects": link.connects if link else 0,
                "last_error": link.last_error if link else "",
                "received": rx[0],
                "received_bytes": rx[1],
            }
        out[""] = {"unknown_dropped": self._unknown_dropped}
        return out

    def close(self) -> None:
        """Stop every link now. Queued messages are discarded; on_peer_down is
        not called."""
        if self._closed:
            return
        self._closed = True
        for link in list(self._links.values()):
            self._remove_link(link, quiet=True)
        for proto in list(self._inbound.values()):
            proto.close()
        self._inbound.clear()

    async def wait_closed(self) -> None:
        """After `close`: wait for the link tasks to finish."""
        tasks = [t for t in self._tasks_closing if not t.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks_closing.clear()

    # -- outbound ------------------------------------------------------------

    def _hello_to(self, peer_id: str) -> bytes:
        # "to": the node we mean to reach. An address can serve another node
        # by now; without it that node took our hello for a new link of ours
        # and closed the live one (each redial of a stale id cut a good link).
        return self._line({**self._hello, "to": peer_id})

    @staticmethod
    def _line(msg: dict[str, Any]) -> bytes:
        return orjson.dumps(msg, option=orjson.OPT_APPEND_NEWLINE)

    def _too_big(self, line: bytes, link: _Link) -> bool:
        if len(line) - 1 <= self._max_message:
            return False
        link.dropped += 1
        self._log(
            f"message to {link.peer_id} of {len(line) - 1} bytes dropped: "
            f"over the {self._max_message} byte limit"
        )
        return True

    def _enqueue(self, link: _Link, line: bytes) -> None:
        n = len(line)
        budget = self._queue_bytes
        if n > budget:
            link.dropped += 1
            return
        q = link.queue
        while link.qbytes + n > budget:
            link.qbytes -= len(q.popleft())
            link.dropped += 1
        q.append(line)
        link.qbytes += n
        self._schedule_flush(link)

    def _schedule_flush(self, link: _Link) -> None:
        # Everything sent in this loop iteration goes out in one write per
        # link, from one callback for all links (not one per message).
        if link.up and not link.paused and not link.flush_pending and link.queue:
            link.flush_pending = True
            self._dirty.append(link)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write every queued message now rather than at the end of this loop
        iteration (the caller knows nothing more is coming)."""
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        for link in dirty:
            if link.flush_pending:
                self._flush(link)

    def _flush(self, link: _Link) -> None:
        link.flush_pending = False
        t = link.transport
        q = link.queue
        while link.up and t is not None and q and not link.paused and not t.is_closing():
            batch = [q.popleft()]
            size = len(batch[0])
            while q and size + len(q[0]) <= _WRITE_CHUNK:
                m = q.popleft()
                batch.append(m)
                size += len(m)
            link.qbytes -= size
            link.sent += len(batch)
            link.sent_bytes += size
            t.write(batch[0] if len(batch) == 1 else b"".join(batch))  # may pause_writing

    def _discard_queue(self, link: _Link) -> None:
        link.dropped += len(link.queue)
        link.queue.clear()
        link.qbytes = 0

    def _set_state(self, link: _Link, state: str, detail: str = "") -> None:
        if state != "up":
            link.last_error = detail
        if state == link.state:
            return  # one log line per state change, not per retry
        before = link.state
        link.state = state
        if state == "up":
            self._log(f"peer {link.peer_id} up at {link.addr}")
        elif before == "new":
            self._log(f"peer {link.peer_id} unreachable at {link.addr}: {detail}")
        elif state == "refused":
            self._log(f"peer {link.peer_id} at {link.addr} refused the link: {detail}")
        else:
            self._log(f"peer {link.peer_id} down at {link.addr}: {detail}")

    async def _run_link(self, link: _Link) -> None:
        delay = self._backoff_min
        while True:
            try:
                if await self._connect_once(link):
                    delay = self._backoff_min
            except Exception:
                # a bug: say so and dial again, or this peer is cut off for good
                self._log(f"link to {link.peer_id} failed:\n{traceback.format_exc()}")
            await asyncio.sleep(delay * (0.5 + 0.5 * self._rng.random()))
            delay = min(delay * 2, self._backoff_max)

    async def _connect_once(self, link: _Link) -> bool:
        """Dial, handshake, carry traffic until the link drops. True if it was up."""
        loop = self._loop
        link.attempts += 1
        proto = _Dialer(self, link, loop)
        transport: asyncio.Transport | None = None
        try:
            host, port = split_addr(link.addr)
            try:
                async with asyncio.timeout(self._handshake_timeout):
                    transport, _ = await loop.create_connection(lambda: proto, host, port)
                    failure = await proto.handshake
            except TimeoutError:
                failure = ("down", "no answer to hello")
            except OSError as e:
                failure = ("down", e.strerror or str(e))
            if failure is not None:
                if transport is not None:
                    transport.abort()
                self._set_state(link, *failure)
                # Messages queued meanwhile are stale by the next attempt.
                self._discard_queue(link)
                return False
            assert transport is not None
            link.transport = transport
            link.paused = False
            link.up = True
            link.connects += 1
            self._set_state(link, "up")
            self._callback(self._on_peer_up, link.peer_id)
            self._schedule_flush(link)
            why = await proto.lost
            self._link_down(link)
            self._set_state(link, "down", why)
            return True
        except BaseException:
            if transport is not None:
                transport.abort()
            self._link_down(link)
            raise

    def _link_down(self, link: _Link) -> None:
        link.transport = None
        link.paused = False
        if link.up:
            link.up = False
            self._callback(self._on_peer_down, link.peer_id)

    def _remove_link(self, link: _Link, quiet: bool = False) -> None:
        if self._links.get(link.peer_id) is link:
            del self._links[link.peer_id]
        if not quiet:
            self._log(f"peer {link.peer_id} at {link.addr} removed")
        if link.transport is not None:
            link.transport.abort()
        self._link_down(link)
        self._discard_queue(link)
        if link.task is not None:
            link.task.cancel()
            self._tasks_closing = [t for t in self._tasks_closing if not t.done()]
            self._tasks_closing.append(link.task)

    def _check_answer(self, line: bytes, expected: str) -> tuple[str, str] | None:
        try:
            ans = orjson.loads(line)
        except orjson.JSONDecodeError:
            ans = None
        if not isinstance(ans, dict):
            return ("down", "answer to hello is not a JSON object")
        if "err_code" in ans:
            return ("refused", f"{ans.get('err_code')}: {ans.get('err_detail', '')}")
        if ans.get("peer") != 1 or ans.get("proto") != PROTO:
            return ("refused", f"unexpected answer to hello: {line[:200]!r}")
        if ans.get("cluster_id") != self.cluster_id:
            return ("refused", "answered with another cluster id")
        if ans.get("node") != expected:
            return ("refused", f"the node there is {ans.get('node')!r}, not {expected!r}")
        return None

    # -- inbound -------------------------------------------------------------

    def _check_hello(self, hello: Any) -> tuple[str, str] | None:
        if not isinstance(hello, dict) or hello.get("peer") != 1:
            return (BAD_REQUEST, "not a peer hello")
        if self._closed:
            return (OTHER, "node shutting down")
        proto = hello.get("proto")
        if proto != PROTO:
            return (PERMISSION, f"peer protocol {proto!r} not supported (this node speaks {PROTO})")
        if hello.get("cluster") != self.cluster_name:
            return (
                PERMISSION,
                f"cluster {hello.get('cluster')!r}: this node belongs to {self.cluster_name!r}",
            )
        if hello.get("cluster_id") != self.cluster_id:
            return (PERMISSION, "cluster id mismatch: this node belongs to another cluster")
        given = hello.get("secret")
        if given is not None and not isinstance(given, str):
            return (PERMISSION, "wrong secret")
        if not hmac.compare_digest((given or "").encode(), (self._secret or "").encode()):
            return (PERMISSION, "wrong secret")
        node = hello.get("node")
        if not isinstance(node, str) or not node or len(node) > _MAX_NODE_ID:
            return (BAD_REQUEST, "hello without a valid node id")
        if node == self.node_id:
            return (PERMISSION, f"node id {node!r} is this node's own id")
        to = hello.get("to")
        if to is not None and to != self.node_id:
            # before our link from `node` is replaced: that one may be live
            return (PERMISSION, f"this is node {self.node_id!r}, not {str(to)[:_MAX_NODE_ID]!r}")
        return None

    def _log_refusal(self, hello: Any, transport: asyncio.BaseTransport, detail: str) -> None:
        who = hello.get("node") if isinstance(hello, dict) else None
        if not isinstance(who, str) or not who:
            who = str(transport.get_extra_info("peername"))
        who = who[:_MAX_NODE_ID]
        if self._refusals.get(who) == detail:
            return  # the dialer retries every few seconds: say it once
        if len(self._refusals) >= _REFUSAL_MEMORY:
            self._refusals.clear()
        self._refusals[who] = detail
        self._log(f"refused peer link from {who}: {detail}")

    def _deliver(self, node: str, msg: dict[str, Any], nbytes: int) -> None:
        rx = self._rx.get(node)
        if rx is None:
            rx = self._rx[node] = [0, 0]
        rx[0] += 1
        rx[1] += nbytes
        try:
            self._on_message(node, msg)
        except Exception:
            self._log(f"on_message from {node} failed:\n{traceback.format_exc()}")

    def _inbound_lost(self, proto: _Inbound) -> None:
        if self._inbound.get(proto.node) is proto:
            del self._inbound[proto.node]

    def _callback(self, fn: Callable[[str], None] | None, peer_id: str) -> None:
        if fn is None or self._closed:
            return  # a closing node tells nobody that its links went down
        try:
            fn(peer_id)
        except Exception:
            self._log(f"peer callback for {peer_id} failed:\n{traceback.format_exc()}")
