"""The one hand-off from the replica to its host."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Ready:
    # Make these durable (DurableState.apply, in order) BEFORE sending `messages`
    # or handing back `loopback`. Readys' records reach the disk in order.
    persist: list[list] = field(default_factory=list)
    # (to, msg): JSON-able dicts for peers; send once `persist` of this Ready and of
    # every earlier one is durable, in Ready order.
    messages: list[tuple[str, dict]] = field(default_factory=list)
    # (instance, batch): contiguous, in order, each exactly once; apply in this order,
    # calling Replica.set_membership after each. Decisions are durable on a quorum
    # already (our own vote counts only once it is on our disk), so apply at once.
    decided: list[tuple[int, list]] = field(default_factory=list)
    # (req_id, index): serve the read once the state machine has applied `index`.
    read_states: list[tuple[Any, int]] = field(default_factory=list)
    # req_ids that cannot be served (no leader, leadership lost): retry or fail.
    read_failed: list[Any] = field(default_factory=list)
    # A peer told us we are behind its compacted log: fetch a snapshot from it.
    need_snapshot: str | None = None
    # (leader only) members a quorum of members has not heard from for member_timeout.
    suspects: list[str] = field(default_factory=list)
    # (to, msg): send now, before `persist` is durable (they claim nothing about it).
    early: list[tuple[str, dict]] = field(default_factory=list)
    # Messages for this replica itself: `receive(now, own id, msg)` each once
    # `persist` is durable, in order with `messages`.
    loopback: list[dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.persist
            or self.messages
            or self.decided
            or self.read_states
            or self.read_failed
            or self.need_snapshot
            or self.suspects
            or self.early
            or self.loopback
        )
