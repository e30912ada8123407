"""The fault-injecting proxy: forwarding, block/hold/unblock, delay, loss, reset, subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

try:
    from tests.faultproxy import FaultProxy
except ImportError:  # tests/ is not a package: pytest put it on sys.path itself
    from faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return uvloop.run(bounded())


async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for cond() with a deadline (polling, bounded in count and time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for _ in range(100_000):
        if cond():
            return
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


class Target:
    """A server that records what each connection sent, and can write back."""

    def __init__(self) -> None:
        self.conns: list[tuple[asyncio.StreamWriter, bytearray, list[bool]]] = []
        self.server: asyncio.Server | None = None
        self.addr = ""

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._on, "127.0.0.1", 0)
        h, p = self.server.sockets[0].getsockname()[:2]
        self.addr = f"{h}:{p}"
        return self.addr

    async def _on(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        buf = bytearray()
        eof = [False]
        self.conns.append((w, buf, eof))
        with contextlib.suppress(OSError):
            while data := await r.read(65536):
                buf += data
        eof[0] = True

    async def close(self) -> None:
        for w, _, _ in self.conns:
            w.transport.abort()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def dial(addr: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = addr.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def read_exactly(r: asyncio.StreamReader, n: int) -> bytes:
    async with asyncio.timeout(10):
        return await r.readexactly(n)


async def read_until_closed(r: asyncio.StreamReader) -> bytes:
    """Everything until EOF or reset."""
    out = bytearray()
    async with asyncio.timeout(10):
        with contextlib.suppress(OSError):
            while data := await r.read(65536):
                out += data
    return bytes(out)


async def setup() -> tuple[Target, FaultProxy]:
    target = Target()
    await target.start()
    proxy = FaultProxy(target.addr)
    await proxy.start()
    return target, proxy


def test_forwards_both_ways_and_in_order() -> None:
    async def main() -> None:
        target, proxy = await setup()
        try:
            r, w = await dial(proxy.addr)
            payload = bytes(range(256)) * 2000  # several chunks
            w.write(payload)
            await until(lambda: len(target.conns) == 1, "target connection")
            buf = target.conns[0][1]
            await until(lambda: len(buf) == len(payload), "payload at target")
            assert bytes(buf) == payload
            target.conns[0][0].write(b"world\n")
            assert await read_exactly(r, 6) == b"world\n"
            # Half-close is forwarded; the connection closes once both sides are done.
            w.write_eof()
            await until(lambda: target.conns[0][2][0], "EOF at target")
            target.conns[0][0].close()
            assert await read_until_closed(r) == b""
            await until(lambda: proxy.stats()["connections"] == 0, "proxy to drop the connection")
            w.close()
        finally:
            await proxy.close()
            await target.close()

    run(main())


def test_block_drop_loses_bytes_and_unblock_resets_only_lossy_connections() -> None:
    async def main() -> None:
        target, proxy = await setup()
        try:
            r1, w1 = await dial(proxy.addr)
            w1.write(b"before\n")
            await until(lambda: len(target.conns) == 1, "first connection")
            tw1, buf1, _ = target.conns[0]
            await until(lambda: bytes(buf1) == b"before\n", "data before the block")
            r2, w2 = await dial(proxy.addr)
            await until(lambda: len(target.conns) == 2, "second connection")
            tw2, buf2, _ = target.conns[1]

            proxy.block()
            w1.write(b"lost\n")
            tw1.write(b"lost back\n")
            await until(
                lambda: proxy.dropped_bytes == {"forward": 5, "backward": 10},
                "bytes dropped both ways",
            )
            assert bytes(buf1) == b"before\n"
            assert proxy.stats()["connections"] == 2  # no RST during the partition

            proxy.unblock()
            # The connection that lost bytes is reset; it never delivers them.
            assert await read_until_closed(r1) == b""
            await until(lambda: target.conns[0][2][0], "reset reaches the target")
            assert bytes(buf1) == b"before\n"
            # The idle one carries on, both ways.
            w2.write(b"still here\n")
            await until(lambda: bytes(buf2) == b"still here\n", "idle connection survives")
            tw2.write(b"ok\n")
            assert await read_exactly(r2, 3) == b"ok\n"
            w1.close()
            w2.close()
        finally:
            await proxy.close()
            await target.close()

    run(main())


def test_block_one_way_hold_delivers_late_and_other_way_flows() -> None:
    async def main() -> None:
        target, proxy = await setup()
        try:
            r, w = await dial(proxy.addr)
            await until(lambda: len(target.conns) == 1, "connection")
            tw, buf, _ = target.conns[0]
            proxy.block_one_way("forward", "hold")
            w.write(b"held\n")
            await until(lambda: proxy.held == 1, "chunk parked")
            assert bytes(buf) == b""
            assert proxy.forwarded_bytes["forward"] == 0
            tw.write(b"back\n")  # the other direction is open
            assert await read_exactly(r, 5) == b"back\n"
            proxy.unblock()
            await until(lambda: bytes(buf) == b"held\n", "held bytes delivered")
            assert proxy.held == 0
            assert proxy.stats()["connections"] == 1  # hold loses nothing: no reset
            w.close()
        finally:
            await proxy.close()
            await target.close()

    run(main())


def test_block_one_way_drop_keeps_other_direction() -> None:
    async def main() -> None:
        target, proxy = await setup()
        try:
            _r, w = await dial(proxy.addr)
            await until(lambda: len(target.conns) == 1, "connection")
            tw, buf, _ = target.conns[0]
            proxy.block_one_way("backward")
            tw.write(b"nope\n")
            await until(lambda: proxy.dropped_bytes["backward"] == 5, "backward dropped")
            w.write(b"yes\n")
            await until(lambda: bytes(buf) == b"yes\n", "forward still flows")
            w.close()
        finally:
            await proxy.close()
            await target.close()

    run(main())


def test_delay_holds_chunks_until_due_and_applies_to_waiting_ones() -> None:
    async def main() -> None:
        target, proxy = await setup()
        try:
            _r, w = await dial(proxy.addr)
            await until(lambda: len(target.conns) == 1, "connection")
            _, buf, _ = target.conns[0]
            proxy.set_delay(3600)
            w.write(b"a\n")
            await until(lambda: proxy.stats()["pending"]["forward"] == 1, "chunk waiting")
            assert proxy.forwarded_bytes["forward"] == 0
            assert bytes(buf) == b""
            proxy.set_delay(0)
            await until(lambda: bytes(buf) == b"a\n", "chunk released by the new delay")
            w.write(b"b\n")
            await until(lambda: bytes(buf) == b"a\nb\n", "no delay")
            w.close()
        finally:
            await proxy.close()
            await target.close()

    run(main())


def test_reset_closes_every_connection_and_new_ones_work() -> None:
    async def main() -> None:
        target, proxy = await setup()
        try:
            conns = [await dial(proxy.addr) for _ in range(3)]
            await until(lambda: proxy.stats()["connections"] == 3, "three connections")
            proxy.reset()
            for r, w in conns:
                assert await read_until_closed(r) == b""
                w.close()
            assert proxy.stats()["connections"] == 0
            r, w = await dial(proxy.addr)
            w.write(b"again\n")
            await until(lambda: any(bytes(b) == b"again\n" for _, b, _ in target.conns), "new")
            w.close()
        finally:
            await proxy.close()
            await target.close()

    run(main())


def test_loss_kills_whole_connections() -> None:
    async def main() -> None:
        target, proxy = await setup()
        try:
            r0, w0 = await dial(proxy.addr)
            await until(lambda: proxy.stats()["connections"] == 1, "connection")
            proxy.set_loss(1.0, random.Random(1))
            # A new connection is cut at once; no target connection is made for it.
            r1, w1 = await dial(proxy.addr)
            assert await read_until_closed(r1) == b""
            assert len(target.conns) == 1
            # A chunk on an existing connection kills it and is not delivered.
            w0.write(b"gone\n")
            assert await read_until_closed(r0) == b""
            assert bytes(target.conns[0][1]) == b""
            proxy.set_loss(0.0)
            _r2, w2 = await dial(proxy.addr)
            w2.write(b"fine\n")
            await until(lambda: any(bytes(b) == b"fine\n" for _, b, _ in target.conns), "data")
            for w in (w0, w1, w2):
                w.close()
        finally:
            await proxy.close()
            await target.close()

    run(main())


def test_subprocess_control() -> None:
    async def main() -> None:
        target = Target()
        await target.start()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.faultproxy",
            "--target",
            target.addr,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        out = proc.stdout

        async def command(line: str) -> str:
            assert proc.stdin is not None
            proc.stdin.write(line.encode() + b"\n")
            async with asyncio.timeout(10):
                return (await out.readline()).decode().strip()

        try:
            async with asyncio.timeout(20):
                first = (await out.readline()).decode().split()
            assert first[0] == "listening"
            addr = first[1]
            r, w = await dial(addr)
            w.write(b"one\n")
            await until(lambda: len(target.conns) == 1, "connection")
            _, buf, _ = target.conns[0]
            await until(lambda: bytes(buf) == b"one\n", "forwarded")
            assert await command("block") == "ok"
            w.write(b"two\n")
            stats: dict[str, Any] = {}

            async def dropped() -> bool:
                nonlocal stats
                reply = await command("stats")
                assert reply.startswith("ok ")
                stats = json.loads(reply[3:])
                return stats["dropped_bytes"]["forward"] == 4

            for _ in range(1000):
                if await dropped():
                    break
            assert stats["dropped_bytes"]["forward"] == 4
            assert await command("unblock") == "ok"
            assert await read_until_closed(r) == b""
            assert (await command("frobnicate")).startswith("err")
            assert await command("quit") == "ok"
            async with asyncio.timeout(10):
                assert await proc.wait() == 0
            w.close()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await target.close()

    run(main())
