"""A fault-injecting TCP proxy for tests.

One proxy listens on a loopback address and forwards every connection to one
target. Put one in front of each node for each dialing peer (node A reaches
B at proxy P_AB) and a test can partition, delay or cut any one direction.

Directions: "forward" is client -> target (for a peer link: the dialer's
messages), "backward" is target -> client.

Faults, changeable at run time:
- block(mode) / block_one_way(direction, mode) / unblock():
  mode "drop": bytes are read and discarded, connections stay open (a
  partition without RST). A TCP stream cannot lose bytes and go on, so at
  unblock() every connection that lost bytes is reset, as a real one would
  time out; connections that lost nothing carry on.
  mode "hold": bytes wait (each direction stops after reading one chunk, so
  TCP backpressure reaches the sender) and are delivered at unblock().
- reset(): abort every connection (RST).
- set_delay(seconds[, direction]): each chunk is delivered `seconds` after it
  was read; order is kept and throughput is not capped. A change applies to
  chunks already waiting too.
- set_loss(fraction, rng): each new connection, and each chunk read, kills
  its connection with probability `fraction` (whole connections, not bytes:
  losing bytes would corrupt the framing).

In process: `p = FaultProxy("127.0.0.1:8046"); addr = await p.start(); ...;
await p.close()`. As a subprocess: `python -m tests.faultproxy --target
HOST:PORT [--listen 127.0.0.1:0] [--seed N]` prints "listening HOST:PORT",
then reads commands on stdin, one a line, answering "ok ..." or "err ...":
block [drop|hold] | block_one_way DIRECTION [drop|hold] | unblock | reset |
delay SECONDS [DIRECTION] | loss FRACTION | stats | quit. It exits at EOF on
stdin, so it dies with the test that started it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any

DIRECTIONS = ("forward", "backward")
MODES = ("drop", "hold")
CHUNK = 64 * 1024
MAX_PENDING = 16  # chunks waiting per direction: at most 1 MiB per direction
CONNECT_TIMEOUT = 5.0

_Chunks = asyncio.Queue[tuple[float, bytes] | None]  # (time read, data); None: EOF


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class _Conn:
    """One proxied connection: a client stream and a target stream, four pumps."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.ends = {"forward": (client[0], target[1]), "backward": (target[0], client[1])}
        self.writers = (client[1], target[1])
        self.lost_bytes = False
        self.closed = False
        self.eof_done: set[str] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self.queues: dict[str, _Chunks] = {}
        self.delaying: dict[str, int] = dict.fromkeys(DIRECTIONS, 0)

    def pending(self, d: str) -> int:
        """Chunks read in direction d and not yet written."""
        q = self.queues.get(d)
        return (q.qsize() if q else 0) + self.delaying[d]

    def start(self) -> None:
        for d in DIRECTIONS:
            q: _Chunks = asyncio.Queue(MAX_PENDING)
            self.queues[d] = q
            self.tasks.append(asyncio.create_task(self._guard(self._read, d, q)))
            self.tasks.append(asyncio.create_task(self._guard(self._write, d, q)))

    async def _guard(
        self, pump: Callable[[str, _Chunks], Awaitable[None]], d: str, q: _Chunks
    ) -> None:
        # The coroutine is made here, so a task cancelled before it starts leaves none behind.
        try:
            await pump(d, q)
        except (OSError, EOFError):
            self.kill()

    def kill(self, graceful: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy._conns.discard(self)
        for w in self.writers:
            if graceful:
                w.close()
            else:
                w.transport.abort()
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current:
                t.cancel()

    async def _read(self, d: str, q: _Chunks) -> None:
        p = self.proxy
        src = self.ends[d][0]
        loop = asyncio.get_running_loop()
        while True:
            data = await src.read(CHUNK)
            if not data:
                await q.put(None)
                return
            if p._loss and p._rng.random() < p._loss:
                p.killed += 1
                self.kill()
                return
            if p._block[d] == "hold":
                p.held += 1
                try:
                    while p._block[d] == "hold":
                        await p._wake.wait()
                finally:
                    p.held -= 1
            if p._block[d] == "drop":
                self.lost_bytes = True
                p.dropped_bytes[d] += len(data)
                continue
            await q.put((loop.time(), data))

    async def _write(self, d: str, q: _Chunks) -> None:
        p = self.proxy
        dst = self.ends[d][1]
        loop = asyncio.get_running_loop()
        while True:
            item = await q.get()
            if item is None:
                if dst.can_write_eof():
                    dst.write_eof()
                self.eof_done.add(d)
                if len(self.eof_done) == 2:
                    self.kill(graceful=True)
                return
            t, data = item
            self.delaying[d] = 1
            while (wait := t + p._delay[d] - loop.time()) > 0:
                wake = p._wake
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await wake.wait()  # a delay change re-evaluates the due time
            self.delaying[d] = 0
            dst.write(data)
            p.forwarded_bytes[d] += len(data)
            await dst.drain()


class FaultProxy:
    """See the module docstring."""

    def __init__(
        self, target: str, listen: str = "127.0.0.1:0", *, rng: random.Random | None = None
    ):
        self.target = target
        self.listen = listen
        self._rng = rng if rng is not None else random.Random(0)
        self._block: dict[str, str | None] = dict.fromkeys(DIRECTIONS)
        self._delay: dict[str, float] = dict.fromkeys(DIRECTIONS, 0.0)
        self._loss = 0.0
        self._wake = asyncio.Event()
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._closed = False
        self.addr = ""
        # counters, for tests to wait on
        self.accepted = 0
        self.killed = 0
        self.held = 0  # chunks read and waiting for unblock (mode "hold")
        self.forwarded_bytes: dict[str, int] = dict.fromkeys(DIRECTIONS, 0)
        self.dropped_bytes: dict[str, int] = dict.fromkeys(DIRECTIONS, 0)

    async def start(self) -> str:
        """Listen; returns the address ("host:port") clients should dial."""
        host, port = _split(self.listen)
        self._server = await asyncio.start_server(self._on_client, host, port)
        h, p = self._server.sockets[0].getsockname()[:2]
        self.addr = f"{h}:{p}"
        return self.addr

    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        tasks = [t for c in list(self._conns) for t in c.tasks]
        self.reset()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- faults --------------------------------------------------------------

    def block(self, mode: str = "drop") -> None:
        for d in DIRECTIONS:
            self.block_one_way(d, mode)

    def block_one_way(self, direction: str, mode: str = "drop") -> None:
        if direction not in DIRECTIONS or mode not in MODES:
            raise ValueError(f"direction in {DIRECTIONS}, mode in {MODES}")
        self._block[direction] = mode
        self._changed()

    def unblock(self) -> None:
        self._block = dict.fromkeys(DIRECTIONS)
        for c in list(self._conns):
            if c.lost_bytes:
                self.killed += 1
                c.kill()
        self._changed()

    def reset(self) -> None:
        for c in list(self._conns):
            self.killed += 1
            c.kill()

    def set_delay(self, seconds: float, direction: str | None = None) -> None:
        for d in DIRECTIONS if direction is None else (direction,):
            if d not in DIRECTIONS:
                raise ValueError(f"direction in {DIRECTIONS}")
            self._delay[d] = max(0.0, seconds)
        self._changed()

    def set_loss(self, fraction: float, rng: random.Random | None = None) -> None:
        self._loss = min(1.0, max(0.0, fraction))
        if rng is not None:
            self._rng = rng

    def stats(self) -> dict[str, Any]:
        return {
            "addr": self.addr,
            "connections": len(self._conns),
            "accepted": self.accepted,
            "killed": self.killed,
            "held": self.held,
            "pending": {d: sum(c.pending(d) for c in self._conns) for d in DIRECTIONS},
            "forwarded_bytes": dict(self.forwarded_bytes),
            "dropped_bytes": dict(self.dropped_bytes),
            "block": dict(self._block),
            "delay": dict(self._delay),
            "loss": self._loss,
        }

    # -- internals -----------------------------------------------------------

    def _changed(self) -> None:
        # Wake every waiting pump; each re-reads the state it waits on.
        self._wake.set()
        self._wake = asyncio.Event()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._closed or (self._loss and self._rng.random() < self._loss):
            self.killed += 1
            writer.transport.abort()
            return
        try:
            host, port = _split(self.target)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                treader, twriter = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        if self._closed:
            writer.transport.abort()
            twriter.transport.abort()
            return
        conn = _Conn(self, (reader, writer), (treader, twriter))
        self._conns.add(conn)
        conn.start()


async def _serve(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.faultproxy")
    ap.add_argument("--target", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    proxy = FaultProxy(args.target, args.listen, rng=random.Random(args.seed))
    print(f"listening {await proxy.start()}", flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        while line := await stdin.readline():
            words = line.decode().split()
            if not words:
                continue
            try:
                answer = _command(proxy, words)
            except (ValueError, IndexError, TypeError) as e:
                answer = f"err {e}"
            print(answer, flush=True)
            if words[0] == "quit":
                break
    finally:
        await proxy.close()


def _command(proxy: FaultProxy, words: list[str]) -> str:
    cmd, args = words[0], words[1:]
    if cmd == "block":
        proxy.block(*args[:1])
    elif cmd == "block_one_way":
        proxy.block_one_way(*args[:2])
    elif cmd == "unblock":
        proxy.unblock()
    elif cmd == "reset":
        proxy.reset()
    elif cmd == "delay":
        proxy.set_delay(float(args[0]), *args[1:2])
    elif cmd == "loss":
        proxy.set_loss(float(args[0]))
    elif cmd == "stats":
        return "ok " + json.dumps(proxy.stats())
    elif cmd != "quit":
        raise ValueError(f"unknown command {cmd!r}")
    return "ok"


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(_serve(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
