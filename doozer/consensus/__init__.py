"""Multi-Paxos consensus as a pure object (see replica.py for the protocol outline)."""

from .ballot import ZERO, Ballot
from .config import Config
from .durable import DurableState
from .membership import Schedule, schedule_from_wire, schedule_to_wire
from .ready import Ready
from .replica import CANDIDATE, FOLLOWER, LEADER, PRECANDIDATE, Replica

__all__ = [
    "CANDIDATE",
    "FOLLOWER",
    "LEADER",
    "PRECANDIDATE",
    "ZERO",
    "Ballot",
    "Config",
    "DurableState",
    "Ready",
    "Replica",
    "Schedule",
    "schedule_from_wire",
    "schedule_to_wire",
]
