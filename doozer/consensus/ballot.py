"""Ballots: (round, node id), totally ordered; on the wire a two-element list."""

from __future__ import annotations

Ballot = tuple[int, str]

ZERO: Ballot = (0, "")


def ballot_of(w: list | tuple) -> Ballot:
    """A ballot from its wire form (JSON turns tuples into lists)."""
    return (int(w[0]), str(w[1]))


def wire(b: Ballot) -> list:
    return [b[0], b[1]]
