"""The planner against an exact brute-force optimum, its limits, and its explanations.

How the reference is exact: with slots of one hour (so kW and kWh coincide) and integer needs,
car limits, site limits and phase limits, the planning problem is a flow network (source ->
car, capacity its need; car -> (slot, phase), its max power; (slot, phase) -> slot, the phase
limit; slot -> sink, the site limit) with all cars single-phase, or without phase limits.
Network matrices are totally unimodular, so the maximum flow, and the cheapest flow of that
value (min-cost flow), are both attained at integer rates. Enumerating every schedule of
integer rates (``brute_force``: an exhaustive search slot by slot, memoised on what each car
still needs) therefore finds exactly the LP's lexicographic optimum: the most energy, then the
least cost.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime
from decimal import Decimal
from functools import cache
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from load_manager import lp
from load_manager.lp import Plan, Problem, Vehicle, explain, solve

TOL = 1e-4


def brute_force(problem: Problem) -> tuple[float, float]:
    """(most energy, least cost at that energy) over all integer schedules; 1-hour slots."""
    assert problem.slot_minutes == 60
    vs = problem.vehicles
    T = problem.slots
    prices = problem.prices or (0.0,) * T

    @cache
    def best(t: int, remaining: tuple[int, ...]) -> tuple[float, float]:
        if t == T:
            return (0.0, 0.0)
        choices = []
        for i, v in enumerate(vs):
            present = v.arrival_slot <= t < v.departure_slot
            top = min(int(v.max_kw), remaining[i]) if present else 0
            choices.append(range(top + 1))
        result = (-1.0, 0.0)
        for rates in itertools.product(*choices):
            if sum(rates) > problem.capacity_kw[t]:
                continue
            if problem.phase_capacity_kw is not None and any(
                    sum(r for r, v in zip(rates, vs, strict=True) if v.phases == (k,))
                    > problem.phase_capacity_kw[k][t] for k in range(3)):
                continue
            energy, neg_cost = best(t + 1, tuple(m - r for m, r in
                                                  zip(remaining, rates, strict=True)))
            candidate = (energy + sum(rates), neg_cost - prices[t] * sum(rates))
            result = max(result, candidate)
        return result

    energy, neg_cost = best(0, tuple(int(v.energy_kwh) for v in vs))
    return energy, -neg_cost


@st.composite
def small_problems(draw: st.DrawFn, *, phase_limits: bool) -> Problem:
    slots = draw(st.integers(3, 5))
    vehicles = []
    for i in range(draw(st.integers(2, 3))):
        arrival = draw(st.integers(0, slots - 1))
        departure = draw(st.integers(arrival + 1, slots))
        phases = (draw(st.integers(0, 2)),) if phase_limits else draw(
            st.sampled_from([(0,), (1,), (0, 1, 2)]))
        vehicles.append(Vehicle(f"car{i}", arrival, departure, float(draw(st.integers(0, 6))),
                                float(draw(st.integers(1, 3))), phases))
    capacity = [float(draw(st.integers(0, 6))) for _ in range(slots)]
    prices = [float(draw(st.integers(0, 5))) for _ in range(slots)]
    phase = ([[float(draw(st.integers(0, 4))) for _ in range(slots)] for _ in range(3)]
             if phase_limits else None)
    return Problem(60, capacity, vehicles, prices, phase)


def assert_within_limits(problem: Problem, plan: Plan) -> None:
    """Checked here from the problem, independently of lp.violations."""
    dt = problem.slot_hours
    p = plan.power_kw
    assert p.shape == (len(problem.vehicles), problem.slots)
    assert (p >= 0).all()
    for i, v in enumerate(problem.vehicles):
        assert (p[i, :v.arrival_slot] == 0).all() and (p[i, v.departure_slot:] == 0).all()
        assert (p[i] <= v.max_kw + 1e-9).all()
        assert p[i].sum() * dt <= v.energy_kwh + 1e-9
    assert (p.sum(axis=0) <= np.maximum(problem.capacity_kw, 0) + 1e-9).all()
    if problem.phase_capacity_kw is not None:
        for k in range(3):
            load = sum(p[i] / len(v.phases) for i, v in enumerate(problem.vehicles)
                       if k in v.phases)
            assert (load <= np.asarray(problem.phase_capacity_kw[k]) + 1e-9).all()
    assert lp.violations(problem, plan, tol=1e-9) == []


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(small_problems(phase_limits=False))
def test_energy_and_cost_equal_the_brute_force_optimum_under_a_site_limit(
        problem: Problem) -> None:
    plan = solve(problem)
    energy, cost = brute_force(problem)
    assert plan.total_energy_kwh == pytest.approx(energy, abs=TOL)
    assert plan.cost_sek == pytest.approx(cost, abs=TOL)
    assert_within_limits(problem, plan)


@FAST
@given(small_problems(phase_limits=True))
def test_energy_and_cost_equal_the_brute_force_optimum_under_phase_limits(
        problem: Problem) -> None:
    plan = solve(problem)
    energy, cost = brute_force(problem)
    assert plan.total_energy_kwh == pytest.approx(energy, abs=TOL)
    assert plan.cost_sek == pytest.approx(cost, abs=TOL)
    assert_within_limits(problem, plan)


@FAST
@given(small_problems(phase_limits=False))
def test_the_textbook_stage_two_agrees_with_the_one_solve_form(problem: Problem) -> None:
    quick, textbook = solve(problem), solve(problem, stage2="energy_floor")
    assert textbook.fallback or not textbook.stage_seconds  # nothing to solve
    assert quick.total_energy_kwh == pytest.approx(textbook.total_energy_kwh, abs=TOL)
    assert quick.cost_sek == pytest.approx(textbook.cost_sek, abs=TOL)
    assert_within_limits(problem, textbook)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_mixed_phase_counts_under_phase_limits_hold_every_limit(seed: int) -> None:
    # Not a network (a three-phase car puts a third on each phase), so no integer reference;
    # integer schedules are still feasible, so the brute force bounds the LP from below.
    rng = np.random.default_rng(seed)
    slots = int(rng.integers(3, 5))
    vehicles = [Vehicle(i, int(a), int(a + rng.integers(1, slots - a + 1)),
                        float(rng.integers(0, 7)), float(rng.integers(1, 4)),
                        (0, 1, 2) if rng.random() < 0.5 else (int(rng.integers(3)),))
                for i, a in enumerate(rng.integers(0, slots, size=3))]
    problem = Problem(60, rng.integers(0, 7, slots).astype(float).tolist(), vehicles,
                      rng.integers(0, 6, slots).astype(float).tolist(),
                      rng.integers(1, 5, (3, slots)).astype(float).tolist())
    plan = solve(problem)
    assert_within_limits(problem, plan)
    lower = brute_force(Problem(60, problem.capacity_kw, [
        Vehicle(v.key, v.arrival_slot, v.departure_slot, v.energy_kwh, v.max_kw, v.phases)
        for v in vehicles if len(v.phases) == 1], problem.prices, problem.phase_capacity_kw))
    assert plan.total_energy_kwh >= lower[0] - TOL
    assert plan.total_energy_kwh <= lp.max_energy(problem) + TOL


def test_energy_comes_first_then_the_cheapest_hours() -> None:
    # One car needs 6 kWh over four 1-hour slots at 3 kW max: it must charge two full hours,
    # and picks the two cheapest.
    problem = Problem(60, [10, 10, 10, 10], [Vehicle("a", 0, 4, 6.0, 3.0)], [3.0, 1.0, 2.0, 0.5])
    plan = solve(problem)
    assert plan.row("a").tolist() == pytest.approx([0, 3, 0, 3], abs=1e-6)
    assert plan.cost_sek == pytest.approx(4.5, abs=1e-6)
    # The capacity binds in the cheap hours: energy is still the most possible.
    tight = Problem(60, [10, 1, 10, 1], [Vehicle("a", 0, 4, 6.0, 3.0)], [3.0, 1.0, 2.0, 0.5])
    plan = solve(tight)
    assert plan.total_energy_kwh == pytest.approx(6.0, abs=1e-6)
    assert plan.row("a").tolist() == pytest.approx([1, 1, 3, 1], abs=1e-6)


def test_without_prices_the_plan_is_the_earliest_of_the_most_energy() -> None:
    problem = Problem(15, [11.0] * 8, [Vehicle("a", 0, 8, 2.0, 11.0, (0, 1, 2))])
    plan = solve(problem)
    assert plan.cost_sek is None
    assert plan.row("a").tolist() == pytest.approx([8, 0, 0, 0, 0, 0, 0, 0], abs=1e-6)


def test_a_delay_cost_trades_cheap_hours_for_early_delivery() -> None:
    problem = Problem(60, [3.0] * 4, [Vehicle("a", 0, 4, 3.0, 3.0)], [2.0, 2.0, 2.0, 1.9])
    assert solve(problem).row("a").tolist() == pytest.approx([0, 0, 0, 3], abs=1e-6)
    assert solve(problem, delay_cost=0.1).row("a").tolist() == pytest.approx(
        [3, 0, 0, 0], abs=1e-6)


@pytest.mark.parametrize("build", [
    lambda: Vehicle("a", 5, 3, 10.0, 7.4),  # departure before arrival
    lambda: Vehicle("a", 3, 3, 10.0, 7.4),  # no time plugged in
    lambda: Vehicle("a", 0, 4, -1.0, 7.4),  # negative energy
    lambda: Vehicle("a", 0, 4, math.nan, 7.4),
    lambda: Vehicle("a", 0, 4, 10.0, -7.4),
    lambda: Vehicle("a", -1, 4, 10.0, 7.4),
    lambda: Vehicle("a", 0, 4, 10.0, 7.4, (0, 0)),
    lambda: Vehicle("a", 0, 4, 10.0, 7.4, (3,)),
    lambda: Vehicle("a", 0, 4, 10.0, 7.4, ()),
    lambda: Problem(15, [], []),
    lambda: Problem(0, [1.0], []),
    lambda: Problem(15, [1.0, 1.0], [], prices=[1.0]),
    lambda: Problem(15, [1.0], [], phase_capacity_kw=[[1.0], [1.0]]),
    lambda: Problem(15, [math.inf], []),
    lambda: Problem(15, [1.0], [Vehicle("a", 0, 1, 1.0, 1.0), Vehicle("a", 0, 1, 1.0, 1.0)]),
])
def test_odd_input_is_refused(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        build()


def test_negative_delay_cost_is_refused() -> None:
    with pytest.raises(ValueError):
        solve(Problem(15, [1.0], [Vehicle("a", 0, 1, 1.0, 1.0)]), delay_cost=-1)


def test_a_window_past_the_horizon_is_cut_and_a_negative_limit_is_none() -> None:
    problem = Problem(60, [-5.0, 4.0], [Vehicle("a", 0, 10, 20.0, 3.0)], [1.0, 1.0])
    plan = solve(problem)
    assert plan.row("a").tolist() == pytest.approx([0, 3], abs=1e-6)
    assert_within_limits(problem, plan)


def test_no_vehicles_or_no_need_gives_an_empty_plan() -> None:
    plan = solve(Problem(15, [10.0] * 4, [Vehicle("a", 0, 4, 0.0, 7.4)], [1.0] * 4))
    assert plan.total_energy_kwh == 0 and plan.cost_sek == 0
    assert solve(Problem(15, [10.0] * 4, [])).power_kw.shape == (0, 4)


def test_500_cars_over_96_slots_hold_every_limit() -> None:
    from chargedesk.bench.schedule import synthetic_replan_problem

    problem = synthetic_replan_problem(seed=3)
    plan = solve(problem)
    assert lp.violations(problem, plan, tol=1e-9) == []
    assert plan.total_energy_kwh == pytest.approx(lp.max_energy(problem), rel=1e-5)
    assert len(plan.stage_seconds) == 2


# ---------------------------------------------------------------- explain

STOCKHOLM = ZoneInfo("Europe/Stockholm")


def night_plan() -> tuple[Plan, list[float], datetime]:
    """From 22:00, 15-minute slots: 8 kW 01:00-05:00 (32 kWh), 4 kW 05:00-06:30 (6 kWh)."""
    start = datetime(2024, 1, 9, 22, 0, tzinfo=STOCKHOLM)
    row = np.zeros(40)
    row[12:28] = 8.0
    row[28:34] = 4.0
    prices = [1.30] * 28 + [1.75] * 12
    plan = Plan(("car",), 15, row[None, :], np.array([row.sum() / 4]), None, 0.0)
    return plan, prices, start


def test_explain_says_energy_finish_cost_and_main_hours() -> None:
    plan, prices, start = night_plan()
    facts = explain(plan, "car", start, 15, prices)
    assert facts.sentence == "38 kWh by 06:30, about 52 kr, charging mostly 01\u201305"
    assert facts.energy_kwh == Decimal("38.0")
    assert facts.cost_sek == Decimal("52.10")
    assert facts.cost_sek_rounded == Decimal("52")
    assert facts.finish == datetime(2024, 1, 10, 6, 30, tzinfo=STOCKHOLM)
    assert facts.main_hours == (datetime(2024, 1, 10, 1, tzinfo=STOCKHOLM),
                                datetime(2024, 1, 10, 5, tzinfo=STOCKHOLM))
    sv = explain(plan, "car", start, 15, prices, language="sv")
    assert sv.sentence == "38 kWh till kl. 06:30, cirka 52 kr, laddar mest 01\u201305"


def test_explain_rounds_money_half_up_and_small_energy_with_a_decimal_comma() -> None:
    start = datetime(2024, 1, 9, 12, 0, tzinfo=STOCKHOLM)
    row = np.array([2.0, 0.0, 0.0, 0.0])  # 0.5 kWh in the first quarter hour
    plan = Plan(("car",), 15, row[None, :], np.array([0.5]), None, 0.0)
    facts = explain(plan, "car", start, 15, [0.25, 1.0, 1.0, 1.0], language="sv")
    assert facts.cost_sek == Decimal("0.13")  # 0.125 half up, not to even
    assert facts.cost_sek_rounded == Decimal("0")
    assert facts.sentence == "0,5 kWh till kl. 12:15, cirka 0 kr, laddar mest 12\u201313"
    none = Plan(("car",), 15, np.zeros((1, 4)), np.zeros(1), None, 0.0)
    assert explain(none, "car", start, 15, None).sentence == "no charging planned"
    assert explain(plan, "car", start, 15, None).cost_sek is None


def test_explain_counts_time_across_a_dst_change() -> None:
    # 2024-03-31 02:00 in Stockholm does not exist: an hour after 01:30 is 03:30.
    start = datetime(2024, 3, 31, 1, 30, tzinfo=STOCKHOLM)
    row = np.array([4.0] * 4)
    plan = Plan(("car",), 15, row[None, :], np.array([4.0]), None, 0.0)
    assert explain(plan, "car", start, 15, None).finish == datetime(
        2024, 3, 31, 3, 30, tzinfo=STOCKHOLM)


def test_explain_a_solved_plan_matches_its_cost() -> None:
    _, prices, start = night_plan()
    problem = Problem(15, [8.0] * 40, [Vehicle("car", 0, 34, 38.0, 8.0)], prices)
    solved = solve(problem)
    facts = explain(solved, "car", start, 15, prices)
    assert facts.energy_kwh == Decimal("38.0")
    assert facts.cost_sek == Decimal(repr(solved.cost_sek)).quantize(Decimal("0.01"))
    assert facts.sentence.startswith("38 kWh by ")
