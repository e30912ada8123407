"""The node: routes each verb, reads from the store, writes through the sequencer,
and applies decided batches — the one place the store changes.

The node knows nothing of sockets: it answers through a `Call` (see
`doozer.server`), which carries the request's tag back to its connection.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import orjson

from doozer import errors
from doozer.errors import DoozerError
from doozer.mutation import DEL, NOP, SET, Mutation
from doozer.protocol import Request, encode_value
from doozer.sequencer import Proposal, Sequencer
from doozer.stepper import Gone, Lane
from doozer.store import Applied, Event, Store, last
from doozer.watch import Subscription, WatchRegistry

log = logging.getLogger("doozer")

DEFAULT_TIMEOUT = 10.0
ORIGINS_KEPT = 4096  # incarnations remembered for de-duplication


class Call(Protocol):
    """One request's way back to its client."""

    def ok(self, resp: dict) -> None: ...

    def ok_parts(self, resp: dict, key: str, parts: list[bytes]) -> None:
        """`ok(resp)` with one more field, `key`, whose JSON is b"".join(parts)."""

    def fail(self, code: str, detail: str) -> None: ...

    def event(self, body: bytes, final: bool) -> bool:
        """Send a WAIT-shaped body: the one answer of a WAIT (final) or one
        element of a WATCH stream. False if the client is too slow to read and
        the stream was ended."""

    def set_cancel(self, cancel: Callable[[], None]) -> None: ...

    def gone(self) -> bool:
        """True once no answer can reach the client (its connection closed)."""


def _valid_cal_name(name: str) -> bool:
    return name.isdigit() and name.isascii()


class Node:
    def __init__(
        self,
        *,
        node_id: str,
        store: Store,
        sequencer: Sequencer,
        addr: str = "",
        readonly: bool = False,
        default_timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.node_id = node_id
        self.addr = addr
        self.store = store
        self.sequencer = sequencer
        self.readonly = readonly
        self.default_timeout = default_timeout
        self.incarnation = f"{node_id}.{secrets.token_hex(4)}"
        self.watches = WatchRegistry()
        self.closing = False
        self._clock = clock
        self._seq = 0
        self._pending: dict[int, Callable[[Applied | None, str], None]] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._origins: dict[str, int] = {}
        self._rev_waiters: list[tuple[int, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._event_hooks: list[Callable[[Event], None]] = []
        self._reset_hooks: list[Callable[[], None]] = []  # told when events were skipped
        self._watched_hooks: list[Callable[[], bool]] = []  # other watchers (the web viewer)
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_idle = False  # the sweeper is armed at its idle pace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lane: Lane | None = None  # big answers, built one at a time
        self._hold_big: Callable[[], bool] = lambda: False

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lane = Lane(self._loop)
        self._lane.hold = lambda: self._hold_big()
        if self._clock is None:
            self._clock = self._loop.time
        self.sequencer.start(self)
        self._arm_sweeper()

    def close(self, detail: str = errors.SHUTTING_DOWN) -> None:
        """Fail everything still waiting; used at shutdown."""
        self.closing = True
        if self._sweeper:
            self._sweeper.cancel()
        pending, self._pending = self._pending, {}
        for cb in pending.values():
            cb(None, f"{detail}; the write's outcome is unknown")
        for sub in self.watches.close_all():
            del sub
        if self._lane is not None:
            for failed in self._lane.close():
                failed(errors.Unavailable(None, detail))
        self.sequencer.close()

    def on_event(self, hook: Callable[[Event], None]) -> None:
        self._event_hooks.append(hook)

    def watched_by(self, hook: Callable[[], bool]) -> None:
        """`hook()` says whether someone outside the watch registry follows the
        store's changes now (see `watched`)."""
        self._watched_hooks.append(hook)

    def watched(self) -> bool:
        """Someone here waits on the store's changes (a WATCH, a WAIT, a page of
        the web viewer), so this node should learn decisions promptly."""
        return (
            self.watches.count > 0
            or bool(self._rev_waiters)
            or any(hook() for hook in self._watched_hooks)
        )

    def hold_big_answers_while(self, backed_up: Callable[[], bool]) -> None:
        """Build no big answer while `backed_up()`: those built already wait
        unread in memory (clients that do not read them)."""
        self._hold_big = backed_up

    def on_reset(self, hook: Callable[[], None]) -> None:
        """`hook()` when the store jumped past events no hook was given (a
        snapshot installed over a running node): start again from the store."""
        self._reset_hooks.append(hook)

    def now(self) -> float:
        assert self._clock is not None
        return self._clock()

    # -- the write path ---------------------------------------------------

    def propose(
        self, m: Mutation, done: Callable[[Applied | None, str], None], timeout: float | None
    ) -> None:
        """Propose a mutation; done(applied, "") once decided and applied here,
        or done(None, why) when the outcome cannot be known in time."""
        if self.closing:
            done(None, errors.NOT_CARRIED_OUT)
            return
        why = self.sequencer.writable()
        if why:
            done(None, why)
            return
        self._seq += 1
        seq = self._seq
        self._pending[seq] = done
        heapq.heappush(
            self._deadlines,
            (self.now() + (self.default_timeout if timeout is None else timeout), seq),
        )
        if self._sweep_idle:
            self._arm_sweeper()
        self.sequencer.propose(Proposal(self.incarnation, seq, m))

    def _arm_sweeper(self) -> None:
        """Every 50 ms while writes wait, else every second (an idle node's
        wake-ups cost it CPU); a write proposed meanwhile re-arms it."""
        assert self._loop is not None
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweep_idle = not self._pending
        self._sweeper = self._loop.call_later(1.0 if self._sweep_idle else 0.05, self._sweep)

    def _sweep(self) -> None:
        # Re-armed first: a failing callback must not end every later write's
        # timeout (their clients would wait forever).
        self._arm_sweeper()
        now = self.now()
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            _, seq = heapq.heappop(dl)
            cb = self._pending.pop(seq, None)
            if cb is not None:
                try:
                    cb(None, "no quorum decided the write in time; its outcome is unknown")
                except Exception:
                    log.exception("answering a timed-out write failed")
        if len(dl) > 2 * len(self._pending) + 1024:
            # drop entries whose writes were answered long ago
            self._deadlines = [e for e in dl if e[1] in self._pending]
            heapq.heapify(self._deadlines)

    def origin_applied(self, origin: str) -> int:
        """The highest seq of `origin` applied here (0 if none)."""
        return self._origins.get(origin, 0)

    def apply_batch(self, batch: list[Proposal]) -> None:
        """Apply one decided batch, in order. Runs identically on every node.

        A proposal applies only if it is the next of its origin: duplicates
        (retried forwards) are skipped, and one that overtook an earlier,
        lost proposal is skipped too, to be proposed again after it, so that
        each origin's writes apply once and in the order they were sent.
        """
        store = self.store
        origins = self._origins
        mine = self.incarnation
        for p in batch:
            last = origins.get(p.origin, 0)
            if p.seq != last + 1:
                continue
            if last == 0:
                origins[p.origin] = p.seq
                if len(origins) > ORIGINS_KEPT:
                    del origins[next(iter(origins))]
            else:
                origins[p.origin] = p.seq
            m = p.m
            if m.op != NOP and m.path.startswith("/ctl/cal/"):
                applied = self._apply_cal(m)
            else:
                applied = store.apply(m)
            ev = applied.event
            if ev is not None:
                self.watches.publish(ev)
                for hook in self._event_hooks:
                    hook(ev)
            if p.origin == mine:
                cb = self._pending.pop(p.seq, None)
                if cb is not None:
                    cb(applied, "")
        self._wake_rev_waiters()

    def _apply_cal(self, m: Mutation) -> Applied:
        """Membership writes, checked at apply time so the check is in log order."""
        store = self.store
        if m.op == SET and m.value:
            who = m.value.decode("utf-8", "replace")
            try:
                _, kind = store.stat(f"/ctl/node/{who}")
            except DoozerError:
                kind = 0
            if kind != -2:
                return Applied(
                    store.rev, errors.PERMISSION, f"{who!r} is not a node of this cluster", None
                )
        elif self._members_after(m) == 0:
            return Applied(
                store.rev, errors.PERMISSION, "that would leave the cluster with no member", None
            )
        return store.apply(m)

    def _members_after(self, m: Mutation) -> int:
        n = 0
        for slot, member in self.members_by_slot().items():
            if f"/ctl/cal/{slot}" == m.path:
                continue
            if member:
                n += 1
        return n

    def status(self) -> dict[str, Any]:
        """What the web viewer and operators see of this node and its peers.

        `nodes` lists every node under /ctl/node with its address, role,
        applied rev (when known) and liveness (when known); a sequencer that
        knows more (the cluster one) fills in `peer_status`.
        """
        slots = self.members_by_slot()
        members = {v for v in slots.values() if v}
        leader = self.sequencer.leader()
        peer = getattr(self.sequencer, "peer_status", None)
        known: dict[str, dict[str, Any]] = peer() if peer is not None else {}
        nodes = []
        try:
            ids = self.store.getdir("/ctl/node")
        except DoozerError:
            ids = []
        for nid in ids:
            try:
                addr = self.store.get(f"/ctl/node/{nid}/addr")[0].decode("utf-8", "replace")
            except DoozerError:
                addr = ""
            role = "leader" if nid == leader else "member" if nid in members else "follower"
            info: dict[str, Any] = {"id": nid, "addr": addr, "role": role}
            if nid == self.node_id:
                info.update(applied=self.store.rev, alive=True, self=True)
            else:
                info.update(known.get(nid, {"applied": None, "alive": None}))
            nodes.append(info)
        return {
            "id": self.node_id,
            "addr": self.addr,
            "role": self.sequencer.role(),
            "leader": leader or "",
            "rev": self.store.rev,
            "oldest": self.store.oldest,
            "cal": slots,
            "nodes": nodes,
        }

    def members_by_slot(self) -> dict[str, str]:
        try:
            names = self.store.getdir("/ctl/cal")
        except DoozerError:
            return {}
        out = {}
        for name in names:
            value, _ = self.store.get(f"/ctl/cal/{name}")
            out[name] = value.decode("utf-8", "replace")
        return out

    # -- waiting for revs -------------------------------------------------

    def when_rev(self, rev: int, fn: Callable[[], None]) -> None:
        if self.store.rev >= rev:
            fn()
        else:
            heapq.heappush(self._rev_waiters, (rev, next(self._counter), fn))

    def _wake_rev_waiters(self) -> None:
        w = self._rev_waiters
        rev = self.store.rev
        while w and w[0][0] <= rev:
            heapq.heappop(w)[2]()

    def _later(self, delay: float, fn: Callable[[], None]) -> asyncio.TimerHandle:
        assert self._loop is not None
        return self._loop.call_later(delay, fn)

    # -- verbs ------------------------------------------------------------

    def dispatch(self, req: Request, call: Call) -> None:
        if self.closing:
            # Definite, unlike a connection closed under it: the client may
            # send it to another node, a write included.
            call.fail(errors.UNAVAILABLE, errors.NOT_CARRIED_OUT)
            return
        handler = _HANDLERS[req.verb]  # type: ignore[index]
        try:
            handler(self, req, call)
        except DoozerError as e:
            call.fail(e.code, e.detail)

    def _linearizable(self, req: Request, call: Call, then: Callable[[], None]) -> None:
        """Run `then` when a read may be served: at once for stale reads and reads
        at a rev already applied; after the rev arrives for a future rev; after
        a read barrier otherwise."""
        rev = req.rev
        if rev is not None:
            if rev <= self.store.rev:
                then()
                return
            self._at_future_rev(req, call, then)
            return
        if req.stale or self.sequencer.reads_are_local:
            then()
            return
        timeout = self.default_timeout if req.timeout is None else req.timeout

        def barrier_done(why: str | None) -> None:
            if why is None:
                try:
                    then()
                except DoozerError as e:
                    call.fail(e.code, e.detail)
            else:
                call.fail(errors.UNAVAILABLE, why)

        self.sequencer.read_barrier(barrier_done, timeout)

    def _at_future_rev(self, req: Request, call: Call, then: Callable[[], None]) -> None:
        state = {"done": False}
        timer: asyncio.TimerHandle | None = None

        def fire() -> None:
            if state["done"]:
                return
            state["done"] = True
            if timer is not None:
                timer.cancel()
            try:
                then()
            except DoozerError as e:
                call.fail(e.code, e.detail)

        def expire() -> None:
            if not state["done"]:
                state["done"] = True
                call.fail(errors.TIMEOUT, f"rev {req.rev} not reached in time")

        def cancel() -> None:
            if not state["done"]:
                state["done"] = True
                if timer is not None:
                    timer.cancel()
                call.fail(errors.CANCELLED, "cancelled")

        assert req.rev is not None
        if req.timeout is not None:
            timer = self._later(req.timeout, expire)
        call.set_cancel(cancel)
        self.when_rev(req.rev, fire)

    def _get(self, req: Request, call: Call) -> None:
        def serve() -> None:
            store = self.store
            value, rev = store.get(req.path, req.rev)  # type: ignore[arg-type]
            resp: dict[str, Any] = {}
            encode_value(resp, value)
            resp["rev"] = rev
            resp["snap_rev"] = store.rev if req.rev is None else req.rev
            call.ok(resp)

        self._linearizable(req, call, serve)

    def _stat(self, req: Request, call: Call) -> None:
        def serve() -> None:
            store = self.store
            length, rev = store.stat(req.path, req.rev)  # type: ignore[arg-type]
            snap = store.rev if req.rev is None else req.rev
            call.ok({"len": length, "rev": rev, "snap_rev": snap})

        self._linearizable(req, call, serve)

    def _getdir(self, req: Request, call: Call) -> None:
        self._listing(req, call, "entries", Store.getdir_small, Store.getdir_batches, _encode_list)

    def _walk(self, req: Request, call: Call) -> None:
        self._listing(req, call, "files", Store.walk_small, Store.walk_batches, _encode_files)

    def _listing(
        self,
        req: Request,
        call: Call,
        key: str,
        small: Callable[..., list | None],
        batches: Callable[..., Iterator[list]],
        encode: Callable[[Iterator[list], dict], Iterator[tuple[dict, list[bytes]] | None]],
    ) -> None:
        """GETDIR, WALK: a small answer (a few ms to tell) at once, a big one
        through the lane, from the store of when its turn comes (a snapshot
        installed meanwhile replaces it)."""
        args = (req.path, req.rev, req.offset, req.limit)

        def snap() -> dict:
            return {"rev": self.store.rev if req.rev is None else req.rev}

        def serve() -> None:
            page = small(self.store, *args)
            if page is None:
                self._heavy(lambda: encode(batches(self.store, *args), snap()), call, key)
                return
            resp, parts = last(encode(iter([page]), snap()))
            call.ok_parts(resp, key, parts)

        self._linearizable(req, call, serve)

    def _heavy(
        self, make: Callable[[], Iterator[tuple[dict, list[bytes]] | None]], call: Call, key: str
    ) -> None:
        """Answer `call` with the (response, JSON parts of `key`) that the steps
        `make()` gives end with: a big answer (a WALK or SNAPSHOT of a million
        files takes seconds) is built a slice at a time, one at a time, at
        the state of when its turn comes."""

        def failed(e: BaseException) -> None:
            if isinstance(e, Gone):
                return  # nobody to answer
            if isinstance(e, DoozerError):
                call.fail(e.code, e.detail)
                return
            log.error("building an answer failed", exc_info=e)
            call.fail(errors.OTHER, f"building the answer failed: {e!r}")

        assert self._lane is not None
        self._lane.run(make, lambda out: call.ok_parts(out[0], key, out[1]), failed, call.gone)

    def _rev(self, req: Request, call: Call) -> None:
        req.rev = None
        self._linearizable(req, call, lambda: call.ok({"rev": self.store.rev}))

    def _write_check(self, req: Request) -> None:
        path = req.path
        assert path is not None
        if path == "/ctl" or path.startswith("/ctl/"):
            parts = path.split("/")
            if len(parts) != 4 or parts[2] != "cal" or not _valid_cal_name(parts[3]):
                raise errors.Permission(None, "clients may write under /ctl only to /ctl/cal/<N>")
        if self.readonly:
            raise errors.ReadOnly(None, "this node was started read-only")

    def _write(self, m: Mutation, req: Request, call: Call) -> None:
        def done(applied: Applied | None, why: str) -> None:
            if applied is None:
                call.fail(errors.UNAVAILABLE, why)
            elif applied.err is not None:
                call.fail(applied.err, applied.detail)
            else:
                call.ok({"rev": applied.rev})

        self.propose(m, done, req.timeout)

    def _set(self, req: Request, call: Call) -> None:
        self._write_check(req)
        rev = -1 if req.rev is None else req.rev
        m = Mutation(SET, req.path, rev, req.value)  # type: ignore[arg-type]
        self._wire_size_check(m)
        self._live_quorum_check(m)
        self._write(m, req, call)

    def _del(self, req: Request, call: Call) -> None:
        self._write_check(req)
        rev = -1 if req.rev is None else req.rev
        m = Mutation(DEL, req.path, rev)  # type: ignore[arg-type]
        self._wire_size_check(m)
        self._live_quorum_check(m)
        self._write(m, req, call)

    def _wire_size_check(self, m: Mutation) -> None:
        """Refuse a write too large to travel between members (its value goes
        base64, 4/3 its size, beside its path). Such an accept would be
        dropped by every link, again and again: the write never decided and
        the log stuck behind it for good, even across leaders. Only a raised
        --max-value or --max-line allows such a write in the first place."""
        limit = getattr(self.sequencer, "max_item", None)
        if limit is None or len(m.value) + len(m.path) < limit // 2:
            return  # the common case: two len() calls
        size = 4 * ((len(m.value) + 2) // 3) + len(m.path.encode()) + 256
        if size > limit:
            raise errors.TooLarge(
                None,
                f"this write is {size} bytes between members, over their {limit}-byte "
                f"limit (a value of at most {(limit - 256 - len(m.path.encode())) * 3 // 4} "
                "bytes at this path)",
            )

    def _live_quorum_check(self, m: Mutation) -> None:
        """Refuse a client's change that takes a member out if the members
        this node hears from would then be no quorum: the change would take
        effect and leave the cluster unable to decide anything, not even the
        change that would undo it (etcd's strict reconfiguration check).
        Judged by a member (members ping each other; a follower outside the
        member set hears only the leader, so it cannot judge and lets the
        change through), before the change is in the log: a guard, not a
        guarantee."""
        if not m.path.startswith("/ctl/cal/"):
            return
        live_members = getattr(self.sequencer, "live_members", None)
        if live_members is None:
            return
        slots = self.members_by_slot()
        before = {x for x in slots.values() if x}
        if self.node_id not in before:
            return
        slot = m.path[len("/ctl/cal/") :]
        if m.op == DEL:
            slots.pop(slot, None)
        else:
            slots[slot] = m.value.decode("utf-8", "replace")
        after = {x for x in slots.values() if x}
        if not after or before <= after:
            return  # none left: refused when applied; none taken out: no less available
        # A member brought in is taken to be live: members do not ping
        # followers, so only the leader could tell.
        live = live_members(after & before) | (after - before)
        need = len(after) // 2 + 1
        if len(live) < need:
            dead = ", ".join(sorted(after - live))
            raise errors.Permission(
                None,
                f"that would leave {len(live)} of {len(after)} members live, short of a "
                f"quorum of {need} (not heard from: {dead}); bring them back or remove "
                "them first",
            )

    def _nop(self, req: Request, call: Call) -> None:
        if self.readonly:
            raise errors.ReadOnly(None, "this node was started read-only")
        self._write(Mutation(NOP), req, call)

    def _self(self, req: Request, call: Call) -> None:
        call.ok(
            {
                "value": self.node_id,
                "addr": self.addr,
                "role": self.sequencer.role(),
                "leader": self.sequencer.leader() or "",
            }
        )

    def _wait(self, req: Request, call: Call, once: bool) -> None:
        glob = req.path
        assert glob is not None
        state: dict[str, Any] = {"sub": None, "done": False, "timer": None}

        def finish() -> None:
            state["done"] = True
            if state["sub"] is not None:
                state["sub"].cancel()
            if state["timer"] is not None:
                state["timer"].cancel()

        def deliver(ev: Event, body: bytes) -> None:
            if state["done"]:
                return
            if once:
                finish()
                call.event(body, True)
            elif not call.event(body, False):
                finish()

        def start(from_rev: int) -> None:
            if state["done"]:
                return
            store = self.store
            if from_rev <= store.rev:
                # replay from history, then follow live; no await in between
                match = _matcher(glob)
                for ev in store.events_from(from_rev):
                    if match(ev.path):
                        deliver(ev, _body(ev))
                        if state["done"]:
                            return
                from_rev = store.rev + 1
            state["sub"] = self.watches.subscribe(glob, from_rev, deliver, once, lost)

        def cancel() -> None:
            if not state["done"]:
                finish()
                call.fail(errors.CANCELLED, "cancelled")

        def lost() -> None:
            if not state["done"]:
                finish()
                call.fail(
                    errors.TOO_LATE,
                    f"this node caught up from a snapshot at rev {self.store.rev}: changes"
                    " since this watch's last event are no longer held; read, then watch again",
                )

        def expire() -> None:
            if not state["done"]:
                finish()
                call.fail(errors.TIMEOUT, "no matching change in time")

        call.set_cancel(cancel)
        if req.timeout is not None:
            state["timer"] = self._later(req.timeout, expire)
        if req.rev is not None:
            if req.rev == 0 or req.rev < self.store.oldest:
                raise errors.TooLate(None, f"rev {req.rev} is older than this node's history")
            start(req.rev)
            return

        def barrier_done(why: str | None) -> None:
            if why is not None:
                if not state["done"]:
                    finish()
                    call.fail(errors.UNAVAILABLE, why)
                return
            try:
                start(self.store.rev + 1)
            except DoozerError as e:
                if not state["done"]:
                    finish()
                    call.fail(e.code, e.detail)

        self.sequencer.read_barrier(barrier_done, self.default_timeout)

    def _wait1(self, req: Request, call: Call) -> None:
        self._wait(req, call, True)

    def _watch(self, req: Request, call: Call) -> None:
        self._wait(req, call, False)

    def snapshot_steps(self) -> Iterator[list[bytes] | None]:
        """Everything another node needs to continue from this node's applied
        state, as JSON parts: the store (with its history window), the
        de-duplication state, and whatever the sequencer adds (log position,
        membership schedule). The state is the one at this call; the encoding
        comes in steps of a few ms (for a `Stepper`): a million files take
        seconds."""
        store = self.store.snapshot_steps()
        meta = getattr(self.sequencer, "snapshot_meta", None)
        head = orjson.dumps(
            {"origins": list(self._origins.items()), "meta": meta() if meta is not None else {}}
        )
        return _wrap_parts(store, head[:-1] + b',"store":', b"}")

    def install_snapshot(self, snap: dict[str, Any]) -> None:
        """Replace this node's state with a snapshot (a joiner, or a node too
        far behind to catch up from the log)."""
        before = self.store.rev
        store = Store.restore(snap["store"], hist=self.store.hist, hist_bytes=self.store.hist_bytes)
        self.store = store
        self._origins = {o: int(s) for o, s in snap["origins"]}
        if store.rev > before:
            self._bridge(before)
        self._wake_rev_waiters()

    def _bridge(self, before: int) -> None:
        """The store jumped from rev `before` to a snapshot's: give watchers
        the events between from its history, or, if it no longer holds them
        all, end every watch with TOO_LATE rather than let it skip changes in
        silence (a WATCH promises every change)."""
        try:
            events = self.store.events_from(before + 1)
        except errors.TooLate:
            events = None
        if events is not None:
            for ev in events:
                self.watches.publish(ev)
                for hook in self._event_hooks:
                    hook(ev)
            return
        self.watches.lose_all()
        for reset in self._reset_hooks:
            reset()

    def _snapshot(self, req: Request, call: Call) -> None:
        """SNAPSHOT: the node's state at one rev, in one line (backup, joining)."""

        def make() -> Iterator[tuple[dict, list[bytes]] | None]:
            return _with_resp(self.snapshot_steps(), {"rev": self.store.rev})

        self._linearizable(req, call, lambda: self._heavy(make, call, "snapshot"))

    def _cluster(self, req: Request, call: Call) -> None:
        """CLUSTER: what a joining node needs to know first."""
        info = getattr(self.sequencer, "cluster_info", None)
        st = self.status()
        resp = {
            "name": self.store.get("/ctl/name")[0].decode("utf-8", "replace"),
            "id": "",
            "leader": st["leader"],
            "cal": st["cal"],
            "nodes": {n["id"]: n["addr"] for n in st["nodes"]},
            "rev": self.store.rev,
        }
        if info is not None:
            resp.update(info())
        call.ok(resp)


def _with_resp(
    steps: Iterator[list[bytes] | None], resp: dict
) -> Iterator[tuple[dict, list[bytes]] | None]:
    for out in steps:
        yield None if out is None else (resp, out)


def _encode_files(
    batches: Iterator[list[tuple[str, int, bytes]]], resp: dict
) -> Iterator[tuple[dict, list[bytes]] | None]:
    """WALK's `files`: a JSON list in parts, a batch per step; `resp` with it."""

    def files(batch: list[tuple[str, int, bytes]]) -> list[dict[str, Any]]:
        out = []
        for path, rev, value in batch:
            f: dict[str, Any] = {"path": path, "rev": rev}
            encode_value(f, value)
            out.append(f)
        return out

    return _encode_list((files(b) for b in batches), resp)


def _encode_list(
    batches: Iterator[list[Any]], resp: dict
) -> Iterator[tuple[dict, list[bytes]] | None]:
    """The items of `batches` as one JSON list in parts, a batch per step;
    `resp` with it. The pauses come between batches: one batch is one step."""
    parts = [b"["]
    sep = b""
    for k, batch in enumerate(batches):
        if k:
            yield None
        if batch:
            parts.append(sep + orjson.dumps(batch)[1:-1])
            sep = b","
    parts.append(b"]")
    yield resp, parts


def _wrap_parts(
    steps: Iterator[list[bytes] | None], head: bytes, tail: bytes
) -> Iterator[list[bytes] | None]:
    for out in steps:
        yield None if out is None else [head, *out, tail]


def _matcher(glob: str) -> Callable[[str], bool]:
    from doozer.paths import compile_glob

    return compile_glob(glob)


def _body(ev: Event) -> bytes:
    from doozer.watch import event_body

    return event_body(ev)


_HANDLERS: dict[str, Callable[[Node, Request, Call], None]] = {
    "GET": Node._get,
    "SET": Node._set,
    "DEL": Node._del,
    "REV": Node._rev,
    "NOP": Node._nop,
    "STAT": Node._stat,
    "GETDIR": Node._getdir,
    "WALK": Node._walk,
    "WAIT": Node._wait1,
    "WATCH": Node._watch,
    "SELF": Node._self,
    "SNAPSHOT": Node._snapshot,
    "CLUSTER": Node._cluster,
}

__all__ = ["Call", "Node", "Subscription"]
