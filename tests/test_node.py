"""The node's own timers, driven on a real event loop."""

from __future__ import annotations

import asyncio
import logging

import pytest
import uvloop

from doozer.mutation import SET, Mutation
from doozer.node import Node
from doozer.store import Store


class _Undeciding:
    """A sequencer that takes every write and decides none."""

    reads_are_local = True

    def start(self, node: Node) -> None:
        pass

    def propose(self, p: object) -> None:
        pass

    def writable(self) -> str | None:
        return None

    def close(self) -> None:
        pass


def test_write_timeouts_outlive_a_failing_answer(caplog: pytest.LogCaptureFixture) -> None:
    """A write whose answer fails (a bug) is logged; the writes after it still
    time out instead of leaving their clients waiting for ever."""
    answered: list[str] = []

    def broken(applied: object, why: str) -> None:
        raise RuntimeError("a bug in answering")

    async def run() -> None:
        node = Node(node_id="n", store=Store(), sequencer=_Undeciding())  # type: ignore[arg-type]
        node.start()
        node.propose(Mutation(SET, "/a", -1, b"x"), broken, 0.01)
        node.propose(Mutation(SET, "/b", -1, b"x"), lambda a, why: answered.append(why), 0.2)
        for _ in range(100):
            if answered:
                break
            await asyncio.sleep(0.02)
        node.close()

    caplog.set_level(logging.ERROR, logger="doozer")
    uvloop.run(run())
    assert answered and "outcome is unknown" in answered[0]
    assert any("timed-out write failed" in r.getMessage() for r in caplog.records)
