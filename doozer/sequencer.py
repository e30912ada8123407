"""The seam between the node and the log.

The node never mutates the store itself: it hands each write, wrapped as a
`Proposal` with a unique (origin, seq) id, to a sequencer. The sequencer gets
batches decided in one order and hands each decided batch to
`node.apply_batch`, the one function that changes the store. Here is the
single-member sequencer; `doozer.cluster` puts Multi-Paxos behind the same seam.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from doozer.mutation import Mutation

if TYPE_CHECKING:
    from doozer.node import Node


@dataclass(slots=True)
class Proposal:  # not frozen: built for every item of every decided batch
    """A mutation with the id that makes it apply at most once, in origin order.

    `origin` names one incarnation of one node (a fresh one at every start), and
    `seq` counts that incarnation's proposals from 1.
    """

    origin: str
    seq: int
    m: Mutation

    def to_wire(self) -> list:
        return [self.origin, self.seq, self.m.to_wire()]

    @staticmethod
    def from_wire(w: list) -> Proposal:
        return Proposal(w[0], w[1], Mutation.from_wire(w[2]))


class Sequencer(Protocol):
    # True when every write acknowledged anywhere is already applied here, so a
    # linearizable read needs no barrier (a single member).
    reads_are_local: bool

    def start(self, node: Node) -> None: ...

    def propose(self, p: Proposal) -> None:
        """Queue a proposal; its outcome arrives through node.apply_batch."""

    def read_barrier(self, done: Callable[[str | None], None], timeout: float) -> None:
        """Call done(None) once the node has applied every write acknowledged
        anywhere before this call, or done(detail) if that cannot be confirmed
        in time (the node answers UNAVAILABLE)."""

    def role(self) -> str: ...

    def leader(self) -> str | None: ...

    def writable(self) -> str | None:
        """None if writes may be proposed now, else why not (for a fast UNAVAILABLE)."""

    def close(self) -> None: ...


class LocalSequencer:
    """One member, no peers: everything proposed in one loop iteration is
    decided together as one batch, in proposal order."""

    reads_are_local = True

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._node: Node | None = None
        self._batch: list[Proposal] = []
        self._scheduled = False
        self.instance = 0

    def start(self, node: Node) -> None:
        self._node = node
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    def propose(self, p: Proposal) -> None:
        self._batch.append(p)
        if not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._decide)

    def _decide(self) -> None:
        self._scheduled = False
        batch, self._batch = self._batch, []
        if batch and self._node is not None:
            self.instance += 1
            self._node.apply_batch(batch)

    def read_barrier(self, done: Callable[[str | None], None], timeout: float) -> None:
        # Every decided batch is applied before control returns to the loop;
        # nothing acknowledged can be missing.
        done(None)

    def role(self) -> str:
        return "leader"

    def leader(self) -> str | None:
        return self._node.node_id if self._node else None

    def writable(self) -> str | None:
        return None

    def close(self) -> None:
        self._batch.clear()
