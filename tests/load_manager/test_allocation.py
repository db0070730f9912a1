"""The real-time allocation engine: worked examples, then its guarantees as properties."""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from load_manager.allocation import Grid, Load, Policy, allocate
from load_manager.bench_rebalance import build_site, rebalance_benchmark

TOL = 1e-6


# --- helpers -----------------------------------------------------------------------------------


def phase_totals(loads: Sequence[Load], result: dict[Hashable, float]) -> list[float]:
    totals = [0.0, 0.0, 0.0]
    for load in loads:
        for phase in load.phases:
            totals[phase] += result[load.key]
    return totals


def power_w(grid: Grid, loads: Sequence[Load], result: dict[Hashable, float]) -> float:
    return sum(grid.voltage_v * result[load.key] * len(load.phases) for load in loads)


def fits(grid: Grid, loads: Sequence[Load], result: dict[Hashable, float]) -> bool:
    """Whether ``result`` respects every phase limit and the power limit (float noise aside)."""
    totals = phase_totals(loads, result)
    if any(total > limit + TOL for total, limit in zip(totals, grid.phase_limit_a, strict=True)):
        return False
    limit = grid.power_limit_w
    return limit is None or power_w(grid, loads, result) <= limit + TOL * grid.voltage_v


def steps(amps: float, step_a: float) -> int:
    return math.floor(amps / step_a + 1e-9)


def max_steps(load: Load, step_a: float) -> int:
    return steps(load.max_a, step_a)


def min_steps(load: Load, step_a: float) -> int:
    return math.ceil(load.min_a / step_a - 1e-9)


def can_charge(load: Load, step_a: float) -> bool:
    return max_steps(load, step_a) >= min_steps(load, step_a) and max_steps(load, step_a) > 0


def with_amps(
    result: dict[Hashable, float], changes: dict[Hashable, float]
) -> dict[Hashable, float]:
    return {**result, **changes}


def laxity(load: Load, grid: Grid, now: float) -> float:
    if load.departure is None or load.energy_needed_wh is None or load.max_a <= 0:
        return math.inf
    full_power = load.max_a * grid.voltage_v * len(load.phases)
    return (load.departure - now) - load.energy_needed_wh / full_power * 3600


def policy_order(loads: Sequence[Load], policy: Policy, grid: Grid, now: float) -> list[Load]:
    if policy is Policy.equal_share:
        return sorted(loads, key=lambda load: (load.since, load.key))
    if policy is Policy.priority:
        return sorted(loads, key=lambda load: (-load.priority, load.since, load.key))
    return sorted(loads, key=lambda load: (laxity(load, grid, now), load.since, load.key))


def reference_equal_share(
    grid: Grid, loads: Sequence[Load], step_a: float
) -> dict[Hashable, float]:
    """Slow water-filling: one step at a time to the lowest load that can take it."""
    order = policy_order(loads, Policy.equal_share, grid, 0.0)
    units: dict[Hashable, int] = {load.key: 0 for load in loads}

    def amps() -> dict[Hashable, float]:
        return {key: u * step_a for key, u in units.items()}

    for load in order:  # admission: each minimum in turn, if it still fits
        if can_charge(load, step_a):
            units[load.key] = min_steps(load, step_a)
            if not fits(grid, loads, amps()):
                units[load.key] = 0
    charging = [load for load in order if units[load.key] > 0 or load.min_a <= 0]
    while True:
        open_ = [
            load
            for load in charging
            if units[load.key] < max_steps(load, step_a)
            and fits(grid, loads, with_amps(amps(), {load.key: (units[load.key] + 1) * step_a}))
        ]
        if not open_:
            return amps()
        lowest = min(open_, key=lambda load: units[load.key])  # order breaks ties: min is stable
        units[lowest.key] += 1


# --- examples ----------------------------------------------------------------------------------


def test_no_loads_no_allocations() -> None:
    assert allocate(Grid((10, 10, 10)), []) == {}


def test_a_lone_car_gets_its_maximum_or_the_phase_limit() -> None:
    assert allocate(Grid((40, 40, 40)), [Load("a", (0,), 32)]) == {"a": 32.0}
    assert allocate(Grid((20, 40, 40)), [Load("a", (0,), 32)]) == {"a": 20.0}
    assert allocate(Grid((40, 40, 10)), [Load("a", (0, 1, 2), 16)]) == {"a": 10.0}


def test_equal_share_splits_a_phase_evenly() -> None:
    loads = [Load(name, (0,), 32) for name in "abc"]
    assert allocate(Grid((48, 0, 0)), loads) == {"a": 16.0, "b": 16.0, "c": 16.0}


def test_a_capped_car_leaves_its_share_to_the_others() -> None:
    loads = [Load("small", (0,), 10), Load("big", (0,), 32)]
    assert allocate(Grid((40, 40, 40)), loads) == {"small": 10.0, "big": 30.0}


def test_a_saturated_phase_freezes_only_the_loads_on_it() -> None:
    # L1 is shared by the three-phase car and "l1"; once L1 is full both stop rising, and "l2"
    # takes what the three-phase car leaves on L2.
    loads = [Load("3ph", (0, 1, 2), 32), Load("l1", (0,), 32), Load("l2", (1,), 32)]
    result = allocate(Grid((20, 40, 40)), loads)
    assert result == {"3ph": 10.0, "l1": 10.0, "l2": 30.0}


def test_the_power_limit_binds_like_a_constraint_on_all_phases() -> None:
    # 23 kW at 230 V = 100 phase-amps: a three-phase car at a draws 3a, a single-phase one a.
    loads = [Load("3ph", (0, 1, 2), 32), Load("1ph", (0,), 32)]
    result = allocate(Grid((64, 64, 64), power_limit_w=23_000), loads)
    assert result == {"3ph": 25.0, "1ph": 25.0}
    assert power_w(Grid((64, 64, 64)), loads, result) == pytest.approx(23_000)


def test_granularity_leftovers_go_to_whoever_can_use_them() -> None:
    # 100.2 phase-amps of power: equal share stops at 25.0/25.0, the 0.2 left is too little for
    # a three-phase step (0.3) but fits two single-phase steps.
    loads = [Load("3ph", (0, 1, 2), 32), Load("1ph", (0,), 32)]
    result = allocate(Grid((64, 64, 64), power_limit_w=230 * 100.2), loads)
    assert result == {"3ph": 25.0, "1ph": 25.2}


def test_units_of_step_are_floored_and_remainders_go_to_the_earliest() -> None:
    loads = [Load(name, (0,), 32, min_a=0, since=since) for name, since in [("b", 2), ("a", 1)]]
    assert allocate(Grid((10, 0, 0)), [*loads, Load("c", (0,), 32, min_a=0, since=3)]) == {
        "a": 3.4,
        "b": 3.3,
        "c": 3.3,
    }
    assert allocate(Grid((40, 0, 0)), [Load("x", (0,), 7.99)]) == {"x": 7.9}
    assert allocate(Grid((40, 0, 0)), [Load("x", (0,), 7.99)], step_a=1.0) == {"x": 7.0}


def test_minimum_that_is_not_a_step_multiple_is_rounded_up() -> None:
    result = allocate(Grid((40, 0, 0)), [Load("x", (0,), 4.0, min_a=2.5)], step_a=1.0)
    assert result == {"x": 4.0}
    result = allocate(Grid((2.9, 0, 0)), [Load("x", (0,), 4.0, min_a=2.5)], step_a=1.0)
    assert result == {"x": 0.0}  # 3 A is the least it may get, and it does not fit


def test_a_car_whose_maximum_is_below_its_minimum_is_paused() -> None:
    result = allocate(Grid((40, 40, 40)), [Load("weak", (0,), 5), Load("ok", (0,), 10)])
    assert result == {"weak": 0.0, "ok": 10.0}


def test_when_minimums_do_not_fit_the_earliest_keep_charging() -> None:
    loads = [Load(i, (0,), 32, since=since) for i, since in enumerate([30, 10, 20, 0])]
    result = allocate(Grid((20, 0, 0)), loads)
    # 6 A minimums: three fit in 20 A. The latest (key 0, since 30) is paused; the 2 A over the
    # minimums are shared, the extra step going to the earliest.
    assert result == {0: 0.0, 1: 6.7, 2: 6.6, 3: 6.7}


def test_pausing_skips_a_load_that_does_not_fit_but_admits_a_later_one_that_does() -> None:
    loads = [
        Load("first", (0,), 32, since=0),
        Load("3ph", (0, 1, 2), 16, since=1),
        Load("l2", (1,), 32, since=2),
    ]
    result = allocate(Grid((10, 20, 20)), loads)
    assert result == {"first": 10.0, "3ph": 0.0, "l2": 20.0}


def test_ties_on_since_are_broken_by_key() -> None:
    loads = [Load(key, (0,), 32) for key in ("c", "a", "b")]
    assert allocate(Grid((13, 0, 0)), loads) == {"a": 6.5, "b": 6.5, "c": 0.0}


def test_keys_of_mixed_types_are_still_ordered_deterministically() -> None:
    loads = [Load(("cs", 1), (0,), 32), Load("cs-2", (0,), 32), Load(3, (0,), 32)]
    first = allocate(Grid((13, 0, 0)), loads)
    assert first == allocate(Grid((13, 0, 0)), loads[::-1])
    assert sorted(first.values()) == [0.0, 6.5, 6.5]


def test_priority_serves_higher_tiers_first() -> None:
    loads = [
        Load("low", (0,), 32, priority=0, since=0),
        Load("high-a", (0,), 10, priority=2, since=5),
        Load("high-b", (0,), 32, priority=2, since=6),
        Load("mid", (0,), 32, priority=1, since=1),
    ]
    result = allocate(Grid((40, 0, 0)), loads, Policy.priority)
    # Minimums first (24 A), then high-a tops up to 10, high-b takes the remaining 12.
    assert result == {"low": 6.0, "high-a": 10.0, "high-b": 18.0, "mid": 6.0}


def test_priority_decides_who_is_paused() -> None:
    loads = [Load(i, (0,), 32, priority=i, since=-i) for i in range(4)]
    result = allocate(Grid((13, 0, 0)), loads, Policy.priority)
    # The two highest keep charging; the 1 A over their minimums goes to the highest tier.
    assert result == {0: 0.0, 1: 0.0, 2: 6.0, 3: 7.0}


def test_least_laxity_serves_the_most_urgent_car_first() -> None:
    now = 1_000_000.0
    loads = [
        # Needs 11 kWh in 3 h at up to 16 A x 230 V x 3 = 11.04 kW: laxity 3h - 59.8 min.
        Load("urgent", (0, 1, 2), 16, departure=now + 3 * 3600, energy_needed_wh=11_000),
        # Needs 3.68 kWh in 5 h at up to 3.68 kW: laxity 4 h.
        Load("relaxed", (0,), 16, departure=now + 5 * 3600, energy_needed_wh=3_680),
        Load("unknown-1", (1,), 32, since=1),
        Load("unknown-2", (1,), 32, since=2),
    ]
    result = allocate(Grid((20, 40, 40)), loads, Policy.least_laxity, now=now)
    # Everyone's 6 A minimum fits. urgent then takes all L1 has beside relaxed's minimum (14 A),
    # relaxed gets nothing more, and the two without a deadline share the 26 A left on L2.
    assert result == {"urgent": 14.0, "relaxed": 6.0, "unknown-1": 13.0, "unknown-2": 13.0}


def test_least_laxity_orders_by_laxity_not_departure() -> None:
    now = 0.0
    loads = [
        # Leaves sooner but needs little: laxity 2 h - 6 min.
        Load("soon", (0,), 32, departure=2 * 3600, energy_needed_wh=736),
        # Leaves later but needs 3 h flat out: laxity 1 h.
        Load("later", (0,), 32, departure=4 * 3600, energy_needed_wh=3 * 7_360),
    ]
    result = allocate(Grid((38, 0, 0)), loads, Policy.least_laxity, now=now)
    assert result == {"later": 32.0, "soon": 6.0}


def test_least_laxity_needs_now_when_a_departure_is_known() -> None:
    loads = [Load("a", (0,), 16, departure=10.0, energy_needed_wh=1.0)]
    with pytest.raises(ValueError, match="now"):
        allocate(Grid((10, 10, 10)), loads, Policy.least_laxity)
    # Other policies ignore departures.
    assert allocate(Grid((10, 10, 10)), loads) == {"a": 10.0}


def test_least_laxity_without_any_deadline_is_equal_share() -> None:
    loads = [Load(i, (i % 3,), 32, since=i) for i in range(9)]
    grid = Grid((25, 30, 13))
    assert allocate(grid, loads, Policy.least_laxity) == allocate(grid, loads)


@pytest.mark.parametrize(
    ("grid", "loads", "step_a", "message"),
    [
        (Grid((10, 10, 10)), [Load("a", (), 16)], 0.1, "phases"),
        (Grid((10, 10, 10)), [Load("a", (3,), 16)], 0.1, "phases"),
        (Grid((10, 10, 10)), [Load("a", (0, 0), 16)], 0.1, "phases"),
        (Grid((10, -1, 10)), [Load("a", (0,), 16)], 0.1, "phase limits"),
        (Grid((10, 10, 10), power_limit_w=-1), [Load("a", (0,), 16)], 0.1, "power_limit_w"),
        (Grid((10, 10, 10)), [Load("a", (0,), -1)], 0.1, "max_a"),
        (Grid((10, 10, 10)), [Load("a", (0,), 16, min_a=-1)], 0.1, "min_a"),
        (Grid((10, 10, 10)), [Load("a", (0,), 16), Load("a", (1,), 16)], 0.1, "unique"),
        (Grid((10, 10, 10)), [Load("a", (0,), 16)], 0.0, "step_a"),
        (Grid((10, 10, 10), voltage_v=0), [Load("a", (0,), 16)], 0.1, "voltage_v"),
    ],
)
def test_invalid_input_is_refused(
    grid: Grid, loads: list[Load], step_a: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        allocate(grid, loads, step_a=step_a)


# --- properties --------------------------------------------------------------------------------

PHASE_SETS = [(0,), (1,), (2,), (0, 1), (1, 2), (2, 0), (0, 1, 2), (1, 2, 0), (2, 0, 1)]
NOW = 10_000.0
STEPS = st.sampled_from([0.1, 0.25, 0.5, 1.0])


@st.composite
def sites(draw: st.DrawFn, max_loads: int = 12) -> tuple[Grid, list[Load]]:
    halves = st.integers(0, 160).map(lambda n: n / 2)
    voltage = draw(st.sampled_from([230.0, 120.0]))
    # Power limits in tenths of a phase-amp often leave a remainder that only some loads can use.
    power_limit = st.integers(0, 2400).map(lambda n: voltage * n / 10)
    grid = Grid(
        phase_limit_a=(draw(halves), draw(halves), draw(halves)),
        power_limit_w=draw(st.none() | power_limit | st.floats(0, 60_000, allow_nan=False)),
        voltage_v=voltage,
    )
    count = draw(st.integers(0, max_loads))
    loads = []
    for key in range(count):
        has_deadline = draw(st.booleans())
        loads.append(
            Load(
                key=key,
                phases=draw(st.sampled_from(PHASE_SETS)),
                max_a=draw(st.floats(0, 40, allow_nan=False)),
                min_a=draw(st.sampled_from([0.0, 6.0, 6.0, 6.0, 8.0])),
                priority=draw(st.integers(0, 2)),
                since=float(draw(st.integers(0, 4))),
                departure=NOW + draw(st.floats(0, 36_000)) if has_deadline else None,
                energy_needed_wh=draw(st.floats(0, 50_000)) if has_deadline else None,
            )
        )
    return grid, loads


POLICIES = st.sampled_from(list(Policy))


@settings(max_examples=300, deadline=None)
@given(site=sites(), policy=POLICIES, step_a=STEPS)
def test_limits_and_bounds_always_hold(
    site: tuple[Grid, list[Load]], policy: Policy, step_a: float
) -> None:
    grid, loads = site
    result = allocate(grid, loads, policy, now=NOW, step_a=step_a)
    assert set(result) == {load.key for load in loads}
    assert fits(grid, loads, result)
    for load in loads:
        amps = result[load.key]
        assert amps == 0 or load.min_a - TOL <= amps <= load.max_a + TOL
        assert abs(amps / step_a - round(amps / step_a)) < 1e-6
        if load.max_a < load.min_a:
            assert amps == 0


@settings(max_examples=300, deadline=None)
@given(site=sites(), policy=POLICIES, step_a=STEPS)
def test_no_capacity_is_left_that_someone_could_use(
    site: tuple[Grid, list[Load]], policy: Policy, step_a: float
) -> None:
    grid, loads = site
    result = allocate(grid, loads, policy, now=NOW, step_a=step_a)
    for load in loads:
        amps = result[load.key]
        if amps > 0 and steps(amps, step_a) < max_steps(load, step_a):
            assert not fits(grid, loads, with_amps(result, {load.key: amps + step_a}))
        elif amps == 0 and can_charge(load, step_a) and load.min_a > 0:
            resumed = min_steps(load, step_a) * step_a
            assert not fits(grid, loads, with_amps(result, {load.key: resumed}))


@settings(max_examples=300, deadline=None)
@given(site=sites(), policy=POLICIES, step_a=STEPS)
def test_pausing_follows_the_policy_order(
    site: tuple[Grid, list[Load]], policy: Policy, step_a: float
) -> None:
    """A load is paused only if its minimum did not fit beside the minimums served before it."""
    grid, loads = site
    result = allocate(grid, loads, policy, now=NOW, step_a=step_a)
    minimums: dict[Hashable, float] = {load.key: 0.0 for load in loads}
    for load in policy_order(loads, policy, grid, NOW):
        own = min_steps(load, step_a) * step_a
        if result[load.key] > 0:
            minimums[load.key] = own
        elif can_charge(load, step_a) and load.min_a > 0:
            assert not fits(grid, loads, with_amps(minimums, {load.key: own}))


@settings(max_examples=200, deadline=None)
@given(site=sites(max_loads=7), step_a=st.sampled_from([0.5, 1.0]))
def test_equal_share_matches_a_slow_reference(site: tuple[Grid, list[Load]], step_a: float) -> None:
    grid, loads = site
    expected = reference_equal_share(grid, loads, step_a)
    result = allocate(grid, loads, step_a=step_a)
    for load in loads:
        assert result[load.key] == pytest.approx(expected[load.key], abs=TOL), load


@settings(max_examples=300, deadline=None)
@given(site=sites(), policy=st.sampled_from([Policy.priority, Policy.least_laxity]))
def test_earlier_loads_are_not_held_back_by_later_ones(
    site: tuple[Grid, list[Load]], policy: Policy
) -> None:
    """priority: a higher tier; least_laxity: a load with a deadline, earlier in laxity order.

    Such a load below its maximum could not get one more step even if every load served after
    it (a lower tier; later in laxity order) went down to its minimum.
    """
    grid, loads = site
    step_a = 0.5
    result = allocate(grid, loads, policy, now=NOW, step_a=step_a)
    ordered = policy_order(loads, policy, grid, NOW)
    for position, load in enumerate(ordered):
        amps = result[load.key]
        if amps == 0 or steps(amps, step_a) >= max_steps(load, step_a):
            continue
        if policy is Policy.least_laxity and laxity(load, grid, NOW) == math.inf:
            continue
        later = [
            other
            for other in ordered[position + 1 :]
            if policy is Policy.least_laxity or other.priority < load.priority
        ]
        squeezed = {
            other.key: min(result[other.key], min_steps(other, step_a) * step_a) for other in later
        }
        assert not fits(grid, loads, with_amps(result, {**squeezed, load.key: amps + step_a}))


@settings(max_examples=150, deadline=None)
@given(site=sites(), step_a=STEPS)
def test_a_single_priority_tier_is_equal_share(
    site: tuple[Grid, list[Load]], step_a: float
) -> None:
    grid, loads = site
    flat = [Load(load.key, load.phases, load.max_a, load.min_a, since=load.since) for load in loads]
    assert allocate(grid, flat, Policy.priority, step_a=step_a) == allocate(
        grid, flat, step_a=step_a
    )


@settings(max_examples=150, deadline=None)
@given(site=sites(), policy=POLICIES, seed=st.integers(0, 2**16))
def test_the_order_of_the_input_does_not_matter(
    site: tuple[Grid, list[Load]], policy: Policy, seed: int
) -> None:
    grid, loads = site
    shuffled = list(loads)
    random.Random(seed).shuffle(shuffled)
    assert allocate(grid, shuffled, policy, now=NOW) == allocate(grid, loads, policy, now=NOW)


# --- benchmark ---------------------------------------------------------------------------------


def test_benchmark_runs_small_and_its_site_respects_the_limits() -> None:
    report = rebalance_benchmark(connectors=20, repeats=3)
    assert report["connectors"] == 20
    assert report["repeats"] == 3
    assert set(report["baseline"]) == {"p50_ms", "p95_ms"}
    assert set(report["policies"]) == {policy.value for policy in Policy}
    for figures in report["policies"].values():
        assert 0 < figures["p50_ms"] <= figures["p95_ms"]
        assert figures["p50_vs_baseline"] > 0
        assert figures["charging"] + figures["paused"] == 20

    grid, loads, now = build_site(20)
    assert grid.power_limit_w is not None
    assert any(load.departure is not None for load in loads)
    assert any(len(load.phases) == 1 for load in loads)
    assert any(len(load.phases) == 3 for load in loads)
    demand = phase_totals(loads, {load.key: load.max_a for load in loads})
    assert any(d > limit for d, limit in zip(demand, grid.phase_limit_a, strict=True))
    for policy in Policy:
        result = allocate(grid, loads, policy, now=now)
        assert fits(grid, loads, result)
        assert all(
            a == 0 or load.min_a <= a <= load.max_a
            for load, a in zip(loads, (result[load.key] for load in loads), strict=True)
        )

