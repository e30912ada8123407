"""One consensus node: acceptor, proposer/leader and learner of Multi-Paxos, as a pure object.

Driven like etcd's raft RawNode: the host feeds `tick`, `receive`, `propose`,
`read_index`, `set_membership`; then drains `ready()` (persist, then send, then
apply) and calls `advance()`. No sockets, clocks, disks or global randomness.
A Ready's `early` messages and `decided` batches need not wait for its records;
its `messages` and `loopback` (our own votes, fed back through `receive`) do.

Protocol outline (see messages.py for the wire catalogue):
- A leader runs phase 1 once, with ballot (round, id), for every instance from its
  first undecided one; promises carry what each acceptor accepted above its own
  contiguous decided point `d`. Instances <= max(d) are decided: the leader fetches
  them. Instances up to the highest one reported are re-proposed with the value of
  the highest ballot, or a no-op (empty batch); then fresh batches, pipelined
  within `alpha` instances of what the host has applied.
- Quorums are majorities of the member set governing each instance; phase 1 (and a
  read index, check-quorum, pre-vote) need a majority of every distinct set in the
  range they cover. The set after applying i governs i + alpha, so the leader never
  proposes past applied + alpha and every node agrees on every instance's quorum.
- Learners: an acceptor that accepted (i, b, v) and hears from the leader of ballot
  b that i is decided knows v (the leader of b never proposes two values for one
  instance, and only counts instances it decided itself or was told were decided
  before it proposed there). Anything else is fetched; non-members register with
  the leader by fetching and get decided batches pushed to them.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable
from typing import Any, cast

from . import messages as M
from .acceptor import report, size_of
from .ballot import ZERO, Ballot, ballot_of, wire
from .config import Config
from .durable import DurableState
from .membership import (
    Schedule,
    has_quorums,
    majority,
    members_at,
    schedule_to_wire,
    sets_between,
)
from .ready import Ready

FOLLOWER = "follower"
PRECANDIDATE = "precandidate"
CANDIDATE = "candidate"
LEADER = "leader"

_NEVER = -math.inf


def _bs(b: Ballot) -> str:
    """A ballot as the log shows it: round/node."""
    return f"{b[0]}/{b[1]}"


# What ready() hands back when there is nothing: shared, and immutable so that
# a host that wrongly changed a Ready would fail loudly here.
_EMPTY = Ready(*cast(Any, ((), (), (), (), (), None, (), (), ())))

# Messages that claim nothing about this replica's own durable state (a leader's
# proposal or heartbeat, decisions a quorum already made durable, requests): the
# host may send them before the Ready's records reach the disk. Promises, votes
# and anything else that speaks for our acceptor wait for the fsync.
# A heartbeat's answer says only "alive, still under your ballot" (a promise to
# a higher ballot, durable or not, already refuses the heartbeat): it must not
# wait behind a slow fsync, or the leader takes a slow disk for a lost member
# and steps down, which cures nothing (the member is needed either way). A
# pre-vote and its answer bind nobody. Entries hold decided values, durable on
# a quorum whatever our disk holds, and a snapshot notice names a base whose
# snapshot is on disk already: a member catching up need not wait for our
# fsyncs. A prepare does wait: its ballot is unique only once our own promise
# of it is on disk. A leader's hand-over (timeout-now) only asks a member to
# campaign: it goes at once, even while our disk fails (set_can_lead).
_EARLY = frozenset(
    {
        M.TIMEOUT_NOW,
        M.ACCEPT,
        M.COMMIT,
        M.HEARTBEAT,
        M.HEARTBEAT_OK,
        M.PREVOTE,
        M.PREVOTE_OK,
        M.FORWARD,
        M.READ,
        M.READ_OK,
        M.READ_FAIL,
        M.FETCH,
        M.ENTRIES,
        M.SNAPSHOT,
        M.PING,
    }
)


class _Report:
    """One acceptor's answer to our phase 1."""

    __slots__ = ("d", "done", "entries", "next")

    def __init__(self) -> None:
        self.d = -1
        self.entries: dict[int, tuple[Ballot, list]] = {}
        self.done = False
        self.next: int | None = None


class _Round:
    """A ballot we are trying to lead, or lead."""

    __slots__ = (
        "ballot",
        "best",
        "blist",
        "deadline",
        "max_d",
        "max_rep",
        "next_resend",
        "prep_sent",
        "reports",
        "start",
    )

    def __init__(self, ballot: Ballot, start: int) -> None:
        self.ballot = ballot
        self.blist = wire(ballot)
        self.start = start
        self.reports: dict[str, _Report] = {}
        self.prep_sent: dict[str, float] = {}
        self.max_d = start - 1  # every instance <= max_d is decided
        self.max_rep = start - 1  # highest instance any acceptor reported
        self.best: str | None = None  # who reported max_d
        self.deadline = 0.0
        self.next_resend = 0.0

    def done_nodes(self) -> set[str]:
        return {x for x, r in self.reports.items() if r.done}


class _Proposal:
    __slots__ = ("acks", "born", "sent", "skipped", "value", "waiting")

    def __init__(self, value: list, now: float, waiting: frozenset[str]) -> None:
        self.value = value
        self.acks: set[str] = set()
        self.sent = now
        self.born = now
        self.skipped: tuple[str, ...] = ()  # members the accept did not go to (thrifty)
        self.waiting = waiting  # members that forwarded items of it: their clients wait


class _Lead:
    """Volatile state of a leader."""

    __slots__ = (
        "ack_time",
        "acked",
        "counted",
        "demoted",
        "eager",
        "full_until",
        "learners",
        "news_at",
        "next",
        "next_hb",
        "own_avg",
        "own_wait",
        "peer_avg",
        "peer_commit",
        "props",
        "reads",
        "reads_waiting",
        "reports",
        "round",
        "sent_commit",
        "since",
        "skipped",
        "suspect_set",
        "suspected",
        "told",
        "transfer_until",
        "watched",
    )

    def __init__(self, now: float, next_instance: int, commit: int) -> None:
        self.props: dict[int, _Proposal] = {}
        self.next = next_instance
        self.round = 0
        self.acked: dict[str, int] = {}  # highest heartbeat round each member answered
        self.ack_time: dict[str, float] = {}
        self.counted: frozenset[str] = frozenset()  # the members the last heartbeat went to
        self.peer_commit: dict[str, int] = {}
        self.reports: dict[str, tuple[float, list]] = {}  # suspicions members sent us
        self.suspected: dict[str, float] = {}
        self.suspect_set: frozenset[str] | None = None
        self.next_hb = now
        self.since = now
        self.reads_waiting: list[tuple[Any, str | None]] = []
        self.reads: list[tuple[int, int, Any, str | None]] = []  # (round, index, req, origin)
        self.sent_commit = commit
        self.learners: dict[str, list] = {}  # node -> [next instance, last fetch time]
        self.transfer_until = _NEVER
        self.told: dict[str, int] = {}  # the commit each member was last sent
        # Thrifty accepts: per member, the lowest instance whose accept skipped
        # it and whose value it has not been sent since; when each member was
        # last found slow to vote; accepts go to everyone until full_until;
        # smoothed times from an accept going out to our own vote (after our
        # fsync) and to a member's.
        self.skipped: dict[str, int] = {}
        self.demoted: dict[str, float] = {}
        # Members owed values whose clients wait on them now (they forwarded
        # writes among them) or always (they have watchers); when the values
        # owed to the others go anyway (see Config.news_linger).
        self.eager: set[str] = set()
        self.watched: set[str] = set()
        self.news_at = math.inf
        self.full_until = _NEVER
        self.own_avg = 0.0
        self.peer_avg = 0.0
        # instance -> when its accept went out, until our own vote is back
        # (timed even when the members decided it without us)
        self.own_wait: dict[int, float] = {}


class Replica:
    def __init__(
        self,
        node_id: str,
        *,
        config: Config | None = None,
        rng: random.Random,
        durable: DurableState | None = None,
        applied: int | None = None,
    ) -> None:
        """A replica, fresh or rebuilt from the DurableState its host saved.

        `applied`: the instance the host's state machine already reflects (its
        snapshot); decided instances after it are handed out again in `ready()`.
        Defaults to the compaction base.
        """
        self.id = node_id
        self.cfg = config or Config()
        self.rng = rng
        self.ds = durable.copy() if durable is not None else DurableState()
        ds = self.ds
        self.commit = ds.base
        while self.commit + 1 in ds.decided:
            self.commit += 1
        self.max_decided = max(ds.decided, default=self.commit)
        a = ds.base if applied is None else max(ds.base, min(applied, self.commit))
        self.applied = a
        self.emitted = a
        self.role = FOLLOWER
        self.leader: str | None = None
        self.leader_ballot: Ballot = ZERO
        self.max_round = ds.promised[0]
        self.now = 0.0
        self.started: float | None = None
        self.election_at = math.inf
        self.last_leader_contact = _NEVER
        self.heard: dict[str, float] = {}
        self.seen_commit = self.commit
        self.infer: tuple[Ballot, int] = (ZERO, 0)  # (leader ballot, its commit)
        self.fetch_until = _NEVER
        self.fetching: tuple[str, int] | None = None  # (peer, start) of our last fetch
        self.next_ping = _NEVER
        self.next_keepalive = _NEVER
        self.rnd: _Round | None = None
        self.ld: _Lead | None = None
        self.pv: tuple[int, set[str], float] | None = None  # pre-vote: (id, votes, deadline)
        # leader: (item, size, the member that forwarded it or None)
        self.queue: deque[tuple[Any, int, str | None]] = deque()
        self.queue_bytes = 0  # the sum of the queue's sizes
        # Set by the host: someone here watches the store, so the values we
        # miss as a non-voter should come promptly (Config.news_linger).
        self.watched = False
        # Set by the host: False while its data dir fails (see set_can_lead).
        self.can_lead = True
        self.orphans: list[Any] = []  # items queued when we lost leadership
        self.fwd_buf: list[Any] = []
        self.fwd_reads: dict[Any, tuple[str, float]] = {}
        self.peer_commit: dict[str, int] = {}  # what peers told us they have decided
        self._sizes: dict[int, int] = {}
        self._boot = False
        # A sole member coming back: nobody else can lead, so campaign at once
        # rather than after an election timeout (timing is never what keeps
        # Paxos safe; this only saves a second or two at restart).
        if ds.schedule and members_at(ds.schedule, self.applied + self.cfg.alpha) == {node_id}:
            self._boot = True
        self.bad_messages = 0
        # per member: thrifty accepts it was asked to vote on and did not in
        # time (the leader then asked every member); for the host to report
        self.late_votes: dict[str, int] = {}
        # Why this replica changed role, in words, for the host's log: an
        # operator reading "stepping down: ..." needs no debugger. The host
        # takes them (and clears the list) whenever it likes.
        self.notes: list[str] = []
        self._noted_contact = _NEVER  # last_leader_contact when we last said we lost it
        self._sched_ver = 0  # bumped when the schedule may have changed (caches below)
        self._newest_cache: tuple[Any, frozenset[str] | None] = (None, None)
        self._sets_cache: tuple[Any, list[frozenset[str]]] = (None, [])
        self._targets_cache: tuple[Any, list[str]] = (None, [])
        # outboxes
        self._persist: list[list] = []
        self._msgs: list[tuple[str, dict]] = []
        self._early: list[tuple[str, dict]] = []
        self._loopback: list[dict] = []
        self._read_states: list[tuple[Any, int]] = []
        self._read_failed: list[Any] = []
        self._need_snapshot: str | None = None
        self._suspects: list[str] = []
        self._handlers = {
            M.PREPARE: self._on_prepare,
            M.PROMISE: self._on_promise,
            M.REJECT: self._on_reject,
            M.ACCEPT: self._on_accept,
            M.ACCEPTED: self._on_accepted,
            M.COMMIT: self._on_commit,
            M.HEARTBEAT: self._on_heartbeat,
            M.HEARTBEAT_OK: self._on_heartbeat_ok,
            M.PREVOTE: self._on_prevote,
            M.PREVOTE_OK: self._on_prevote_ok,
            M.PING: self._on_ping,
            M.FORWARD: self._on_forward,
            M.READ: self._on_read,
            M.READ_OK: self._on_read_ok,
            M.READ_FAIL: self._on_read_fail,
            M.FETCH: self._on_fetch,
            M.ENTRIES: self._on_entries,
            M.SNAPSHOT: self._on_snapshot,
            M.TIMEOUT_NOW: self._on_timeout_now,
        }

    # ------------------------------------------------------------------ inputs

    def bootstrap(self, members: Iterable[str]) -> None:
        """Start a brand-new cluster whose first instances are governed by `members`."""
        if self.ds.schedule or self.commit:
            raise RuntimeError("bootstrap: this replica already has state")
        ms = sorted(set(members))
        self._record(["m", 1, ms])
        if ms == [self.id]:  # a lone first member elects itself at once
            self._boot = True
            if self.started is not None:
                self.election_at = self.now

    def tick(self, now: float) -> None:
        self._time(now)
        role = self.role
        if role == LEADER:
            ld = self.ld
            assert ld is not None
            if now >= ld.next_hb:
                self._heartbeat()
            if ld.props and self.role == LEADER:
                self._check_thrifty()
            if now >= ld.news_at and self.role == LEADER:
                self._tell_commit()
            if not self.can_lead and self.role == LEADER and now >= ld.transfer_until:
                self._hand_over()
        elif role == CANDIDATE:
            rnd = self.rnd
            assert rnd is not None
            if now >= rnd.deadline:
                self._say(f"campaign at ballot {_bs(rnd.ballot)} won no quorum in time")
                self._back_off()
            elif now >= rnd.next_resend:
                rnd.next_resend = now + self.cfg.heartbeat_interval
                done = rnd.done_nodes()
                for x in self._targets(rnd.start):
                    if x not in done:
                        self._send_prepare(x)
        elif role == PRECANDIDATE:
            assert self.pv is not None
            if now >= self.pv[2]:
                self._back_off()
        elif now >= self.election_at:
            if self._eligible() and (self.can_lead or self._newest() == {self.id}):
                lead = self.leader
                if lead not in (None, self.id) and self.last_leader_contact != self._noted_contact:
                    self._noted_contact = self.last_leader_contact  # once per silence
                    self._say(
                        f"no word from leader {lead} for "
                        f"{now - self.last_leader_contact:.1f}s: asking for pre-votes"
                    )
                self._start_prevote()
            else:
                self.election_at = now + self._rand_timeout()
        if self.role != LEADER:
            if self._eligible():
                self._maybe_fetch()
            elif now >= self.next_keepalive:
                self._keepalive()
        if now >= self.next_ping:
            self._ping()
        if self.fwd_reads:
            old = [r for r, (_, t) in self.fwd_reads.items() if now - t > 10 * self._et()]
            for r in old:
                del self.fwd_reads[r]
                self._read_failed.append(r)

    def receive(self, now: float, sender: str, msg: dict) -> None:
        self._time(now)
        if sender != self.id:  # our own vote, handed back after its fsync
            self.heard[sender] = now
        h = self._handlers.get(msg.get("t"))  # type: ignore[arg-type]
        if h is None:
            self.bad_messages += 1
            return
        try:
            h(sender, msg)
        except (KeyError, TypeError, IndexError, ValueError):
            self.bad_messages += 1

    def propose(self, items: list, now: float | None = None) -> None:
        """Queue items (opaque, JSON-able) for the log. A non-leader forwards them to the
        leader it knows, or drops them if it knows none (the host retries). `now`,
        if given, times the accepts they start (else the last tick's or message's)."""
        if now is not None:
            self._time(now)
        if self.role == LEADER:
            self._enqueue(items, None)
        elif self.leader is not None and self.leader != self.id:
            self.fwd_buf.extend(items)

    def read_index(self, req_id: Any) -> None:
        """Ask for a read index (req_id: JSON-able, unique per node). The answer comes in
        Ready.read_states or Ready.read_failed."""
        if self.role == LEADER:
            assert self.ld is not None
            self.ld.reads_waiting.append((req_id, None))
        elif self.leader is not None and self.leader != self.id:
            self.fwd_reads[req_id] = (self.leader, self.now)
            self._send(self.leader, {"t": M.READ, "id": req_id})
        else:
            self._read_failed.append(req_id)

    def set_membership(self, after_instance: int, members: Iterable[str]) -> None:
        """The host applied instance `after_instance` (call it after every applied instance,
        in order) and its state machine's member set is now `members`. That set governs
        instances from after_instance + alpha on, on every node."""
        if after_instance > self.applied:
            self.applied = after_instance
        if after_instance < self.ds.base:
            return
        ms = members if isinstance(members, frozenset) else frozenset(members)
        first = after_instance + self.cfg.alpha
        prev = members_at(self.ds.schedule, first)
        if prev != ms:
            self._record(["m", first, sorted(ms)])
            for x in sorted(ms):
                if prev is None or x not in prev:
                    # a node (re)entering the set: its old silence must not
                    # get it evicted again at once (claim/evict livelock)
                    self.heard[x] = self.now
                else:
                    self.heard.setdefault(x, self.now)

    def install_snapshot(self, instance: int, schedule: Schedule) -> bool:
        """The host replaced its state machine with a snapshot taken at `instance` on a
        peer; `schedule` is that peer's `membership_schedule(instance)`."""
        if instance < self.applied or (instance == self.applied and self.ds.schedule):
            return False
        self._record(["s", instance, schedule_to_wire(schedule)])
        self.commit = max(self.commit, instance)
        while self.commit + 1 in self.ds.decided:
            self.commit += 1
        self.max_decided = max(self.max_decided, self.commit)
        self.applied = self.emitted = instance
        self.seen_commit = max(self.seen_commit, self.commit)
        self._sizes = {i: s for i, s in self._sizes.items() if i > instance}
        self._need_snapshot = None
        self.fetch_until = _NEVER
        self.next_keepalive = _NEVER
        for ms in sets_between(self.ds.schedule, instance + 1, instance + self.cfg.alpha):
            for x in sorted(ms):
                self.heard.setdefault(x, self.now)
        return True

    def membership_schedule(self, instance: int) -> Schedule:
        """Member sets governing instances after `instance` (for a snapshot taken there)."""
        out: Schedule = []
        for first, ms in self.ds.schedule:
            if first <= instance + 1:
                out = [(first, ms)]
            elif first <= instance + self.cfg.alpha:
                out.append((first, ms))
        return out

    def compact(self, upto: int) -> None:
        """The host holds a durable snapshot covering instances <= upto: forget them."""
        upto = min(upto, self.applied)
        if upto <= self.ds.base:
            return
        self._record(["c", upto])
        self._sizes = {i: s for i, s in self._sizes.items() if i > upto}

    def transfer_leadership(self) -> str | None:
        """Leader only: make the most up-to-date live member elect itself now. Returns it."""
        if self.role != LEADER:
            return None
        ld = self.ld
        rnd = self.rnd
        assert ld is not None and rnd is not None
        newest = self._newest() or frozenset()
        et = self._et()
        live = [
            x for x in sorted(newest) if x != self.id and self.now - ld.ack_time.get(x, _NEVER) < et
        ]
        if not live:
            return None
        best = max(ld.peer_commit.get(x, -1) for x in live)
        x = self.rng.choice([x for x in live if ld.peer_commit.get(x, -1) == best])
        self._send(x, {"t": M.TIMEOUT_NOW, "b": rnd.blist})
        ld.transfer_until = self.now + et
        return x

    def set_can_lead(self, ok: bool) -> None:
        """The host's data dir fails (False) or works again (True). A replica
        that cannot persist cannot count its own votes, and its prepares
        wait for an fsync that never succeeds: as leader it would hold the
        cluster's writes while the other members could take them. So it
        hands leadership to a live member once enough are live to elect one
        without us (again each election timeout until one takes it), and it
        neither campaigns nor takes a handed-over
        leadership until its disk works again, unless it is the only member."""
        if ok == self.can_lead:
            return
        self.can_lead = ok
        if ok:
            return
        if self.role == LEADER:
            self._hand_over()
        elif self.role in (PRECANDIDATE, CANDIDATE):
            self._say("data dir failing: giving up this campaign")
            self._back_off()

    def _hand_over(self) -> None:
        # Only to members that can elect one of them without our promise
        # (held behind our failing fsync). With fewer live, handing over
        # would leave no leader at all, where we still serve linearizable
        # reads; we hand over once enough of them are back.
        ld = self.ld
        assert ld is not None
        ms = self._newest() or frozenset()
        et = self._et()
        live = sum(1 for x in ms if x != self.id and self.now - ld.ack_time.get(x, _NEVER) < et)
        if live < majority(ms):
            return
        to = self.transfer_leadership()
        if to is not None:
            self._say(f"data dir failing: handing leadership to {to}")

    def campaign(self) -> bool:
        """Start phase 1 now, skipping the pre-vote (as a leader transfer does). Safe at
        any time; used by tests to provoke duelling leaders. False if not a member."""
        if not self._eligible():
            return False
        self._start_phase1()
        return True

    # ------------------------------------------------------------------ output

    def has_ready(self) -> bool:
        self._pump()
        return self._has_output()

    def _has_output(self) -> bool:
        return bool(
            self._persist
            or self._msgs
            or self._early
            or self._loopback
            or self.emitted < self.commit
            or self._read_states
            or self._read_failed
            or self._need_snapshot
            or self._suspects
        )

    def ready(self) -> Ready:
        self._pump()
        if not self._has_output():
            return _EMPTY  # a host's last call of each pass: nothing to build
        decided = []
        while self.emitted < self.commit:
            i = self.emitted + 1
            decided.append((i, self.ds.decided[i]))
            self.emitted = i
        rd = Ready(
            self._persist,
            self._msgs,
            decided,
            self._read_states,
            self._read_failed,
            self._need_snapshot,
            self._suspects,
            self._early,
            self._loopback,
        )
        self._persist = []
        self._msgs = []
        self._early = []
        self._loopback = []
        self._read_states = []
        self._read_failed = []
        self._need_snapshot = None
        self._suspects = []
        return rd

    def advance(self) -> None:
        """The host has persisted, sent and applied the last Ready. (Outputs are handed
        over by `ready()`; this marks the step for hosts written against RawNode.)"""

    # ------------------------------------------------------------------ views

    @property
    def is_leader(self) -> bool:
        return self.role == LEADER

    def members(self) -> frozenset[str]:
        """The newest member set known (governing applied + alpha)."""
        return self._newest() or frozenset()

    def is_member(self) -> bool:
        return self._eligible()

    # ------------------------------------------------------------------ plumbing

    def _time(self, now: float) -> None:
        if self.started is None:
            self.started = now
            self.now = now
            self.election_at = now if self._boot else now + self._rand_timeout()
            self.next_ping = now
            self.next_keepalive = now
        elif now > self.now:
            gap = now - self.now
            if gap > self._et() / 2:
                self._resumed(gap)
            self.now = now

    def _resumed(self, gap: float) -> None:
        """The host has not driven us for `gap` seconds (its loop stalled, the
        process was paused, its clock jumped): what peers sent meanwhile waits
        unread, so that time is not their silence. The clocks that judge
        silence move on by the gap, as etcd's logical ticks do by
        construction. Without this a leader back from a stall longer than the
        election timeout stepped down at its first tick (timers run before
        the loop reads its sockets), and a follower called an election while
        the leader's heartbeats sat in its socket. Normal ticks come at most a
        quarter heartbeat apart, far below this threshold."""
        self.last_leader_contact += gap
        self._noted_contact += gap
        self.election_at += gap
        heard = self.heard
        for x in heard:
            heard[x] += gap
        if self.ld is not None:
            acks = self.ld.ack_time
            for x in acks:
                acks[x] += gap

    def _et(self) -> float:
        return self.cfg.election_timeout

    def _rand_timeout(self) -> float:
        return self.cfg.election_timeout * (1.0 + self.rng.random())

    def _record(self, rec: list) -> None:
        self.ds.apply(rec)
        self._persist.append(rec)
        if rec[0] in ("m", "s", "c"):
            self._sched_ver += 1

    def _say(self, text: str) -> None:
        notes = self.notes
        notes.append(text)
        if len(notes) > 64:  # a host that never reads them (a test) keeps the newest
            del notes[:32]

    def _send(self, to: str, msg: dict) -> None:
        if to != self.id:
            (self._early if msg["t"] in _EARLY else self._msgs).append((to, msg))

    def _known_hi(self) -> int:
        return self.applied + self.cfg.alpha

    def _newest(self) -> frozenset[str] | None:
        key = (self._known_hi(), self._sched_ver)
        if self._newest_cache[0] != key:
            self._newest_cache = (key, members_at(self.ds.schedule, key[0]))
        return self._newest_cache[1]

    def _eligible(self) -> bool:
        ms = self._newest()
        return ms is not None and self.id in ms

    def _sets(self, lo: int) -> list[frozenset[str]]:
        key = (lo, self._known_hi(), self._sched_ver)
        if self._sets_cache[0] != key:
            self._sets_cache = (key, sets_between(self.ds.schedule, lo, max(lo, key[1])))
        return self._sets_cache[1]

    def _targets(self, lo: int) -> list[str]:
        """Every member of a set governing [lo, applied + alpha], but us (sorted, so a
        simulation replays exactly whatever the hash seed). Do not change it:
        the list is cached while the sets stay the same."""
        sets = self._sets(lo)
        cached, targets = self._targets_cache
        if cached == sets:  # the same set objects, mostly: compared by identity
            return targets
        out: set[str] = set()
        for ms in sets:
            out |= ms
        out.discard(self.id)
        targets = sorted(out)
        self._targets_cache = (sets, targets)
        return targets

    def _size(self, i: int) -> int:
        s = self._sizes.get(i)
        if s is None:
            s = self._sizes[i] = size_of(self.ds.decided[i])
        return s

    def _enqueue(self, items: Iterable[Any], sender: str | None) -> None:
        q = self.queue
        n = 0
        for it in items:
            s = size_of(it)
            q.append((it, s, sender))
            n += s
        self.queue_bytes += n

    def _full_batch_queued(self) -> bool:
        cfg = self.cfg
        return len(self.queue) >= cfg.max_batch_items or self.queue_bytes >= cfg.max_batch_bytes

    # ------------------------------------------------------------------ learning

    def _learn(self, i: int, v: list) -> None:
        ds = self.ds
        if i <= ds.base or i in ds.decided:
            return
        acc = ds.accepted.get(i)
        if acc is not None and acc[1] is v:
            self._record(["d", i])
        else:
            self._record(["d", i, v])
        if i > self.max_decided:
            self.max_decided = i
        c = self.commit
        while c + 1 in ds.decided:
            c += 1
        self.commit = c
        if c > self.seen_commit:
            self.seen_commit = c

    def _learn_commit(self, b: Ballot, c: int) -> None:
        """The leader of ballot b says every instance <= c is decided."""
        if self.leader is not None and b == self.leader_ballot:
            self._note(self.leader, c)
        if b >= self.infer[0]:
            self.infer = (b, max(c, self.infer[1]) if b == self.infer[0] else c)
        b, c = self.infer
        acc_map = self.ds.accepted
        while self.commit < c:
            i = self.commit + 1
            acc = acc_map.get(i)
            if acc is None or acc[0] != b:
                break
            self._learn(i, acc[1])
        if self.commit < self.seen_commit and self.role != LEADER:
            self._maybe_fetch()

    def _maybe_fetch(self) -> None:
        if self.commit >= self.seen_commit or self.now < self.fetch_until:
            return
        to = None
        known = self.peer_commit
        if self.role == LEADER:
            to = self.rnd.best if self.rnd is not None else None
        elif self.leader is not None and known.get(self.leader, self.seen_commit) > self.commit:
            to = self.leader
        if to is None or to == self.id:
            ahead = [(c, x) for x, c in sorted(known.items()) if c > self.commit and x != self.id]
            if ahead:
                to = max(ahead)[1]
            else:
                peers = self._targets(self.commit + 1)
                if not peers:
                    return
                to = self.rng.choice(peers)
        self._fetch(to)

    def _note(self, x: str, c: int) -> None:
        """Peer x has decided everything up to c."""
        if c > self.peer_commit.get(x, -1):
            self.peer_commit[x] = c
        if c > self.seen_commit:
            self.seen_commit = c

    def _fetch(self, to: str) -> None:
        self.fetch_until = self.now + 2 * self.cfg.heartbeat_interval
        self.fetching = (to, self.commit + 1)
        self._send(to, {"t": M.FETCH, "s": self.commit + 1})

    def _keepalive(self) -> None:
        """Non-members: (re)register with the leader as a learner and catch up."""
        now = self.now
        et = self._et()
        self.next_keepalive = now + et
        to = self.leader if self.leader not in (None, self.id) else None
        started = self.started if self.started is not None else now
        silent = now - self.heard.get(to or "", _NEVER) > 3 * et and now - started > 3 * et
        if to is not None and silent:
            to = None  # a silent leader: ask around
        if to is None:
            ms = self._newest() or frozenset()
            peers = {x for x, t in self.heard.items() if now - t < 3 * et} | ms
            peers.discard(self.id)
            if not peers:
                return
            to = self.rng.choice(sorted(peers))
        self._fetch(to)

    def _entries_from(self, s: int) -> tuple[list, int]:
        out = []
        size = 0
        i = s
        dec = self.ds.decided
        limit = self.cfg.fetch_max_bytes
        while i in dec:
            sz = self._size(i)
            if out and size + sz > limit:
                break
            out.append(dec[i])
            size += sz
            i += 1
        return out, i

    # ------------------------------------------------------------------ roles

    def _back_off(self) -> None:
        self.role = FOLLOWER
        self.rnd = None
        self.pv = None
        self.election_at = self.now + self._rand_timeout()

    def _step_down(self) -> None:
        if self.role == LEADER:
            ld = self.ld
            assert ld is not None
            for req, origin in ld.reads_waiting:
                self._fail_read(req, origin)
            for _, _, req, origin in ld.reads:
                self._fail_read(req, origin)
            self.orphans.extend(it for it, _, _ in self.queue)
            self.queue.clear()
            self.queue_bytes = 0
        if self.leader == self.id:
            self.leader = None
        self._back_off()
        self.ld = None

    def _fail_read(self, req: Any, origin: str | None) -> None:
        if origin is None:
            self._read_failed.append(req)
        else:
            self._send(origin, {"t": M.READ_FAIL, "id": req})

    def _saw_ballot(self, b: Ballot) -> None:
        """Someone holds ballot b: yield if we lead or campaign with a lower one."""
        if b[0] > self.max_round:
            self.max_round = b[0]
        if self.role in (LEADER, CANDIDATE):
            assert self.rnd is not None
            if self.rnd.ballot < b:
                self._say(f"stepping down: ballot {_bs(b)} is above ours")
                self._step_down()
        elif self.role == PRECANDIDATE:
            self._back_off()

    def _saw_leader(self, x: str, b: Ballot) -> None:
        """A valid message from the leader of ballot b."""
        self._saw_ballot(b)
        if b >= self.leader_ballot:
            if self.leader != x:
                self.leader = x
                self._leader_changed()
            self.leader_ballot = b
        if self.leader == x:
            self.last_leader_contact = self.now
            if self.role == FOLLOWER:
                self.election_at = self.now + self._rand_timeout()

    def _leader_changed(self) -> None:
        lead = self.leader
        if self.fwd_reads:
            stale = [r for r, (to, _) in self.fwd_reads.items() if to != lead]
            for r in stale:
                del self.fwd_reads[r]
                self._read_failed.append(r)
        if self.orphans and lead is not None and lead != self.id:
            self.fwd_buf.extend(self.orphans)
            self.orphans = []

    def _start_prevote(self) -> None:
        r = self.max_round + 1
        votes = {self.id}
        self.role = PRECANDIDATE
        self.pv = (r, votes, self.now + self._rand_timeout())
        msg = {"t": M.PREVOTE, "r": r, "d": self.commit}
        for x in self._targets(self.commit + 1):
            self._send(x, msg)
        self._check_prevote()

    def _check_prevote(self) -> None:
        pv = self.pv
        if (
            self.role == PRECANDIDATE
            and pv is not None
            and has_quorums(pv[1], self._sets(self.commit + 1))
        ):
            self._start_phase1()

    def _start_phase1(self) -> None:
        if self.role == LEADER:
            self._step_down()  # a new ballot of our own: fail reads, keep the queue
        b: Ballot = (max(self.max_round, self.ds.promised[0]) + 1, self.id)
        self.max_round = b[0]
        self.pv = None
        self._say(f"campaigning at ballot {_bs(b)}")
        self._record(["p", wire(b)])
        if self.leader == self.id:
            self.leader = None
        rnd = _Round(b, self.commit + 1)
        self.role = CANDIDATE
        self.rnd = rnd
        rnd.deadline = self.now + self._rand_timeout()
        rnd.next_resend = self.now + self.cfg.heartbeat_interval
        entries, _ = report(self.ds, self.commit, self.max_decided, rnd.start, None)
        self._add_report(self.id, self.commit, entries, None)
        for x in self._targets(rnd.start):
            self._send_prepare(x)
        self._check_phase1()

    def _send_prepare(self, x: str) -> None:
        rnd = self.rnd
        assert rnd is not None
        rep = rnd.reports.get(x)
        s = rep.next if rep is not None and rep.next is not None else rnd.start
        rnd.prep_sent[x] = self.now
        self._send(x, {"t": M.PREPARE, "b": rnd.blist, "s": s})

    def _add_report(self, x: str, d: int, entries: list, nxt: int | None) -> None:
        rnd = self.rnd
        assert rnd is not None
        rep = rnd.reports.get(x)
        if rep is None:
            rep = rnd.reports[x] = _Report()
        if d > rep.d:
            rep.d = d
        if d > rnd.max_d:
            rnd.max_d = d
            rnd.best = x
        self._note(x, d)
        props = self.ld.props if self.ld is not None else None
        for i, bw, v in entries:
            if i > rnd.max_rep:
                rnd.max_rep = i
            if bw is None:
                if props is None or i not in props:
                    self._learn(i, v)
            else:
                rep.entries[i] = (ballot_of(bw), v)
        rep.next = nxt
        if nxt is None:
            rep.done = True

    def _check_phase1(self) -> None:
        rnd = self.rnd
        if self.role != CANDIDATE or rnd is None:
            return
        if has_quorums(rnd.done_nodes(), self._sets(rnd.start)):
            self._become_leader()

    def _become_leader(self) -> None:
        rnd = self.rnd
        assert rnd is not None
        self.role = LEADER
        self.leader = self.id
        self.leader_ballot = rnd.ballot
        self._leader_changed()
        # Every member gets its check-quorum grace from the first heartbeat
        # (sent below), as a member joining later does from its first.
        self.ld = _Lead(self.now, max(self.commit, rnd.max_d) + 1, self.commit)
        if self.orphans or self.fwd_buf:
            self._enqueue(self.orphans, None)
            self._enqueue(self.fwd_buf, None)
            self.orphans = []
            self.fwd_buf = []
        self._heartbeat()
        self._pump()

    # ------------------------------------------------------------------ leader

    def _p1_ok(self, ms: frozenset[str]) -> bool:
        rnd = self.rnd
        assert rnd is not None
        n = 0
        for x in sorted(ms):
            r = rnd.reports.get(x)
            if r is not None and r.done:
                n += 1
        return n >= majority(ms)

    def _choose(self, j: int) -> list:
        rnd = self.rnd
        assert rnd is not None
        best: tuple[Ballot, list] | None = None
        for rep in rnd.reports.values():
            e = rep.entries.get(j)
            if e is not None and (best is None or e[0] > best[0]):
                best = e
        return best[1] if best is not None else []

    def _take_batch(self) -> tuple[list, frozenset[str]]:
        """The next batch from the queue, and the members that forwarded its items."""
        q = self.queue
        cfg = self.cfg
        batch: list = []
        senders: set[str] = set()
        size = 0
        while q and len(batch) < cfg.max_batch_items:
            it, s, x = q[0]
            if batch and size + s > cfg.max_batch_bytes:
                break
            q.popleft()
            batch.append(it)
            size += s
            if x is not None:
                senders.add(x)
        self.queue_bytes -= size
        return batch, frozenset(senders)

    def _pump(self) -> None:
        """Leader: start what instances we can; everyone: flush forwards."""
        if self.fwd_buf:
            self._flush_forwards()
        if self.role != LEADER:
            return
        ld, rnd = self.ld, self.rnd
        assert ld is not None and rnd is not None
        if not self._eligible():
            self._resign()
            return
        if ld.next <= rnd.max_d:
            ld.next = rnd.max_d + 1
        if self.commit < rnd.max_d:
            self._maybe_fetch()
        limit = self._known_hi()
        rec_end = rnd.max_rep
        ds = self.ds
        if (not self.queue and ld.next > rec_end) or self.now < ld.transfer_until:
            limit = 0  # nothing to propose, or handing over
        while ld.next <= limit:
            j = ld.next
            if j <= ds.base or j in ds.decided:
                ld.next = j + 1
                continue
            ms = members_at(ds.schedule, j)
            if ms is None:
                break
            if not self._p1_ok(ms):
                for x in sorted(ms):
                    r = rnd.reports.get(x)
                    if (r is None or not r.done) and self.now - rnd.prep_sent.get(
                        x, _NEVER
                    ) >= self.cfg.heartbeat_interval:
                        self._send_prepare(x)
                break
            waiting: frozenset[str] = frozenset()
            if j <= rec_end:
                v = self._choose(j)
            elif self.queue and (not ld.props or self._full_batch_queued()):
                # Nagle's rule for instances: while one of ours is in flight,
                # what queues waits for its decision and then goes as one
                # instance, unless a full batch is waiting. Every instance
                # costs each member a log record, a share of an fsync, a
                # message each way and a pass through its loop, so under load
                # fewer, fuller instances buy more writes per second (here
                # ~+8 % at 64 clients, +2.5 % at 16) than pipelining small
                # ones; a lone write still goes at once.
                v, waiting = self._take_batch()
            else:
                break
            self._start_instance(j, v, ms, waiting)
            ld.next = j + 1
            if self.role != LEADER:
                return
        if self.commit > ld.sent_commit:
            self._tell_commit(lazy=True)
        if ld.learners:
            self._push_learners()
        if ld.reads_waiting and not ld.reads and self._read_ready():
            self._heartbeat()

    def _start_instance(self, j: int, v: list, ms: frozenset[str], waiting: frozenset[str]) -> None:
        ld, rnd = self.ld, self.rnd
        assert ld is not None and rnd is not None
        p = _Proposal(v, self.now, waiting)
        ld.props[j] = p
        we_vote = self.id in ms and rnd.ballot >= self.ds.promised
        caught_up = not ld.own_wait  # every earlier vote of ours is on our disk
        if we_vote:
            self._record(["a", j, rnd.blist, v])
            # Our own vote counts once it is on our disk: the host hands this
            # back after the fsync, while the accepts below go out at once, so
            # our fsync and the followers' run side by side.
            self._loopback.append({"t": M.ACCEPTED, "b": rnd.blist, "i": j})
            wait = ld.own_wait
            # when it went out; nan when we were behind (it would time the
            # backlog, not the disk)
            wait[j] = self.now if caught_up else math.nan
            if len(wait) > 4 * self.cfg.alpha:  # our disk has stopped: keep it bounded
                del wait[next(iter(wait))]
        c = self.commit
        msg = {"t": M.ACCEPT, "b": rnd.blist, "i": j, "v": v, "c": c}
        voters = self._voters(ms, we_vote and caught_up)
        told, owed = ld.told, ld.skipped
        for x in voters:
            s = owed.get(x)
            if s is not None and s <= c:
                self._send_owed(x, s, c)  # first, or the accept's commit sends it fetching
            self._send(x, msg)
            told[x] = c
        if len(voters) < len(ms) - (self.id in ms):
            p.skipped = tuple(sorted(x for x in ms if x != self.id and x not in voters))
            for x in p.skipped:
                ld.skipped.setdefault(x, j)
        elif c > ld.sent_commit:
            sets = self._sets(c + 1)
            if len(sets) == 1 and sets[0] == ms:
                ld.sent_commit = c  # the accept told everyone: no commit notice
        if len(p.acks) >= majority(ms):
            self._chosen(j)

    def _voters(self, ms: frozenset[str], we_vote: bool) -> list[str]:
        """The members an accept goes to. Thrifty: only as many as a quorum
        needs besides our own vote, if our own vote will come promptly (every
        earlier one is on our disk: not while a snapshot or a backlog holds
        our disk). Each member that gets an accept must fsync it and answer,
        and here every member's fsyncs share one disk and two cores: leaving
        the third member out took ~10 % off a sequential write's latency.
        Members heard from lately go first, then those found slow to vote
        longest ago."""
        others = sorted(x for x in ms if x != self.id)
        ld = self.ld
        assert ld is not None
        if not we_vote or not self.cfg.thrifty or self.now < ld.full_until:
            return others
        need = majority(ms) - 1
        if need >= len(others):
            return others
        if ld.own_avg > 2 * ld.peer_avg:
            return others  # our disk is the slow one: let the members outvote it
        now = self.now
        quiet = 2 * self.cfg.heartbeat_interval
        heard, demoted = self.heard, ld.demoted
        others.sort(key=lambda x: (now - heard.get(x, _NEVER) > quiet, demoted.get(x, _NEVER)))
        return others[:need]

    def _check_thrifty(self) -> None:
        """Leader, on each tick: an accept that skipped members and is not
        chosen in time goes to them too, its slow voters rank last from now
        on, and every member votes again for a while."""
        ld, rnd = self.ld, self.rnd
        assert ld is not None and rnd is not None
        now = self.now
        wait = self._thrifty_wait()
        for j, p in ld.props.items():
            if not p.skipped or now < p.born + wait:  # as deadline() computes it
                continue
            ms = members_at(self.ds.schedule, j) or frozenset()
            for x in ms:
                if x != self.id and x not in p.acks and x not in p.skipped:
                    ld.demoted[x] = now
                    self.late_votes[x] = self.late_votes.get(x, 0) + 1
            c = self.commit
            msg = {"t": M.ACCEPT, "b": rnd.blist, "i": j, "v": p.value, "c": c}
            for x in p.skipped:
                s = ld.skipped.get(x)
                if s is not None and s <= c:
                    self._send_owed(x, s, c)  # lingering news first, as _start_instance
                self._send(x, msg)
            p.skipped = ()
            ld.full_until = now + self._et()

    def idle(self) -> bool:
        """Nothing in flight that a tick may have to move on (resends,
        fallbacks, news, catching up): only the heartbeat and election timers
        run, and the host may tick less often (a few times a heartbeat)."""
        if self.queue or self.fwd_buf or self.fwd_reads or self.commit < self.seen_commit:
            return False
        if self.role == FOLLOWER:
            return True
        ld = self.ld
        if self.role != LEADER or ld is None:
            return False  # campaigning
        return not (
            ld.props
            or ld.reads
            or ld.reads_waiting
            or ld.learners
            or ld.news_at < math.inf
            or self.commit > ld.sent_commit
        )

    def deadline(self) -> float | None:
        """The earliest time a tick has work to do that cannot wait for the
        host's regular tick: an accept's fallback to every member, or news
        lingering for a member that did not vote (a tick any earlier is
        harmless)."""
        ld = self.ld
        if ld is None or self.role != LEADER:
            return None
        born = min((p.born for p in ld.props.values() if p.skipped), default=math.inf)
        due = born + self._thrifty_wait()
        return None if due == math.inf else due

    def _thrifty_wait(self) -> float:
        ld = self.ld
        assert ld is not None
        return max(self.cfg.thrifty_wait, 4 * max(ld.own_avg, ld.peer_avg))

    def _tell_commit(self, lazy: bool = False) -> None:
        """Leader: tell each member our commit. A member some accepts skipped
        gets the values decided since, which it has nowhere else; `lazy`, they
        wait up to Config.news_linger unless its clients wait on them.

        Each message costs its receiver a pass through its loop, whatever it
        holds: gathering a sequential writer's values cut the non-voting
        member's CPU per write from ~90 to ~30 us here (docs/architecture.md)."""
        ld, rnd = self.ld, self.rnd
        assert ld is not None and rnd is not None
        c = self.commit
        ld.sent_commit = c
        msg = None
        told, skipped, eager, watched = ld.told, ld.skipped, ld.eager, ld.watched
        if lazy and self.now >= ld.news_at:
            lazy = False  # lingered long enough: this decision takes it along
        linger = self.cfg.news_linger if lazy else 0.0
        if not lazy:
            ld.news_at = math.inf
        for x in self._targets(c + 1):
            s = skipped.get(x)
            if s is not None and s <= c:
                if linger > 0 and x not in eager and x not in watched:
                    if ld.news_at == math.inf:
                        ld.news_at = self.now + linger
                    continue  # not told: an accept to it sends these first
                self._send_owed(x, s, c)
            elif told.get(x, -1) < c:
                if msg is None:
                    msg = {"t": M.COMMIT, "b": rnd.blist, "c": c}
                self._send(x, msg)
            told[x] = c

    def _send_owed(self, x: str, s: int, c: int) -> None:
        """Send member x the decided values from s (the first an accept
        skipped it for) on, with our commit c."""
        ld = self.ld
        assert ld is not None
        ents, _ = self._entries_from(s)
        self._send(x, {"t": M.ENTRIES, "s": s, "e": ents, "c": c, "l": self.id})
        ld.eager.discard(x)
        # What did not fit, it fetches: it sees our commit.
        nxt = [k for k, p in ld.props.items() if x in p.skipped]
        if nxt:
            ld.skipped[x] = min(nxt)
        else:
            del ld.skipped[x]

    def _chosen(self, j: int) -> None:
        ld = self.ld
        assert ld is not None
        p = ld.props.pop(j)
        if p.waiting:
            ld.eager.update(x for x in p.waiting if x in ld.skipped)
        self._learn(j, p.value)

    def _resign(self) -> None:
        """We are no longer in the newest member set: hand over and step down."""
        self.transfer_leadership()
        self._step_down()

    def _heartbeat(self) -> None:
        ld, rnd = self.ld, self.rnd
        assert ld is not None and rnd is not None
        now = self.now
        hb = self.cfg.heartbeat_interval
        ld.round += 1
        ld.next_hb = now + hb
        if ld.reads_waiting and self._read_ready():
            for req, origin in ld.reads_waiting:
                ld.reads.append((ld.round, self.commit, req, origin))
            ld.reads_waiting = []
        msg = {"t": M.HEARTBEAT, "b": rnd.blist, "r": ld.round, "c": self.commit}
        ack_time, counted = ld.ack_time, ld.counted
        targets = self._targets(self.commit + 1)
        if self.commit > ld.sent_commit or ld.news_at < math.inf:
            self._tell_commit()  # values first: members skipped need them to apply
        for x in targets:
            self._send(x, msg)
            if x not in counted:
                # A member new to the sets check-quorum counts (all of them
                # at an election; later a join, or a member added back) has
                # had no heartbeat of ours to answer yet: grace until it can.
                ack_time[x] = now
        ld.counted = frozenset(targets)
        ld.sent_commit = max(ld.sent_commit, self.commit)
        sched = self.ds.schedule
        for j, p in ld.props.items():
            if now - p.sent >= hb:
                p.sent = now
                p.skipped = ()
                ms = members_at(sched, j) or frozenset()
                amsg = {"t": M.ACCEPT, "b": rnd.blist, "i": j, "v": p.value, "c": self.commit}
                for x in sorted(ms):
                    if x not in p.acks:
                        self._send(x, amsg)
        if now - ld.since >= self._et():
            et = self._et()
            recent = {x for x, t in ack_time.items() if now - t < et}
            recent.add(self.id)
            if not has_quorums(recent, self._sets(self.commit + 1)):
                quiet = ", ".join(
                    f"{x} {now - ack_time[x]:.1f}s" if x in ack_time else f"{x} never"
                    for x in targets
                    if x not in recent
                )
                self._say(f"stepping down: no quorum answered within {et:.1f}s (silent: {quiet})")
                self._step_down()
                return
        self._check_suspects()
        self._serve_reads()
        if ld.learners:
            stale = [x for x, (_, t) in ld.learners.items() if now - t > 3 * self._et()]
            for x in stale:
                del ld.learners[x]

    def _read_ready(self) -> bool:
        rnd = self.rnd
        assert rnd is not None
        if self.commit < max(rnd.max_d, rnd.max_rep):
            return False
        return has_quorums(rnd.done_nodes(), self._sets(self.commit + 1))

    def _serve_reads(self) -> None:
        ld = self.ld
        assert ld is not None
        if not ld.reads:
            return
        conf = ld.round
        for ms in self._sets(self.commit + 1):
            rounds = sorted(
                (ld.round if x == self.id else ld.acked.get(x, 0) for x in ms), reverse=True
            )
            conf = min(conf, rounds[majority(ms) - 1])
        keep = []
        for r in ld.reads:
            if r[0] <= conf:
                _, idx, req, origin = r
                if origin is None:
                    self._read_states.append((req, idx))
                else:
                    self._send(origin, {"t": M.READ_OK, "id": req, "i": idx})
            else:
                keep.append(r)
        ld.reads = keep
        if not keep and ld.reads_waiting and self._read_ready():
            self._heartbeat()

    def _check_suspects(self) -> None:
        ld = self.ld
        assert ld is not None
        newest = self._newest()
        if newest is None:
            return
        if newest != ld.suspect_set:
            ld.suspect_set = newest
            ld.suspected = {}
        now = self.now
        mt = self.cfg.member_timeout
        fresh = 2 * self._et()
        start = self.started if self.started is not None else now
        need = majority(newest)
        for m in sorted(newest):
            if m == self.id:
                continue
            t = ld.suspected.get(m)
            if t is not None and now - t < mt:
                continue
            n = 1 if now - self.heard.get(m, start) >= mt else 0
            for x in newest:
                if x == m or x == self.id:
                    continue
                rep = ld.reports.get(x)
                if rep is not None and now - rep[0] <= fresh and m in rep[1]:
                    n += 1
            if n >= need:
                ld.suspected[m] = now
                self._suspects.append(m)

    def _my_suspicions(self) -> list[str]:
        newest = self._newest()
        if not newest:
            return []
        now = self.now
        mt = self.cfg.member_timeout
        start = self.started if self.started is not None else now
        return [m for m in sorted(newest) if m != self.id and now - self.heard.get(m, start) >= mt]

    def _push_learners(self) -> None:
        ld = self.ld
        assert ld is not None
        for x, st in ld.learners.items():
            nxt = st[0]
            if nxt > self.commit:
                continue
            if nxt <= self.ds.base:
                self._send(x, {"t": M.SNAPSHOT, "base": self.ds.base})
                st[0] = self.commit + 1
                continue
            ents, end = self._entries_from(nxt)
            if ents:
                self._send(x, {"t": M.ENTRIES, "s": nxt, "e": ents, "c": self.commit, "l": self.id})
            st[0] = end

    def _flush_forwards(self) -> None:
        lead = self.leader
        if self.role == LEADER:
            self._enqueue(self.fwd_buf, None)
            self.fwd_buf = []
            return
        if lead is None or lead == self.id:
            self.fwd_buf = []
            return
        chunk: list = []
        size = 0
        for it in self.fwd_buf:
            s = size_of(it)
            if chunk and size + s > self.cfg.max_batch_bytes:
                self._send(lead, {"t": M.FORWARD, "items": chunk})
                chunk, size = [], 0
            chunk.append(it)
            size += s
        if chunk:
            self._send(lead, {"t": M.FORWARD, "items": chunk})
        self.fwd_buf = []

    def _ping(self) -> None:
        self.next_ping = self.now + self.cfg.ping_interval
        if not self._eligible():
            return
        newest = self._newest()
        assert newest is not None
        msg = {"t": M.PING}
        for x in sorted(newest):
            self._send(x, msg)

    # ------------------------------------------------------------------ handlers

    def _reject(self, x: str) -> None:
        self._send(x, {"t": M.REJECT, "b": wire(max(self.ds.promised, self.leader_ballot))})

    def _on_prepare(self, x: str, m: dict) -> None:
        b = ballot_of(m["b"])
        ds = self.ds
        if b < ds.promised:
            self._reject(x)
            return
        if b > ds.promised:
            self._record(["p", wire(b)])
            self._saw_ballot(b)
            if self.leader is not None and self.leader != x:
                self.leader = None
                self._leader_changed()
            if self.role == FOLLOWER:
                self.election_at = self.now + self._rand_timeout()
        entries, nxt = report(ds, self.commit, self.max_decided, m["s"], self.cfg.fetch_max_bytes)
        msg = {"t": M.PROMISE, "b": m["b"], "d": self.commit, "a": entries}
        if nxt is not None:
            msg["n"] = nxt
        self._send(x, msg)

    def _on_promise(self, x: str, m: dict) -> None:
        rnd = self.rnd
        if rnd is None or self.role not in (CANDIDATE, LEADER) or ballot_of(m["b"]) != rnd.ballot:
            return
        nxt = m.get("n")
        self._add_report(x, m["d"], m["a"], nxt)
        if nxt is not None:
            self._send_prepare(x)
        self._check_phase1()

    def _on_reject(self, x: str, m: dict) -> None:
        b = ballot_of(m["b"])
        if b[0] > self.max_round:
            self.max_round = b[0]
        if self.role in (LEADER, CANDIDATE):
            assert self.rnd is not None
            if self.rnd.ballot < b:
                self._say(f"stepping down: {x} promised ballot {_bs(b)}, above ours")
                self._step_down()

    def _on_accept(self, x: str, m: dict) -> None:
        b = ballot_of(m["b"])
        ds = self.ds
        if b < ds.promised or b < self.leader_ballot:
            self._reject(x)
            return
        self._saw_leader(x, b)
        i = m["i"]
        if i > ds.base and i not in ds.decided:
            self._record(["a", i, m["b"], m["v"]])
        elif b > ds.promised:
            self._record(["p", m["b"]])
        self._send(x, {"t": M.ACCEPTED, "b": m["b"], "i": i})
        self._learn_commit(b, m["c"])

    def _on_accepted(self, x: str, m: dict) -> None:
        if self.role != LEADER:
            return
        ld, rnd = self.ld, self.rnd
        assert ld is not None and rnd is not None
        if m["b"] != rnd.blist:
            return
        i = m["i"]
        if x == self.id:
            sent = ld.own_wait.pop(i, math.nan)
            if not math.isnan(sent):
                # A sample past the fallback's wait was handled by it: capped
                # there, so that one stall (a snapshot) does not outweigh many.
                took = min(self.now - sent, self._thrifty_wait())
                ld.own_avg += (took - ld.own_avg) * 0.1
        if x != self.id:
            ld.ack_time[x] = self.now  # a vote under our ballot: alive, as a heartbeat's answer
        p = ld.props.get(i)
        if p is None:
            return
        ms = members_at(self.ds.schedule, i)
        if ms is not None and x in ms:
            if x != self.id and x not in p.acks:
                ld.peer_avg += (self.now - p.born - ld.peer_avg) * 0.1
            p.acks.add(x)
            if len(p.acks) >= majority(ms):
                self._chosen(i)

    def _on_commit(self, x: str, m: dict) -> None:
        b = ballot_of(m["b"])
        if b < self.ds.promised or b < self.leader_ballot:
            self._reject(x)
            return
        self._saw_leader(x, b)
        self._learn_commit(b, m["c"])

    def _on_heartbeat(self, x: str, m: dict) -> None:
        b = ballot_of(m["b"])
        if b < self.ds.promised or b < self.leader_ballot:
            self._reject(x)
            return
        self._saw_leader(x, b)
        self._learn_commit(b, m["c"])
        ok = {
            "t": M.HEARTBEAT_OK,
            "b": m["b"],
            "r": m["r"],
            "d": self.commit,
            "s": self._my_suspicions(),
        }
        if self.watched:
            ok["w"] = 1
        self._send(x, ok)

    def _on_heartbeat_ok(self, x: str, m: dict) -> None:
        if self.role != LEADER:
            return
        ld, rnd = self.ld, self.rnd
        assert ld is not None and rnd is not None
        if m["b"] != rnd.blist:
            return
        r = m["r"]
        if r > ld.acked.get(x, 0):
            ld.acked[x] = r
        ld.ack_time[x] = self.now
        ld.peer_commit[x] = m["d"]
        self._note(x, m["d"])
        ld.reports[x] = (self.now, m["s"])
        if m.get("w"):
            ld.watched.add(x)
        else:
            ld.watched.discard(x)
        if ld.reads:
            self._serve_reads()

    def _on_prevote(self, x: str, m: dict) -> None:
        grant = (
            self.role != LEADER
            and self.now - self.last_leader_contact >= self._et()
            and m["d"] >= self.commit
        )
        self._send(x, {"t": M.PREVOTE_OK, "r": m["r"], "ok": grant, "d": self.commit})

    def _on_prevote_ok(self, x: str, m: dict) -> None:
        if m.get("d", 0) > self.commit:
            self._note(x, m["d"])  # we are behind: catch up (perhaps we are no member now)
            self._maybe_fetch()
        pv = self.pv
        if self.role != PRECANDIDATE or pv is None or m["r"] != pv[0] or not m["ok"]:
            return
        pv[1].add(x)
        self._check_prevote()

    def _on_ping(self, x: str, m: dict) -> None:
        pass  # receive() noted that we heard from x

    def _on_forward(self, x: str, m: dict) -> None:
        items = m["items"]
        if self.role == LEADER:
            self._enqueue(items, x)
        elif self.leader not in (None, self.id, x) and m.get("h", 0) < 1:
            self._send(self.leader, {"t": M.FORWARD, "items": items, "h": 1})  # type: ignore[arg-type]

    def _on_read(self, x: str, m: dict) -> None:
        if self.role == LEADER:
            assert self.ld is not None
            self.ld.reads_waiting.append((m["id"], x))
        else:
            self._send(x, {"t": M.READ_FAIL, "id": m["id"]})

    def _on_read_ok(self, x: str, m: dict) -> None:
        req = m["id"]
        if self.fwd_reads.pop(req, None) is not None:
            if m["i"] > self.seen_commit:
                self.seen_commit = m["i"]
            self._read_states.append((req, m["i"]))

    def _on_read_fail(self, x: str, m: dict) -> None:
        req = m["id"]
        if self.fwd_reads.pop(req, None) is not None:
            self._read_failed.append(req)

    def _on_fetch(self, x: str, m: dict) -> None:
        s = m["s"]
        base = self.ds.base
        if s <= base:
            self._send(x, {"t": M.SNAPSHOT, "base": base})
            return
        ents, end = self._entries_from(s)
        self._send(x, {"t": M.ENTRIES, "s": s, "e": ents, "c": self.commit, "l": self.leader})
        if self.role == LEADER:
            assert self.ld is not None
            newest = self._newest()
            if newest is not None and x not in newest:
                self.ld.learners[x] = [end, self.now]

    def _on_entries(self, x: str, m: dict) -> None:
        s = m["s"]
        props = self.ld.props if self.ld is not None else None
        for k, v in enumerate(m["e"]):
            i = s + k
            if props is not None and i in props:
                continue  # ours to decide: never learn a value for it from elsewhere
            self._learn(i, v)
        self._note(x, m["c"])
        lead = m.get("l")
        # a learner takes the leader from whoever it fetches from
        follower = self.role == FOLLOWER and (self.leader is None or not self._eligible())
        if follower and lead is not None and lead not in (self.id, self.leader):
            self.leader = lead
            self._leader_changed()
        if m["e"] and self.fetching == (x, s):
            # The answer to our fetch: ask for the next chunk at once. Not for
            # news (decided values a leader sends unasked): a member back from
            # a pause reads hundreds of those in one go, and each once sent
            # the same fetch again, each answered with up to fetch_max_bytes.
            self.fetching = None
            self.fetch_until = _NEVER
        if self.role != LEADER:
            self._learn_commit(*self.infer)
        else:
            self._maybe_fetch()

    def _on_snapshot(self, x: str, m: dict) -> None:
        if m["base"] <= self.commit:
            return
        if m["base"] > self.seen_commit:
            self.seen_commit = m["base"]
        self._need_snapshot = x
        self.fetch_until = self.now + 2 * self._et()
        self.next_keepalive = self.fetch_until
        if self.role in (LEADER, CANDIDATE):
            self._say(f"stepping down: {x} holds a newer snapshot")
            self._step_down()

    def _on_timeout_now(self, x: str, m: dict) -> None:
        if self.role == LEADER or not self._eligible() or not self.can_lead:
            return
        if ballot_of(m["b"]) >= self.leader_ballot:
            self._start_phase1()
