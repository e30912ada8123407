"""Long work on the event loop in short slices.

Some answers cost seconds of CPU on a big tree (a snapshot of a million files,
a WALK of all of them). Done in one go, they would stall the node: a leader
that misses its heartbeats for a second loses its leadership, and every client
waits. The pure parts offer such work as an iterator of bounded steps
(`Store.snapshot_steps`, `FrozenTree.batches`); a `Stepper` runs steps for
at most `SLICE` seconds, then lets the loop serve I/O before the next slice.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

SLICE = 0.002  # s of steps at most (plus one step's overshoot) ...
GAP = 0.001  # ... then this long for the loop's I/O alone
HOLD_RETRY = 0.1  # s between looks at whether a held lane may go on


class Gone(Exception):
    """Nobody waits for the result any more (the client went away)."""


class Stepper(Generic[T]):
    """Drive `steps` (None for "not yet", then the result) to its result, then
    call `done(result)`; or `failed(exc)` if a step raises, or `failed(Gone())`
    if `gone()` says, before a slice, that nobody waits for the result any
    more. `cancel` stops it, saying nothing.
    `eager`: the first slice runs in the constructor, so work that fits in one
    (most) is done, and answered, without waiting for the loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        steps: Iterator[T | None],
        done: Callable[[T], None],
        failed: Callable[[BaseException], None],
        eager: bool = False,
        gone: Callable[[], bool] | None = None,
    ) -> None:
        self._loop = loop
        self._steps = steps
        self._done = done
        self._failed = failed
        self._gone = gone
        self._handle: asyncio.Handle | None = None
        if eager:
            self._run()
        else:
            self._handle = loop.call_soon(self._run)

    @property
    def running(self) -> bool:
        return self._handle is not None

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self) -> None:
        end = time.perf_counter() + SLICE
        self._handle = None
        if self._gone is not None and self._gone():
            self._failed(Gone())
            return
        try:
            for out in self._steps:
                if out is not None:
                    break
                if time.perf_counter() >= end:
                    # A write's round through the leader takes a few turns of
                    # its loop: with a slice in every turn, each would wait
                    # a slice. The gap lets most finish between two slices.
                    self._handle = self._loop.call_later(GAP, self._run)
                    return
            else:
                raise RuntimeError("stepped work ended without a result")
        except Exception as e:
            self._failed(e)
            return
        self._done(out)


class Lane:
    """Big stepped jobs one at a time, so that the node builds one big answer
    at a time, whatever the clients ask (memory holds one, and a client that
    pipelines a hundred WALKs of a million files does not hold a hundred).
    A job is made (`make()`: its state frozen) only when its turn comes: a
    later state than when it was asked, which a read may always be given.
    Jobs that are small are for the caller to answer at once, not for here."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: deque[
            tuple[Callable[[], Iterator[Any]], Callable, Callable, Callable[[], bool] | None]
        ] = deque()
        self._current: Stepper[Any] | None = None
        self._current_failed: Callable[[BaseException], None] | None = None
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        # True while the next job should wait (answers already built wait
        # unread in memory: see Server.output_backed_up).
        self.hold: Callable[[], bool] = lambda: False

    @property
    def busy(self) -> bool:
        return self._current is not None and self._current.running

    def run(
        self,
        make: Callable[[], Iterator[T | None]],
        done: Callable[[T], None],
        failed: Callable[[BaseException], None],
        gone: Callable[[], bool] | None = None,
    ) -> None:
        """Do the job `make()` gives: `done(result)`, or `failed(exc)` if making
        or stepping it raises (`Gone` once `gone()`: see `Stepper`)."""
        if self._closed:
            return
        self._queue.append((make, done, failed, gone))
        if not self.busy and self._retry is None:
            self._resume()

    def close(self) -> list[Callable[[BaseException], None]]:
        """Stop; the `failed` of every job not finished, for the caller to call."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        fails = [f for _, _, f, _ in self._queue]
        self._queue.clear()
        if self.busy and self._current_failed is not None:
            self._current.cancel()  # type: ignore[union-attr]
            fails.append(self._current_failed)
        return fails

    def _start(
        self,
        make: Callable[[], Iterator[Any]],
        done: Callable[[Any], None],
        failed: Callable[[BaseException], None],
        gone: Callable[[], bool] | None,
    ) -> None:
        # The next job goes on whatever the callbacks do (a bug in one must
        # not stop every later big answer).
        def finished(out: Any) -> None:
            try:
                done(out)
            finally:
                self._next()

        def broke(e: BaseException) -> None:
            try:
                failed(e)
            finally:
                self._next()

        if gone is not None and gone():
            broke(Gone())
            return
        try:
            steps = make()
        except Exception as e:
            broke(e)
            return
        self._current_failed = failed
        self._current = Stepper(self._loop, steps, finished, broke, eager=True, gone=gone)

    def _next(self) -> None:
        if self._queue and not self._closed:
            self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        self._retry = None
        if not self._queue or self._closed or self.busy:
            return
        if self.hold():
            self._retry = self._loop.call_later(HOLD_RETRY, self._resume)
            return
        self._start(*self._queue.popleft())
