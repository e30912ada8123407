"""Faults, on a schedule drawn from the run's seed.

A round is: a quiet spell, then one fault (or two at once, on different
nodes, when combining), held for its duration, then healed. Targets that
depend on the cluster's state (the leader) are chosen when the round starts;
every fault actually injected is recorded as an `Event` with the times it
began and was healed, on the history's clock.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.jepsen.cluster import Cluster
from tests.jepsen.conn import try_request
from tests.jepsen.network import Network
from tests.jepsen.nodes import Node

# faults of one node (combined with network faults, never with each other)
PROCESS = ("kill", "kill-leader", "pause", "disk-full")
NETWORK = (
    "partition-one",
    "partition-half",
    "partition-bridge",
    "partition-oneway",
    "flaky",
    "delay",
)
SOLO = ("membership", "restart-all")
ALL = PROCESS + NETWORK + SOLO
# what each network fault needs from the network (see network.Network.can)
NEEDS = {
    "partition-one": "pairs",
    "partition-half": "pairs",
    "partition-bridge": "pairs",
    "partition-oneway": "deafen",
    "flaky": "loss",
    "delay": "delay",
}


def available(net: Network, disks: bool = True) -> list[str]:
    """The nemeses this run can play; `disks`: data dirs can be loop-mounted
    (see disks.why_not; not with --mem)."""
    return [
        n for n in ALL if (n not in NEEDS or NEEDS[n] in net.can) and (n != "disk-full" or disks)
    ]


def parse(spec: str, net: Network, disks: str | None = None) -> list[str]:
    """'all', or a comma-separated list of names (errors on one the network
    cannot do). `disks`: why data dirs cannot be loop-mounted, if so."""
    can = available(net, disks is None)
    if spec == "all":
        return can
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in ALL:
            raise ValueError(f"unknown nemesis {n!r}; known: {', '.join(ALL)}")
        if n == "disk-full" and disks is not None:
            raise ValueError(f"nemesis disk-full: {disks}")
        if n not in can:
            raise ValueError(f"nemesis {n!r} needs the netns network (root, ip, nft)")
    return names


@dataclass
class Round:
    quiet: float
    names: tuple[str, ...]
    duration: float
    seed: int


@dataclass
class Timing:
    quiet: tuple[float, float] = (2.0, 4.0)
    duration: tuple[float, float] = (2.0, 6.0)
    long: tuple[float, float] = (10.0, 16.0)  # longer than the member timeout
    long_frac: float = 0.0
    combine: float = 0.0


def plan(names: list[str], seconds: float, seed: int, t: Timing) -> list[Round]:
    """The rounds for a run, drawn from the seed alone. Every nemesis appears
    before any repeats (a shuffled deck, reshuffled when used up)."""
    rng = random.Random(seed)
    out: list[Round] = []
    deck: list[str] = []
    total = 0.0
    while total < seconds and len(out) < 100_000:
        if not deck:
            deck = list(names)
            rng.shuffle(deck)
        first = deck.pop()
        pick = [first]
        if first not in SOLO and rng.random() < t.combine:
            other = [n for n in names if n not in SOLO and (n in PROCESS) != (first in PROCESS)]
            if other:
                pick.append(rng.choice(other))
        quiet = rng.uniform(*t.quiet)
        span = t.long if rng.random() < t.long_frac else t.duration
        dur = 0.0 if first in SOLO else rng.uniform(*span)
        out.append(Round(quiet, tuple(pick), dur, rng.randrange(1 << 30)))
        total += quiet + dur
    return out


@dataclass
class Event:
    nemesis: str
    start: float
    heal: float | None = None
    detail: str = ""
    failed: str = ""  # why the fault could not be (fully) applied

    def to_dict(self) -> dict:
        return {
            "nemesis": self.nemesis,
            "start": round(self.start, 3),
            "heal": None if self.heal is None else round(self.heal, 3),
            "detail": self.detail,
            "failed": self.failed,
        }

    def __str__(self) -> str:
        heal = "never" if self.heal is None else f"{self.heal:8.3f}"
        extra = f" [FAILED: {self.failed}]" if self.failed else ""
        return f"{self.start:8.3f} .. {heal}  {self.nemesis:17s} {self.detail}{extra}"


@dataclass
class _Fault:
    event: Event
    targets: set[int] = field(default_factory=set)
    heal: Callable[[], Awaitable[None]] | None = None


class Nemesis:
    def __init__(
        self,
        cluster: Cluster,
        net: Network,
        now: Callable[[], float],
        *,
        min_slots: int = 3,
        max_slots: int = 5,
    ) -> None:
        self.cluster = cluster
        self.net = net
        self.now = now
        self.min_slots = min_slots
        self.max_slots = max_slots
        self.events: list[Event] = []
        self.active: list[_Fault] = []
        self._net_faults: dict[int, tuple[set[tuple[int, int]], int, float]] = {}
        self._stop = asyncio.Event()
        self._keys = 0
        self.log: Callable[[str], None] = lambda line: None

    # -- the schedule ---------------------------------------------------------------

    async def run(self, rounds: list[Round], until: float) -> None:
        """Play the rounds until the clock reaches `until` (then heal what is active)."""
        try:
            for rnd in rounds:
                if not await self._sleep(rnd.quiet, until):
                    break
                rng = random.Random(rnd.seed)
                for name in rnd.names:
                    f = await self._inject(name, rng)
                    if f is not None:
                        self.active.append(f)
                await self._sleep(rnd.duration, until)
                await self._heal_active()
                if self.now() >= until:
                    break
        finally:
            await self._heal_active()

    def stop(self) -> None:
        self._stop.set()

    async def _sleep(self, seconds: float, until: float) -> bool:
        """Sleep; False if the run's end or a stop came first."""
        left = min(seconds, until - self.now())
        if left > 0:
            try:
                await asyncio.wait_for(self._stop.wait(), left)
            except TimeoutError:
                pass
        return not self._stop.is_set() and self.now() < until

    async def _heal_active(self) -> None:
        while self.active:
            f = self.active.pop()
            if f.heal is not None:
                try:
                    await f.heal()
                except Exception as e:  # a heal that fails is reported, never hidden
                    f.event.failed = f"heal failed: {e!r}"
            f.event.heal = self.now()
            self.log(f"healed {f.event.nemesis}: {f.event.detail}")

    async def heal_all(self) -> None:
        """The end of the run: no fault left anywhere, every started node running."""
        await self._heal_active()
        self._net_faults.clear()
        await self.net.heal()
        for n in self.cluster.started():
            if n.paused:
                n.resume()
            if not n.running():
                n.start()

    # -- injecting ---------------------------------------------------------------

    def _busy(self) -> set[int]:
        return set().union(*(f.targets for f in self.active)) if self.active else set()

    async def _pick(self, rng: random.Random, leader_bias: float, pool: list[Node]) -> Node | None:
        busy = self._busy()
        pool = [n for n in pool if n.idx not in busy]
        if not pool:
            return None
        if rng.random() < leader_bias:
            lead = await self.cluster.leader()
            if lead is not None and lead.idx not in busy:
                return lead
        return rng.choice(pool)

    def _record(self, name: str, detail: str) -> Event:
        ev = Event(name, self.now(), detail=detail)
        self.events.append(ev)
        if detail:
            self.log(f"{name}: {detail}")
        return ev

    async def _inject(self, name: str, rng: random.Random) -> _Fault | None:
        c = self.cluster
        if name in ("kill", "kill-leader", "pause"):
            bias = 1.0 if name == "kill-leader" else (0.5 if name == "pause" else 0.0)
            node = await self._pick(rng, bias, c.up())
            if node is None:
                return None
            if name == "pause":
                node.pause()
                ev = self._record(name, f"SIGSTOP {node.name}")

                async def resume(node: Node = node) -> None:
                    node.resume()

                return _Fault(ev, {node.idx}, resume)
            lead = await c.leader() if name == "kill-leader" else None
            node.kill()
            tag = " (the leader)" if lead is not None and lead.idx == node.idx else ""
            ev = self._record(name, f"kill -9 {node.name}{tag}")

            async def restart(node: Node = node) -> None:
                if not node.running():
                    node.start()

            return _Fault(ev, {node.idx}, restart)
        if name == "disk-full":
            return await self._disk_full(rng)
        if name in NETWORK:
            return await self._network(name, rng)
        if name == "membership":
            await self._membership(rng)
            return None
        if name == "restart-all":
            nodes = c.started()
            for n in nodes:
                n.kill()
            ev = self._record(name, f"kill -9 all {len(nodes)} nodes, restart them")
            for n in nodes:
                n.start()
            ev.heal = self.now()
            return None
        raise ValueError(name)

    async def _disk_full(self, rng: random.Random) -> _Fault | None:
        """Fill one node's data dir (the leader half the time): it must stop
        leading and voting, and the others go on without it."""
        disks = self.cluster.disks
        node = await self._pick(rng, 0.5, [n for n in self.cluster.started() if n.idx in disks])
        if node is None:
            return None
        disk = disks[node.idx]
        lead = await self.cluster.leader()
        tag = " (the leader)" if lead is not None and lead.idx == node.idx else ""
        try:
            taken = await asyncio.to_thread(disk.fill)
        except OSError as e:
            ev = self._record("disk-full", f"fill {node.name}'s data dir")
            ev.failed = repr(e)
            ev.heal = ev.start
            await asyncio.to_thread(disk.free)
            return None
        detail = f"{node.name}'s data dir full{tag} ({taken >> 20} MiB taken)"
        ev = self._record("disk-full", detail)

        async def heal() -> None:
            await asyncio.to_thread(disk.free)

        return _Fault(ev, {node.idx}, heal)

    async def _network(self, name: str, rng: random.Random) -> _Fault | None:
        nodes = [n.idx for n in self.cluster.started()]
        drops: set[tuple[int, int]] = set()
        loss, delay = 0, 0.0
        targets: set[int] = set()
        if name in ("partition-one", "partition-oneway"):
            node = await self._pick(rng, 0.5, self.cluster.started())
            if node is None:
                return None
            x = node.idx
            targets = {x}
            others = [o for o in nodes if o != x]
            way = "both"
            if name == "partition-oneway":
                way = "in" if "pairs" not in self.net.can else rng.choice(["in", "out"])
            if way in ("both", "in"):
                drops |= {(o, x) for o in others}
            if way in ("both", "out"):
                drops |= {(x, o) for o in others}
            detail = {
                "both": f"cut {node.name} off",
                "in": f"{node.name} hears nobody (others hear it)",
                "out": f"nobody hears {node.name} (it hears them)",
            }[way]
        elif name in ("partition-half", "partition-bridge"):
            order = list(nodes)
            rng.shuffle(order)
            if name == "partition-half":
                k = len(order) // 2
                a, b = order[:k], order[k:]
                detail = f"{_names(a)} | {_names(b)}"
            else:
                bridge, rest = order[0], order[1:]
                k = len(rest) // 2
                a, b = rest[:k], rest[k:]
                detail = f"{_names(a)} | {_names(b)}, n{bridge} sees both"
            drops = {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
        elif name == "flaky":
            loss = rng.choice([20, 30, 50])
            detail = f"{loss}% of node-to-node packets dropped"
        else:
            delay = rng.choice([0.05, 0.2, 0.5])
            detail = f"{delay * 1000:.0f} ms added to every peer link"
        self._keys += 1
        key = self._keys
        self._net_faults[key] = (drops, loss, delay)
        try:
            await self._apply_net()
        except Exception as e:
            self._net_faults.pop(key, None)
            ev = self._record(name, detail)
            ev.failed = repr(e)
            ev.heal = ev.start
            return None
        ev = self._record(name, detail)

        async def heal(key: int = key) -> None:
            self._net_faults.pop(key, None)
            await self._apply_net()

        return _Fault(ev, targets, heal)

    async def _apply_net(self) -> None:
        drops: set[tuple[int, int]] = set()
        loss, delay = 0, 0.0
        for d, lo, de in self._net_faults.values():
            drops |= d
            loss = max(loss, lo)
            delay = max(delay, de)
        await self.net.cut(drops, loss, delay)

    async def _membership(self, rng: random.Random) -> None:
        c = self.cluster
        slots = await c.slots()
        ev = self._record("membership", "")
        if slots is None:
            ev.failed = "could not read /ctl/cal/*"
            ev.heal = self.now()
            return
        if len(slots) > self.min_slots:
            victims = rng.sample(sorted(slots), len(slots) - self.min_slots)
            ev.detail = f"shrink {len(slots)} -> {self.min_slots}: DEL " + ", ".join(
                f"/ctl/cal/{s} ({c.name(slots[s])})" for s in victims
            )
            reqs = [{"verb": "DEL", "path": f"/ctl/cal/{s}"} for s in victims]
        else:
            used = {int(s) for s in slots if s.isdigit()}
            fresh = [i for i in range(64) if i not in used][: self.max_slots - len(slots)]
            ev.detail = f"grow {len(slots)} -> {self.max_slots}: empty slots " + ", ".join(
                f"/ctl/cal/{s}" for s in fresh
            )
            reqs = [{"verb": "SET", "path": f"/ctl/cal/{s}", "value": "", "rev": 0} for s in fresh]
        self.log(f"membership: {ev.detail}")
        want = self.max_slots if reqs[0]["verb"] == "SET" else self.min_slots
        guarded = False
        for req in reqs:
            why = await self._until_done(req, 20.0)
            if why.startswith(LIVE_QUORUM_GUARD):
                # Taking a member out while others are down would leave no
                # live quorum: the node refuses by design (Node._live_quorum_check).
                ev.detail += f"; refused while members were down: {req['path']}"
                guarded = True
                break
            if why:
                ev.failed = f"{req['verb']} {req['path']}: {why}"
                break
        ev.heal = self.now()
        if not ev.failed and not guarded:
            # followers claim new slots; the change takes effect some instances later
            members: list[str] = []
            for _ in range(100):
                members = await c.member_names()
                if len(members) == want:
                    break
                await asyncio.sleep(0.2)
            took = self.now() - ev.heal
            if len(members) == want:
                ev.detail += f"; {want} members after {took:.1f}s ({' '.join(members)})"
            else:
                ev.failed = f"members after {took:.0f}s: {members}, want {want}"
                ev.failed += f" (views: {await c.views()})"
            self.log(f"membership: {ev.detail} {ev.failed}")

    async def _until_done(self, req: dict, deadline: float) -> str:
        """Retry a /ctl write on live nodes until it is known done; '' or why not.
        A refusal by the live-quorum guard is retried (the members down may
        come back, or be removed) and, if it lasts, answered as LIVE_QUORUM_GUARD."""
        end = self.now() + deadline
        last: dict = {}
        i = 0
        while self.now() < end:
            up = self.cluster.up()
            if up:
                i += 1
                last = await try_request(up[i % len(up)].addr, {**req, "timeout": 2}, 4)
                if "rev" in last and "err_code" not in last:
                    return ""
                if last.get("err_code") == "REV_MISMATCH":
                    return ""  # an earlier, indeterminate try created it
                guarded = "members live" in last.get("err_detail", "")
                if last.get("err_code") == "PERMISSION" and not guarded:
                    return f"refused: {last}"
            await asyncio.sleep(0.2)
        if "members live" in last.get("err_detail", ""):
            return f"{LIVE_QUORUM_GUARD}: {last}"
        return f"not done in {deadline}s: {last}"


LIVE_QUORUM_GUARD = "refused by the live-quorum guard"


def _names(idx: list[int]) -> str:
    return "{" + " ".join(f"n{i}" for i in sorted(idx)) + "}"
