"""Tunables of a replica. Every member of one cluster must use the same alpha."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    election_timeout: float = 1.0  # s; each wait is randomised to [1, 2) times this
    heartbeat_interval: float = 0.0  # s; 0 means election_timeout / 5
    alpha: int = 32  # membership lag and pipeline window, in instances
    max_batch_items: int = 1024
    max_batch_bytes: int = 1 << 20  # a single larger item still goes alone
    fetch_max_bytes: int = 4 << 20  # per entries/promise reply (at least one entry)
    member_timeout: float = 60.0  # s; --timeout
    # Thrifty accepts: the leader sends each accept only to as many members as
    # its quorum needs, and the others learn the decided value afterwards. An
    # accept not chosen within thrifty_wait (or 4x the usual time to decide,
    # if longer) goes to every member, and for election_timeout after that
    # all of them vote again.
    thrifty: bool = True
    thrifty_wait: float = 0.005  # s
    # The values a member skipped are news, not a question: they wait up to
    # news_linger (for the first tick after it) to go as one message, unless
    # its clients wait on them: it forwarded a write among them, asked for a
    # read index, or has watchers (it says so in its heartbeat answers).
    news_linger: float = 0.01  # s; 0 sends them with every decision

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0:
            object.__setattr__(self, "heartbeat_interval", self.election_timeout / 5)
        if self.alpha < 1:
            raise ValueError("alpha must be >= 1")

    @property
    def ping_interval(self) -> float:
        """How often members ping each other for liveness."""
        return max(self.heartbeat_interval, self.member_timeout / 20)
