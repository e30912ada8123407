"""A whole doozer consensus cluster in one process, driven by a seeded RNG.

FoundationDB/VOPR-style: fake clock, network, disks; faults injected at random;
invariants checked on every step; client histories checked for linearizability.
Entry points: `run_seed(seed, ...)` and `python -m tests.sim --seeds N`.
"""

from .cluster import Cluster, SimConfig, SimFailure, SimResult, run_seed

__all__ = ["Cluster", "SimConfig", "SimFailure", "SimResult", "run_seed"]
