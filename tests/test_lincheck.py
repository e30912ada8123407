"""The linearizability checker, on histories whose answer is known."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

try:
    from tests.lincheck import FILE, Op, check
except ImportError:  # tests/ itself on sys.path (pytest's default import mode)
    from lincheck import FILE, Op, check  # type: ignore[no-redef]


def op(
    kind: str,
    call: float,
    ret: float | None,
    *,
    key: str = "x",
    value: object = None,
    expect: object = None,
    output: object = None,
    client: int = 0,
) -> Op:
    return Op(kind, key, call, ret, value=value, expect=expect, output=output, client=client)


def gen_history(seed: int, n: int, clients: int, keys: int = 1, lost: float = 0.0) -> list[Op]:
    """A linearizable history: each op takes effect at a random point inside its
    interval; some writes lose their answer (and of those, half never take effect)."""
    rng = random.Random(seed)
    plan = []
    for c in range(clients):
        t = rng.uniform(0, 1)
        for _ in range(n // clients):
            call = t
            point = call + rng.uniform(0, 1)
            ret = point + rng.uniform(0, 1)
            plan.append((point, c, call, ret))
            t = ret + rng.uniform(0, 0.5)
    plan.sort()
    regs: dict[str, object] = {}
    hist = []
    for uniq, (_, c, call, ret) in enumerate(plan):
        k = f"k{rng.randrange(keys)}"
        cur = regs.get(k)
        r = rng.random()
        lose = rng.random() < lost
        if r < 0.4:
            hist.append(op("get", call, ret, key=k, output=cur, client=c))
        elif r < 0.75:
            kind = "set" if r < 0.7 else "del"
            val = uniq if kind == "set" else None
            hist.append(op(kind, call, None if lose else ret, key=k, value=val, client=c))
            if lose and rng.random() < 0.5:
                continue  # never took effect
            regs[k] = val
        else:
            exp = cur if rng.random() < 0.5 else uniq - 3
            hit = cur == exp
            hist.append(
                op(
                    "cas",
                    call,
                    None if lose else ret,
                    key=k,
                    value=uniq,
                    expect=exp,
                    output=None if lose else hit,
                    client=c,
                )
            )
            if hit:
                regs[k] = uniq
    return hist


# ---------------------------------------------------------------------- by hand


def test_sequential_and_overlapping_histories_are_linearizable() -> None:
    h = [
        op("set", 0, 1, value=1),
        op("get", 2, 3, output=1),
        op("set", 4, 7, value=2),
        op("get", 5, 6, output=1),  # overlaps the set: may see the old value
        op("get", 5.5, 6.5, output=2, client=1),  # ... or the new one
        op("get", 8, 9, output=2),
    ]
    assert check(h).outcome == "ok"


def test_stale_read_is_a_violation_with_a_small_window() -> None:
    h = [
        op("set", 0, 1, value=1),
        op("set", 2, 3, value=2),
        op("get", 4, 5, output=1),
    ]
    r = check(h)
    assert r.outcome == "violation"
    assert r.stuck is not None and r.stuck.kind == "get"
    assert {o.kind for o in r.window} <= {"set", "get"} and len(r.window) <= 3
    assert "cannot be linearized" in r.report()


def test_reads_of_unwritten_or_future_values_are_violations() -> None:
    assert check([op("get", 0, 1, output=5)]).outcome == "violation"
    assert check([op("get", 0, 1, output=5), op("set", 2, 3, value=5)]).outcome == "violation"


def test_non_monotonic_reads_are_caught_without_unique_values() -> None:
    # the same value written twice defeats the shortcut: the search must find it
    h = [
        op("set", 0, 1, value="a"),
        op("set", 2, 3, value="b"),
        op("set", 4, 5, value="a"),
        op("get", 6, 7, output="b"),
    ]
    r = check(h)
    assert r.outcome == "violation" and r.stuck == h[3]


def test_cas_semantics() -> None:
    ok = [
        op("set", 0, 1, value=1),
        op("cas", 2, 3, expect=1, value=2, output=True),
        op("cas", 4, 5, expect=1, value=3, output=False),
        op("get", 6, 7, output=2),
    ]
    assert check(ok).outcome == "ok"
    lost_update = [
        op("set", 0, 1, value=1),
        op("cas", 2, 3, expect=1, value=2, output=True),
        op("cas", 4, 5, expect=1, value=3, output=True, client=1),
    ]
    assert check(lost_update).outcome == "violation"


def test_unanswered_writes_may_take_effect_or_not_but_not_both() -> None:
    base = [op("set", 0, 1, value=1), op("set", 2, None, value=2, client=1)]
    took = [*base, op("get", 5, 6, output=2)]
    never = [*base, op("get", 5, 6, output=1)]
    late = [*base, op("get", 5, 6, output=1), op("get", 7, 8, output=2)]
    flicker = [*base, op("get", 5, 6, output=2), op("get", 7, 8, output=1)]
    assert check(took).outcome == "ok"
    assert check(never).outcome == "ok"
    assert check(late).outcome == "ok"
    assert check(flicker).outcome == "violation"


def test_unanswered_reads_are_ignored_and_del_empties() -> None:
    h = [
        op("set", 0, 1, value=1),
        op("get", 0.5, None, output=99),
        op("del", 2, 3),
        op("get", 4, 5, output=None),
    ]
    assert check(h).outcome == "ok"


def test_keys_are_independent_and_the_bad_one_is_named() -> None:
    h = [
        op("set", 0, 1, key="a", value=1),
        op("set", 0, 1, key="b", value=2),
        op("get", 2, 3, key="a", output=1),
        op("get", 2, 3, key="b", output=1),
    ]
    r = check(h)
    assert r.outcome == "violation" and r.key == "b" and r.keys == 2


def test_file_model_with_revisions() -> None:
    h = [
        op("set", 0, 1, value="v1", expect=0, output=5),  # create-only, new rev 5
        op("get", 2, 3, output=("v1", 5)),
        op("set", 4, 5, value="v2", expect=3, output="REV_MISMATCH"),
        op("set", 6, 7, value="v2", expect=5, output=9),
        op("get", 8, 9, output=("v2", 9)),
        op("del", 10, 11, expect=-1, output=12),
        op("get", 12, 13, output=(None, 0)),
    ]
    assert check(h, model=FILE).outcome == "ok"
    bad = [*h[:4], op("get", 8, 9, output=("v1", 5))]
    assert check(bad, model=FILE).outcome == "violation"
    unanswered = [
        op("set", 0, 1, value="v1", output=5, expect=-1),
        op("set", 2, None, value="v2", expect=5),  # its rev is unknown
        op("get", 4, 5, output=("v2", 8)),
        op("set", 6, 7, value="v3", expect=8, output=10),
    ]
    assert check(unanswered, model=FILE).outcome == "ok"


# ---------------------------------------------------------------------- generated


@pytest.mark.parametrize("seed", range(6))
def test_generated_linearizable_histories_pass(seed: int) -> None:
    h = gen_history(seed, 600, clients=2 + seed, keys=1 + seed % 3, lost=0.03 * (seed % 2))
    assert check(h, budget_s=60).outcome == "ok"


@pytest.mark.parametrize("seed", range(6))
def test_generated_stale_reads_are_found_and_the_window_is_itself_broken(seed: int) -> None:
    h = gen_history(seed, 600, clients=2 + seed, keys=1, lost=0.02 * (seed % 2))
    gets = [k for k, o in enumerate(h) if o.kind == "get" and k > 100]
    k = gets[len(gets) // 2]
    older = [o.value for o in h[:k] if o.kind == "set" and o.ret is not None][-20]
    h[k] = replace(h[k], output=older)
    r = check(h, budget_s=60)
    assert r.outcome == "violation"
    assert 0 < len(r.window) < 50
    # the window, taken on its own, is still not linearizable
    assert check(r.window, budget_s=60).outcome == "violation"


def test_thousands_of_ops_on_one_key() -> None:
    h = gen_history(7, 5000, clients=8, keys=1, lost=0.005)
    r = check(h, budget_s=120)
    assert r.outcome == "ok" and r.ops == len(h)


def test_search_without_shortcut_finds_a_lost_update_among_many_ops() -> None:
    h = gen_history(3, 800, clients=4, keys=1)
    # two successful cas from the same old value: no single read proves it
    t = max(o.ret for o in h if o.ret is not None) + 1
    h += [
        op("set", t, t + 1, value="base"),
        op("cas", t + 2, t + 3, expect="base", value="p", output=True, client=1),
        op("cas", t + 2.5, t + 4, expect="base", value="q", output=True, client=2),
    ]
    r = check(h, budget_s=60)
    assert r.outcome == "violation" and len(r.window) <= 3


def test_budget_gives_unknown() -> None:
    h = gen_history(11, 4000, clients=10, keys=1, lost=0.02)
    assert check(h, budget_s=0.0).outcome == "unknown"


def test_many_unanswered_writes_are_interchangeable() -> None:
    # 40 writes that never answered and that nobody read: 2**40 subsets, unless the
    # search sees they are alike
    h = [op("set", 0, 1, value="a")]
    h += [op("set", 1 + k, None, value=f"lost{k}", client=k + 1) for k in range(40)]
    h += [op("get", 50, 51, output="a"), op("set", 52, 53, value="b")]
    h += [op("cas", 54, 55, expect="a", value="c", output=False)]  # state is b or unseen
    h += [op("get", 56, 57, output="b")]
    assert check(h, budget_s=60).outcome == "ok"
    bad = [*h, op("get", 60, 61, output="a")]  # "a" was overwritten for good
    assert check(bad, budget_s=60).outcome == "violation"


def test_file_model_with_many_unanswered_writes() -> None:
    h = [op("set", 0, 1, value="v0", expect=-1, output=3)]
    h += [op("set", 1 + k, None, value=f"lost{k}", expect=-1, client=k + 1) for k in range(30)]
    h += [op("get", 40, 41, output=("v0", 3))]  # none has taken effect yet: still fine
    h += [op("set", 42, 43, value="v1", expect=-1, output=50)]
    h += [op("get", 44, 45, output=("v1", 50))]
    assert check(h, model=FILE, budget_s=60).outcome == "ok"
    assert check([*h, op("get", 46, 47, output=("v0", 3))], FILE, 60).outcome == "violation"
