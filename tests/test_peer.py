"""PeerHub over real loopback sockets, with a stand-in for the node server's accept logic."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
import pytest
import uvloop

from doozer.peer import PeerHub

try:
    from tests.faultproxy import FaultProxy
except ImportError:  # tests/ is not a package: pytest put it on sys.path itself
    from faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(60)

CLUSTER = "local"
CLUSTER_ID = "cid-1"
SECRET = "s3cret"


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return uvloop.run(bounded())


async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for cond() with a deadline (polling, bounded in count and time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for _ in range(100_000):
        if cond():
            return
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


class _FirstLine(asyncio.Protocol):
    """What the node server does with a new connection, reduced to peers."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.node.transports.add(self.transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        i = self.buf.find(b"\n")
        if i < 0:
            if len(self.buf) > 65536:
                self.transport.abort()
            return
        try:
            hello = orjson.loads(self.buf[:i])
        except orjson.JSONDecodeError:
            hello = None
        if not (isinstance(hello, dict) and hello.get("peer") == 1):
            self.transport.write(b'{"err_code":"BAD_REQUEST"}\n')
            self.transport.close()
            return
        assert self.node.hub is not None
        proto = self.node.hub.accept_inbound(self.transport, hello, bytes(self.buf[i + 1 :]))
        if proto is not None:
            self.transport.set_protocol(proto)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.node.transports.discard(self.transport)


class Node:
    """A PeerHub plus a listening socket, recording what it sees."""

    def __init__(self, node_id: str, **hub_args: Any) -> None:
        self.id = node_id
        self.hub_args = hub_args
        self.hub: PeerHub | None = None
        self.server: asyncio.Server | None = None
        self.addr = ""
        self.inbox: list[tuple[str, dict[str, Any]]] = []
        self.ups: list[str] = []
        self.downs: list[str] = []
        self.logs: list[str] = []
        self.transports: set[asyncio.Transport] = set()

    async def start(self, port: int = 0) -> Node:
        args: dict[str, Any] = {
            "secret": SECRET,
            "rng": random.Random(7),
            "backoff_max": 0.2,
            **self.hub_args,
        }
        self.hub = PeerHub(
            self.id,
            args.pop("cluster_name", CLUSTER),
            args.pop("cluster_id", CLUSTER_ID),
            on_message=lambda sender, msg: self.inbox.append((sender, msg)),
            on_peer_up=self.ups.append,
            on_peer_down=self.downs.append,
            log=self.logs.append,
            **args,
        )
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _FirstLine(self), "127.0.0.1", port)
        self.addr = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    def stats(self, peer: str) -> dict[str, Any]:
        assert self.hub is not None
        return self.hub.stats().get(peer, {})

    def got(self, sender: str) -> list[dict[str, Any]]:
        return [m for s, m in self.inbox if s == sender]

    async def stop(self) -> None:
        assert self.hub is not None and self.server is not None
        self.hub.close()
        self.server.close()
        for t in list(self.transports):
            t.abort()
        await self.hub.wait_closed()
        await self.server.wait_closed()


async def mesh(*nodes: Node) -> None:
    addrs = {n.id: n.addr for n in nodes}
    for n in nodes:
        assert n.hub is not None
        n.hub.set_peers(addrs)
    for n in nodes:
        for m in nodes:
            if m is not n:
                await until(lambda n=n, m=m: n.hub.is_up(m.id), f"{n.id}->{m.id} up")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_messages_flow_among_three_nodes_in_order() -> None:
    async def main() -> None:
        nodes = [await Node(x).start() for x in "ABC"]
        try:
            await mesh(*nodes)
            for i in range(300):
                for n in nodes:
                    for m in nodes:
                        if m is not n:
                            assert n.hub is not None
                            n.hub.send(m.id, {"i": i, "from": n.id, "to": m.id})
            for n in nodes:
                await until(lambda n=n: len(n.inbox) == 600, f"600 messages at {n.id}")
                for m in nodes:
                    if m is not n:
                        got = n.got(m.id)
                        assert [x["i"] for x in got] == list(range(300))
                        assert all(x["from"] == m.id and x["to"] == n.id for x in got)
                        assert n.stats(m.id)["sent"] == 300
                        assert n.stats(m.id)["received"] == 300
                        assert n.stats(m.id)["dropped"] == 0
            assert sorted(nodes[0].ups) == ["B", "C"]
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def test_broadcast_reaches_every_peer_but_the_excluded() -> None:
    async def main() -> None:
        nodes = [await Node(x).start() for x in "ABC"]
        a, b, c = nodes
        try:
            await mesh(*nodes)
            assert a.hub is not None
            a.hub.broadcast({"k": 1})
            a.hub.broadcast({"k": 2}, exclude=("B",))
            await until(lambda: len(c.inbox) == 2, "both at C")
            await until(lambda: len(b.inbox) == 1, "one at B")
            assert b.inbox == [("A", {"k": 1})]
        finally:
            for n in nodes:
                await n.stop()

    run(main())


def _hello(**change: Any) -> dict[str, Any]:
    h: dict[str, Any] = {
        "peer": 1,
        "proto": 1,
        "cluster": CLUSTER,
        "cluster_id": CLUSTER_ID,
        "node": "R",
        "addr": "",
        "secret": SECRET,
    }
    for k, v in change.items():
        if v is _DELETE:
            del h[k]
        else:
            h[k] = v
    return h


_DELETE = object()


async def raw_hello(addr: str, hello: dict[str, Any]) -> tuple[dict[str, Any], bytes, Any]:
    """Dial, send a hello; return (answer, what followed until EOF or b'' if open, writer)."""
    host, port = addr.rsplit(":", 1)
    r, w = await asyncio.open_connection(host, int(port))
    w.write(orjson.dumps(hello) + b"\n")
    async with asyncio.timeout(10):
        answer = orjson.loads(await r.readline())
    return answer, r, w


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"cluster_id": "cid-other"}, "PERMISSION"),
        ({"cluster_id": ""}, "PERMISSION"),
        ({"cluster": "elsewhere"}, "PERMISSION"),
        ({"secret": "wrong"}, "PERMISSION"),
        ({"secret": _DELETE}, "PERMISSION"),
        ({"secret": 5}, "PERMISSION"),
        ({"proto": 2}, "PERMISSION"),
        ({"proto": _DELETE}, "PERMISSION"),
        ({"node": "B"}, "PERMISSION"),  # the receiver's own id
        ({"to": "D"}, "PERMISSION"),  # meant for another node
        ({"node": _DELETE}, "BAD_REQUEST"),
        ({"node": ""}, "BAD_REQUEST"),
    ],
)
def test_bad_hello_is_refused_with_an_error_line_and_closed(
    change: dict[str, Any], code: str
) -> None:
    async def main() -> None:
        b = await Node("B").start()
        try:
            answer, r, w = await raw_hello(b.addr, _hello(**change))
            assert answer["err_code"] == code
            assert answer["err_detail"]
            async with asyncio.timeout(10):
                assert await r.read() == b""  # closed
            w.close()
            assert b.hub is not None
            assert set(b.hub.stats()) == {""}  # nothing known about the dialer
            assert len([x for x in b.logs if "refused" in x]) == 1
        finally:
            await b.stop()

    run(main())


def test_a_hello_meant_for_another_node_leaves_the_live_link_alone() -> None:
    """A node wiped and restarted at its old address comes back with a new id.
    Peers that still dialed the old id there used to have their hello taken
    as a fresh link of theirs, which closed their live one: the leader's link
    to that member went down every redial (every ~2 s, for good)."""

    async def main() -> None:
        b = await Node("B").start()
        try:
            answer, _r, w = await raw_hello(b.addr, _hello(to="B"))
            assert answer["node"] == "B"
            stale, _r2, w2 = await raw_hello(b.addr, _hello(to="old-id"))
            assert stale["err_code"] == "PERMISSION" and "old-id" in stale["err_detail"]
            w2.close()
            w.write(b'{"still":1}\n')
            await until(lambda: b.inbox == [("R", {"still": 1})], "the live link still carries")
            w.close()
        finally:
            await b.stop()

    run(main())


def test_good_hello_is_answered_and_messages_after_it_in_the_same_packet_count() -> None:
    async def main() -> None:
        b = await Node("B").start()
        try:
            host, port = b.addr.rsplit(":", 1)
            r, w = await asyncio.open_connection(host, int(port))
            w.write(orjson.dumps(_hello()) + b'\n{"x":1}\r\n\n{"x":2}\n')
            async with asyncio.timeout(10):
                answer = orjson.loads(await r.readline())
            assert answer == {"peer": 1, "proto": 1, "cluster_id": CLUSTER_ID, "node": "B"}
            await until(lambda: len(b.inbox) == 2, "both messages")
            assert b.inbox == [("R", {"x": 1}), ("R", {"x": 2})]
            w.close()
        finally:
            await b.stop()

    run(main())


@pytest.mark.parametrize(
    "hub_args",
    [{"cluster_id": "cid-other"}, {"secret": "wrong"}, {"cluster_name": "elsewhere"}],
)
def test_hub_of_another_cluster_never_exchanges_messages(hub_args: dict[str, Any]) -> None:
    async def main() -> None:
        b = await Node("B").start()
        x = await Node("X", **hub_args).start()
        try:
            assert x.hub is not None and b.hub is not None
            x.hub.set_peers({"B": b.addr})
            b.hub.set_peers({"X": x.addr})
            for i in range(3):
                x.hub.send("B", {"i": i})
            await until(lambda: x.stats("B")["attempts"] >= 3, "X retries")
            await until(lambda: b.stats("X")["attempts"] >= 3, "B retries")
            assert "PERMISSION" in x.stats("B")["last_error"]
            assert "PERMISSION" in b.stats("X")["last_error"]
            assert b.inbox == [] and x.inbox == []
            assert not x.hub.is_up("B") and not b.hub.is_up("X")
            assert x.ups == [] and b.ups == []
            # One log line each way, not one per retry.
            assert len([m for m in x.logs if "refused" in m]) == 1, x.logs
            assert len([m for m in b.logs if "refused peer link from X" in m]) == 1, b.logs
        finally:
            await x.stop()
            await b.stop()

    run(main())


def test_address_of_another_node_is_not_taken_for_the_peer() -> None:
    async def main() -> None:
        a = await Node("A").start()
        b = await Node("B").start()
        try:
            assert a.hub is not None
            # a stale address book: B lives where Z was (Z wiped and back as B)
            a.hub.set_peers({"Z": b.addr, "B": b.addr})
            await until(lambda: a.hub.is_up("B"), "the link to B")
            a.hub.send("Z", {"hi": 1})
            await until(lambda: a.stats("Z")["attempts"] >= 3, "retries")
            assert "this is node 'B', not 'Z'" in a.stats("Z")["last_error"]
            assert not a.hub.is_up("Z")
            assert b.got("A") == []  # the hello went through, the message did not
            # and the dials meant for Z never cut the live link to B
            assert a.stats("B")["connects"] == 1
            a.hub.send("B", {"hi": 2})
            await until(lambda: b.got("A") == [{"hi": 2}], "B still reached")
        finally:
            await a.stop()
            await b.stop()

    run(main())


def test_dead_and_stalled_peers_do_not_block_a_live_one() -> None:
    async def main() -> None:
        budget = 256 * 1024
        a = await Node("A", queue_bytes=budget, handshake_timeout=0.5).start()
        b = await Node("B").start()
        c = await Node("C").start()
        # D1: nothing listens. D2: listens but never answers the hello.
        d1 = f"127.0.0.1:{free_port()}"
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        d2 = f"127.0.0.1:{silent.getsockname()[1]}"
        proxy = FaultProxy(c.addr)
        await proxy.start()
        try:
            assert a.hub is not None
            a.hub.set_peers({"B": b.addr, "C": proxy.addr, "D1": d1, "D2": d2})
            await until(lambda: a.hub.is_up("B") and a.hub.is_up("C"), "B and C up")
            proxy.block("hold")  # C stalls: TCP backpressure all the way to A
            big = {"pad": "x" * 65000}
            sent_small = 0
            for i in range(2000):  # at most ~128 MiB offered to C
                a.hub.send("B", {"i": i})
                sent_small += 1
                for peer in ("C", "D1", "D2"):
                    a.hub.send(peer, {"i": i, **big})
                assert a.stats("C")["queued_bytes"] <= budget
                assert a.stats("D2")["queued_bytes"] <= budget
                if a.stats("C")["dropped"] > 0 and i % 10 == 0:
                    break
                if i % 10 == 0:
                    await asyncio.sleep(0)  # let the loop write
            assert a.stats("C")["dropped"] > 0, "C's queue never overflowed"
            await until(lambda: len(b.inbox) == sent_small, "every message at B")
            assert [m["i"] for _, m in b.inbox] == list(range(sent_small))
            assert a.stats("B")["dropped"] == 0
            assert a.hub.is_up("C")  # stalled, not down
            assert not a.hub.is_up("D1") and not a.hub.is_up("D2")
            assert a.stats("D1")["dropped"] > 0

            # Once C drains, it gets what was not dropped, in order, then new messages.
            proxy.unblock()
            a.hub.send("C", {"i": "last"})
            await until(lambda: c.got("A")[-1:] == [{"i": "last"}], "C catches up", 30)
            seen = [m["i"] for m in c.got("A")[:-1]]
            assert seen == sorted(seen) and len(seen) < sent_small
        finally:
            silent.close()
            await proxy.close()
            for n in (a, b, c):
                await n.stop()

    run(main())


def test_queue_is_bounded_while_a_peer_is_unreachable() -> None:
    async def main() -> None:
        a = await Node("A", queue_bytes=64 * 1024).start()
        try:
            assert a.hub is not None
            a.hub.set_peers({"D": f"127.0.0.1:{free_port()}"})
            for i in range(100):
                a.hub.send("D", {"i": i, "pad": "y" * 10_000})
                assert a.stats("D")["queued_bytes"] <= 64 * 1024
            assert a.stats("D")["dropped"] >= 94
            await until(lambda: a.stats("D")["attempts"] >= 3, "retries")
            assert a.stats("D")["queued_bytes"] == 0  # a failed attempt discards stale messages
            assert a.stats("D")["dropped"] == 100
            assert a.stats("D")["sent"] == 0
            assert len([m for m in a.logs if "peer D" in m]) == 1, a.logs
        finally:
            await a.stop()

    run(main())


def test_reconnects_after_the_peer_restarts() -> None:
    async def main() -> None:
        a = await Node("A").start()
        b = await Node("B").start()
        try:
            await mesh(a, b)
            assert a.hub is not None
            a.hub.send("B", {"n": 1})
            await until(lambda: b.got("A") == [{"n": 1}], "first message")
            port = b.port
            await b.stop()
            await until(lambda: a.downs == ["B"], "A notices B is down")
            a.hub.send("B", {"n": "lost"})  # never raises
            attempts = a.stats("B")["attempts"]
            await until(lambda: a.stats("B")["attempts"] >= attempts + 3, "A retries")
            assert len([m for m in a.logs if "peer B down" in m]) == 1, a.logs

            b = await Node("B").start(port)
            b.hub.set_peers({"A": a.addr})
            await until(lambda: a.hub.is_up("B") and b.hub.is_up("A"), "both links up again")
            assert a.ups == ["B", "B"]
            a.hub.send("B", {"n": 2})
            b.hub.send("A", {"n": 3})
            await until(lambda: b.got("A") == [{"n": 2}], "A to new B")
            await until(lambda: a.got("B") == [{"n": 3}], "new B to A")
            assert len([m for m in a.logs if "peer B up" in m]) == 2, a.logs
        finally:
            await a.stop()
            await b.stop()

    run(main())


def test_a_bug_while_dialing_is_logged_and_the_link_dials_again() -> None:
    async def main() -> None:
        a = await Node("A").start()
        b = await Node("B").start()
        try:
            assert a.hub is not None
            real = a.hub._connect_once
            fails = 0

            async def flaky(link: Any) -> bool:
                nonlocal fails
                if fails < 2:
                    fails += 1
                    raise RuntimeError("a bug")
                return await real(link)

            a.hub._connect_once = flaky  # type: ignore[method-assign]
            await mesh(a, b)
            a.hub.send("B", {"n": 1})
            await until(lambda: b.got("A") == [{"n": 1}], "message after two failed dials")
            assert fails == 2
            assert len([m for m in a.logs if "RuntimeError: a bug" in m]) == 2, a.logs
        finally:
            await a.stop()
            await b.stop()

    run(main())


def test_partition_through_a_proxy_loses_messages_then_heals() -> None:
    async def main() -> None:
        a = await Node("A").start()
        b = await Node("B").start()
        p_ab = FaultProxy(b.addr)
        await p_ab.start()
        try:
            assert a.hub is not None
            a.hub.set_peers({"B": p_ab.addr})
            await until(lambda: a.hub.is_up("B"), "A->B up through the proxy")
            a.hub.send("B", {"n": 1})
            await until(lambda: b.got("A") == [{"n": 1}], "before the partition")
            p_ab.block()
            a.hub.send("B", {"n": "lost"})
            await until(lambda: p_ab.dropped_bytes["forward"] > 0, "bytes dropped")
            assert a.hub.is_up("B")  # no RST: A cannot tell yet
            p_ab.unblock()
            await until(lambda: a.stats("B")["connects"] == 2, "A redials after the reset")
            a.hub.send("B", {"n": 2})
            await until(lambda: len(b.got("A")) == 2, "after the partition")
            assert b.got("A") == [{"n": 1}, {"n": 2}]
        finally:
            await p_ab.close()
            await a.stop()
            await b.stop()

    run(main())


def test_oversized_inbound_line_closes_the_link() -> None:
    async def main() -> None:
        b = await Node("B", max_message=1000).start()
        try:
            answer, r, w = await raw_hello(b.addr, _hello())
            assert answer["node"] == "B"
            w.write(b'{"ok":1}\n' + b'{"pad":"' + b"z" * 1000 + b'"}\n' + b'{"after":1}\n')
            async with asyncio.timeout(10):
                with contextlib.suppress(ConnectionError):
                    assert await r.read() == b""
            assert b.inbox == [("R", {"ok": 1})]
            assert any("over the 1000 byte limit" in m for m in b.logs), b.logs
            w.close()
            # A line that never ends is cut as soon as it is over the limit.
            answer, r, w = await raw_hello(b.addr, _hello())
            w.write(b"z" * 5000)
            async with asyncio.timeout(10):
                with contextlib.suppress(ConnectionError):
                    assert await r.read() == b""
            w.close()
            # So is a line that is not a JSON object.
            answer, r, w = await raw_hello(b.addr, _hello())
            w.write(b"[1,2]\n")
            async with asyncio.timeout(10):
                with contextlib.suppress(ConnectionError):
                    assert await r.read() == b""
            w.close()
            assert b.inbox == [("R", {"ok": 1})]
        finally:
            await b.stop()

    run(main())


def test_oversized_outbound_message_is_dropped_and_logged() -> None:
    async def main() -> None:
        a = await Node("A", max_message=1000).start()
        b = await Node("B").start()
        try:
            await mesh(a, b)
            assert a.hub is not None
            a.hub.send("B", {"pad": "q" * 1000})
            a.hub.send("B", {"small": 1})
            await until(lambda: len(b.inbox) == 1, "the small one")
            assert b.inbox == [("A", {"small": 1})]
            assert a.stats("B")["dropped"] == 1
            assert any("dropped: over the 1000 byte limit" in m for m in a.logs), a.logs
        finally:
            await a.stop()
            await b.stop()

    run(main())


def test_set_peers_removes_and_redials_and_unknown_sends_are_counted() -> None:
    async def main() -> None:
        a = await Node("A").start()
        b = await Node("B").start()
        c = await Node("C").start()
        try:
            await mesh(a, b)
            assert a.hub is not None
            a.hub.set_peers({"A": a.addr})  # only itself: B goes
            assert not a.hub.is_up("B") and a.downs == ["B"]
            assert a.hub.peers() == {}
            a.hub.send("B", {"x": 1})
            assert a.hub.stats()[""]["unknown_dropped"] == 1
            a.hub.set_peers({"C": c.addr})
            await until(lambda: a.hub.is_up("C"), "C up")
            a.hub.send("C", {"x": 2})
            await until(lambda: c.inbox == [("A", {"x": 2})], "message at C")
            with pytest.raises(ValueError):
                a.hub.set_peers({"C": c.addr, "E": "no-port"})
        finally:
            for n in (a, b, c):
                await n.stop()

    run(main())


def test_failing_on_message_does_not_break_the_link() -> None:
    async def main() -> None:
        a = await Node("A").start()
        b = await Node("B").start()
        try:
            await mesh(a, b)
            assert b.hub is not None and a.hub is not None
            seen: list[dict[str, Any]] = []

            def fussy(sender: str, msg: dict[str, Any]) -> None:
                seen.append(msg)
                if msg.get("boom"):
                    raise RuntimeError("consensus bug")

            b.hub._on_message = fussy
            a.hub.send("B", {"boom": 1})
            a.hub.send("B", {"fine": 1})
            await until(lambda: len(seen) == 2, "both delivered")
            assert a.hub.is_up("B")
            assert any("consensus bug" in m for m in b.logs)
        finally:
            await a.stop()
            await b.stop()

    run(main())


def test_close_while_dialing_is_clean_and_send_after_close_is_harmless() -> None:
    async def main() -> None:
        a = await Node("A", handshake_timeout=5.0).start()
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        try:
            assert a.hub is not None
            a.hub.set_peers({"S": f"127.0.0.1:{silent.getsockname()[1]}"})
            await until(lambda: a.stats("S")["attempts"] == 1, "dialing")
            a.hub.close()
            await a.hub.wait_closed()
            a.hub.send("S", {"x": 1})
            a.hub.set_peers({"S": "127.0.0.1:1"})
            assert a.hub.peers() == {}
            answer, _r, w = await raw_hello(a.addr, _hello(node="R"))
            assert answer["err_code"] == "OTHER"
            w.close()
        finally:
            silent.close()
            await a.stop()

    run(main())


def test_hub_requires_a_cluster_id() -> None:
    with pytest.raises(ValueError):
        PeerHub("A", CLUSTER, "", secret=None, on_message=lambda s, m: None)


def test_peer_sockets_bound_the_retransmission_timeout() -> None:
    """A lossy spell must not leave a link silent behind a grown RTO, nor wait
    the default 200 ms for each first retry (Linux >= 6.15)."""
    from doozer import peer

    probe = socket.socket()
    try:
        probe.setsockopt(socket.IPPROTO_TCP, peer._TCP_RTO_MAX_MS, 1000)
    except OSError:
        pytest.skip("this kernel has no TCP_RTO_MAX_MS")
    finally:
        probe.close()

    async def main() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        t, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        try:
            peer._tune_socket(t, 10.0)
            sock = t.get_extra_info("socket")
            return (
                sock.getsockopt(socket.IPPROTO_TCP, peer._TCP_RTO_MAX_MS),
                sock.getsockopt(socket.IPPROTO_TCP, peer._TCP_RTO_MIN_US),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            )
        finally:
            t.close()
            srv.close()

    rto_max, rto_min, user_timeout = run(main())
    assert (rto_max, user_timeout) == (peer._RTO_MAX_MS, 10_000)
    # the kernel rounds the floor up to whole jiffies
    assert peer._RTO_MIN_US <= rto_min <= peer._RTO_MIN_US + 10_000
