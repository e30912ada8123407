"""The cluster under test: its node processes, start-up, and the queries the
nemeses and checks need (who leads, the slots, is it writable)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.jepsen.conn import try_request
from tests.jepsen.disks import LoopDisk
from tests.jepsen.network import Network
from tests.jepsen.nodes import Node


class ClusterError(RuntimeError):
    pass


class Cluster:
    def __init__(
        self,
        net: Network,
        root: Path,
        *,
        members: int,
        spares: int,
        election_timeout: float,
        member_timeout: float,
        mem: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.net = net
        self.members = members
        common = ["--election-timeout", str(election_timeout), "--timeout", str(member_timeout)]
        if mem:
            common.append("--mem")
        common += extra
        self.nodes: list[Node] = []
        self.disks: dict[int, LoopDisk] = {}  # node idx -> its data dir's file system
        self.names: dict[str, str] = {}  # node id -> n<i>, learned from SELF
        self.nudges = 0  # writes made only to move an idle log along (see _formed)
        for i in range(members + spares):
            flags = list(common) if mem else [*common, "-d", str(root / f"n{i}" / "data")]
            if i == 0:
                flags += [f"--cals={members}"]
            else:
                flags += ["-a", net.listen(0)]
            self.nodes.append(Node(i, net, root, flags))

    # -- views -------------------------------------------------------------------

    def started(self) -> list[Node]:
        """Every node the run has started (alive or not): clients spread over these."""
        return [n for n in self.nodes if n.starts]

    def targets(self) -> list[tuple[int, str]]:
        return [(n.idx, n.addr) for n in self.started()]

    def up(self) -> list[Node]:
        """Running and not paused."""
        return [n for n in self.nodes if n.running() and not n.paused]

    async def selves(self) -> dict[int, dict]:
        nodes = self.up()
        answers = await asyncio.gather(*(try_request(n.addr, {"verb": "SELF"}, 1.0) for n in nodes))
        out = {n.idx: a for n, a in zip(nodes, answers, strict=True) if "role" in a}
        for idx, a in out.items():
            if isinstance(a.get("value"), str):
                self.names[a["value"]] = f"n{idx}"
        return out

    def name(self, node_id: str) -> str:
        return self.names.get(node_id, node_id[:8]) if node_id else "empty"

    async def member_names(self) -> list[str]:
        """Names of the nodes that say they are members (or the leader)."""
        selves = await self.selves()
        return sorted(f"n{i}" for i, s in selves.items() if s.get("role") in ("leader", "member"))

    async def views(self) -> str:
        """Each live node's own view (role, leader, applied rev), for a failure
        report: which node disagrees, and whether it is behind."""
        out = []
        for n in self.up():
            me = await try_request(n.addr, {"verb": "SELF"}, 1.0)
            rev = await try_request(n.addr, {"verb": "REV", "stale": True}, 1.0)
            out.append(
                f"{n.name} {me.get('role', me.get('err_code'))}"
                f" leader={self.name(me.get('leader', ''))} rev={rev.get('rev', '?')}"
            )
        return "; ".join(out)

    async def leader(self) -> Node | None:
        for idx, s in (await self.selves()).items():
            if s.get("role") == "leader":
                return self.nodes[idx]
        return None

    async def slots(self) -> dict[str, str] | None:
        """/ctl/cal/* as {slot: node id}, read linearizably from any node that answers."""
        for n in self.up():
            r = await try_request(n.addr, {"verb": "WALK", "path": "/ctl/cal/*", "timeout": 2}, 4)
            if "files" in r:
                return {f["path"].rsplit("/", 1)[1]: f["value"] for f in r["files"]}
        return None

    # -- start-up ------------------------------------------------------------------

    async def wait_listening(self, node: Node, deadline: float = 30.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if not node.running():
                raise ClusterError(f"{node.name} exited at start-up:\n{node.log_tail()}")
            r = await try_request(node.addr, {"verb": "SELF"}, 1.0)
            if "role" in r:
                return
            await asyncio.sleep(0.1)
        raise ClusterError(f"{node.name} did not answer within {deadline}s:\n{node.log_tail()}")

    async def start(self, with_spares: bool, deadline: float = 60.0) -> None:
        """The members first (node 0 creates the cluster, the others claim its slots),
        then the spares, which find no empty slot and follow."""
        first = self.nodes[0]
        first.start()
        await self.wait_listening(first)
        base = self.nodes[1 : self.members]
        for n in base:
            n.start()
        for n in base:
            await self.wait_listening(n)
        await self._formed(deadline, all_members=True)
        if with_spares:
            spares = self.nodes[self.members :]
            for n in spares:
                n.start()
            for n in spares:
                await self.wait_listening(n)
            await self._formed(deadline, all_members=False)
        # writable, and every node serves a linearizable read
        if await self.wait_writable(deadline) is None:
            raise ClusterError(f"the new cluster took no write within {deadline}s")
        for n in self.started():
            await self.wait_readable(n, deadline)

    async def _formed(self, deadline: float, all_members: bool) -> None:
        """Every started node answers and names the same leader; the first `members`
        nodes are members (all_members) or at least `members` nodes are."""
        end = time.monotonic() + deadline
        while True:
            selves = await self.selves()
            roles = {i: s.get("role") for i, s in selves.items()}
            leaders = {s.get("leader") for s in selves.values()}
            if all_members:
                full = all(roles.get(i) in ("leader", "member") for i in range(self.members))
            else:
                full = sum(r in ("leader", "member") for r in roles.values()) >= self.members
            if full and len(selves) == len(self.started()) and len(leaders) == 1 and all(leaders):
                return
            if time.monotonic() > end:
                raise ClusterError(f"cluster did not form within {deadline}s: {selves}")
            # A claimed slot takes effect some log instances later; an idle new cluster
            # may never get there (the known lag): a write moves the log along.
            if time.monotonic() > end - deadline + 2.0:
                up = self.up()
                if up and await self.write_probe(up[0]):
                    self.nudges += 1
            await asyncio.sleep(0.2)

    async def restart(self, node: Node) -> None:
        if node.running():
            node.kill()
        node.start()

    # -- probes --------------------------------------------------------------------

    async def write_probe(self, node: Node, timeout: float = 1.0) -> bool:
        r = await try_request(
            node.addr,
            {"verb": "SET", "path": "/probe/w", "value": "x", "timeout": timeout},
            timeout + 1,
        )
        return "rev" in r and "err_code" not in r

    async def wait_writable(self, deadline: float) -> float | None:
        """Seconds until some node acknowledged a write, or None past the deadline."""
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < deadline:
            up = self.up()
            if up:
                i += 1
                if await self.write_probe(up[i % len(up)]):
                    return time.monotonic() - t0
            await asyncio.sleep(0.05)
        return None

    async def wait_readable(self, node: Node, deadline: float) -> None:
        end = time.monotonic() + deadline
        last: dict = {}
        while time.monotonic() < end:
            last = await try_request(node.addr, {"verb": "REV", "timeout": 1}, 2)
            if "rev" in last:
                return
            # a fresh cluster's reads may wait on log instances passing: make some
            if await self.write_probe(node):
                self.nudges += 1
            await asyncio.sleep(0.1)
        raise ClusterError(f"{node.name} never served a linearizable read: {last}")

    def mount_disks(self) -> None:
        """Each node's data dir on a small file system of its own (for the
        disk-full nemesis), before any node starts."""
        for n in self.nodes:
            disk = LoopDisk(n.datadir, n.dir / "data.img")
            self.disks[n.idx] = disk
            disk.setup()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        for disk in self.disks.values():
            disk.teardown()
