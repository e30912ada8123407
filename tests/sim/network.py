"""A lossy network: drops, duplicates, delays (so reorders) and partitions messages.

Messages travel as orjson bytes, as over the real peer links: nothing is shared
between sender and receiver, and anything not JSON-able fails loudly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import orjson


@dataclass
class NetFaults:
    drop: float = 0.0
    dup: float = 0.0
    delay_min: float = 0.0005
    delay_max: float = 0.01
    spike: float = 0.0  # probability of a long delay (reordering across heartbeats)
    spike_max: float = 0.5


@dataclass
class NetStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    cut: int = 0  # lost to a partition
    bytes: int = 0
    max_bytes: int = 0


@dataclass
class Network:
    rng: random.Random
    faults: NetFaults = field(default_factory=NetFaults)
    blocked: set[tuple[str, str]] = field(default_factory=set)  # (from, to) pairs cut
    stats: NetStats = field(default_factory=NetStats)

    def can(self, src: str, dst: str) -> bool:
        return (src, dst) not in self.blocked

    def plan(self, src: str, dst: str, msg: dict) -> tuple[bytes, list[float]]:
        """Encode msg and choose its delivery delays (none: dropped)."""
        data = orjson.dumps(msg)
        st = self.stats
        st.sent += 1
        st.bytes += len(data)
        if len(data) > st.max_bytes:
            st.max_bytes = len(data)
        f = self.faults
        r = self.rng
        if f.drop and r.random() < f.drop:
            st.dropped += 1
            return data, []
        n = 1
        if f.dup and r.random() < f.dup:
            st.duplicated += 1
            n = 2
        out = []
        for _ in range(n):
            d = r.uniform(f.delay_min, f.delay_max)
            if f.spike and r.random() < f.spike:
                d += r.uniform(0, f.spike_max)
            out.append(d)
        return data, out

    def heal(self) -> None:
        self.blocked.clear()

    def isolate(self, node: str, others: list[str], *, inbound: bool, outbound: bool) -> None:
        for o in others:
            if o == node:
                continue
            if outbound:
                self.blocked.add((node, o))
            if inbound:
                self.blocked.add((o, node))

    def split(self, a: list[str], b: list[str]) -> None:
        for x in a:
            for y in b:
                self.blocked.add((x, y))
                self.blocked.add((y, x))
