"""From allocations to pilots, the code the controller and the realistic bench share: give-back,
planned targets, filling, the exact packing, and the plan-to-pilot rounding."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from load_manager.allocation import Grid, Load, Policy, Rule, allocate
from load_manager.dispatch import (
    GIVE_BACK_MARGIN_A,
    IDLE_A,
    Dispatch,
    Observation,
    counted_limit,
    dispatch,
    pack,
    plan_current,
)

NOW = 1_750_000_000.0
TOL = 1e-9
PHASE_SETS = [(0,), (1,), (2,), (0, 1, 2), (1, 2, 0), (2, 0, 1)]


def phase_use(loads: Sequence[Load], amps: dict[Hashable, float]) -> list[float]:
    used = [0.0, 0.0, 0.0]
    for load in loads:
        for phase in load.phases:
            used[phase] += amps[load.key]
    return used


def assert_feasible(grid: Grid, loads: Sequence[Load], result: Dispatch, step_a: float) -> None:
    """What every dispatch must give: pilots a station can take, counted currents within the
    limits, never counted above the pilot."""
    assert set(result.pilots) == set(result.counted) == {load.key for load in loads}
    for load in loads:
        pilot, counted = result.pilots[load.key], result.counted[load.key]
        assert pilot == 0 or load.min_a - TOL <= pilot <= max(load.max_a, load.min_a) + TOL
        assert abs(pilot / step_a - round(pilot / step_a)) < 1e-6
        assert 0 <= counted <= pilot + TOL
        assert counted <= load.max_a + TOL
    for used, limit in zip(phase_use(loads, result.counted), grid.phase_limit_a, strict=True):
        assert used <= limit + TOL


# --- worked examples -------------------------------------------------------------------------


def test_a_car_drawing_clearly_less_gives_the_rest_back() -> None:
    grid = Grid(phase_limit_a=(20.0, 20.0, 20.0))
    loads = [Load("A", (0,), 16.0), Load("B", (0,), 16.0, since=1.0)]
    # A was offered 10 A and draws 2.5: it is counted at 4.5 (margin 2 A), floored to whole
    # amperes, keeps the 6 A minimum pilot, and B gets the rest.
    result = dispatch(grid, loads, Policy.equal_share, step_a=1.0,
                      observed={"A": Observation(10.0, 2.5)})
    assert result.counted == {"A": 4.0, "B": 16.0}
    assert result.pilots == {"A": 6.0, "B": 16.0}


def test_the_give_back_rule_needs_a_clear_shortfall() -> None:
    assert counted_limit(None, min_a=6) is None
    # Within what cars and meters differ from their pilot: it may take more.
    assert counted_limit(Observation(16.0, 15.0), min_a=6) is None
    # Not all of its pilot, but not clearly less either: held at its pilot.
    assert counted_limit(Observation(16.0, 14.0), min_a=6) == 16.0
    assert counted_limit(Observation(16.0, 9.5), min_a=6) == 9.5 + GIVE_BACK_MARGIN_A
    assert counted_limit(Observation(16.0, 0.0), min_a=6) == 0.0  # draws nothing: counted 0
    assert counted_limit(Observation(0.0, 0.0), min_a=6) is None  # paused: may start again


def test_a_car_capped_on_what_it_draws_stays_capped_under_that_pilot() -> None:
    # The pilot that the give-back leaves a car (counted at what it draws plus the margin,
    # in whole amperes, at least the minimum) is never one under which it is offered its
    # whole maximum again while it draws the same: no pilot going up and down in turn.
    for tenths in range(1, 320):
        drawn = tenths / 10
        cap = counted_limit(Observation(32.0, drawn), min_a=6)
        if cap is None:
            continue
        pilot = max(6.0, float(int(cap)))
        assert counted_limit(Observation(pilot, drawn), min_a=6) is not None, drawn


def test_a_car_drawing_nothing_keeps_the_minimum_and_is_counted_at_zero() -> None:
    grid = Grid(phase_limit_a=(14.0, 14.0, 14.0))
    loads = [Load("full", (0, 1, 2), 16.0), Load("B", (0, 1, 2), 16.0, since=1.0)]
    result = dispatch(grid, loads, Policy.equal_share, step_a=1.0,
                      observed={"full": Observation(7.0, 0.0)})
    assert result.pilots == {"full": 6.0, "B": 14.0}
    assert result.counted == {"full": 0.0, "B": 14.0}


def test_targets_cap_planned_loads_and_the_others_share_the_rest() -> None:
    grid = Grid(phase_limit_a=(32.0, 32.0, 32.0))
    loads = [Load("P", (0, 1, 2), 16.0), Load("Q", (0,), 32.0, since=1.0)]
    result = dispatch(grid, loads, Policy.equal_share, step_a=1.0, targets={"P": 7.0})
    assert result.pilots == {"P": 7.0, "Q": 25.0}
    # A target of 0 pauses the planned load; with fill it still takes what nobody else can.
    waiting = dispatch(grid, loads[:1], Policy.equal_share, step_a=1.0, targets={"P": 0.0})
    assert waiting.pilots == {"P": 0.0}
    filled = dispatch(grid, loads[:1], Rule.least_laxity, now=NOW, step_a=1.0,
                      targets={"P": 0.0}, fill=True)
    assert filled.pilots == {"P": 16.0}


def test_fill_gives_what_is_left_to_the_least_laxity_first() -> None:
    grid = Grid(phase_limit_a=(20.0, 20.0, 20.0))
    urgent = Load("U", (0,), 32.0, departure=NOW + 3600, energy_needed_wh=7000)
    relaxed = Load("R", (0,), 32.0, departure=NOW + 36000, energy_needed_wh=7000)
    result = dispatch(grid, [urgent, relaxed], Rule.least_laxity, now=NOW, step_a=1.0,
                      targets={"U": 6.0, "R": 6.0}, target_policy=Rule.least_laxity,
                      fill=True)
    assert result.pilots == {"U": 14.0, "R": 6.0}


def test_earliest_deadline_serves_the_first_to_leave_whatever_it_needs() -> None:
    grid = Grid(phase_limit_a=(16.0, 16.0, 16.0))
    soon = Load("soon", (0,), 16.0, departure=NOW + 7200, energy_needed_wh=500)
    later = Load("later", (0,), 16.0, departure=NOW + 3 * 3600, energy_needed_wh=40_000)
    assert allocate(grid, [soon, later], Rule.earliest_deadline, now=NOW, step_a=1.0) == {
        "soon": 10.0, "later": 6.0}
    # Least laxity sees that "later" cannot wait: it needs more than 3 h at full rate.
    assert allocate(grid, [soon, later], Rule.least_laxity, now=NOW, step_a=1.0) == {
        "soon": 6.0, "later": 10.0}


def test_the_exact_packing_keeps_a_three_phase_car_where_pausing_by_order_idles_two_phases(
) -> None:
    # L1 holds 14 A. Two single-phase cars on L1 are more urgent than the three-phase car:
    # admitted in order at 6 A each they leave 2 A on L1, so the three-phase car (6 A
    # minimum) is paused and L2 and L3 sit idle. Its plan asks for it, so the exact packing
    # pauses one single-phase car instead: 6 + 6 + 6 on L1, 6 on L2 and L3.
    grid = Grid(phase_limit_a=(14.0, 14.0, 14.0))
    loads = [
        Load("a", (0,), 32.0, departure=NOW + 3600, energy_needed_wh=3000),
        Load("b", (0,), 32.0, departure=NOW + 3700, energy_needed_wh=3000),
        Load("three", (0, 1, 2), 16.0, departure=NOW + 7200, energy_needed_wh=9000),
    ]
    targets = {"a": 6.0, "b": 6.0, "three": 6.0}
    kwargs = {"now": NOW, "step_a": 1.0, "targets": targets, "target_policy": Rule.least_laxity,
              "fill": True}
    greedy = dispatch(grid, loads, Rule.least_laxity, **kwargs)  # type: ignore[arg-type]
    assert greedy.pilots == {"a": 8.0, "b": 6.0, "three": 0.0}
    exact = dispatch(grid, loads, Rule.least_laxity, exact=True, **kwargs)  # type: ignore[arg-type]
    assert exact.pilots["three"] == 8.0
    assert sorted(exact.pilots.values()) == [0.0, 6.0, 8.0]
    assert phase_use(loads, exact.counted) == [14.0, 8.0, 8.0]


def test_plan_current_dithers_a_plan_below_the_minimum_onto_whole_pilots() -> None:
    # A plan of 2 A for 30 slots on one phase (0.46 kW): pilots of 0 or 6 A, averaging 2 A.
    kw = 2.0 * 230 / 1000
    carry, pilots = 0.0, []
    for _ in range(30):
        amps = plan_current(kw, phases=1, voltage_v=230, min_a=6, step_a=1.0, carry_a=carry)
        pilots.append(amps)
        carry += 2.0 - amps
    assert set(pilots) == {0.0, 6.0}
    assert sum(pilots) / len(pilots) == pytest.approx(2.0, abs=6 / 30)
    assert plan_current(7.4 * 1000 / 1000 * 230 / 230, phases=1, voltage_v=230, min_a=6,
                        step_a=1.0) == 32.0
    assert plan_current(0.0, phases=3, voltage_v=230, min_a=6, step_a=0.1) == 0.0
    assert plan_current(11.04, phases=3, voltage_v=230, min_a=6, step_a=0.1) == 16.0


# --- properties ------------------------------------------------------------------------------


@st.composite
def situations(draw: st.DrawFn) -> tuple[Grid, list[Load], dict, dict, float]:
    step = draw(st.sampled_from([0.1, 1.0]))
    grid = Grid(phase_limit_a=tuple(float(draw(st.integers(0, 60))) for _ in range(3)))  # type: ignore[arg-type]
    loads, observed, targets = [], {}, {}
    for key in range(draw(st.integers(0, 10))):
        max_a = float(draw(st.sampled_from([16, 32, 10, 5])))
        loads.append(Load(key, draw(st.sampled_from(PHASE_SETS)), max_a, 6.0,
                          since=float(draw(st.integers(0, 3))),
                          departure=NOW + draw(st.integers(600, 36_000)),
                          energy_needed_wh=float(draw(st.integers(0, 40_000)))))
        if draw(st.booleans()):
            offered = float(draw(st.sampled_from([0, 6, 8, 16, 32])))
            observed[key] = Observation(offered, draw(st.floats(0, offered)))
        if draw(st.booleans()):
            targets[key] = float(draw(st.integers(0, 32)))
    return grid, loads, observed, targets, step


@settings(max_examples=300, deadline=None)
@given(situation=situations(), fill=st.booleans(),
       rule=st.sampled_from([Policy.equal_share, Rule.least_laxity, Rule.earliest_deadline]))
def test_every_dispatch_gives_valid_pilots_within_the_limits(
        situation: tuple[Grid, list[Load], dict, dict, float], fill: bool, rule: Rule) -> None:
    grid, loads, observed, targets, step = situation
    result = dispatch(grid, loads, rule, now=NOW, step_a=step, observed=observed,
                      targets=targets, target_policy=Rule.least_laxity, fill=fill)
    assert_feasible(grid, loads, result, step)
    # A car's counted current covers whatever it can still draw: what it drew last time
    # when it gave back (it tapers, it never climbs back), to a meter's resolution.
    for load in loads:
        cap = counted_limit(observed.get(load.key), min_a=load.min_a)
        if cap is not None and result.pilots[load.key] > 0:
            drawn = observed[load.key].drawn_a
            assert min(result.pilots[load.key], drawn) <= result.counted[load.key] + IDLE_A


@settings(max_examples=200, deadline=None)
@given(situation=situations())
def test_the_exact_packing_is_feasible_and_never_worse_than_greedy(
        situation: tuple[Grid, list[Load], dict, dict, float]) -> None:
    grid, loads, _, targets, step = situation
    targets = {load.key: targets.get(load.key, 0.0) for load in loads}
    common = {"now": NOW, "step_a": step, "targets": targets,
              "target_policy": Rule.least_laxity, "fill": True}
    greedy = dispatch(grid, loads, Rule.least_laxity, **common)  # type: ignore[arg-type]
    exact = dispatch(grid, loads, Rule.least_laxity, exact=True, **common)  # type: ignore[arg-type]
    assert_feasible(grid, loads, exact, step)

    def cost(amps: dict[Hashable, float]) -> float:
        total = 0.0
        for load in loads:
            goal = min(load.max_a, targets[load.key])
            short = max(0.0, goal - amps[load.key])
            total += len(load.phases) * (2.0 * short - amps[load.key])
        return total

    # The over-target term is at most 1 % of the current: compare up to it.
    assert cost(exact.counted) <= cost(greedy.counted) + 0.011 * sum(
        len(load.phases) * load.max_a for load in loads) + 1e-6


def test_pack_answers_none_when_it_cannot_improve() -> None:
    grid = Grid(phase_limit_a=(32.0, 32.0, 32.0))
    loads = [Load("A", (0, 1, 2), 16.0)]
    assert pack(grid, loads, {"A": 16.0}, order=["A"], step_a=1.0, start={"A": 16.0}) is None
    assert pack(grid, loads, {"A": 16.0}, order=["A"], step_a=1.0, start={"A": 0.0}) == {
        "A": 16.0}
