"""The simulated cluster: event loop, fault injection, clients, invariant checks.

Everything is driven by one seeded RNG and a fake clock, so a seed replays exactly.
A run has a chaos phase (clients and faults), then heals everything and checks that
the cluster converges, still accepts writes, and that the clients' history is
linearizable.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from doozer.consensus import Config

from .checks import Checker, SimFailure
from .network import NetFaults, Network
from .node import SimNode

try:
    from ..lincheck import REGISTER, Op, check
except ImportError:  # imported as top-level `sim` (pytest puts tests/ on sys.path)
    from lincheck import REGISTER, Op, check  # type: ignore[no-redef]


@dataclass
class SimConfig:
    nodes: int = 5
    slots: int = 3
    chaos: float = 10.0  # seconds of clients and faults
    quiesce: float = 60.0  # at most this long to converge afterwards
    clients: int = 4
    keys: int = 3
    client_timeout: float = 2.0
    retry: float = 0.5  # a node re-proposes a pending write this often
    fault_gap: tuple[float, float] = (0.2, 1.0)
    faults: bool = True
    membership: bool = True
    election_timeout: float = 0.3
    alpha: int = 4
    member_timeout: float = 3.0
    max_batch_items: int = 8
    compact_every: int = 12
    tick: float = 0.03
    drift: float = 0.05  # clock rates differ by up to this fraction
    thrifty: bool = True  # accepts to a quorum only (Config.thrifty)
    news_linger: float = 0.01  # Config.news_linger: how long non-voters may lag
    lincheck_budget: float = 10.0
    max_steps: int = 2_000_000  # more events than this: a message storm (livelock)

    @staticmethod
    def random(rng: random.Random) -> SimConfig:
        nodes = rng.randint(3, 6)
        return SimConfig(
            nodes=nodes,
            slots=rng.randint(1, min(5, nodes))
            if rng.random() < 0.2
            else min(nodes, rng.choice((3, 3, 5))),
            clients=rng.randint(2, 6),
            keys=rng.randint(1, 4),
            alpha=rng.choice((1, 2, 4, 8, 32)),
            max_batch_items=rng.choice((1, 4, 16, 256)),
            compact_every=rng.choice((0, 5, 12, 40)),
            member_timeout=rng.choice((1.5, 3.0, 100.0)),
            membership=rng.random() < 0.8,
            drift=rng.choice((0.0, 0.05, 0.05, 0.3)),
            thrifty=rng.random() < 0.8,
            news_linger=rng.choice((0.0, 0.01, 0.01, 0.2)),
        )

    def replica_config(self) -> Config:
        return Config(
            election_timeout=self.election_timeout,
            alpha=self.alpha,
            max_batch_items=self.max_batch_items,
            max_batch_bytes=4096,
            fetch_max_bytes=2048,
            member_timeout=self.member_timeout,
            thrifty=self.thrifty,
            news_linger=self.news_linger,
        )


@dataclass
class ClientOp:
    client: int
    kind: str
    key: str
    value: Any = None
    expect: Any = None
    node: str = ""
    call: float = 0.0
    ret: float | None = None
    output: Any = None
    state: str = "pending"  # pending | ok | failed | unknown
    instance: int = 0
    iid: str = ""  # the write's item id


@dataclass
class SimResult:
    seed: int
    steps: int = 0
    sim_time: float = 0.0
    wall: float = 0.0
    faults: Counter = field(default_factory=Counter)
    ops: Counter = field(default_factory=Counter)
    instances: int = 0
    lincheck: str = ""
    net: dict = field(default_factory=dict)
    effects: Counter = field(default_factory=Counter)  # snapshot installs, suspects reported


class Cluster:
    def __init__(self, seed: int, cfg: SimConfig | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.cfg = cfg or SimConfig.random(random.Random(seed * 7919 + 1))
        self.t = 0.0
        self.step = 0
        self._q: list[tuple[float, int, Callable[..., None], tuple]] = []
        self._seq = 0
        self.net = Network(random.Random(self.rng.random()))
        self.checker = Checker(self)
        self.stats: Counter = Counter()
        self.admin_ids = 0
        self.history: list[ClientOp] = []
        self.rcfg = self.cfg.replica_config()
        self.nodes: dict[str, SimNode] = {}
        for k in range(self.cfg.nodes):
            nid = f"n{k}"
            self.nodes[nid] = SimNode(self, nid, self.rcfg, random.Random(self.rng.random()))
        self.chaos_over = False
        self.final_op: ClientOp | None = None
        self.trace: list[str] | None = None

    # ------------------------------------------------------------------ events

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, fn, args))

    def log(self, what: str) -> None:
        if self.trace is not None:
            self.trace.append(f"{self.step:7d} {self.t:8.3f} {what}")

    def fail(self, msg: str) -> SimFailure:
        return SimFailure(self.seed, self.step, self.t, msg)

    # ------------------------------------------------------------------ network

    def send(self, src: str, dst: str, msg: dict) -> None:
        data, delays = self.net.plan(src, dst, msg)
        for d in delays:
            self.at(self.t + d, self._deliver, src, dst, data)

    def _deliver(self, src: str, dst: str, data: bytes) -> None:
        n = self.nodes.get(dst)
        if n is None or not n.up:
            return
        if not self.net.can(src, dst):
            self.net.stats.cut += 1
            return
        if n.paused_until > self.t:
            self.at(n.paused_until + self.rng.uniform(0, 0.01), self._deliver, src, dst, data)
            return
        self.net.stats.delivered += 1
        n.deliver(self.t, src, data)

    # ------------------------------------------------------------------ nodes

    def _tick(self, nid: str, gen: int) -> None:
        n = self.nodes[nid]
        if not n.up or n.gen != gen:
            return
        if n.paused_until <= self.t:
            if n.sm is None:
                self._try_join(n)
            else:
                n.tick(self.t)
        if n.up and n.gen == gen:
            self.at(self.t + self.cfg.tick * self.rng.uniform(0.8, 1.2), self._tick, nid, gen)

    def boot(self, n: SimNode, first: bool) -> None:
        if first:
            n.bootstrap(self.cfg.slots)
        else:
            n.start()
        self.at(self.t + self.rng.uniform(0, self.cfg.tick), self._tick, n.id, n.gen)

    def _try_join(self, n: SimNode) -> None:
        peers = [
            p
            for p in self.nodes.values()
            if p is not n
            and p.up
            and p.sm is not None
            and p.paused_until <= self.t
            and self.net.can(p.id, n.id)
            and self.net.can(n.id, p.id)
        ]
        if peers:
            n.join_from(self.rng.choice(peers))

    def snapshot_wanted(self, n: SimNode, peer_id: str) -> None:
        p = self.nodes.get(peer_id)
        if p is None or not p.up or p.sm is None or not self.net.can(p.id, n.id):
            return
        self.stats["snapshots"] += 1
        self.at(self.t + self.rng.uniform(0.001, 0.05), self._install, n.id, n.gen, peer_id)

    def _install(self, nid: str, gen: int, peer_id: str) -> None:
        n, p = self.nodes[nid], self.nodes[peer_id]
        if n.up and n.gen == gen and p.up and p.sm is not None and p.applied > n.applied:
            n.join_from(p)

    def disk_synced(self, nid: str, gen: int) -> None:
        n = self.nodes[nid]
        if not n.up or n.gen != gen:
            return
        if n.paused_until > self.t:  # a stopped process's disk thread is stopped too
            self.at(n.paused_until + self.rng.uniform(0, 0.005), self.disk_synced, nid, gen)
            return
        r = n.replica
        if n.disk_full_until > self.t:  # the sync fails: the host says so, and retries
            if r is not None and r.can_lead:
                r.set_can_lead(False)
                n.drain()
            self.at(self.t + 0.1, self.disk_synced, nid, gen)
            return
        if r is not None and not r.can_lead:
            r.set_can_lead(True)
        n.synced()

    def crash(self, n: SimNode, torn: bool = False) -> None:
        self.stats["crashes_torn" if torn else "crashes"] += 1
        self.log(f"crash {n.id}{' (torn ready)' if torn else ''}")
        self.checker.bad_messages(n)
        for op in n.stop():
            self._give_up(op)

    # ------------------------------------------------------------------ clients

    def _client(self, c: int) -> None:
        if self.chaos_over:
            return
        rng = self.rng
        live = [n for n in self.nodes.values() if n.up and n.sm is not None]
        if not live:
            self.at(self.t + 0.1, self._client, c)
            return
        n = rng.choice(live)
        key = f"k{rng.randrange(self.cfg.keys)}"
        r = rng.random()
        self.stats["op_seq"] += 1
        uniq = self.stats["op_seq"]
        if r < 0.45:
            op = ClientOp(c, "get", key)
        elif r < 0.75:
            op = ClientOp(c, "set", key, value=uniq)
        elif r < 0.92:
            seen = [o.value for o in self.history[-20:] if o.key == key and o.value is not None]
            seen += [o.output for o in self.history[-20:] if o.key == key and o.kind == "get"]
            op = ClientOp(c, "cas", key, value=uniq, expect=rng.choice(seen) if seen else None)
        else:
            op = ClientOp(c, "del", key)
        op.node = n.id
        op.call = self.t
        self.history.append(op)
        self.at(self.t + self.cfg.client_timeout, self._timeout, op)
        item = None
        if op.kind != "get":
            op.iid = f"c{c}.{uniq}"
            item = {"id": op.iid, "op": op.kind, "k": key}
            if op.kind in ("set", "cas"):
                item["v"] = op.value
            if op.kind == "cas":
                item["old"] = op.expect
        self._submit(n.id, n.gen, op, item)

    def _submit(self, nid: str, gen: int, op: ClientOp, item: dict | None) -> None:
        n = self.nodes[nid]
        if op.state != "pending" or not n.up or n.gen != gen:
            return
        if n.paused_until > self.t:  # a paused process reads its socket when it wakes
            self.at(n.paused_until + self.rng.uniform(0, 0.01), self._submit, nid, gen, op, item)
        elif item is None:
            n.submit_read(op)
        else:
            n.submit_write(op, item)

    def _finish(self, op: ClientOp) -> None:
        if op is self.final_op:
            return
        self.at(self.t + self.rng.uniform(0, 0.05), self._client, op.client)

    def write_done(self, n: SimNode, op: ClientOp, res: Any, instance: int) -> None:
        if op.state != "pending":
            return
        op.state = "ok"
        op.ret = self.t
        op.output = res
        op.instance = instance
        self.checker.on_ack(n, op, instance)
        self._finish(op)

    def read_done(self, n: SimNode, op: ClientOp, value: Any) -> None:
        if op.state != "pending":
            return
        op.state = "ok"
        op.ret = self.t
        op.output = value
        self._finish(op)

    def read_failed(self, n: SimNode, op: ClientOp) -> None:
        if op.state != "pending":
            return
        # the node retries its read index a little later, within the client's timeout
        self.at(self.t + self.rng.uniform(0.02, 0.1), self._retry_read, n.id, n.gen, op)

    def _retry_read(self, nid: str, gen: int, op: ClientOp) -> None:
        n = self.nodes[nid]
        if op.state == "pending" and n.up and n.gen == gen:
            self._submit(nid, gen, op, None)

    def _timeout(self, op: ClientOp) -> None:
        if op.state == "pending":
            self._give_up(op)

    def _give_up(self, op: ClientOp) -> None:
        if op.state != "pending":
            return
        op.state = "failed" if op.kind == "get" else "unknown"
        self._finish(op)

    # ------------------------------------------------------------------ faults

    def _fault(self) -> None:
        if self.chaos_over:
            return
        rng = self.rng
        nodes = list(self.nodes.values())
        ids = [n.id for n in nodes]
        up = [n for n in nodes if n.up]
        down = [n for n in nodes if not n.up]
        leader = next((n for n in up if n.replica is not None and n.replica.is_leader), None)
        kinds = [
            ("heal", 4),
            ("split", 2),
            ("isolate", 2),
            ("oneway", 2),
            ("bridge", 1),
            ("crash", 2),
            ("torn", 1),
            ("restart", 4),
            ("pause", 2),
            ("net", 2),
            ("transfer", 1),
            ("elect", 2),
            ("crash_leader", 1),
            ("isolate_leader", 1),
            ("pause_leader", 1),
            ("clock", 1),
            ("diskfull", 2),
            ("duel", 2),
            ("zombie", 1),
            ("bounce", 1),
            ("kick", 1 if self.cfg.membership else 0),
            ("caladd", 1 if self.cfg.membership else 0),
            ("caldel", 1 if self.cfg.membership else 0),
        ]
        kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        done = True
        if kind == "heal":
            self.net.heal()
        elif kind == "split":
            sh = ids[:]
            rng.shuffle(sh)
            k = rng.randint(1, len(sh) - 1)
            self.net.split(sh[:k], sh[k:])
        elif kind == "isolate":
            self.net.isolate(rng.choice(ids), ids, inbound=True, outbound=True)
        elif kind == "oneway":
            out = rng.random() < 0.5
            self.net.isolate(rng.choice(ids), ids, inbound=not out, outbound=out)
        elif kind == "bridge":
            # two halves that cannot talk, and one node (left out of both) that talks to all
            rest = ids[:]
            rng.shuffle(rest)
            rest = rest[1:]
            k = max(1, len(rest) // 2)
            self.net.heal()
            self.net.split(rest[:k], rest[k:])
        elif kind == "crash" and up:
            self.crash(rng.choice(up))
        elif kind == "crash_leader" and leader is not None:
            self.crash(leader)
        elif kind == "isolate_leader" and leader is not None:
            self.net.isolate(leader.id, ids, inbound=rng.random() < 0.7, outbound=True)
        elif kind == "pause_leader" and leader is not None:
            leader.paused_until = self.t + rng.uniform(0.5, 5) * self.cfg.election_timeout
        elif kind == "duel" and leader is not None:
            # a member that cannot hear the leader campaigns; the others hear both
            rivals = [
                n
                for n in up
                if n is not leader
                and n.replica is not None
                and n.replica.is_member()
                and n.paused_until <= self.t
            ]
            if rivals:
                x = rng.choice(rivals)
                self.net.blocked.update({(x.id, leader.id), (leader.id, x.id)})
                assert x.replica is not None
                x.replica.campaign()
                x.drain()
                others = [n for n in up if n is not x and n is not leader]
                if others and rng.random() < 0.5:
                    self.stats["fault_bounce"] += 1
                    self.at(self.t + rng.uniform(0.001, 0.03), self._bounce, rng.choice(others).id)
            else:
                done = False
        elif kind == "zombie" and leader is not None:
            # the leader's clock crawls and it is cut off: it must not serve stale reads
            leader.set_rate(self.t, 0.2)
            self.net.isolate(leader.id, ids, inbound=True, outbound=True)
            self.at(self.t + rng.uniform(1.0, 3.0), self._clock_back, leader.id)
        elif kind == "bounce" and up:
            self._bounce(rng.choice(up).id)
        elif kind == "clock":
            # a clock running slow or fast for a while (safety must not depend on clocks)
            n = leader if leader is not None and rng.random() < 0.5 else rng.choice(nodes)
            n.set_rate(self.t, rng.choice((0.2, 0.5, 2.0, 3.0)))
            self.at(self.t + rng.uniform(0.5, 3.0), self._clock_back, n.id)
        elif kind == "elect" and up:
            n = rng.choice(up)
            if n.replica is not None and n.paused_until <= self.t and n.replica.campaign():
                n.drain()
            else:
                done = False
        elif kind == "diskfull" and up:
            n = leader if leader is not None and rng.random() < 0.5 else rng.choice(up)
            n.disk_full_until = self.t + rng.uniform(0.2, 4.0) * self.cfg.election_timeout
        elif kind == "torn" and up:
            rng.choice(up).crash_mid_ready = True
        elif kind == "restart" and down:
            n = rng.choice(down)
            self.log(f"restart {n.id}")
            self.boot(n, first=False)
        elif kind == "pause" and up:
            n = rng.choice(up)
            n.paused_until = self.t + rng.uniform(0.1, 5 * self.cfg.election_timeout)
        elif kind == "net":
            self.net.faults = NetFaults(
                drop=rng.choice((0.0, 0.01, 0.05, 0.2)),
                dup=rng.choice((0.0, 0.02, 0.1)),
                delay_max=rng.choice((0.002, 0.01, 0.05)),
                spike=rng.choice((0.0, 0.01, 0.05)),
            )
        elif kind == "transfer" and leader is not None and leader.replica is not None:
            leader.replica.transfer_leadership()
            leader.drain()
        elif kind in ("kick", "caladd", "caldel") and up:
            n = rng.choice([n for n in up if n.sm is not None] or up)
            self.admin_ids += 1
            aid = f"admin.{self.admin_ids}"
            if kind == "kick" and n.sm is not None and n.sm.members():
                m = rng.choice(sorted(n.sm.members()))
                slot = n.sm.slot_of(m)
                n.propose_admin({"id": aid, "op": "cal", "slot": slot, "node": "", "if": m})
            elif kind == "caladd":
                n.propose_admin({"id": aid, "op": "caladd", "slot": str(rng.randrange(7))})
            elif kind == "caldel":
                n.propose_admin({"id": aid, "op": "caldel", "slot": str(rng.randrange(7))})
        else:
            done = False
        if done:
            self.stats["fault_" + kind] += 1
            self.log(f"fault {kind}")
        lo, hi = self.cfg.fault_gap
        self.at(self.t + rng.uniform(lo, hi), self._fault)

    def _bounce(self, nid: str) -> None:
        """kill -9 and an immediate restart by a supervisor."""
        n = self.nodes[nid]
        if n.up and not self.chaos_over:
            self.crash(n)
            self.at(self.t + self.rng.uniform(0.001, 0.02), self._restart, nid)

    def _restart(self, nid: str) -> None:
        n = self.nodes[nid]
        if not n.up:
            self.boot(n, first=False)

    def _clock_back(self, nid: str) -> None:
        n = self.nodes[nid]
        n.set_rate(self.t, 1.0 + self.rng.uniform(-self.cfg.drift, self.cfg.drift))

    def _end_chaos(self) -> None:
        self.chaos_over = True
        self.log("chaos over: heal, restart, quiesce")
        self.net.heal()
        self.net.faults = NetFaults()
        for n in self.nodes.values():
            n.paused_until = 0.0
            n.crash_mid_ready = False
            if not n.up:
                self.boot(n, first=False)
        self.at(self.t + self.cfg.election_timeout * 4, self._final_write)
        self.at(self.t + 0.5, self._check_converged)

    def _final_write(self) -> None:
        live = [n for n in self.nodes.values() if n.up and n.sm is not None]
        if not live:
            self.at(self.t + 0.2, self._final_write)
            return
        n = self.rng.choice(live)
        op = ClientOp(-1, "set", "k0", value="final", node=n.id, call=self.t, iid="final")
        self.final_op = op
        self.history.append(op)
        n.submit_write(op, {"id": "final", "op": "set", "k": "k0", "v": "final"})

    def _check_converged(self) -> None:
        if self.final_op is not None and self.final_op.state == "ok":
            nodes = list(self.nodes.values())
            if all(n.up and n.sm is not None for n in nodes):
                applied = {n.applied for n in nodes}
                if len(applied) == 1 and applied.pop() >= self.final_op.instance:
                    self._converged = True
                    return
        self.at(self.t + 0.25, self._check_converged)

    # ------------------------------------------------------------------ run

    def run(self) -> SimResult:
        wall = time.monotonic()
        cfg = self.cfg
        res = SimResult(self.seed)
        self._converged = False
        first = self.nodes["n0"]
        self.boot(first, first=True)
        for n in list(self.nodes.values())[1:]:
            self.at(self.rng.uniform(0.05, 1.0), self.boot, n, False)
        for c in range(cfg.clients):
            self.at(self.rng.uniform(0.5, 1.5), self._client, c)
        if cfg.faults:
            self.at(self.rng.uniform(*cfg.fault_gap) + 1.0, self._fault)
        self.at(cfg.chaos, self._end_chaos)
        end = cfg.chaos + cfg.quiesce
        q = self._q
        while q and not self._converged:
            t, _, fn, args = heapq.heappop(q)
            if t > end:
                break
            self.t = t
            self.step += 1
            if self.step > cfg.max_steps:
                raise self.fail(f"livelock: over {cfg.max_steps} events by t={t:.2f}s")
            fn(*args)
        if not self._converged:
            states = [n.describe() for n in self.nodes.values()]
            final = self.final_op.state if self.final_op else None
            raise self.fail(
                f"liveness: no convergence after healing (final write {final}); {states}"
            )
        self.checker.final()
        hist = self._lin_history()
        lr = check(hist, model=REGISTER, budget_s=cfg.lincheck_budget)
        if lr.outcome == "unknown":
            # Settle the unanswered writes from the log (stricter, and much faster).
            lr = check(self._lin_history(resolved=True), REGISTER, cfg.lincheck_budget)
            res.lincheck = "resolved-" + lr.outcome
        else:
            res.lincheck = lr.outcome
        if lr.outcome == "violation":
            raise self.fail("not linearizable:\n" + lr.report())
        res.steps = self.step
        res.sim_time = self.t
        res.instances = self.checker.max_instance
        ns = self.net.stats
        res.faults = Counter({k[6:]: v for k, v in self.stats.items() if k.startswith("fault_")})
        res.faults["torn"] = self.stats["crashes_torn"]  # armed torn crashes that happened
        res.faults.update(drops=ns.dropped, dups=ns.duplicated)
        res.faults = +res.faults
        res.effects = Counter(snapshots=self.stats["snapshots"], suspects=self.stats["suspects"])
        res.ops = Counter(f"{o.kind}:{o.state}" for o in self.history)
        res.net = {"sent": ns.sent, "bytes": ns.bytes, "max_msg": ns.max_bytes}
        res.wall = time.monotonic() - wall
        return res

    def _lin_history(self, resolved: bool = False) -> list[Op]:
        """The clients' history. `resolved`: an unanswered write that reached the log
        took effect by the time its instance was first applied, with its logged result;
        one that never reached the log never happened."""
        out = []
        sm = self.nodes["n0"].sm
        for o in self.history:
            if o.kind == "get" and o.state != "ok":
                continue  # a read without an answer has no effect
            ok = o.state == "ok"
            ret, output = (o.ret, o.output) if ok else (None, None)
            if resolved and not ok:
                done = sm.done.get(o.iid) if sm is not None else None
                if done is None:
                    continue
                output, at = done
                ret = max(o.call, self.checker.first_applied.get(at, o.call))
            out.append(
                Op(
                    o.kind,
                    o.key,
                    o.call,
                    ret,
                    value=o.value,
                    expect=o.expect,
                    output=output,
                    client=o.client,
                )
            )
        return out


def run_seed(seed: int, cfg: SimConfig | None = None, trace: bool = False) -> SimResult:
    c = Cluster(seed, cfg)
    if trace:
        c.trace = []
    return c.run()
