"""A Jepsen-style suite: real `doozer serve` processes, real faults, recorded
client histories, and checks of what the clients saw.

    python -m tests.jepsen --nodes 3 --seconds 120 --seed 7 --nemesis all

Modules: `network` (namespaces + nftables, or the fault proxy), `nodes`
(the processes), `workload` (clients and their history), `hostile` (clients
that misbehave), `nemesis` (faults on a seeded schedule), `checks` (what
must hold), `runner` (one run, start to verdict), `report` (the summary).
"""
