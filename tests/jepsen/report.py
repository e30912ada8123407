"""The run's summary (JSON) and its human-readable report; the results dir."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from tests.jepsen.checks import LinResult, Window, per_nemesis
from tests.jepsen.nemesis import Event, Round
from tests.jepsen.workload import History


def summary(
    *,
    cfg: Any,
    names: list[str],
    net: str,
    counts: Counter[str],
    final_count: int,
    events: list[Event],
    lin: LinResult,
    lost: list[str],
    disagreements: list[str],
    windows: list[Window],
    quiet: float,
    times: dict[str, Any],
    convergence: list[dict[str, Any]],
    rss: dict[str, float],
    hostile: dict[str, int],
    crashes: list[dict[str, Any]],
    connect_failures: int,
    keys: int,
    failures: list[str],
    notes: list[str],
    results_dir: str,
) -> dict[str, Any]:
    by_nemesis = Counter(e.nemesis for e in events)
    lost_keys = set(lin.lost_keys) | {x.split(":")[0] for x in lost}
    return {
        "verdict": "PASS" if not failures else "FAIL",
        "failures": failures,
        "notes": notes,
        "seed": cfg.seed,
        "nodes": cfg.nodes,
        "seconds": cfg.seconds,
        "network": net,
        "nemeses": names,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("quiet_output",)},
        "operations": {
            "total": sum(counts[k] for k in ("ok", "fail", "info")),
            "ok": counts["ok"],
            "indeterminate": counts["info"],
            "failed": counts["fail"],
            "by_kind": {k: v for k, v in sorted(counts.items()) if ":" in k},
            "final_reads": final_count,
            "keys": keys,
            "connect_failures": connect_failures,
        },
        "faults": {"total": len(events), "by_nemesis": dict(sorted(by_nemesis.items()))},
        "anomalies": len(lin.violations),
        "undecided_keys": len(lin.unknown),
        "acknowledged_writes_lost": len(lost_keys),
        "rev_disagreements": disagreements,
        "linearizability": {
            "keys": lin.keys,
            "ops": lin.ops,
            "seconds": round(lin.elapsed, 2),
            "violating_keys": [v[0] for v in lin.violations],
        },
        "availability": {
            "per_nemesis": per_nemesis(windows),
            "longest_no_write_without_fault_s": round(quiet, 3),
        },
        "times": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in times.items()},
        "convergence": convergence,
        "peak_rss_mib": rss,
        "hostile": hostile,
        "crashes": [{k: v for k, v in c.items() if k != "log_tail"} for c in crashes],
        "results_dir": results_dir,
    }


def text(
    s: dict[str, Any],
    rounds: list[Round],
    events: list[Event],
    lin: LinResult,
    lost: list[str],
    crashes: list[dict[str, Any]],
    windows: list[Window],
) -> str:
    ops = s["operations"]
    out = [
        f"doozer jepsen: {s['verdict']}   seed {s['seed']}, {s['nodes']} nodes, "
        f"{s['seconds']:g}s of load, network {s['network']}",
        f"nemeses: {', '.join(s['nemeses'])}",
        f"operations: {ops['total']} (ok {ops['ok']}, indeterminate "
        f"{ops['indeterminate']}, failed {ops['failed']}) on {ops['keys']} keys; "
        f"{ops['final_reads']} final reads",
        f"faults injected: {s['faults']['total']} "
        + ", ".join(f"{k} {v}" for k, v in s["faults"]["by_nemesis"].items()),
        f"linearizability: {lin.keys} keys, {lin.ops} ops checked in {lin.elapsed:.1f}s: "
        f"{len(lin.violations)} anomalies, {len(lin.unknown)} undecided",
        f"acknowledged writes lost: {s['acknowledged_writes_lost']}",
    ]
    for c in s["convergence"]:
        out.append(
            f"convergence {c['when']}: rev {c.get('rev')} same rev {c['same_rev']}, "
            f"same tree {c.get('same_tree')} ({c.get('files')} files)"
        )
    t = s["times"]
    out.append(
        f"writable again: {_s(t.get('writable_after_final_heal_s'))} after the final heal, "
        f"{_s(t.get('writable_after_full_restart_s'))} after the full restart"
    )
    out.append(
        "longest window without an acknowledged write, per nemesis: with any other fault"
        " overlapping / with none, and when the latter began (worst heal->write):"
    )
    for name, d in s["availability"]["per_nemesis"].items():
        extra = f", {d['unrecovered']} never recovered" if d["unrecovered"] else ""
        at = d.get("longest_alone_at_s")
        where = f" @ {at:7.1f}s" if at is not None else " " * 11
        out.append(
            f"  {name:18s} {d['faults']:4d} faults  {d['longest_no_write_s']:7.2f}s / "
            f"{d['longest_no_write_alone_s']:5.2f}s{where}  ({d['worst_recovery_s']:.2f}s{extra})"
        )
    calm = s["availability"]["longest_no_write_without_fault_s"]
    out.append(f"  {'(no fault active)':18s}             {calm:7.2f}s")
    out.append("peak RSS (MiB): " + ", ".join(f"{k} {v}" for k, v in s["peak_rss_mib"].items()))
    out.append("hostile clients: " + ", ".join(f"{k} {v}" for k, v in sorted(s["hostile"].items())))
    out.append(f"crashes: {len(crashes)}")
    for n in s["notes"]:
        out.append(f"note: {n}")
    if s["failures"]:
        out.append("")
        out.append("FAILURES:")
        out.extend(f"  - {f}" for f in s["failures"])
        out.append("")
        out.append(f"seed {s['seed']}; schedule (planned rounds):")
        for i, r in enumerate(rounds):
            out.append(
                f"  #{i:<3d} quiet {r.quiet:5.2f}s, {'+'.join(r.names):30s} for {r.duration:5.2f}s"
            )
        out.append("faults as injected (seconds since the run began):")
        out.extend(f"  {e}" for e in events)
        if s.get("rev_disagreements"):
            out.append("")
            out.append("the same write seen at different revs (replicas diverged), first per node:")
            out.extend(f"  {x}" for x in s["rev_disagreements"])
        if lin.violations:
            out.append("")
            out.append(
                f"the {min(3, len(lin.violations))} earliest of {len(lin.violations)} "
                "non-linearizable keys:"
            )
        for _key, rep, lo, hi in lin.earliest(3):
            out.append("")
            out.append(rep)
            near = [e for e in events if e.start <= hi and (e.heal or hi) >= lo - 5]
            out.append(f"faults active in or just before [{lo:.3f}, {hi:.3f}]:")
            if len(near) > 12:
                out.append(f"  ({len(near) - 12} earlier ones left out)")
                near = near[-12:]
            out.extend(f"  {e}" for e in near) if near else out.append("  none")
        for _key, rep in lin.unknown[:3]:
            out.append(rep)
        if lost:
            out.append("")
            out.append("acknowledged writes lost (certainly the last write of their key):")
            out.extend(f"  {x}" for x in lost[:20])
        for c in crashes:
            out.append("")
            out.append(f"{c['node']} crashed at {c['at']}s, exit {c['exit']}; log tail:")
            out.extend(f"  | {line}" for line in c["log_tail"].splitlines())
        out.append("")
        out.append(f"results (history, node logs and data dirs): {s['results_dir']}")
    return "\n".join(out)


def _s(v: float | None) -> str:
    return "never" if v is None else f"{v:.2f}s"


def save(
    d: Path, summary: dict[str, Any], report_text: str, history: History, events: list[Event]
) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    (d / "report.txt").write_text(report_text + "\n")
    (d / "events.json").write_bytes(
        orjson.dumps([e.to_dict() for e in events], option=orjson.OPT_INDENT_2)
    )
    history.dump(str(d / "history.jsonl"))
