"""A blocking client for scripts: the asyncio Client on a private event loop
in a background thread. Same methods and results as doozer.client.Client.

    with SyncClient("127.0.0.1:8046") as c:
        rev = c.set("/a", b"x")
        for ev in c.watch("/a/**", rev=rev + 1):
            ...
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from doozer import errors
from doozer.client import Client, Event, File, Got, Listing, Stat, Watch

_T = TypeVar("_T")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class SyncClient:
    """Blocking doozer client. Connects in the constructor (unless
    `connect=False`; then call `.connect()`). Close it (or use `with`)."""

    def __init__(
        self,
        addrs: list[str] | str,
        *,
        secret: str | None = None,
        timeout: float = 10.0,
        connect: bool = True,
    ) -> None:
        self._client = Client(addrs, secret=secret, timeout=timeout)
        self._loop = _new_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="doozer-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        if connect:
            try:
                self.connect()
            except BaseException:
                self._stop_loop()
                raise

    @property
    def client(self) -> Client:
        """The underlying asyncio client (use only on its loop)."""
        return self._client

    @property
    def addr(self) -> str | None:
        return self._client.addr

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._closed:
            coro.close()
            raise errors.Unavailable(None, "client closed")
        fut: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # e.g. KeyboardInterrupt: do not leave the call running
            raise

    def connect(self) -> SyncClient:
        self._run(self._client.connect())
        return self

    def call(
        self, verb: str, *, timeout: float | None = None, retry: bool | None = None, **fields: Any
    ) -> dict[str, Any]:
        return self._run(self._client.call(verb, timeout=timeout, retry=retry, **fields))

    def get(
        self,
        path: str,
        rev: int | None = None,
        *,
        stale: bool = False,
        timeout: float | None = None,
    ) -> Got:
        return self._run(self._client.get(path, rev, stale=stale, timeout=timeout))

    def set(
        self,
        path: str,
        value: bytes | bytearray | memoryview | str,
        rev: int = -1,
        *,
        timeout: float | None = None,
    ) -> int:
        return self._run(self._client.set(path, value, rev, timeout=timeout))

    def delete(self, path: str, rev: int = -1, *, timeout: float | None = None) -> int:
        return self._run(self._client.delete(path, rev, timeout=timeout))

    def rev(self, *, stale: bool = False, timeout: float | None = None) -> int:
        return self._run(self._client.rev(stale=stale, timeout=timeout))

    def nop(self, *, timeout: float | None = None) -> int:
        return self._run(self._client.nop(timeout=timeout))

    def stat(
        self,
        path: str,
        rev: int | None = None,
        *,
        stale: bool = False,
        timeout: float | None = None,
    ) -> Stat:
        return self._run(self._client.stat(path, rev, stale=stale, timeout=timeout))

    def getdir(
        self,
        path: str,
        rev: int | None = None,
        offset: int = 0,
        limit: int | None = None,
        *,
        stale: bool = False,
        timeout: float | None = None,
    ) -> Listing[str]:
        return self._run(
            self._client.getdir(path, rev, offset, limit, stale=stale, timeout=timeout)
        )

    def walk(
        self,
        glob: str,
        rev: int | None = None,
        offset: int = 0,
        limit: int | None = None,
        *,
        stale: bool = False,
        timeout: float | None = None,
    ) -> Listing[File]:
        return self._run(self._client.walk(glob, rev, offset, limit, stale=stale, timeout=timeout))

    def wait(self, glob: str, rev: int | None = None, *, timeout: float | None = None) -> Event:
        return self._run(self._client.wait(glob, rev, timeout=timeout))

    def watch(self, glob: str, rev: int | None = None) -> SyncWatch:
        async def start() -> Watch:
            w = self._client.watch(glob, rev)
            return await w.__aenter__()

        return SyncWatch(self, self._run(start()))

    def self_info(self, *, timeout: float | None = None) -> dict[str, Any]:
        return self._run(self._client.self_info(timeout=timeout))

    def access(self, secret: str, *, timeout: float | None = None) -> None:
        self._run(self._client.access(secret, timeout=timeout))

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._client.close())
        finally:
            self._closed = True
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncWatch:
    """A blocking iterator of Events; `.cancel()` (or leaving `with`) ends it."""

    def __init__(self, owner: SyncClient, watch: Watch) -> None:
        self._owner = owner
        self._watch = watch

    @property
    def next_rev(self) -> int | None:
        return self._watch.next_rev

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        async def step() -> Event | None:
            try:
                return await self._watch.__anext__()
            except StopAsyncIteration:  # not raisable through a Future
                return None

        ev = self._owner._run(step())
        if ev is None:
            raise StopIteration
        return ev

    def cancel(self) -> None:
        if not self._owner._closed:
            self._owner._run(self._watch.cancel())

    def __enter__(self) -> SyncWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()
