"""Multi-Paxos behind the sequencer seam: the replica driven by real time and
real peers, new clusters, joining through any live node, slot claiming,
liveness, catch-up by snapshot.

The consensus core (`doozer.consensus.Replica`) is pure; this module is the
glue that feeds it ticks and messages, sends what it says to send, and hands
decided batches to `node.apply_batch` in log order.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import random
import secrets
import socket
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from doozer import errors
from doozer.consensus import Config, DurableState, Replica
from doozer.consensus.membership import members_at, schedule_from_wire, schedule_to_wire
from doozer.consensus.messages import COMMIT, ENTRIES
from doozer.errors import DoozerError
from doozer.mutation import DEL, NOP, SET, Mutation
from doozer.node import Node
from doozer.peer import MAX_ITEM, PeerHub, join_addr
from doozer.runtime import tune_gc
from doozer.sequencer import Proposal
from doozer.stepper import Stepper
from doozer.storage import CorruptionError, DataDir, EncodedSnapshot, StorageError
from doozer.store import Event, Store, last
from doozer.version import __version__

log = logging.getLogger("doozer")

TICK = 0.01  # s between replica ticks
IDLE_TICK = 0.05  # s between them while nothing is in flight (at most a quarter heartbeat)
LAZY_MAX = 512  # decision records held back before they go to the disk on their own
INST_REVS = 4096  # applied instances whose rev a status can still name
INF_REV = 1 << 62
LAZY_AGE = 0.05  # ... or seconds they are held back
SNAP_REVS = 20_000  # snapshot the store every this many revs ...
SNAP_BYTES = 64 << 20  # ... or this many bytes of log
KEEP_DECIDED = 20_000  # decided instances kept for peers that catch up from the log
KEEP_DECIDED_BYTES = 16 << 20  # ... and their bytes; a peer further behind gets a snapshot
# A durable member compacts at its snapshots, but keeps this much before the
# snapshot point too, so a peer just behind it (a restart while we snapshot)
# fetches a few entries instead of the whole snapshot (etcd keeps 5000)
KEEP_PAST_SNAPSHOT = 5_000
KEEP_PAST_SNAPSHOT_BYTES = 2 << 20
SNAP_RETRY_MAX = 60.0  # s between tries of a snapshot that keeps failing
GRAVE_SLICE = 64  # obsolete decided batches freed per tick, at least
RETRY_AFTER = 0.5  # s without progress before undecided proposals are proposed again
JOIN_LINE_LIMIT = 1 << 30
_NEWS = frozenset({COMMIT, ENTRIES})
LATE_LOG_EVERY = 60.0  # s at least between logs of members late to vote
LATE_WARN_RATE = 1.0  # late votes a second from one member that make it a warning
INLINE_SYNC_MAX = 0.002  # s: fsyncs slower than this (smoothed) go to the disk thread
# While the data dir fails, the records it cannot take wait in memory, and
# the decided values with them (no snapshot can be saved): a member's RSS
# grew ~10 MB/s under 64 writing clients here, ~8x its unwritten log. Past
# this much unwritten log (~130 MB more RSS) the node exits, as etcd does at
# the first failure; restarted once the disk has space, it resumes from it.
DISK_PENDING_MAX = 16 << 20
# Failed syncs are tried again after this long, doubling up to the max: each
# try rewrites what is pending, and a full disk is not freed in 0.1 s.
DISK_RETRY_MIN = 0.1
DISK_RETRY_MAX = 1.0
# A log sync this slow is logged (as etcd warns of a slow fdatasync), at most
# once per SLOW_SYNC_LOG_EVERY: a leader's slow disk costs no write (the
# members outvote it), so nothing else would tell the operator.
SLOW_SYNC = 1.0
SLOW_SYNC_LOG_EVERY = 60.0


class LogMark:
    """A log position, filled in by the disk thread (see `DiskThread.mark`)."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq: int | None = None


def _no_done(err: str | None) -> None:
    pass


class DiskThread:
    """The data dir's writer. A fast disk is synced on the loop's thread
    (`sync_inline`); a slow one on this thread, so the event loop keeps
    serving (heartbeats, reads) while the disk works. Jobs run in submission
    order; all records waiting when a sync starts share it (group commit)."""

    def __init__(self, dd: DataDir, loop: asyncio.AbstractEventLoop) -> None:
        self.dd = dd
        self.loop = loop
        self._jobs: list[tuple[str, Any, Callable[[str | None], None]]] = []
        self._cv = threading.Condition()
        self._closed = False
        self._busy = False  # a job (or an inline sync) is touching the data dir
        self.sync_avg = 0.0  # smoothed seconds per append + fsync, either thread
        self._slow_n = 0  # syncs over SLOW_SYNC since the last warning
        self._slow_max = 0.0
        self._slow_said = -math.inf
        self._thread = threading.Thread(target=self._run, name="doozer-disk", daemon=True)
        self._thread.start()

    def submit(self, records: list[list], done: Callable[[str | None], None]) -> None:
        with self._cv:
            self._jobs.append(("log", records, done))
            self._cv.notify()

    def snapshot(
        self,
        snap: EncodedSnapshot,
        done: Callable[[str | None], None],
        mark: LogMark | None = None,
    ) -> None:
        """Save `snap` as covering the records submitted before `mark` (default:
        before this call)."""
        with self._cv:
            self._jobs.append(("snap", (snap, mark), done))
            self._cv.notify()

    def mark(self) -> LogMark:
        """The log position after every record submitted so far, once the
        thread has appended them: where a snapshot of the state now begins."""
        m = LogMark()
        with self._cv:
            self._jobs.append(("mark", m, _no_done))
            self._cv.notify()
        return m

    def sync_inline(self, records: list[list]) -> tuple[bool, str | None]:
        """Append and fsync on the caller's thread if the disk is fast and the
        disk thread idle (nothing queued, nothing running, so order is kept).
        The thread hand-offs and the GIL traffic they bring cost CPU: syncing
        inline on every member used ~15 % less CPU per write here. The caller
        decides when blocking is worth that (see _persist_then).
        A slow disk (a smoothed fsync over INLINE_SYNC_MAX) would stall
        heartbeats and reads, so it is left to the thread. Returns (done, error)."""
        with self._cv:
            if self._jobs or self._busy or self._closed or self.sync_avg > INLINE_SYNC_MAX:
                return False, None
            self._busy = True
        err = None
        try:
            self._write(records)
        except StorageError as e:
            err = str(e)
        finally:
            with self._cv:
                self._busy = False
                if self._jobs:
                    self._cv.notify()
        return True, err

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            with self._cv:
                while (not self._jobs or self._busy) and not self._closed:
                    self._cv.wait()
                if not self._jobs:
                    return
                while self._busy:  # closing while an inline sync runs
                    self._cv.wait()
                jobs, self._jobs = self._jobs, []
                self._busy = True
            try:
                self._do(jobs)
            finally:
                with self._cv:
                    self._busy = False

    def _do(self, jobs: list[tuple[str, Any, Callable[[str | None], None]]]) -> None:
        dd = self.dd
        i = 0
        while i < len(jobs):
            if jobs[i][0] == "mark":
                jobs[i][1].seq = dd.seq
                i += 1
                continue
            if jobs[i][0] == "snap":
                _, (snap, mark), done = jobs[i]
                err = None
                try:
                    dd.save_snapshot(snap, None if mark is None else mark.seq)
                except StorageError as e:
                    err = str(e)
                except Exception as e:  # a bug: fail the job, keep the thread
                    log.exception("saving a snapshot failed")
                    err = f"internal error: {e!r}"
                self._post([done], err)
                i += 1
                continue
            group = []
            while i < len(jobs) and jobs[i][0] == "log":
                group.append(jobs[i])
                i += 1
            err = None
            try:
                self._write([r for _, records, _ in group for r in records])
            except StorageError as e:
                err = str(e)
            except Exception as e:
                # A bug: fail these writes as a disk error would (the node
                # refuses writes and says why) rather than let the thread
                # die, which would leave every later record unwritten and
                # the node silently unable to vote.
                log.exception("writing the log failed")
                err = f"internal error: {e!r}"
            self._post([d for _, _, d in group], err)

    def _write(self, records: list[list]) -> None:
        dd = self.dd
        t = time.monotonic()
        if records:
            dd.append(records)
        if dd.pending_bytes():
            dd.sync()
            took = time.monotonic() - t
            # The average forgets within ~10 syncs, so a disk that recovers
            # goes back inline soon (the thread measures it meanwhile).
            self.sync_avg += (took - self.sync_avg) * 0.1
            if took > SLOW_SYNC:
                self._slow(took, t + took)

    def _slow(self, took: float, now: float) -> None:
        self._slow_n += 1
        self._slow_max = max(self._slow_max, took)
        if now - self._slow_said < SLOW_SYNC_LOG_EVERY:
            return
        log.warning(
            "slow disk: %d log sync(s) took over %.0f s since the last warning, the slowest %.1f s",
            self._slow_n,
            SLOW_SYNC,
            self._slow_max,
        )
        self._slow_n = 0
        self._slow_max = 0.0
        self._slow_said = now

    def _post(self, dones: list[Callable[[str | None], None]], err: str | None) -> None:
        def fire() -> None:
            for d in dones:
                d(err)

        try:
            self.loop.call_soon_threadsafe(fire)
        except RuntimeError:
            pass  # the loop is closed: we are shutting down


class ClusterSequencer:
    """Drives one `Replica` with real time and a `PeerHub`."""

    def __init__(
        self,
        *,
        node_id: str,
        cluster_name: str,
        cluster_id: str,
        secret: bytes | None,
        config: Config,
        readonly: bool = False,
        durable: DurableState | None = None,
        applied: int | None = None,
        rng: random.Random | None = None,
        datadir: DataDir | None = None,
        snap_revs: int = SNAP_REVS,
        snap_bytes: int = SNAP_BYTES,
    ) -> None:
        self.node_id = node_id
        self.datadir = datadir
        self.snap_revs = snap_revs
        self.snap_bytes = snap_bytes
        self.disk_error: str | None = None
        self._retry_armed = False  # a retry of failed syncs is armed
        self._disk_retry = DISK_RETRY_MIN  # the next retry's delay while the disk fails
        self._unsynced: list[list] = []  # pipeline entries whose sync failed
        self._held: list[list] = []  # records for the next retry while the disk fails
        # called with the reason when the node cannot go on (DISK_PENDING_MAX)
        self.on_fatal: Callable[[str], None] | None = None
        self.disk: DiskThread | None = None
        # [messages, loopback, synced]: what waits for the disk, in Ready order
        self._pipeline: deque[list] = deque()
        self._startup: list[Any] = []  # Readys drained before the loop ran
        self._lazy: list[list] = []  # decision records not yet handed to the disk
        self._lazy_since = 0.0
        self._inst_revs: list[tuple[int, int]] = []  # (instance, rev) recently applied
        self._snapshotting = False
        # After a failed snapshot (a full disk), wait before the next try:
        # each try writes the whole tree before it fails.
        self._snap_backoff = 0.0
        self._snap_retry_at = -math.inf
        self._filling = False
        self._snap_rev = 0
        # Members would all snapshot at the same revs, and so all pause
        # together (building it, then freeing what it covers): each draws its
        # own gap, within a quarter of snap_revs either way.
        self._snap_rng = random.Random(node_id)
        self._snap_gap = self._draw_snap_gap()
        # Decided values a snapshot made obsolete, freed a slice per tick:
        # freeing ~1,000 batches at once held the loop for 5-13 ms.
        self._graveyard: list[Any] = []
        self.cluster_name = cluster_name
        self.cluster_id = cluster_id
        self.secret = secret
        self.config = config
        self.readonly = readonly
        self.rng = rng or random.Random()
        self.replica = Replica(
            node_id, config=config, rng=self.rng, durable=durable, applied=applied
        )
        self._idle_tick = min(IDLE_TICK, self.replica.cfg.heartbeat_interval / 4)
        self._started_at = -math.inf  # when start() ran
        self.node: Node | None = None
        self.hub: PeerHub | None = None
        self.applied_instance = self.replica.applied
        self._loop: asyncio.AbstractEventLoop | None = None
        # The regular tick and an early one (see _arm_deadline), with when each
        # is due: uvloop hands back a plain Handle, which has no when(), for
        # a time already past.
        self._ticker: asyncio.Handle | None = None
        self._tick_at = math.inf
        self._early_tick: asyncio.Handle | None = None
        self._early_at = math.inf
        self._tick_failed_logged = -math.inf  # a failing tick is logged once in a while
        self._late_seen: dict[str, int] = {}  # late_votes as last logged
        self._late_logged = -LATE_LOG_EVERY
        self._kicked = False
        self._undecided: dict[int, Proposal] = {}
        self._last_progress = 0.0
        self._last_leader: str | None = None
        self._reads: dict[int, tuple[Callable[[str | None], None], float]] = {}
        self._read_ids = 0
        self._read_waiters: list[tuple[int, int, Callable[[str | None], None]]] = []
        self._members: frozenset[str] = frozenset()
        self._cal_dirty = True
        self._nodes_dirty = True
        self._snapshot_task: asyncio.Task | None = None
        self._snap_stepper: Stepper[list[bytes]] | None = None  # a snapshot being encoded
        self._follower_seen: dict[str, float] = {}
        self._followers_ballot: Any = None  # the leadership _follower_seen is timed under
        self._removing: set[str] = set()
        self._closed = False
        self._kept: deque[tuple[int, int]] = deque()  # (instance, bytes) still in the log
        self._kept_bytes = 0
        self._forget_upto = 0  # a durable member's snapshots may compact up to here
        # node id -> (address from its peer hello, our rev when it said so)
        self._hello_addrs: dict[str, tuple[str, int]] = {}
        self._dup_warned: dict[str, float] = {}  # node id -> when we last warned
        self.on_change: list[Callable[[], None]] = []
        # Writes out what applying queued for clients (the server's replies
        # and watch events) now, rather than in a later loop callback.
        self.flush_clients: Callable[[], None] | None = None

    # -- the Sequencer protocol ----------------------------------------------

    @property
    def reads_are_local(self) -> bool:
        # A sole member that leads has applied everything it decided: nobody
        # else can decide anything without its promise.
        r = self.replica
        return r.is_leader and self._members == {self.node_id} and self.applied_instance >= r.commit

    def start(self, node: Node) -> None:
        self.node = node
        self._loop = asyncio.get_running_loop()
        self._started_at = self._loop.time()
        if self.datadir is not None:
            self.disk = DiskThread(self.datadir, self._loop)
        node.on_event(self._on_event)
        self.hub = PeerHub(
            self.node_id,
            self.cluster_name,
            self.cluster_id,
            secret=self.secret.decode() if self.secret else None,
            on_message=self._on_message,
            addr=node.addr,
            rng=self.rng,
        )
        self._refresh_members()
        self._refresh_peers()
        self._last_progress = self._loop.time()
        for rd in self._startup:
            for to, msg in rd.early:
                self.hub.send(to, msg)
            self._release(rd.messages, rd.loopback)
            self._apply_ready(rd)
        self._startup = []
        self._tick()

    def accept_peer(self, transport: Any, hello: dict, rest: bytes) -> asyncio.Protocol | None:
        assert self.hub is not None
        nid = hello.get("node")
        # Its current inbound link alive (it spoke within the last second), as
        # opposed to left half-open by a machine that died without a word.
        live = (
            isinstance(nid, str)
            and self.hub.has_inbound(nid)
            and self._loop is not None
            and self._loop.time() - self.replica.heard.get(nid, -math.inf) < 1.0
        )
        proto = self.hub.accept_inbound(transport, hello, rest)
        if proto is not None:
            # A joiner talks to us before its /ctl/node entries exist, and a
            # member restarted at a new address before it could rewrite its
            # entry (which needs a leader it cannot hear until we dial it
            # there): answer it at the address it introduced itself with.
            nid, addr = hello.get("node"), hello.get("addr")
            fresh = isinstance(nid, str) and isinstance(addr, str) and addr
            known = self._hello_addrs.get(nid) if isinstance(nid, str) else None
            if fresh and (known is None or known[0] != addr):
                if live and known is not None:
                    # Still talking from the old address: not a restart
                    # elsewhere but two processes with one id, say a data
                    # dir copied to a second machine. They undo each other.
                    self._warn_duplicate(nid, known[0], addr)
                rev = self.node.store.rev if self.node is not None else 0
                self._hello_addrs[nid] = (addr, rev)
                if self.node is not None:
                    self._refresh_peers()
        return proto

    def hint_peer(self, nid: str, addr: str) -> None:
        """Peer `nid` is at `addr` now (an -a peer said so at our restart), as
        if it had introduced itself there in a hello."""
        if nid == self.node_id or self.node is None:
            return
        known = self._hello_addrs.get(nid)
        if known is None or known[0] != addr:
            self._hello_addrs[nid] = (addr, self.node.store.rev)
            self._refresh_peers()

    def _warn_duplicate(self, nid: str, a: str, b: str) -> None:
        now = time.monotonic()
        if now - self._dup_warned.get(nid, -math.inf) >= 60.0:
            self._dup_warned[nid] = now
            log.warning(
                "node %s is connected from %s and now also %s: two nodes with one id"
                " (a copied data dir?) break consensus; stop one",
                nid,
                a,
                b,
            )

    # A write larger than this on the wire could never reach the other members:
    # refused up front (see Node._set), or it would wedge the log for good.
    max_item = MAX_ITEM

    def propose(self, p: Proposal) -> None:
        self._undecided[p.seq] = p
        self.replica.propose([p.to_wire()], self._loop.time() if self._loop else None)
        self._kick()

    def read_barrier(self, done: Callable[[str | None], None], timeout: float) -> None:
        if self.reads_are_local:
            done(None)
            return
        assert self._loop is not None
        self._read_ids += 1
        rid = self._read_ids
        self._reads[rid] = (done, self._loop.time() + timeout)
        self.replica.read_index(f"{self.node_id}:{rid}")
        self._kick()

    def role(self) -> str:
        """A member is a node in the member set governing the next instance
        (a slot just claimed counts once the change is in force)."""
        if self.replica.is_leader:
            return "leader"
        ms = members_at(self.replica.ds.schedule, self.applied_instance + 1)
        return "member" if ms is not None and self.node_id in ms else "follower"

    def leader(self) -> str | None:
        return self.replica.leader

    def writable(self) -> str | None:
        # A follower forwards writes, and they are decided on the members'
        # disks, not its own; a leader hands leadership on (set_can_lead).
        if self.disk_error and self.replica.is_leader:
            return f"this node cannot write to its data dir: {self.disk_error}"
        return None

    def close(self) -> None:
        self._closed = True
        if self.disk is not None:
            self._flush_lazy(last=True)
            self.disk.close()
        if self._ticker is not None:
            self._ticker.cancel()
        if self._early_tick is not None:
            self._early_tick.cancel()
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
        if self._snap_stepper is not None:
            self._snap_stepper.cancel()
        if self.hub is not None:
            self.hub.close()
        for done, _ in self._reads.values():
            done(errors.SHUTTING_DOWN)
        self._reads.clear()

    def transfer_leadership(self) -> str | None:
        to = self.replica.transfer_leadership()
        self._kick()
        return to

    # -- what the node exposes about the cluster -------------------------------

    def snapshot_meta(self) -> dict[str, Any]:
        i = self.applied_instance
        return {
            "instance": i,
            "schedule": schedule_to_wire(self.replica.membership_schedule(i)),
            "cluster_id": self.cluster_id,
            "name": self.cluster_name,
        }

    def live_members(self, nodes: set[str]) -> set[str]:
        """Those of `nodes` heard from lately (members ping each other every
        ping interval; three of them is lately), and this node. Until this
        node has run that long it cannot tell, and takes them all as live."""
        assert self._loop is not None
        now = self._loop.time()
        window = 3 * self.replica.cfg.ping_interval
        if now - self._started_at < window:
            return set(nodes)
        heard = self.replica.heard
        return {x for x in nodes if x == self.node_id or now - heard.get(x, -math.inf) < window}

    def cluster_info(self) -> dict[str, Any]:
        # needs_access: whether peers and clients must show a secret. A joiner
        # given a secret that the cluster lacks passes ACCESS (it succeeds on
        # a node without one) but would have every peer link refused.
        return {
            "id": self.cluster_id,
            "instance": self.applied_instance,
            "needs_access": self.secret is not None,
        }

    def peer_status(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        stats = self.hub.stats() if self.hub is not None else {}
        assert self._loop is not None
        now = self._loop.time()
        heard = self.replica.heard
        for nid, st in stats.items():
            if not nid:
                continue
            t = heard.get(nid)
            out[nid] = {
                "alive": bool(st.get("connected")) and t is not None and now - t < 3,
                "applied": self._rev_at(self.replica.peer_commit.get(nid)),
            }
        return out

    def _rev_at(self, instance: int | None) -> int | None:
        """The store's rev once `instance` was applied here, if still known: what
        a peer that reported deciding it shows (it applies right after)."""
        if instance is None or self.node is None:
            return None
        if instance >= self.applied_instance:
            return self.node.store.rev
        ir = self._inst_revs
        k = bisect_right(ir, (instance, INF_REV)) - 1
        return ir[k][1] if k >= 0 and ir[k][0] == instance else None

    # -- driving the replica -----------------------------------------------------

    def _on_message(self, sender: str, msg: dict) -> None:
        assert self._loop is not None
        self.replica.receive(self._loop.time(), sender, msg)
        if not self.replica.is_member() or sender not in self._members:
            self._follower_seen[sender] = self._loop.time()
        self._kick()

    def _tick(self) -> None:
        if self._closed:
            return
        assert self._loop is not None
        now = self._loop.time()
        # The next tick first: the replica's clock (heartbeats, elections,
        # catching up) must outlive any bug below. It once did not: an
        # exception here stopped a node's ticks for good, and it fell behind
        # and stayed there.
        gap = self._idle_tick if self._idle() else TICK
        self._tick_at = now + gap
        self._ticker = self._loop.call_later(gap, self._tick)
        try:
            if self.node is not None:
                self.replica.watched = self.node.watched()
            self.replica.tick(now)
            self._process()
            if self._lazy and now - self._lazy_since > LAZY_AGE:
                self._flush_lazy()
            self._retry(now)
            self._expire_reads(now)
            if self.replica.late_votes and now >= self._late_logged + LATE_LOG_EVERY:
                self._log_late_votes(now)
            if self._graveyard:
                self._free_some()
        except Exception:
            # at most every 10 s: a bug that fails every tick must not flood the log
            if now - self._tick_failed_logged >= 10.0:
                self._tick_failed_logged = now
                log.exception("tick failed")

    def _log_late_votes(self, now: float) -> None:
        """Say which members the leader gave up waiting for, at most once a
        minute: a member that is often slow to vote costs writes a few ms."""
        late = self.replica.late_votes
        seen = self._late_seen
        new = {x: n - seen.get(x, 0) for x, n in late.items() if n > seen.get(x, 0)}
        if not new:
            return
        span = now - self._late_logged  # the counts gathered over this long
        self._late_seen = dict(late)
        self._late_logged = now
        said = ", ".join(f"{x} {n}x" for x, n in sorted(new.items()))
        # A GC pass or a disk hiccup makes a vote late now and then (a few
        # times a minute on a busy shared machine); more than once a second
        # is a member in trouble.
        chronic = max(new.values()) >= LATE_WARN_RATE * span
        level = logging.WARNING if chronic else logging.INFO
        log.log(level, "members late to vote (every member was asked instead): %s", said)

    def _kick(self) -> None:
        if not self._kicked and self._loop is not None:
            self._kicked = True
            self._loop.call_soon(self._process)

    def _process(self) -> None:
        if self._closed:
            self._kicked = False
            return
        r = self.replica
        hub = self.hub
        assert self.node is not None and hub is not None
        # What is kicked while we loop (our own vote, handed back after an
        # inline fsync) the loop sees itself: no extra pass for it.
        self._kicked = True
        try:
            more = self._drain_ready(r, hub)
        finally:
            self._kicked = False
        if more:
            self._kick()  # a thousand Readys in one go: the rest in a later pass
        if r.notes:
            for text in r.notes:
                log.info("%s", text)
            r.notes.clear()
        if self._nodes_dirty:
            self._refresh_peers()
        self._after_apply()
        self._maybe_snapshot()
        self._arm_deadline()
        self._wake_ticker()

    def _idle(self) -> bool:
        """Nothing in flight here that the regular tick moves on: ticks can be
        sparse (IDLE_TICK). An idle node ticking every 10 ms used ~2 % of a
        core here, mostly in wake-ups."""
        return (
            not self._undecided
            and not self._reads
            and not self._lazy
            and not self._graveyard
            and self.replica.idle()
        )

    def _wake_ticker(self) -> None:
        """Work arrived while ticks were sparse: the next one within TICK."""
        loop = self._loop
        if self._ticker is None or loop is None or self._closed:
            return
        now = loop.time()
        if self._tick_at - now <= TICK or self._idle():
            return
        self._ticker.cancel()
        self._tick_at = now + TICK
        self._ticker = loop.call_later(TICK, self._tick)

    def _arm_deadline(self) -> None:
        """A tick when the replica needs one before the regular tick: a thrifty
        accept falls back to every member ~5 ms after it went out, not
        whenever the next 10 ms tick comes."""
        d = self.replica.deadline()
        if d is None or self._loop is None or self._closed:
            if self._early_tick is not None:
                self._early_tick.cancel()
                self._early_tick = None
                self._early_at = math.inf
            return
        if self._early_tick is not None:
            if self._early_at <= d + 0.0005:
                return
            self._early_tick.cancel()
            self._early_tick = None
            self._early_at = math.inf
        if self._ticker is not None and self._tick_at <= d + 0.002:
            return  # the regular tick comes in time
        self._early_at = d
        self._early_tick = self._loop.call_at(d, self._tick_early, d)

    def _tick_early(self, due: float) -> None:
        self._early_tick = None
        self._early_at = math.inf
        if self._closed or self._loop is None:
            return
        # uvloop's clock moves in whole ms, and a timer may fire a fraction
        # of one before its time: tick at the time it was due, or it would
        # find nothing due yet and be armed again and again until the next ms.
        self.replica.tick(max(self._loop.time(), due))
        self._process()

    def _drain_ready(self, r: Replica, hub: PeerHub) -> bool:
        """Persist, send and apply Readys until none is left (False) or a
        thousand have gone (True)."""
        for _ in range(1000):
            rd = r.ready()
            if not rd:
                return False
            r.advance()
            # A leader's proposals and decisions leave at once, so its fsync and
            # the followers' overlap. Promises and votes (`messages`, and our own
            # vote in `loopback`) wait until this Ready's records and every
            # earlier one's are on disk: the fsync runs on the disk thread, so
            # the loop goes on reading meanwhile and the next Ready's records
            # share one fsync. Decisions need no wait: each is durable on a
            # quorum already (our own vote counts only once synced).
            #
            # A Ready that decides and sends nothing but news of decisions
            # (commit notices, decided values) answers its clients first, as
            # long as only our own clients wait on it: each write costs ~20 us
            # here and the clients' replies waited behind them. When some of
            # the writes came from other nodes their clients wait on the news,
            # and it goes first: a member then applies the batch while we do,
            # not after (with 64 clients over three nodes, a batch of ~64
            # writes takes each node ~1.3 ms to apply).
            notices_only = (
                bool(rd.decided)
                and not rd.messages
                and all(msg["t"] in _NEWS for _, msg in rd.early)
                and not self._forwarded(rd.decided)
            )
            if rd.early:
                for to, msg in rd.early:
                    hub.send(to, msg)
                if not notices_only:
                    hub.flush()  # out before our own fsync, which may run right here
            self._persist_then(rd)
            if not notices_only:
                # Out now: before applying, and before the disk thread takes the GIL.
                hub.flush()
            self._apply_ready(rd)
            if notices_only:
                if self.flush_clients is not None:
                    self.flush_clients()
                hub.flush()
        return True

    def _forwarded(self, decided: list[tuple[int, list]]) -> bool:
        """Whether any of these decided writes came from another node."""
        assert self.node is not None
        mine = self.node.incarnation
        return any(w[0] != mine for _, batch in decided for w in batch)

    def _persist_then(self, rd: Any) -> None:
        disk, pipe = self.disk, self._pipeline
        waiting = bool(rd.messages or rd.loopback)
        if disk is None:
            if waiting:
                self._release(rd.messages, rd.loopback)
            return
        if any(rec[0] != "d" for rec in rd.persist):
            records = rd.persist
            if self._lazy:
                records = self._lazy + records
                self._lazy = []
            entry = [rd.messages, rd.loopback, False]
            if self.disk_error is not None:
                # Failing: no sync per Ready (each would rewrite all that is
                # pending); the next retry takes these, in order.
                self._held.extend(records)
                pipe.append(entry)
                self._unsynced.append(entry)
                return
            # A follower syncs inline: blocking costs only its own vote, and
            # the leader needs one vote of two. A loaded leader heads the
            # pipeline, so it keeps reading while the disk thread syncs (it
            # still syncs inline with one write of its own in flight, where
            # the hand-offs would cost more than the fsync).
            if not pipe and (not self.replica.is_leader or len(self._undecided) <= 1):
                done, err = disk.sync_inline(records)
                if done:
                    if err is None:
                        self._disk_ok()
                        if waiting:
                            self._release(rd.messages, rd.loopback)
                    else:
                        pipe.append(entry)
                        self._synced(entry, err)
                    return
            pipe.append(entry)
            disk.submit(records, lambda err, e=entry: self._synced(e, err))
            return
        # Records that only note decisions need no fsync before anything: the
        # decisions are durable on a quorum; the records speed up recovery.
        # They ride along with the next write (or the next tick's).
        if rd.persist:
            if not self._lazy:
                assert self._loop is not None
                self._lazy_since = self._loop.time()
            self._lazy.extend(rd.persist)
            if len(self._lazy) >= LAZY_MAX:
                self._flush_lazy()
        if waiting:
            if pipe:
                pipe.append([rd.messages, rd.loopback, True])
            else:
                self._release(rd.messages, rd.loopback)

    def _flush_lazy(self, last: bool = False) -> None:
        if self.disk is None:
            return
        if self.disk_error is not None and not last:
            self._held.extend(self._lazy)  # the next retry takes them
            self._lazy = []
            return
        records = self._held + self._lazy if self._held else self._lazy
        if records:
            self.disk.submit(records, self._lazy_synced)
        self._held = []
        self._lazy = []

    def _release(self, messages: list, loopback: list) -> None:
        assert self.hub is not None and self._loop is not None
        for to, msg in messages:
            self.hub.send(to, msg)
        if loopback:
            now = self._loop.time()
            for msg in loopback:
                self.replica.receive(now, self.node_id, msg)
            self._kick()

    def _fill_to_membership_change(self) -> None:
        """Leader: a membership change takes effect alpha instances after the
        one that decided it. On a quiet cluster that could take a long time,
        so push no-ops, one instance at a time, until it is in force."""
        r, node = self.replica, self.node
        if not r.is_leader or self._filling or node is None:
            return
        if not any(first > self.applied_instance for first, _ in r.ds.schedule):
            return
        self._filling = True

        def done(applied: Any, why: str) -> None:
            self._filling = False

        node.propose(Mutation(NOP), done, None)

    def _lazy_synced(self, err: str | None) -> None:
        if self._closed:
            return
        if err is None:
            if self._unsynced or self.disk_error is not None:
                self._disk_works()  # else nothing waits on it: no extra pass
        else:
            self._disk_failed(err)

    def _synced(self, entry: list, err: str | None) -> None:
        if self._closed:
            return
        if err is not None:
            self._unsynced.append(entry)  # its records stay pending in the data dir
            self._disk_failed(err)
            return
        entry[2] = True
        self._disk_works()

    def _disk_works(self) -> None:
        """A sync succeeded: it wrote every record pending before it, those of
        the syncs that failed included (jobs run in order). Release what
        waited on them."""
        for e in self._unsynced:
            e[2] = True
        self._unsynced.clear()
        self._disk_ok()
        pipe = self._pipeline
        while pipe and pipe[0][2]:
            msgs, loopback, _ = pipe.popleft()
            self._release(msgs, loopback)
        if self.hub is not None:
            self.hub.flush()
        self._kick()

    def _disk_failed(self, err: str) -> None:
        if self.disk_error is None:
            log.error("data dir: %s; this node neither leads nor votes until it recovers", err)
            self.replica.set_can_lead(False)
            self._kick()
        self.disk_error = err
        dd = self.datadir
        if dd is not None and dd.pending_bytes() > DISK_PENDING_MAX and self.on_fatal:
            why = (
                f"data dir: {err}; {dd.pending_bytes() >> 20} MiB of log wait in memory:"
                " exiting (restart the node once its disk has space)"
            )
            self.on_fatal(why)
            self.on_fatal = None  # once
        self._arm_disk_retry()

    def _arm_disk_retry(self) -> None:
        """One retry at a time, however many syncs failed: each rewrites
        everything pending."""
        loop = self._loop
        if self._retry_armed or loop is None or self._closed:
            return
        self._retry_armed = True
        delay = self._disk_retry
        self._disk_retry = min(DISK_RETRY_MAX, 2 * delay)

        def retry() -> None:
            self._retry_armed = False
            if not self._closed and self.disk is not None and self.disk_error is not None:
                self.disk.submit(self._held, self._lazy_synced)
                self._held = []

        loop.call_later(delay, retry)

    def _disk_ok(self) -> None:
        if self.disk_error is not None:
            log.info("data dir writable again")
            self.disk_error = None
            self._disk_retry = DISK_RETRY_MIN
            self.replica.set_can_lead(True)

    def _apply_ready(self, rd: Any) -> None:
        r = self.replica
        node = self.node
        assert node is not None
        for inst, batch in rd.decided:
            if inst <= self.applied_instance:
                continue  # already reflected (a snapshot was installed meanwhile)
            if inst != self.applied_instance + 1:
                # Applying past a gap would fork this node's state: stop and
                # say so loudly rather than diverge.
                log.error(
                    "decided instance %d after applied %d: a gap; not applying",
                    inst,
                    self.applied_instance,
                )
                break
            props = [Proposal.from_wire(w) for w in batch]
            node.apply_batch(props)
            self.applied_instance = inst
            self._inst_revs.append((inst, node.store.rev))
            if len(self._inst_revs) > 2 * INST_REVS:
                del self._inst_revs[:INST_REVS]
            size = 64 + sum(len(p.m.value) for p in props)
            self._kept.append((inst, size))
            self._kept_bytes += size
            if self._cal_dirty:
                self._refresh_members()
            r.set_membership(inst, self._members)
            self._wake_reads(inst)
        if rd.decided:
            self._fill_to_membership_change()
        for rid, index in rd.read_states:
            self._read_ready(rid, index)
        for rid in rd.read_failed:
            self._read_failed(rid)
        if rd.need_snapshot:
            self._fetch_snapshot(rd.need_snapshot)
        for s in rd.suspects:
            self._remove_member(s)

    # -- the data dir ------------------------------------------------------------

    def drain_persist(self) -> None:
        """Persist what the replica has emitted so far (start-up, before the
        loop and the disk thread run)."""
        r = self.replica
        dd = self.datadir
        if r.has_ready():
            rd = r.ready()
            if dd is not None and rd.persist:
                dd.append(rd.persist)
                dd.sync()
            self._startup.append(rd)  # handled once started

    def save_snapshot(self, force: bool = False) -> None:
        """Write the node's state at the applied instance with the acceptor's
        durable state, as covering every record already submitted to the disk;
        then let the replica forget what the snapshot covers.

        A big tree takes seconds to encode, so it is encoded a slice at a time
        (a leader stalled that long would lose its leadership) while the log
        goes on; the snapshot then covers the records up to the moment of the
        freeze. `force` (after installing a peer's snapshot) encodes at once:
        that snapshot must reach the disk ahead of the records that follow."""
        dd, node = self.datadir, self.node
        if dd is None or node is None or (self._snapshotting and not force):
            return
        if self._snap_stepper is not None:
            self._snap_stepper.cancel()  # superseded by this one
            self._snap_stepper = None
        inst = self.applied_instance
        self._snap_gap = self._draw_snap_gap()
        head = b'{"instance":%d,"durable":%s,"node":' % (
            inst,
            orjson.dumps(self.replica.ds.to_json(covered=inst)),
        )
        steps = node.snapshot_steps()
        self._snap_rev = node.store.rev

        def whole(parts: list[bytes]) -> EncodedSnapshot:
            return EncodedSnapshot(inst, [head, *parts, b"}"])

        if self.disk is None:
            dd.save_snapshot(whole(last(steps)))
            self.replica.compact(inst)
            return
        self._flush_lazy(last=True)  # the log before the snapshot holds every record before it
        self._snapshotting = True

        def saved(err: str | None) -> None:
            self._snapshotting = False
            if err is not None:
                self._snap_failed(err)
                return
            self._snap_backoff = 0.0
            # Not past the snapshot (a compaction ahead of it would lose
            # decided instances at the next restart), and not the margin
            # kept for peers just behind it.
            upto = min(inst, self._forget_upto)
            decided = self.replica.ds.decided
            self._graveyard.extend([v for i, v in decided.items() if i <= upto])
            self.replica.compact(upto)
            self._kick()

        def encoded(parts: list[bytes]) -> None:
            self._snap_stepper = None
            assert self.disk is not None
            self.disk.snapshot(whole(parts), saved, mark)

        def failed(e: BaseException) -> None:
            self._snap_stepper = None
            self._snapshotting = False
            log.error("encoding a snapshot failed", exc_info=e)
            self._snap_failed(f"encoding failed: {e!r}")

        if force:
            self.disk.snapshot(whole(last(steps)), saved)
            return
        mark = self.disk.mark()
        assert self._loop is not None
        self._snap_stepper = Stepper(self._loop, steps, encoded, failed)

    def _snap_failed(self, err: str) -> None:
        self._snap_backoff = min(SNAP_RETRY_MAX, max(1.0, 2 * self._snap_backoff))
        assert self._loop is not None
        self._snap_retry_at = self._loop.time() + self._snap_backoff
        log.error("snapshot failed: %s; trying again in %.0fs", err, self._snap_backoff)

    def _free_some(self) -> None:
        grave = self._graveyard
        del grave[-max(GRAVE_SLICE, len(grave) // 8) :]

    def _draw_snap_gap(self) -> int:
        return max(1, round(self.snap_revs * self._snap_rng.uniform(0.75, 1.25)))

    def _maybe_snapshot(self) -> None:
        dd, node = self.datadir, self.node
        if dd is None or node is None or self.disk_error or self._snapshotting:
            return
        loop = self._loop
        if self._snap_backoff and loop is not None and loop.time() < self._snap_retry_at:
            return  # the last one failed: not yet
        logged = dd.log_bytes_since_snapshot()
        # A big tree's snapshot costs more than a few thousand revs of log:
        # wait until the log since the last one is half its size, so writing
        # snapshots never costs more than twice the log itself.
        if (
            node.store.rev - self._snap_rev >= self._snap_gap or logged >= self.snap_bytes
        ) and logged >= dd.snapshot_bytes // 2:
            self.save_snapshot()

    def _after_apply(self) -> None:
        node = self.node
        assert node is not None and self._loop is not None
        if self._undecided:
            done = node.origin_applied(node.incarnation)
            for seq in [s for s in self._undecided if s <= done]:
                del self._undecided[seq]
                self._last_progress = self._loop.time()
        leader = self.replica.leader
        if leader != self._last_leader:
            self._last_leader = leader
            if leader is not None:
                log.info("leader is %s%s", leader, " (this node)" if leader == self.node_id else "")
                self._repropose()
            for fn in self.on_change:
                fn()
        kept = self._kept
        if self.datadir is not None:
            # Compaction follows the data dir's snapshots (save_snapshot);
            # here only the margin it keeps is measured.
            while kept and (
                len(kept) > KEEP_PAST_SNAPSHOT or self._kept_bytes > KEEP_PAST_SNAPSHOT_BYTES
            ):
                self._forget_upto, size = kept.popleft()
                self._kept_bytes -= size
        elif len(kept) > 2 * KEEP_DECIDED or self._kept_bytes > KEEP_DECIDED_BYTES:
            # Forget the oldest decided instances: down to half the budget.
            upto = 0
            while kept and (len(kept) > KEEP_DECIDED or self._kept_bytes > KEEP_DECIDED_BYTES // 2):
                upto, size = kept.popleft()
                self._kept_bytes -= size
            if upto:
                self.replica.compact(upto)

    def _retry(self, now: float) -> None:
        if self._undecided and now - self._last_progress > RETRY_AFTER:
            self._last_progress = now
            self._repropose()

    def _repropose(self) -> None:
        """Propose every undecided proposal again, in order. Duplicates and
        overtaking proposals are skipped at apply time (node.apply_batch)."""
        if self._undecided:
            self.replica.propose([p.to_wire() for _, p in sorted(self._undecided.items())])
            self._kick()

    # -- linearizable reads ---------------------------------------------------

    def _read_ready(self, rid: Any, index: int) -> None:
        key = int(str(rid).rpartition(":")[2])
        entry = self._reads.pop(key, None)
        if entry is None:
            return
        done, _ = entry
        if self.applied_instance >= index:
            done(None)
        else:
            self._read_waiters.append((index, key, done))
            self._reads[key] = entry  # keep its deadline

    def _wake_reads(self, inst: int) -> None:
        if not self._read_waiters:
            return
        keep = []
        for index, key, done in self._read_waiters:
            if index <= inst:
                if self._reads.pop(key, None) is not None:
                    done(None)
            else:
                keep.append((index, key, done))
        self._read_waiters = keep

    def _read_failed(self, rid: Any) -> None:
        key = int(str(rid).rpartition(":")[2])
        entry = self._reads.get(key)
        if entry is None:
            return
        # Ask again (a leader may be elected meanwhile) until the deadline.
        assert self._loop is not None
        self._loop.call_later(0.05, self._reask, key)

    def _reask(self, key: int) -> None:
        if key in self._reads and not self._closed:
            self.replica.read_index(f"{self.node_id}:{key}")
            self._kick()

    def _expire_reads(self, now: float) -> None:
        if not self._reads:
            return
        for key, (done, deadline) in list(self._reads.items()):
            if now >= deadline:
                del self._reads[key]
                done("no quorum confirmed the read in time")
        if self._read_waiters:
            self._read_waiters = [w for w in self._read_waiters if w[1] in self._reads]

    # -- membership, peers, liveness -----------------------------------------

    def _on_event(self, ev: Event) -> None:
        if ev.path.startswith("/ctl/cal/"):
            self._cal_dirty = True
        elif ev.path.startswith("/ctl/node/"):
            self._nodes_dirty = True
            if ev.value is None and ev.path.endswith("/addr"):
                self._forget_hello(ev.path[len("/ctl/node/") : -len("/addr")])

    def _forget_hello(self, nid: str) -> None:
        """A node's entries are gone: stop dialing it at the address its hello
        gave, unless it is still linked to us (a member paused past the
        timeout must go on hearing decisions, or it never learns that it was
        removed). That address may serve another node by now, one restarted
        there on a wiped disk with a new id. A node that says hello again is
        dialed again."""
        if self.hub is None or not self.hub.has_inbound(nid):
            self._hello_addrs.pop(nid, None)

    def _refresh_members(self) -> None:
        assert self.node is not None
        self._cal_dirty = False
        self._members = frozenset(v for v in self.node.members_by_slot().values() if v)

    def _refresh_peers(self) -> None:
        node = self.node
        assert node is not None and self.hub is not None
        self._nodes_dirty = False
        hellos = self._hello_addrs
        addrs = {nid: a for nid, (a, _) in hellos.items()}
        try:
            ids = node.store.getdir("/ctl/node")
        except DoozerError:
            ids = []
        for nid in ids:
            if nid == self.node_id:
                continue
            try:
                value, rev = node.store.get(f"/ctl/node/{nid}/addr")
            except DoozerError:
                continue
            addr = value.decode()
            # whichever the node said last: its entry, or a hello since
            if addr and (nid not in hellos or rev > hellos[nid][1]):
                addrs[nid] = addr
        try:
            self.hub.set_peers(addrs)
        except ValueError as e:
            log.warning("bad peer address in /ctl/node: %s", e)

    def _remove_member(self, member: str) -> None:
        """Leader: empty the slot of a member a quorum has not heard from."""
        node = self.node
        assert node is not None
        if not self.replica.is_leader or member in self._removing:
            return
        for slot, who in node.members_by_slot().items():
            if who == member:
                path = f"/ctl/cal/{slot}"
                _, rev = node.store.get(path)
                log.warning("member %s not heard from by a quorum: emptying %s", member, path)
                self._removing.add(member)

                def done(applied: Any, why: str, member: str = member) -> None:
                    self._removing.discard(member)

                node.propose(Mutation(SET, path, rev, b""), done, None)

    def check_followers(self, timeout: float) -> None:
        """Leader: remove /ctl/node entries of followers silent for `timeout`."""
        node = self.node
        assert node is not None and self._loop is not None
        r = self.replica
        if not r.is_leader:
            self._follower_seen.clear()
            return
        if r.leader_ballot != self._followers_ballot:
            # A new leadership: what we heard as a follower (followers fetch
            # from the leader of the day, not from us) times nobody's silence.
            # Without this a new leader removed a live follower's entries at
            # once (seen in a Jepsen run, 117 ms after it took over).
            self._followers_ballot = r.leader_ballot
            self._follower_seen.clear()
        now = self._loop.time()
        try:
            ids = node.store.getdir("/ctl/node")
        except DoozerError:
            return
        for nid in ids:
            if nid == self.node_id or nid in self._members or nid in self._removing:
                continue
            seen = self._follower_seen.setdefault(nid, now)
            if now - seen > timeout:
                log.warning(
                    "follower %s not heard from for %.0fs: removing its entries", nid, timeout
                )
                self._removing.add(nid)
                for path, rev, _ in node.store.walk(f"/ctl/node/{nid}/**"):

                    def done(applied: Any, why: str, nid: str = nid) -> None:
                        self._removing.discard(nid)

                    node.propose(Mutation(DEL, path, rev), done, None)

    # -- catch-up by snapshot ---------------------------------------------------

    def _fetch_snapshot(self, peer: str) -> None:
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        addr = self.hub.peers().get(peer) if self.hub is not None else None
        if not addr:
            return
        self._snapshot_task = asyncio.ensure_future(self._install_from(addr))

    async def _install_from(self, addr: str) -> None:
        try:
            snap = await fetch_snapshot(addr, self.secret)
        except (OSError, ValueError, DoozerError, TimeoutError) as e:
            log.warning("snapshot from %s failed: %s", addr, e)
            return
        self.install(snap)

    def install(self, snap: dict) -> bool:
        node = self.node
        assert node is not None
        meta = snap["meta"]
        if meta.get("cluster_id") != self.cluster_id:
            log.error("snapshot from another cluster refused")
            return False
        inst = int(meta["instance"])
        if inst <= self.applied_instance:
            return False  # behind us
        node.install_snapshot(snap)
        self.replica.install_snapshot(inst, schedule_from_wire(meta["schedule"]))
        self.applied_instance = inst
        # The replica's install record must never reach the disk without a
        # local snapshot holding the store at that instance: on restart the
        # node would resume an older store past the replica's new base (a gap).
        # The snapshot job goes to the disk thread ahead of that record.
        self.save_snapshot(force=True)
        self._refresh_members()
        self._refresh_peers()
        log.info("installed a snapshot at instance %d (rev %d)", inst, node.store.rev)
        self._kick()
        return True


# -- talking to a live node as a client (joining, snapshots) ----------------------


async def request(
    addr: str, reqs: list[dict], secret: bytes | None, timeout: float = 30.0
) -> list[dict]:
    """Send requests over one client connection; return their responses in order."""
    host, _, port = addr.rpartition(":")
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host.strip("[]"), int(port), limit=JOIN_LINE_LIMIT), timeout
    )
    try:
        out = []
        if secret:
            reqs = [{"verb": "ACCESS", "value": secret.decode()}, *reqs]
        for i, r in enumerate(reqs):
            writer.write(orjson.dumps({**r, "tag": i}) + b"\n")
        await writer.drain()
        got: dict[int, dict] = {}
        while len(got) < len(reqs):
            line = await asyncio.wait_for(reader.readline(), timeout)
            if not line:
                raise ConnectionError(f"{addr} closed the connection")
            resp = orjson.loads(line)
            got[resp.get("tag", -1)] = resp
        for i in range(len(reqs)):
            resp = got[i]
            if "err_code" in resp:
                raise DoozerError(resp["err_code"], resp.get("err_detail", ""))
            out.append(resp)
        return out[1:] if secret else out
    finally:
        writer.close()


async def fetch_snapshot(addr: str, secret: bytes | None) -> dict:
    (resp,) = await request(addr, [{"verb": "SNAPSHOT", "stale": True}], secret, timeout=60)
    return resp["snapshot"]


# -- serve ---------------------------------------------------------------------------


def make_config(args: argparse.Namespace) -> Config:
    return Config(
        election_timeout=args.election_timeout,
        member_timeout=args.timeout,
        thrifty=not getattr(args, "all_vote", False),
    )


async def serve(args: argparse.Namespace, host: str, port: int, secret: bytes | None) -> int:
    from doozer import serve as serve_mod
    from doozer.server import Server

    config = make_config(args)
    dd: DataDir | None = None

    def sequencer(node_id: str, cluster_id: str, **kw: Any) -> ClusterSequencer:
        return ClusterSequencer(
            node_id=node_id,
            cluster_name=args.cluster,
            cluster_id=cluster_id,
            secret=secret,
            config=config,
            readonly=args.readonly,
            datadir=dd,
            snap_revs=args.snap_revs,
            snap_bytes=args.snap_bytes,
            **kw,
        )

    snap: dict | None = None  # a peer's snapshot to start from (joining)
    resumed = False
    if not args.mem:
        try:
            dd = DataDir.open(args.data_dir, create=True, segment_bytes=args.segment_bytes)
            saved, records = dd.load()
        except StorageError as e:
            log.error("%s", e)
            if isinstance(e, CorruptionError):
                log.error(
                    "the data dir is damaged and this node will not start from it. If the"
                    " other members are healthy, move %s aside and start this node with -a"
                    " and a live member's address: it joins as a new node and copies the"
                    " tree from them (its old id is removed after --timeout). Alone, restore"
                    " a backup (doozer snapshot restore).",
                    args.data_dir,
                )
            if dd is not None:
                dd.close()
            return 1
        if not dd.is_new():
            resumed = True
    if resumed:
        assert dd is not None and dd.meta is not None
        meta = dd.meta
        node_id, cluster_id = meta["node_id"], meta["cluster_id"]
        name = meta.get("cluster_name", args.cluster)
        if args.cluster_explicit and args.cluster != name:
            log.error("%s holds cluster %r, not %r (-c)", args.data_dir, name, args.cluster)
            dd.close()
            return 2
        args.cluster = name
        durable = DurableState.from_json(saved["durable"]) if saved else DurableState()
        gc_was = gc.isenabled()
        gc.disable()  # replaying many small records: the collector only slows it down
        try:
            for rec in records:
                durable.apply(rec)
        finally:
            if gc_was:
                gc.enable()
        applied = int(saved["instance"]) if saved else 0
        store = (
            Store.restore(saved["node"]["store"], hist=args.hist, hist_bytes=args.hist_bytes)
            if saved
            else Store(hist=args.hist, hist_bytes=args.hist_bytes)
        )
        seq = sequencer(node_id, cluster_id, durable=durable, applied=applied)
        if args.attach:
            log.info(
                "%s holds this node's state: resuming as %s, not joining anew; "
                "asking -a peers who they are, in case they moved",
                args.data_dir,
                node_id,
            )
    elif args.attach:
        node_id = secrets.token_hex(8)
        joined = await join_info(args, secret)
        if joined is None:
            if dd is not None:
                dd.close()
            return 2
        info, snap = joined
        cluster_id = info["id"]
        store = Store(hist=args.hist, hist_bytes=args.hist_bytes)
        seq = sequencer(node_id, cluster_id)
    else:
        node_id = secrets.token_hex(8)
        cluster_id = secrets.token_hex(8)
        store = Store(hist=args.hist, hist_bytes=args.hist_bytes)
        seq = sequencer(node_id, cluster_id)
        seq.replica.bootstrap([node_id])
    node = Node(
        node_id=node_id,
        store=store,
        sequencer=seq,
        readonly=args.readonly,
        default_timeout=args.request_timeout,
    )
    if resumed and saved:
        node.install_snapshot(saved["node"])
    server = Server(
        node,
        secret=secret,
        max_line=args.max_line,
        max_value=args.max_value,
        peer_accept=seq.accept_peer,
    )
    seq.flush_clients = server.flush_now

    def fatal(why: str) -> None:
        log.critical("%s", why)
        serve_mod.stop(1)

    seq.on_fatal = fatal
    try:
        bound_host, bound_port = await server.start(host, port)
    except OSError as e:
        log.error("cannot listen on %s: %s", args.listen, e)
        if dd is not None:
            dd.close()
        return 1
    node.addr = args.advertise or join_addr(bound_host, bound_port)
    if snap is not None:
        seq.node = node  # install before the replica starts following
        node.install_snapshot(snap)
        meta = snap["meta"]
        seq.replica.install_snapshot(int(meta["instance"]), schedule_from_wire(meta["schedule"]))
        seq.applied_instance = int(meta["instance"])
    if dd is not None and not resumed:
        # who we are, and (joining) the state we start from, before anything else
        seq.drain_persist()
        dd.write_meta({"node_id": node_id, "cluster_name": args.cluster, "cluster_id": cluster_id})
        if snap is not None:
            seq.node = node
            seq.save_snapshot()
    node.start()
    tune_gc()
    if args.mem:
        log.warning(
            "--mem: nothing is kept on disk; a member's data survives only while a quorum stays up"
        )
    if resumed:
        log.info(
            "node %s listening on %s: resumed from %s at rev %d (cluster %r)",
            node_id,
            node.addr,
            args.data_dir,
            node.store.rev,
            args.cluster,
        )
    elif snap is None:
        await serve_mod.write_initial_ctl(node, args.cluster, args.cals)
        log.info(
            "node %s listening on %s: new cluster %r (%d slots)",
            node_id,
            node.addr,
            args.cluster,
            args.cals,
        )
    else:
        log.info(
            "node %s listening on %s: joined cluster %r at rev %d",
            node_id,
            node.addr,
            args.cluster,
            node.store.rev,
        )
        await write_node_entries(node)
    try:
        web = await serve_mod.start_web(args, node, secret)
    except OSError as e:
        log.error("%s", e)
        await serve_mod.shutdown(server, node, None)
        if dd is not None:
            dd.close()
        return 1
    tasks = [asyncio.ensure_future(housekeeping(node, seq, args))]
    if resumed and args.attach:
        tasks.append(asyncio.ensure_future(learn_moved_peers(args.attach, seq, secret)))
    code = await serve_mod.wait_for_signal()
    log.info("shutting down")
    for t in tasks:
        t.cancel()
    if seq.replica.is_leader:
        to = seq.transfer_leadership()
        if to:
            await wait_until(lambda: not seq.replica.is_leader, 1.0)
            log.info("handed leadership to %s", to)
    await serve_mod.shutdown(server, node, web)
    if dd is not None:
        dd.close()
    return code


async def wait_until(cond: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() >= end:
            return False
        await asyncio.sleep(0.01)
    return True


async def learn_moved_peers(addrs: list[str], seq: ClusterSequencer, secret: bytes | None) -> None:
    """A resuming node dials its peers at their /ctl/node addresses, and a
    peer that came back elsewhere cannot be reached there: a whole cluster
    moved to new addresses (machines rescheduled) could never reform. The -a
    peers given at a restart say who they are (SELF), and we dial them where
    they are; once a quorum hears each other, a leader is elected and every
    node rewrites its entry. Asked until each answers, or for a minute."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 60.0
    todo = list(addrs)
    delay = 0.2
    while todo and loop.time() < end:
        for addr in list(todo):
            try:
                info, me = await request(
                    addr, [{"verb": "CLUSTER"}, {"verb": "SELF"}], secret, timeout=5.0
                )
            except (OSError, ValueError, TimeoutError, DoozerError):
                continue
            todo.remove(addr)
            if info.get("id") != seq.cluster_id:
                log.warning("-a %s is a node of another cluster: not a peer of ours", addr)
                continue
            nid = me.get("value")
            if isinstance(nid, str) and nid:
                seq.hint_peer(nid, str(me.get("addr") or addr))
        if todo:
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)


async def join_info(args: argparse.Namespace, secret: bytes | None) -> tuple[dict, dict] | None:
    """Ask the -a peers (in turn, with backoff) for the cluster and a snapshot."""
    delay = 0.2
    attempt = 0
    while True:
        failed: list[str] = []
        for addr in args.attach:
            try:
                info, snap = await request(
                    addr, [{"verb": "CLUSTER"}, {"verb": "SNAPSHOT", "stale": True}], secret, 60
                )
            except DoozerError as e:
                if e.code == errors.PERMISSION:
                    # Every member holds the one secret: asking again cannot help.
                    log.error(
                        "%s refused us: %s; give the cluster's secret (--secret-file "
                        "or $DOOZER_SECRET)",
                        addr,
                        e.detail or e.code,
                    )
                    return None
                failed.append(f"{addr}: {e}")
                continue
            except (OSError, ValueError, TimeoutError) as e:
                failed.append(f"{addr}: {e or type(e).__name__}")
                continue
            if info["name"] != args.cluster:
                if not getattr(args, "cluster_explicit", True):
                    args.cluster = info["name"]  # no -c given: the peer's cluster it is
                else:
                    log.error(
                        "%s belongs to cluster %r, not %r (-c); refusing to join",
                        addr,
                        info["name"],
                        args.cluster,
                    )
                    return None
            if not info.get("id"):
                log.error("%s is not running a cluster that can be joined", addr)
                return None
            if secret and info.get("needs_access") is False:
                log.error(
                    "%s belongs to a cluster without a secret, but this node was given "
                    "one (--secret-file or $DOOZER_SECRET); its peers would refuse every "
                    "link from it; refusing to join",
                    addr,
                )
                return None
            return info, snap["snapshot"]
        if attempt == 0 or attempt % 10 == 0:
            # Said once every peer failed, not for each: one down among live
            # ones is no news. A joining node listens only once joined, so
            # nodes all started with -a at each other wait on each other.
            log.warning(
                "cannot join through %s; retrying (a new cluster's first node is started"
                " without -a)",
                "; ".join(failed),
            )
        attempt += 1
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def propose_wait(node: Node, m: Mutation, timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def done(applied: Any, why: str) -> None:
        if not fut.done():
            fut.set_result((applied, why))

    node.propose(m, done, timeout)
    return await fut


async def write_node_entries(node: Node) -> None:
    """This node's /ctl/node/<id>/* entries, retried until they land."""
    entries = {
        "addr": node.addr.encode(),
        "hostname": socket.gethostname().encode(),
        "version": __version__.encode(),
    }
    for name, value in entries.items():
        path = f"/ctl/node/{node.node_id}/{name}"
        for _ in range(1000):
            if node.closing:
                return
            applied, why = await propose_wait(node, Mutation(SET, path, -1, value))
            if applied is not None:
                break
            log.info("writing %s: %s; retrying", path, why)
            await asyncio.sleep(0.2)


async def housekeeping(node: Node, seq: ClusterSequencer, args: argparse.Namespace) -> None:
    """Slow loops: claim an empty slot, keep our /ctl/node entries, remove
    silent followers."""
    claiming = False
    failed_logged = -math.inf
    while not node.closing:
        await asyncio.sleep(0.2)
        try:
            if seq.replica.is_leader:
                seq.check_followers(args.timeout)
            # our entries were removed (we were silent too long), or name an
            # old address (a restart, a restored backup): write them again
            addr, _ = node.store.get(f"/ctl/node/{node.node_id}/addr")
            if addr != node.addr.encode() and seq.replica.leader is not None:
                await write_node_entries(node)
            if args.readonly or claiming or node.node_id in seq._members:
                continue
            if seq.disk_error:
                continue  # a member that cannot vote would only take a healthy node's place
            for slot, who in sorted(node.members_by_slot().items()):
                if who:
                    continue
                path = f"/ctl/cal/{slot}"
                _, frev = node.store.get(path)
                claiming = True
                try:
                    applied, _why = await propose_wait(
                        node, Mutation(SET, path, frev, node.node_id.encode())
                    )
                finally:
                    claiming = False
                if applied is not None and applied.err is None:
                    log.info("claimed %s: now a consensus member", path)
                break
        except DoozerError:
            continue
        except Exception:
            # a bug: say so (at most every 10 s), and keep claiming slots and
            # clearing silent followers (this loop ending would stop both)
            now = time.monotonic()
            if now - failed_logged >= 10.0:
                failed_logged = now
                log.exception("housekeeping failed")
