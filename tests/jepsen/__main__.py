"""python -m tests.jepsen --nodes 3|5 --seconds N --seed S [--nemesis NAMES]

Exit status: 0 every check passed; 1 a check failed (the report says which,
with the seed, the schedule and the offending history window; the results
dir is kept); 2 the run could not be set up; 3 the runner itself failed."""

from __future__ import annotations

import argparse
import random
import shlex
import signal
import sys
import traceback

import uvloop

from tests.jepsen.cluster import ClusterError
from tests.jepsen.nemesis import ALL
from tests.jepsen.network import NetworkError
from tests.jepsen.runner import Config, RunError, run


def _pair(s: str) -> tuple[float, float]:
    lo, _, hi = s.partition(",")
    return float(lo), float(hi or lo)


def parse_args(argv: list[str]) -> Config:
    d = Config()
    ap = argparse.ArgumentParser(
        prog="python -m tests.jepsen",
        description="Real doozer nodes, real faults, checked client histories.",
    )
    ap.add_argument("--nodes", type=int, choices=(3, 5), default=d.nodes)
    ap.add_argument("--seconds", type=float, default=d.seconds, help="seconds of load and faults")
    ap.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    ap.add_argument(
        "--nemesis",
        default=d.nemesis,
        help=f"'all' or a comma-separated list of: {', '.join(ALL)}",
    )
    ap.add_argument(
        "--net",
        choices=("auto", "netns", "proxy"),
        default=d.net,
        help="netns (root, ip, nft: every partition) or proxy (no privileges; deafen, delay)",
    )
    ap.add_argument("--clients", type=int, default=d.clients)
    ap.add_argument("--keys", type=int, default=d.keys, help="keys in use at any time")
    ap.add_argument("--per-key", type=int, default=d.per_key, help="operations per key")
    ap.add_argument("--think", type=float, default=d.think, help="mean pause between ops (s)")
    ap.add_argument("--op-timeout", type=float, default=d.op_timeout)
    ap.add_argument("--idle", type=int, default=d.idle, help="idle hostile connections")
    ap.add_argument("--no-hostile", action="store_true", help="no misbehaving clients")
    ap.add_argument("--combine", type=float, default=d.combine, help="P(two faults at once)")
    ap.add_argument("--long-frac", type=float, default=None, help="P(a fault outlasts --timeout)")
    ap.add_argument("--fault-duration", type=_pair, default=d.duration, metavar="LO,HI")
    ap.add_argument("--quiet", type=_pair, default=d.quiet, metavar="LO,HI")
    ap.add_argument("--election-timeout", type=float, default=d.election_timeout)
    ap.add_argument(
        "--member-timeout", type=float, default=d.member_timeout, help="serve --timeout"
    )
    ap.add_argument("--recovery-bound", type=float, default=d.recovery_bound)
    ap.add_argument("--max-rss-mb", type=float, default=d.max_rss_mb)
    ap.add_argument("--lincheck-budget", type=float, default=d.lincheck_budget)
    ap.add_argument(
        "--mem",
        action="store_true",
        help="nodes keep nothing on disk (to check the checker: restart-all loses writes)",
    )
    ap.add_argument(
        "--serve-args",
        default="",
        metavar="'FLAGS'",
        help="more flags for every `doozer serve`, e.g. '--snap-revs 500' (snapshots often)",
    )
    ap.add_argument("--results", default=d.results, help="parent of the results dir")
    ap.add_argument("--keep", action="store_true", help="keep the results dir of a passing run")
    a = ap.parse_args(argv)
    return Config(
        nodes=a.nodes,
        seconds=a.seconds,
        seed=a.seed if a.seed is not None else random.randrange(1 << 31),
        nemesis=a.nemesis,
        net=a.net,
        clients=a.clients,
        keys=a.keys,
        per_key=a.per_key,
        think=a.think,
        op_timeout=a.op_timeout,
        idle=a.idle,
        hostile=not a.no_hostile,
        combine=a.combine,
        long_frac=a.long_frac,
        duration=a.fault_duration,
        quiet=a.quiet,
        election_timeout=a.election_timeout,
        member_timeout=a.member_timeout,
        recovery_bound=a.recovery_bound,
        max_rss_mb=a.max_rss_mb,
        lincheck_budget=a.lincheck_budget,
        mem=a.mem,
        serve_args=tuple(shlex.split(a.serve_args)),
        results=a.results,
        keep=a.keep,
    )


def _stop(signum: int, frame: object) -> None:
    # SIGTERM (a test's timeout, an operator) unwinds like ^C: nodes stopped, namespaces gone
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _stop)
    try:
        outcome = uvloop.run(run(cfg))
    except (NetworkError, ClusterError, ValueError) as e:
        print(f"doozer jepsen: could not run (seed {cfg.seed}): {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"doozer jepsen: interrupted (seed {cfg.seed}); nodes stopped", file=sys.stderr)
        return 130
    except RunError as e:
        traceback.print_exception(e.__cause__ or e)
        print(f"doozer jepsen: the runner failed (seed {cfg.seed}): {e}", file=sys.stderr)
        return 3
    print(outcome.text, flush=True)
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
