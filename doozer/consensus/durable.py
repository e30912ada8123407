"""What a replica must find again after a crash, and the records that change it.

The replica emits records in `Ready.persist`; the host appends them to its log
(or applies them to a DurableState it keeps) before sending that Ready's
messages. Replaying the records in order with `apply` rebuilds the state.

Records (JSON-able lists):
    ["p", ballot]                 promised ballot (for every instance)
    ["a", i, ballot, value]       accepted value at instance i (implies the promise)
    ["d", i]  /  ["d", i, value]  instance i decided (short form: the accepted value)
    ["m", first, [members]]       member set governing instances from `first` on
    ["c", upto]                   compacted: the host's snapshot covers instances <= upto
    ["s", instance, schedule]     a snapshot at `instance` was installed (schedule wire form)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .ballot import ZERO, Ballot, ballot_of, wire
from .membership import Schedule, put, schedule_from_wire, schedule_to_wire, trim


@dataclass
class DurableState:
    promised: Ballot = ZERO
    accepted: dict[int, tuple[Ballot, list]] = field(default_factory=dict)  # undecided only
    decided: dict[int, list] = field(default_factory=dict)  # instances base+1 ...
    base: int = 0  # instances <= base are covered by the host's snapshot
    schedule: Schedule = field(default_factory=list)

    def apply(self, rec: list) -> None:
        kind = rec[0]
        if kind == "a":
            i, b = rec[1], ballot_of(rec[2])
            if b > self.promised:
                self.promised = b
            if i > self.base and i not in self.decided:
                self.accepted[i] = (b, rec[3])
        elif kind == "d":
            i = rec[1]
            acc = self.accepted.pop(i, None)
            if i <= self.base or i in self.decided:
                return  # a snapshot already holds it (records replay on top of one)
            if len(rec) > 2:
                self.decided[i] = rec[2]
            elif acc is not None:
                self.decided[i] = acc[1]
            else:
                raise ValueError(f"decided record for {i} without an accepted value")
        elif kind == "p":
            b = ballot_of(rec[1])
            if b > self.promised:
                self.promised = b
        elif kind == "m":
            put(self.schedule, rec[1], frozenset(rec[2]))
        elif kind == "c":
            self._drop_upto(rec[1])
            trim(self.schedule, rec[1])
        elif kind == "s":
            self._drop_upto(rec[1])
            self.schedule = schedule_from_wire(rec[2])
        else:
            raise ValueError(f"unknown durable record {kind!r}")

    def _drop_upto(self, upto: int) -> None:
        if upto <= self.base:
            return
        for d in (self.decided, self.accepted):
            for i in [i for i in d if i <= upto]:
                del d[i]
        self.base = upto

    def copy(self) -> DurableState:
        return DurableState(
            self.promised,
            dict(self.accepted),
            dict(self.decided),
            self.base,
            list(self.schedule),
        )

    def to_json(self, covered: int = 0) -> dict[str, Any]:
        """The JSON form; with `covered`, as if compacted through it. A snapshot
        at instance `covered` holds those instances' effects itself, and the
        replica forgets their values once it is durable, so carrying them
        along only made it bigger (at 20,000 revs between snapshots, ~90 % of
        a small tree's snapshot)."""
        base = max(self.base, covered)
        return {
            "promised": wire(self.promised),
            "accepted": [
                [i, wire(b), v] for i, (b, v) in sorted(self.accepted.items()) if i > base
            ],
            "decided": [[i, v] for i, v in sorted(self.decided.items()) if i > base],
            "base": base,
            "schedule": schedule_to_wire(self.schedule),
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> DurableState:
        return DurableState(
            ballot_of(d["promised"]),
            {int(i): (ballot_of(b), v) for i, b, v in d["accepted"]},
            {int(i): v for i, v in d["decided"]},
            int(d["base"]),
            schedule_from_wire(d["schedule"]),
        )
