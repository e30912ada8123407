"""Clients that misbehave, on every node, for the whole run:

- idle: many connections that never send anything;
- slowloris: a request written one byte a second (its answer is checked);
- garbage: malformed lines of many kinds (each must get an error answer on a
  connection that stays usable);
- deaf watchers: WATCH /** and never read a byte.

None of them may crash a node or stall the others; the runner checks the
first by watching the processes, the second through the availability of
the real clients."""

from __future__ import annotations

import asyncio
import random
import select
import socket
from collections import Counter
from collections.abc import Callable

import orjson

from tests.jepsen.conn import Conn, split

GARBAGE: list[bytes] = [
    b"not json at all\n",
    b'{"verb":\n',
    b"[1,2,3]\n",
    b'"a string"\n',
    b"42\n",
    b'{"verb":"GET","path":17}\n',
    b'{"verb":"NOSUCHVERB"}\n',
    b'{"verb":"GET","path":"no/leading/slash"}\n',
    b'{"verb":"SET","path":"/hostile/x","value":"a","value_b64":"YQ=="}\n',
    b'{"verb":"SET","path":"/hostile/x","value_b64":"!!!"}\n',
    b'{"tag":[1],"verb":"GET","path":"/"}\n',
    b'{"verb":"GET","path":"/","rev":-5}\n',
    b"\xff\xfe\xfd invalid utf-8\n",
    b'{"verb":"WALK","path":"/a/[","limit":-1}\n',
    b"[" * 5000 + b"]" * 5000 + b"\n",
    b"{}\n",
]


class _Idle(asyncio.Protocol):
    def __init__(self, pool: set[_Idle]) -> None:
        self.pool = pool
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.pool.add(self)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.discard(self)


class Hostile:
    def __init__(
        self,
        targets: Callable[[], list[tuple[int, str]]],
        idle: int = 1000,
        watchers: int = 2,
        seed: int = 0,
    ) -> None:
        self.targets = targets
        self.idle_total = idle
        self.watchers_per_node = watchers
        self.rng = random.Random(seed)
        self.stats: Counter[str] = Counter()
        self.bad_answers: list[str] = []  # answers that broke the protocol's promises
        self.idle: dict[int, set[_Idle]] = {}
        self.deaf: dict[int, list[socket.socket]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False

    def start(self) -> None:
        self.tasks.append(asyncio.create_task(self._keep_idle()))
        self.tasks.append(asyncio.create_task(self._keep_deaf()))
        self.tasks.append(asyncio.create_task(self._each_node(self._slowloris)))
        self.tasks.append(asyncio.create_task(self._each_node(self._garbage)))

    async def stop(self) -> None:
        self.stopping = True
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for pool in self.idle.values():
            for p in list(pool):
                if p.transport is not None:
                    p.transport.abort()
        for socks in self.deaf.values():
            for s in socks:
                s.close()

    async def _keep_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            targets = self.targets()
            per = max(1, self.idle_total // max(1, len(targets)))
            for idx, addr in targets:
                pool = self.idle.setdefault(idx, set())
                host, port = split(addr)
                for _ in range(min(200, per - len(pool))):  # refill in bounded steps
                    try:
                        async with asyncio.timeout(1.0):
                            await loop.create_connection(lambda pool=pool: _Idle(pool), host, port)
                        self.stats["idle_opened"] += 1
                    except (OSError, TimeoutError):
                        self.stats["idle_failed"] += 1
                        break
            self.stats["idle_open_now"] = sum(len(p) for p in self.idle.values())
            await asyncio.sleep(2.0)

    async def _keep_deaf(self) -> None:
        """Watchers that never read: blocking-free sockets we only ever write to once."""
        while not self.stopping:
            for idx, addr in self.targets():
                socks = self.deaf.setdefault(idx, [])
                alive = []
                for s in socks:
                    if _peer_closed(s):
                        s.close()
                        self.stats["deaf_cut_off"] += 1
                    else:
                        alive.append(s)
                socks[:] = alive
                while len(socks) < self.watchers_per_node:
                    s = await _open_deaf(addr)
                    if s is None:
                        self.stats["deaf_failed"] += 1
                        break
                    socks.append(s)
                    self.stats["deaf_opened"] += 1
            await asyncio.sleep(2.0)

    async def _each_node(self, fn: Callable[[int, str], object]) -> None:
        running: dict[int, asyncio.Task[None]] = {}
        try:
            while not self.stopping:
                for idx, addr in self.targets():
                    t = running.get(idx)
                    if t is None or t.done():
                        running[idx] = asyncio.create_task(fn(idx, addr))  # type: ignore[arg-type]
                await asyncio.sleep(1.0)
        finally:
            for t in running.values():
                t.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)

    async def _slowloris(self, idx: int, addr: str) -> None:
        """One byte a second; then the answer must be a proper one."""
        try:
            conn = await Conn.open(addr, 2.0)
        except (OSError, TimeoutError):
            self.stats["slowloris_connect_failed"] += 1
            await asyncio.sleep(1.0)
            return
        try:
            while not self.stopping:
                line = orjson.dumps({"verb": "GET", "path": "/hostile/slow", "stale": True}) + b"\n"
                for b in line:
                    conn.writer.write(bytes([b]))
                    await asyncio.sleep(1.0)
                resp = await conn.recv(10.0)
                if "rev" in resp:
                    self.stats["slowloris_answered"] += 1
                else:
                    self.bad_answers.append(f"n{idx} slowloris: {resp!r}")
        except (OSError, TimeoutError, ValueError, RuntimeError):  # RuntimeError: uvloop, closed
            self.stats["slowloris_lost"] += 1
        finally:
            conn.close()

    async def _garbage(self, idx: int, addr: str) -> None:
        """A garbage line, then a good one, on the same connection."""
        try:
            conn = await Conn.open(addr, 2.0)
        except (OSError, TimeoutError):
            self.stats["garbage_connect_failed"] += 1
            await asyncio.sleep(1.0)
            return
        try:
            while not self.stopping:
                junk = self.rng.choice(GARBAGE)
                if self.rng.random() < 0.3:
                    junk = bytes(self.rng.randrange(256) for _ in range(200)).replace(b"\n", b" ")
                    junk += b"\n"
                conn.writer.write(junk)
                resp = await conn.recv(5.0)
                if resp.get("err_code") or "rev" in resp:
                    self.stats["garbage_answered"] += 1
                else:
                    self.bad_answers.append(f"n{idx} garbage {junk[:60]!r}: {resp!r}")
                ok = await conn.call({"verb": "REV", "stale": True}, 5.0)
                if "rev" not in ok:
                    self.bad_answers.append(f"n{idx} after garbage: {ok!r}")
                await asyncio.sleep(0.3)
        except (OSError, TimeoutError, ValueError, RuntimeError):
            self.stats["garbage_lost"] += 1
        finally:
            conn.close()


async def _open_deaf(addr: str) -> socket.socket | None:
    host, port = split(addr)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(1.0):
            await loop.sock_connect(s, (host, port))
            await loop.sock_sendall(
                s, orjson.dumps({"tag": 1, "verb": "WATCH", "path": "/**"}) + b"\n"
            )
    except (OSError, TimeoutError):
        s.close()
        return None
    return s


def _peer_closed(s: socket.socket) -> bool:
    """Did the node close this watcher? POLLRDHUP sees the FIN even behind unread data."""
    p = select.poll()
    p.register(s, select.POLLRDHUP | select.POLLERR | select.POLLHUP)
    return bool(p.poll(0))
