"""Stepped work on the event loop: slices, one big job at a time, holds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import uvloop

from doozer import stepper
from doozer.stepper import Gone, Lane, Stepper


def job(name: str, steps: int, log: list[str]) -> Iterator[str | None]:
    for k in range(steps):
        log.append(f"{name}{k}")
        yield None
    yield name


def test_a_job_runs_in_slices_and_a_small_one_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stepper, "SLICE", 0.0)  # one step per slice
    log: list[str] = []
    done: list[str] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        Stepper(loop, job("small", 0, log), done.append, pytest.fail, eager=True)
        assert done == ["small"]  # answered within the call
        Stepper(loop, job("a", 3, log), done.append, pytest.fail)
        Stepper(loop, job("b", 3, log), done.append, pytest.fail)
        assert log == []  # not eager: the loop's turn first
        for _ in range(200):
            if len(done) == 3:
                break
            await asyncio.sleep(0.002)

    uvloop.run(run())
    assert done == ["small", "a", "b"]
    assert log[:2] == ["a0", "b0"]  # interleaved: neither holds the loop


def test_the_lane_runs_one_job_at_a_time_in_order_and_skips_the_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stepper, "SLICE", 0.0)
    monkeypatch.setattr(stepper, "GAP", 0.0)
    monkeypatch.setattr(stepper, "HOLD_RETRY", 0.001)
    log: list[str] = []
    done: list[str] = []
    failed: list[BaseException] = []
    made: list[str] = []

    def maker(name: str, steps: int):  # type: ignore[no-untyped-def]
        def make() -> Iterator[str | None]:
            made.append(name)  # frozen only when its turn comes
            return job(name, steps, log)

        return make

    async def run() -> None:
        lane = Lane(asyncio.get_running_loop())
        holding = [True]
        lane.hold = lambda: holding[0]
        lane.run(maker("a", 3), done.append, failed.append)
        await asyncio.sleep(0.01)
        assert made == []  # held
        holding[0] = False
        lane.run(maker("b", 2), done.append, failed.append)
        lane.run(maker("c", 2), done.append, failed.append, gone=lambda: True)
        lane.run(maker("d", 1), done.append, failed.append)
        assert made == []  # held still, until the retry looks again
        for _ in range(500):
            if len(done) == 3:
                break
            await asyncio.sleep(0.001)
        assert lane.close() == []

    uvloop.run(run())
    assert done == ["a", "b", "d"] and made == ["a", "b", "d"]
    assert [type(e) for e in failed] == [Gone]
    assert log == ["a0", "a1", "a2", "b0", "b1", "d0"]  # never two at once
