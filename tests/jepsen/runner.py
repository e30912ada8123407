"""One run, start to verdict: set up the network, start the cluster, drive the
clients (and the hostile ones) while the nemesis plays its schedule, heal,
restart everything, read every key back, check, report."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.jepsen import checks, disks, report
from tests.jepsen.cluster import Cluster, ClusterError
from tests.jepsen.conn import Conn, try_request
from tests.jepsen.hostile import Hostile
from tests.jepsen.nemesis import Event, Nemesis, Timing, parse, plan
from tests.jepsen.network import Network, NetworkError, make_network
from tests.jepsen.nodes import Node
from tests.jepsen.workload import FAIL, OK, History, Rec, Workload, WorkloadConfig, classify


@dataclass
class Config:
    nodes: int = 3
    seconds: float = 60.0
    seed: int = 0
    nemesis: str = "all"
    net: str = "auto"
    clients: int = 10
    keys: int = 4
    per_key: int = 120
    think: float = 0.02
    op_timeout: float = 1.5
    idle: int = 1000
    watchers: int = 2
    hostile: bool = True
    election_timeout: float = 0.5
    member_timeout: float = 8.0
    mem: bool = False
    serve_args: tuple[str, ...] = ()  # more `doozer serve` flags, e.g. ("--snap-revs", "500")
    combine: float = 0.25
    long_frac: float | None = None  # None: 0.15 for runs of 5 minutes or more, else 0
    quiet: tuple[float, float] = (2.0, 4.0)
    duration: tuple[float, float] = (2.0, 6.0)
    recovery_bound: float = 20.0
    max_rss_mb: float = 512.0
    lincheck_budget: float = 300.0
    results: str = "/tmp"
    keep: bool = False
    quiet_output: bool = False


@dataclass
class Outcome:
    summary: dict[str, Any]
    text: str
    passed: bool
    results_dir: Path
    failures: list[str] = field(default_factory=list)


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(need, soft)
    if hard != resource.RLIM_INFINITY and hard < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root may raise the hard one
            return want
        want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


class Run:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.dir = Path(cfg.results) / f"doozer-jepsen-{stamp}-s{cfg.seed}-{os.getpid()}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.history = History(self.t0)
        self.failures: list[str] = []
        self.crashes: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.net: Network | None = None
        self.cluster: Cluster | None = None
        self.nemesis: Nemesis | None = None
        self.rss_samples = 0
        self.idle_read_failures = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, msg: str) -> None:
        if not self.cfg.quiet_output:
            print(f"[{self.now():7.1f}s] {msg}", file=sys.stderr, flush=True)

    # -- the run ---------------------------------------------------------------------

    async def main(self) -> Outcome:
        cfg = self.cfg
        limit = raise_fd_limit(cfg.idle + 4096)
        if limit < cfg.idle + 512:
            self.notes.append(f"fd limit {limit}: idle connections cut to {limit - 512}")
            cfg.idle = max(0, limit - 512)
        self.net = make_network(cfg.net)
        names = parse(cfg.nemesis, self.net, "not with --mem" if cfg.mem else disks.why_not())
        membership = "membership" in names
        spares = max(0, 5 - cfg.nodes) if membership else 0
        slots = cfg.nodes + spares
        await asyncio.to_thread(self.net.setup, slots)
        try:
            await self.net.start()
            return await self._with_network(names, spares)
        finally:
            if self.cluster is not None:
                self.cluster.stop()
            await self.net.close()
            await asyncio.to_thread(self.net.teardown)

    async def _with_network(self, names: list[str], spares: int) -> Outcome:
        cfg = self.cfg
        assert self.net is not None
        cluster = self.cluster = Cluster(
            self.net,
            self.dir,
            members=cfg.nodes,
            spares=spares,
            election_timeout=cfg.election_timeout,
            member_timeout=cfg.member_timeout,
            mem=cfg.mem,
            extra=cfg.serve_args,
        )
        long_frac = (
            cfg.long_frac if cfg.long_frac is not None else (0.15 if cfg.seconds >= 300 else 0.0)
        )
        if "disk-full" in names:
            await asyncio.to_thread(cluster.mount_disks)
        timing = Timing(cfg.quiet, cfg.duration, long_frac=long_frac, combine=cfg.combine)
        rounds = plan(names, cfg.seconds, cfg.seed, timing)
        self.say(
            f"seed {cfg.seed}: {cfg.nodes} nodes (+{spares} spare) on {self.net.kind}, "
            f"nemeses {','.join(names)}; results in {self.dir}"
        )
        await cluster.start(with_spares=True)
        self.say(f"cluster up: {[n.addr for n in cluster.started()]}")
        if cluster.nudges:
            self.notes.append(
                f"the new cluster needed {cluster.nudges} writes before every slot was in force"
                " and every node served linearizable reads (the idle-log lag)"
            )

        nem = self.nemesis = Nemesis(
            cluster,
            self.net,
            self.now,
            min_slots=min(3, cfg.nodes),
            max_slots=max(5, cfg.nodes),
        )
        nem.log = self.say
        wl = Workload(
            WorkloadConfig(
                clients=cfg.clients,
                keys=cfg.keys,
                per_key=cfg.per_key,
                op_timeout=cfg.op_timeout,
                think=cfg.think,
            ),
            self.history,
            cluster.targets,
            cfg.seed,
        )
        hostile = Hostile(cluster.targets, idle=cfg.idle, watchers=cfg.watchers, seed=cfg.seed)
        monitor = asyncio.create_task(self._monitor())
        progress = asyncio.create_task(self._progress(nem))
        load_start = self.now()
        wl.start()
        if cfg.hostile:
            hostile.start()
        try:
            await nem.run(rounds, load_start + cfg.seconds)
            load_end = self.now()
            self.say("healing every fault")
            await nem.heal_all()
            heal_t = self.now()
            rec = await cluster.wait_writable(cfg.recovery_bound)
            if rec is None:
                self.failures.append(f"not writable within {cfg.recovery_bound}s of the final heal")
            else:
                # the clients too: so every heal has its first acknowledged write on record
                await self._client_write_after(heal_t, cfg.recovery_bound)
            await wl.stop()
            await hostile.stop()
            progress.cancel()
            conv1 = await self._convergence("after healing")
            # the full restart: every node killed at once, then started again
            self.say("kill -9 every node, restart them all")
            for n in cluster.started():
                n.kill()
            restart_t = self.now()
            for n in cluster.started():
                n.start()
            for n in cluster.started():
                await cluster.wait_listening(n)
            rec2 = await cluster.wait_writable(cfg.recovery_bound)
            if rec2 is not None:
                rec2 = self.now() - restart_t
            else:
                self.failures.append(
                    f"not writable within {cfg.recovery_bound}s of the full restart"
                )
            final = await self._final_reads(wl.keys.used)
            conv2 = await self._convergence("after the full restart")
        finally:
            monitor.cancel()
            progress.cancel()
            if not wl.stopping:
                await wl.stop()
            if not hostile.stopping:
                await hostile.stop()
        return self._verdict(
            names,
            rounds,
            wl,
            hostile,
            final,
            {
                "load_start": load_start,
                "load_end": load_end,
                "final_heal": heal_t,
                "writable_after_final_heal_s": rec,
                "full_restart": restart_t,
                "writable_after_full_restart_s": rec2,
            },
            [conv1, conv2],
        )

    async def _client_write_after(self, t: float, deadline: float) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if any(
                r.call >= t and r.is_write and r.outcome == OK and isinstance(r.output, int)
                for r in reversed(self.history.recs[-2000:])
            ):
                return
            await asyncio.sleep(0.05)

    async def _monitor(self) -> None:
        """Crashes (a node exiting that nobody killed) and memory, every half second."""
        assert self.cluster is not None
        tick = 0
        while True:
            tick += 1
            for n in self.cluster.nodes:
                if n.proc is not None and not n.expect_down and n.proc.poll() is not None:
                    self.crashes.append(
                        {
                            "node": n.name,
                            "at": round(self.now(), 3),
                            "exit": n.proc.returncode,
                            "log_tail": n.log_tail(60),
                        }
                    )
                    self.say(f"{n.name} CRASHED (exit {n.proc.returncode}); restarting it")
                    n.start()
                if tick % 2 == 0 and not n.paused:
                    n.rss_kb()
            if tick % 2 == 0:
                self.rss_samples += 1
            await asyncio.sleep(0.5)

    async def _progress(self, nem: Nemesis) -> None:
        while True:
            await asyncio.sleep(15)
            c = self.history.counts()
            self.say(
                f"ops {len(self.history.recs)} (ok {c['ok']}, indeterminate {c['info']}, "
                f"failed {c['fail']}), faults {len(nem.events)}"
            )

    async def _convergence(self, when: str, deadline: float = 30.0) -> dict[str, Any]:
        """Every node at the same rev, and the same tree at that rev."""
        assert self.cluster is not None
        nodes = [n for n in self.cluster.started() if n.running()]
        end = time.monotonic() + deadline
        prev: dict[int, int] = {}
        revs: dict[int, int] = {}
        same = False
        while time.monotonic() < end:
            answers = await asyncio.gather(
                *(try_request(n.addr, {"verb": "REV", "stale": True}, 2) for n in nodes)
            )
            revs = {n.idx: a.get("rev", -1) for n, a in zip(nodes, answers, strict=True)}
            if len(set(revs.values())) == 1 and revs == prev and -1 not in revs.values():
                same = True
                break
            prev = revs
            await asyncio.sleep(0.5)
        out: dict[str, Any] = {"when": when, "revs": {f"n{k}": v for k, v in revs.items()}}
        out["same_rev"] = same
        if not same:
            self.failures.append(f"nodes did not converge to one rev {when}: {out['revs']}")
        rev = min((r for r in revs.values() if r > 0), default=0)
        walks: dict[int, Any] = {}
        for n in nodes:
            r = await try_request(
                n.addr, {"verb": "WALK", "path": "/**", "rev": rev, "timeout": 10}, 15
            )
            walks[n.idx] = r.get("files", r)
        trees = {repr(w) for w in walks.values()}
        out["rev"] = rev
        out["files"] = len(next(iter(walks.values()))) if walks else 0
        out["same_tree"] = len(trees) == 1 and all(isinstance(w, list) for w in walks.values())
        if not out["same_tree"]:
            out["diff"] = _tree_diff(walks)[:50]
            tag = when.replace(" ", "-")
            for i, w in walks.items():
                (self.dir / f"walk-{tag}-n{i}.json").write_bytes(orjson.dumps(w))
            self.failures.append(
                f"nodes hold different trees at rev {rev} {when}: {out['diff'][:5]}"
            )
        self.say(f"convergence {when}: rev {rev}, same rev {same}, same tree {out['same_tree']}")
        return out

    async def _final_reads(self, keys: list[str], deadline: float = 60.0) -> list[Rec]:
        """Every key ever used, read linearizably on every node, as part of the history."""
        assert self.cluster is not None
        out: list[Rec] = []
        for n in self.cluster.started():
            todo = list(keys)
            end = time.monotonic() + deadline
            while todo and time.monotonic() < end:
                try:
                    conn = await Conn.open(n.addr, 2.0)
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.2)
                    continue
                recs: list[Rec] = []
                try:
                    while todo and time.monotonic() < end:
                        chunk = todo[:64]
                        recs = [self.history.begin("final", n.idx, "get", k) for k in chunk]
                        resps = await conn.pipeline(
                            [{"verb": "GET", "path": k, "timeout": 2} for k in chunk], 30
                        )
                        ret = self.history.now()
                        for r, resp in zip(recs, resps, strict=True):
                            r.ret = ret
                            classify(r, resp)
                        out.extend(recs)
                        failed = {r.key for r in recs if r.outcome != OK}
                        todo = [k for k in chunk if k in failed] + todo[len(chunk) :]
                        if failed:
                            # reads on an idle cluster may wait on log instances passing
                            # (a known lag after membership changes): make some
                            self.idle_read_failures += len(failed)
                            await self.cluster.write_probe(n)
                            await asyncio.sleep(0.2)
                except (OSError, TimeoutError, ValueError) as e:
                    for r in recs:
                        if not r.outcome:  # unanswered reads: no effect, no output
                            r.ret, r.outcome, r.err = self.history.now(), FAIL, repr(e)
                    await asyncio.sleep(0.2)
                finally:
                    conn.close()
            if todo:
                self.failures.append(
                    f"final reads on n{n.idx}: {len(todo)} keys never answered (e.g. {todo[0]})"
                )
        self.say(f"final reads: {sum(r.outcome == OK for r in out)} answered")
        if self.idle_read_failures:
            self.notes.append(
                f"{self.idle_read_failures} final reads on the idle cluster failed first "
                "(retried after a write)"
            )
        return out

    # -- the verdict -------------------------------------------------------------------

    def _verdict(
        self,
        names: list[str],
        rounds: list[Any],
        wl: Workload,
        hostile: Hostile,
        final: list[Rec],
        times: dict[str, Any],
        convergence: list[dict[str, Any]],
    ) -> Outcome:
        cfg = self.cfg
        assert self.nemesis is not None and self.cluster is not None
        events: list[Event] = self.nemesis.events
        recs = self.history.recs
        final_ids = {r.id for r in final}
        self.say(f"checking linearizability of {len(recs)} ops")
        lin = checks.linearizability(recs, final_ids, cfg.lincheck_budget)
        lost = checks.lost_writes([r for r in recs if r.id not in final_ids], final)
        disagree = checks.rev_disagreements(recs)
        if disagree:
            self.failures.append(
                f"replicas diverged: the same write seen at different revs ({disagree[0]})"
            )
        end = times["full_restart"]
        windows = checks.availability(recs, events, end)
        quiet = checks.quiet_gap(recs, windows, times["load_start"], times["load_end"])
        for w in windows:
            if not w.checked:
                continue
            if w.recovered is None and end - w.heal > cfg.recovery_bound:
                self.failures.append(
                    f"{w.nemesis} healed at {w.heal:.1f}s: no write acknowledged afterwards"
                )
            elif w.recovered is not None and w.recovered - w.heal > cfg.recovery_bound:
                self.failures.append(
                    f"{w.nemesis} healed at {w.heal:.1f}s: first write only "
                    f"{w.recovered - w.heal:.1f}s later (bound {cfg.recovery_bound}s)"
                )
        if quiet > cfg.recovery_bound:
            self.failures.append(
                f"{quiet:.1f}s without an acknowledged write while no fault was active"
            )
        if lin.violations:
            self.failures.append(f"linearizability: {len(lin.violations)} keys violate")
        if lin.unknown:
            self.failures.append(
                f"linearizability: {len(lin.unknown)} keys not decided within the budget"
            )
        lost_keys = set(lin.lost_keys) | {x.split(":")[0] for x in lost}
        if lost_keys:
            self.failures.append(f"acknowledged writes lost on {len(lost_keys)} keys")
        for c in self.crashes:
            self.failures.append(f"{c['node']} crashed at {c['at']}s (exit {c['exit']})")
        for name, err in _exceptions_logged(self.cluster.started()):
            # a bug a node survived: the one that stopped a node's ticks showed
            # only as a membership change that never took effect
            self.failures.append(f"{name} logged an exception: {err}")
        for e in events:
            # a membership change that never takes effect is a liveness bug; a network
            # fault that could not be applied leaves the run short of what it claims
            if e.failed:
                self.failures.append(f"{e.nemesis} at {e.start:.1f}s: {e.failed}")
        rss = {n.name: round(n.max_rss_kb / 1024, 1) for n in self.cluster.started()}
        for name, mb in rss.items():
            if mb > cfg.max_rss_mb:
                self.failures.append(f"{name} peaked at {mb} MiB (bound {cfg.max_rss_mb})")
        if cfg.hostile:
            if hostile.bad_answers:
                self.failures.append(f"hostile clients got bad answers: {hostile.bad_answers[:3]}")
            if hostile.stats["garbage_answered"] == 0:
                self.failures.append("hostile clients never got an answer: they did not run")
        counts = self.history.counts(exclude=final_ids)
        summary = report.summary(
            cfg=cfg,
            names=names,
            net=self.net.kind if self.net else "?",
            counts=counts,
            final_count=len(final),
            events=events,
            lin=lin,
            lost=lost,
            disagreements=disagree,
            windows=windows,
            quiet=quiet,
            times=times,
            convergence=convergence,
            rss=rss,
            hostile=dict(hostile.stats),
            crashes=self.crashes,
            connect_failures=wl.connect_failures,
            keys=len(wl.keys.used),
            failures=self.failures,
            notes=self.notes,
            results_dir=str(self.dir),
        )
        passed = not self.failures
        text = report.text(summary, rounds, events, lin, lost, self.crashes, windows)
        report.save(self.dir, summary, text, self.history, events)
        if passed and not cfg.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
            summary["results_dir"] = None
        return Outcome(summary, text, passed, self.dir, self.failures)


def _tree_diff(walks: dict[int, Any]) -> list[str]:
    maps = {
        i: ({f["path"]: (f["rev"], f.get("value")) for f in w} if isinstance(w, list) else None)
        for i, w in walks.items()
    }
    out = [f"n{i}: {walks[i]!r}"[:200] for i, m in maps.items() if m is None]
    good = {i: m for i, m in maps.items() if m is not None}
    paths = sorted(set().union(*(m.keys() for m in good.values()))) if good else []
    for p in paths:
        vals = {i: m.get(p) for i, m in good.items()}
        if len({repr(v) for v in vals.values()}) > 1:
            out.append(f"{p}: " + ", ".join(f"n{i}={v}" for i, v in vals.items()))
    return out


async def run(cfg: Config) -> Outcome:
    r = Run(cfg)
    try:
        return await r.main()
    except (ClusterError, NetworkError) as e:
        _note_error(r.dir, e)
        raise type(e)(f"{e}\n(node logs kept in {r.dir})") from e
    except Exception as e:
        _note_error(r.dir, e)
        raise RunError(f"{e!r}\n(node logs kept in {r.dir})") from e


def _note_error(d: Path, e: BaseException) -> None:
    with contextlib.suppress(OSError):
        (d / "error.txt").write_text("".join(traceback.format_exception(e)))


class RunError(RuntimeError):
    """The runner itself failed (a bug in the suite, not a finding about doozer)."""


def _exceptions_logged(nodes: list[Node]) -> list[tuple[str, str]]:
    """(node, the exception's last line) for each traceback in a node's log."""
    out = []
    for n in nodes:
        try:
            lines = n.logfile.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for k, line in enumerate(lines):
            if line.startswith("Traceback (most recent call last)"):
                last = next((x for x in lines[k + 1 :] if x and not x.startswith((" ", "\t"))), "?")
                out.append((n.name, last.strip()[:200]))
    return out
