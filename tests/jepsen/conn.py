"""A minimal asyncio JSON-lines connection to a node, with deadlines.

Deliberately not `doozer.client`: the suite must see exactly what went over
the wire (no retries, no reconnects it did not ask for)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

LIMIT = 256 << 20  # WALK /** of a long run's keys is one line


def split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.tags = 0

    @classmethod
    async def open(cls, addr: str, timeout: float = 2.0) -> Conn:
        host, port = split(addr)
        async with asyncio.timeout(timeout):
            r, w = await asyncio.open_connection(host, port, limit=LIMIT)
        return cls(r, w)

    def send(self, req: dict[str, Any]) -> None:
        """Queue one request. Raises ConnectionError if the connection is known dead
        (then nothing was written)."""
        if self.writer.transport.is_closing():
            raise ConnectionResetError("connection closed")
        self.writer.write(orjson.dumps(req) + b"\n")

    async def recv(self, timeout: float) -> dict[str, Any]:
        """One response line. TimeoutError, or ConnectionError at EOF."""
        async with asyncio.timeout(timeout):
            line = await self.reader.readline()
        if not line.endswith(b"\n"):
            raise ConnectionResetError("connection closed")
        return orjson.loads(line)

    async def call(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(req)
        return await self.recv(timeout)

    async def pipeline(
        self, reqs: list[dict[str, Any]], timeout: float, window: int = 64
    ) -> list[dict[str, Any]]:
        """Tagged requests, up to `window` in flight; answers in request order."""
        out: dict[int, dict[str, Any]] = {}
        tags: list[int] = []
        sent = 0
        async with asyncio.timeout(timeout):
            while len(out) < len(reqs):
                while sent < len(reqs) and sent - len(out) < window:
                    self.tags += 1
                    tags.append(self.tags)
                    self.send({**reqs[sent], "tag": self.tags})
                    sent += 1
                resp = await self.recv(timeout)
                out[resp.get("tag")] = resp  # type: ignore[index]
        return [out[t] for t in tags]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


async def request(addr: str, req: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
    """One request on a fresh connection. Raises OSError / TimeoutError."""
    conn = await Conn.open(addr, timeout)
    try:
        return await conn.call(req, timeout)
    finally:
        conn.close()


async def try_request(addr: str, req: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
    """As `request`, but a failure is an answer: {"err_code": "CLIENT", ...}."""
    try:
        return await request(addr, req, timeout)
    except (OSError, TimeoutError, ValueError) as e:
        return {"err_code": "CLIENT", "err_detail": repr(e)}
