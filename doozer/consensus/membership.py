"""Member sets by instance.

A schedule is a list of (first_instance, members) sorted by first_instance: the
set in force for instance i is that of the last entry with first_instance <= i.
The store decides membership; the set that results from applying instance i
governs instances from i + alpha on, so every node derives the same schedule.
"""

from __future__ import annotations

Schedule = list[tuple[int, frozenset[str]]]


def majority(members: frozenset[str]) -> int:
    return len(members) // 2 + 1


def members_at(schedule: Schedule, i: int) -> frozenset[str] | None:
    """The member set for instance i, or None if the schedule starts after i."""
    for k in range(len(schedule) - 1, -1, -1):
        if schedule[k][0] <= i:
            return schedule[k][1]
    return None


def sets_between(schedule: Schedule, lo: int, hi: int) -> list[frozenset[str]]:
    """Distinct member sets governing some instance in [lo, hi]."""
    out: list[frozenset[str]] = []
    n = len(schedule)
    for k in range(n):
        first, ms = schedule[k]
        end = schedule[k + 1][0] - 1 if k + 1 < n else None
        if first > hi or (end is not None and end < lo):
            continue
        if ms not in out:
            out.append(ms)
    return out


def has_quorums(nodes: set[str] | frozenset[str], sets: list[frozenset[str]]) -> bool:
    """True if nodes hold a majority of every set (and there is at least one set)."""
    return bool(sets) and all(ms and len(nodes & ms) >= majority(ms) for ms in sets)


def put(schedule: Schedule, first: int, members: frozenset[str]) -> None:
    """Record that members govern instances from first on (until a later entry)."""
    for k in range(len(schedule)):
        f = schedule[k][0]
        if f == first:
            schedule[k] = (first, members)
            return
        if f > first:
            schedule.insert(k, (first, members))
            return
    schedule.append((first, members))


def trim(schedule: Schedule, upto: int) -> None:
    """Drop entries that no longer govern any instance above upto."""
    keep = 0
    for k in range(len(schedule)):
        if schedule[k][0] <= upto + 1:
            keep = k
    if keep:
        del schedule[:keep]


def schedule_to_wire(schedule: Schedule) -> list:
    return [[f, sorted(ms)] for f, ms in schedule]


def schedule_from_wire(w: list) -> Schedule:
    return [(int(f), frozenset(ms)) for f, ms in w]
