"""Where the nodes live and how their links are cut.

`NetnsNetwork` (root, `ip`, `nft`): each node in its own network namespace
on a veth whose other end sits on a bridge in a "switch" namespace, at
127.100.0.<i+1>:8046; the runner itself moves into a client namespace on the
same bridge (127.100.0.250). Faults are bridge-family nftables rules in the
switch namespace, by address pair, so client traffic is never cut: any
directed set of node pairs can be dropped, or made lossy.

`ProxyNetwork` (no privileges): nodes on 127.0.0.1, each advertising a
`tests.faultproxy.FaultProxy` run in the runner's loop, so peers reach a
node only through its proxy. Peer links are one per direction and the
dialer alone writes, so blocking a node's proxy makes it deaf to every
peer; that is the only cut it can make. It adds delay, which netns here
cannot (no netem).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
from typing import ClassVar

from tests.faultproxy import FaultProxy
from tests.nodeproc import free_port

CLONE_NEWNET = 0x40000000
PORT = 8046
CLIENT_HOST = 250


class NetworkError(RuntimeError):
    pass


def _run(*argv: str, stdin: str | None = None, check: bool = True) -> str:
    p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {p.stderr.strip() or p.returncode}")
    return p.stdout


def netns_usable() -> str | None:
    """None if namespaces + nftables can be used here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


class Network:
    kind = "?"
    # which cuts this network can make: "pairs" (any directed node pairs),
    # "deafen" (every link into one node), "loss", "delay"
    can: ClassVar[frozenset[str]] = frozenset()

    def setup(self, slots: int) -> None: ...
    async def start(self) -> None: ...
    def listen(self, i: int) -> str:
        raise NotImplementedError

    def advertise(self, i: int) -> str:
        return self.listen(i)

    def command(self, i: int, argv: list[str]) -> list[str]:
        return argv

    async def cut(self, drops: set[tuple[int, int]], loss: int = 0, delay: float = 0.0) -> None:
        """Apply exactly this fault set (replacing the previous one): packets from
        node a to node b dropped for each (a, b) in drops; `loss` percent of all
        node-to-node packets dropped; `delay` seconds added to every peer link."""
        raise NotImplementedError

    async def heal(self) -> None:
        await self.cut(set())

    async def close(self) -> None: ...
    def teardown(self) -> None: ...


class NetnsNetwork(Network):
    kind = "netns"
    can = frozenset({"pairs", "deafen", "loss"})

    def __init__(self) -> None:
        self.prefix = f"dzj{os.getpid()}"
        self.switch = f"{self.prefix}s"
        self.client = f"{self.prefix}c"
        self.slots = 0
        self.made: list[str] = []

    def ns(self, i: int) -> str:
        return f"{self.prefix}n{i}"

    def host(self, i: int) -> str:
        return f"127.100.0.{i + 1}"

    def listen(self, i: int) -> str:
        return f"{self.host(i)}:{PORT}"

    def command(self, i: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i), *argv]

    @staticmethod
    def sweep_stale() -> None:
        """Remove namespaces (and the nodes still in them) left by runs whose runner
        process is gone, say killed by a test's timeout."""
        for line in _run("ip", "netns", "list", check=False).splitlines():
            name = line.split()[0] if line.split() else ""
            if not name.startswith("dzj"):
                continue
            digits = name[3:].rstrip("sc").split("n")[0]
            if digits.isdigit() and not os.path.exists(f"/proc/{digits}"):
                for pid in _run("ip", "netns", "pids", name, check=False).split():
                    with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                        os.killpg(int(pid), signal.SIGKILL)
                _run("ip", "netns", "del", name, check=False)

    def setup(self, slots: int) -> None:
        self.sweep_stale()
        self.slots = slots
        try:
            self._add_ns(self.switch)
            self._in(self.switch, "ip", "link", "add", "br0", "type", "bridge")
            self._in(self.switch, "ip", "link", "set", "br0", "up")
            for i in range(slots):
                self._attach(self.ns(i), f"p{i}", self.host(i))
            self._attach(self.client, "pc", f"127.100.0.{CLIENT_HOST}")
        except BaseException:
            self.teardown()
            raise

    def _add_ns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.made.append(name)

    def _in(self, ns: str, *argv: str, stdin: str | None = None) -> str:
        return _run("ip", "netns", "exec", ns, *argv, stdin=stdin)

    def _attach(self, ns: str, port: str, host: str) -> None:
        # lo stays down: with it up, 127.0.0.0/8 would be delivered locally
        self._add_ns(ns)
        _run("ip", "link", "add", "e0", "netns", ns, "type", "veth", "peer", "name", port,
             "netns", self.switch)  # fmt: skip
        sysctls = [f"net.ipv4.conf.{d}.route_localnet=1" for d in ("all", "default", "e0")]
        self._in(ns, "sysctl", "-q", "-w", *sysctls)
        self._in(ns, "ip", "addr", "add", f"{host}/24", "dev", "e0")
        self._in(ns, "ip", "link", "set", "e0", "up")
        self._in(self.switch, "ip", "link", "set", port, "master", "br0")
        self._in(self.switch, "ip", "link", "set", port, "up")

    async def start(self) -> None:
        """Move this thread (the runner's only one so far) into the client namespace:
        every socket it opens from now on reaches the nodes through the bridge."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.client}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise NetworkError(f"setns: errno {ctypes.get_errno()}")
        finally:
            os.close(fd)

    async def cut(self, drops: set[tuple[int, int]], loss: int = 0, delay: float = 0.0) -> None:
        if delay:
            raise NetworkError("netns cannot delay (no netem here): use --net proxy")
        rules = [f"ip saddr {self.host(a)} ip daddr {self.host(b)} drop" for a, b in sorted(drops)]
        if loss:
            nodes = "{ " + ", ".join(self.host(i) for i in range(self.slots)) + " }"
            rules.append(
                f"ip saddr {nodes} ip daddr {nodes} numgen random mod 100 < {int(loss)} drop"
            )
        # one transaction: create-if-missing, delete, recreate with the new rules
        body = "\n".join(f"    {r}" for r in rules)
        script = (
            "table bridge jepsen\ndelete table bridge jepsen\n"
            "table bridge jepsen {\n  chain filt {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f"{body}\n  }}\n}}\n"
        )
        await asyncio.to_thread(self._in, self.switch, "nft", "-f", "-", stdin=script)

    def teardown(self) -> None:
        for name in reversed(self.made):
            _run("ip", "netns", "del", name, check=False)
        self.made.clear()


class ProxyNetwork(Network):
    kind = "proxy"
    can = frozenset({"deafen", "delay"})

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.proxies: list[FaultProxy] = []

    def setup(self, slots: int) -> None:
        self.ports = [free_port() for _ in range(slots)]
        self.proxies = [
            FaultProxy(f"127.0.0.1:{p}", f"127.0.0.1:{free_port()}") for p in self.ports
        ]

    async def start(self) -> None:
        for p in self.proxies:
            await p.start()

    def listen(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    def advertise(self, i: int) -> str:
        return self.proxies[i].addr or self.proxies[i].listen

    async def cut(self, drops: set[tuple[int, int]], loss: int = 0, delay: float = 0.0) -> None:
        if loss:
            raise NetworkError("the proxy cannot drop single packets: use --net netns")
        n = len(self.proxies)
        deaf = set()
        for b in range(n):
            into = {(a, b) for a in range(n) if a != b}
            if into <= drops:
                deaf.add(b)
                drops = drops - into
        if drops:
            raise NetworkError(f"the proxy can only deafen a node, not cut {sorted(drops)}")
        for i, p in enumerate(self.proxies):
            if i in deaf:
                p.block("drop")
            else:
                p.unblock()
            p.set_delay(delay)

    async def close(self) -> None:
        for p in self.proxies:
            with contextlib.suppress(Exception):
                await p.close()


def make_network(kind: str) -> Network:
    """kind: netns | proxy | auto (netns when usable)."""
    if kind == "auto":
        kind = "proxy" if netns_usable() else "netns"
    if kind == "netns":
        why = netns_usable()
        if why:
            raise NetworkError(f"netns network unavailable: {why}")
        return NetnsNetwork()
    if kind == "proxy":
        return ProxyNetwork()
    raise ValueError(f"unknown network {kind!r}")
