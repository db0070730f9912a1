"""The online MPC the realistic bench measures and the real-time controller runs
(load_manager.mpc), the held cars' second chance (dispatch), and the meter readings kept
across a restart (meters, service)."""

from __future__ import annotations

from collections.abc import Hashable
from datetime import timedelta

import numpy as np
import pytest
from sqlmodel import Session

from load_manager import controller, lp, realistic, service
from load_manager.allocation import Grid, Load, Policy, Rule
from load_manager.dispatch import (
    REOFFER_S,
    Observation,
    Wiring,
    connector_load,
    counted_limit,
    dispatch,
    refused_pilot,
)
from load_manager.meters import PILOT_SETTLE_S, MeterWatch, Reading
from load_manager.models import SitePolicy
from load_manager.mpc import Car, Mpc, need_kwh, site_problem
from station_api import service as stations
from tests.load_manager.test_controller import NOW, a_site, a_station, charging, state

SLOT_S = 900.0
T0 = 1_750_000_000.0
THREE = Wiring(3, "RST", 32.0, 6.0)


def car(key: str, wiring: Wiring = THREE, *, need: float = 10.0, leaves_h: float = 4.0,
        delivered: float = 0.0, car_phases: int | None = None, fixed: float | None = None
        ) -> Car:
    departure = T0 + leaves_h * 3600
    load = connector_load(key, wiring, car_phases=car_phases, since=T0 - 3600,
                          departure=departure, energy_needed_wh=need * 1000)
    return Car(load, need, departure, delivered, fixed)


def phase_use(cars: list[Car], pilots: dict[Hashable, float]) -> list[float]:
    used = [0.0, 0.0, 0.0]
    for c in cars:
        for p in c.load.phases:
            used[p] += pilots[c.key]
    return used


# --- the shared MPC ---------------------------------------------------------------------------


def test_the_car_leaving_first_is_served_first_in_whole_amperes_within_the_phases() -> None:
    grid = Grid(phase_limit_a=(20.0, 20.0, 20.0))
    cars = [car("late", need=30.0, leaves_h=8.0), car("soon", need=5.0, leaves_h=1.0)]
    result = Mpc(slot_s=SLOT_S).decide(grid, cars, T0, {})
    # Both fit in the end, and the one leaving in an hour gets its whole need soonest.
    assert result.pilots["soon"] == 20.0 - result.pilots["late"]
    assert result.pilots["soon"] >= result.pilots["late"]
    assert all(p == 0 or (6 <= p <= 32 and p == int(p)) for p in result.pilots.values())
    assert max(phase_use(cars, result.pilots)) <= 20.0


def test_single_phase_cars_on_full_phases_do_not_hold_back_the_three_phase_car() -> None:
    # L1 and L2 each carry a single-phase car; a three-phase car loads all three. The LP
    # gives the most energy now: the three-phase car its 16 A on L3's spare room too.
    grid = Grid(phase_limit_a=(16.0, 16.0, 16.0))
    cars = [car("L1", Wiring(1, "RST", 32.0, 6.0), need=20.0),
            car("L2", Wiring(1, "STR", 32.0, 6.0), need=20.0),
            car("3P", need=20.0)]
    pilots = Mpc(slot_s=SLOT_S).decide(grid, cars, T0, {}).pilots
    assert pilots == {"L1": 0.0, "L2": 0.0, "3P": 16.0}


def test_the_plan_is_kept_within_a_slot_and_made_again_when_the_state_departs_from_it(
) -> None:
    grid = Grid(phase_limit_a=(32.0, 32.0, 32.0))
    mpc = Mpc(slot_s=SLOT_S)
    a, b = car("A", need=20.0), car("B", need=20.0, leaves_h=6.0)
    first = mpc.decide(grid, [a, b], T0, {}).pilots
    assert len(mpc.replans) == 1
    # Within the slot, with a little energy delivered, nothing is re-planned and the
    # targets stay (pilots do not move with every meter value).
    later = [Car(a.load, 19.9, a.departure_s, 0.1), Car(b.load, 19.9, b.departure_s, 0.1)]
    assert mpc.decide(grid, later, T0 + 300, {}).pilots == first
    assert len(mpc.replans) == 1
    # A car arrives: re-planned.
    c = car("C", need=5.0, leaves_h=1.0)
    mpc.decide(grid, [*later, c], T0 + 400, {})
    assert len(mpc.replans) == 2
    # A car starts taking less than offered (a taper): re-planned at what it takes.
    tapering = {"A": Observation(float(first["A"]), 4.0)}
    after = mpc.decide(grid, [*later, c], T0 + 500, tapering).pilots
    assert len(mpc.replans) == 3 and "A" in mpc.capped
    assert after["A"] == 6.0  # counted at 4 + 2 A; the minimum pilot
    # Drift: a car far behind its plan.
    behind = [Car(later[0].load, 19.9, a.departure_s, 0.1),
              Car(later[1].load, 19.9, b.departure_s, 0.1 - 2 * mpc.replan_drift_kwh), c]
    mpc.decide(grid, behind, T0 + 2 * SLOT_S, tapering)
    assert len(mpc.replans) == 4
    # Still there at the departure it was planned with: re-planned, taken to stay longer.
    mpc.decide(grid, behind, c.departure_s + 1, tapering)
    assert len(mpc.replans) == 5
    assert mpc.until["C"] == pytest.approx(c.departure_s + 1 + mpc.overstay_s)


def test_a_fixed_car_keeps_its_plan_and_the_others_are_planned_around_it() -> None:
    grid = Grid(phase_limit_a=(32.0, 32.0, 32.0))
    # A charge plan holds 10 A on every phase for two slots (its cost-minimising schedule).
    planned = car("P", need=5.0, fixed=10.0)
    free = car("F", need=40.0)
    reserved = [[10 * 230 / 1000] * 2 for _ in range(3)]
    mpc = Mpc(slot_s=SLOT_S)
    result = mpc.decide(grid, [planned, free], T0, {}, reserved_kw=reserved)
    assert result.pilots == {"P": 10.0, "F": 22.0}
    # The LP planned only the free car, and only in what the plan leaves.
    assert mpc.plan is not None and mpc.plan.keys == ("F",)
    assert mpc.plan.power_kw[0, 0] == pytest.approx(22 * 3 * 230 / 1000)
    # A plan waiting for cheap hours (0 A now) is not filled with what is left.
    waiting = Car(planned.load, 5.0, planned.departure_s, 0.0, 0.0)
    result = mpc.decide(grid, [waiting, free], T0 + 10, {}, reserved_kw=[[0.0]] * 3)
    assert result.pilots["P"] == 0.0 and result.pilots["F"] == 32.0
    assert len(mpc.replans) == 2  # the fixed targets changed: re-planned


def test_need_past_the_statement_is_half_of_what_its_noise_could_hide() -> None:
    assert need_kwh(10.0, 4.0, noise=0.2) == 6.0
    assert need_kwh(10.0, 11.0, noise=0.2) == pytest.approx((12.5 - 11.0) / 2)
    assert need_kwh(10.0, 11.0, noise=0.2, extra="max") == pytest.approx(1.5)
    assert need_kwh(10.0, 13.0, noise=0.2) == 0.0


def test_site_problem_takes_reservations_and_the_kw_limit_off_the_capacity() -> None:
    grid = Grid(phase_limit_a=(10.0, 10.0, 10.0), power_limit_w=5000.0)
    vehicles = [lp.Vehicle("A", 0, 3, 10.0, 11.0)]
    problem = site_problem(grid, vehicles, 15, reserved_kw=[[1.0], [0.5], []])
    assert problem.phase_capacity_kw is not None
    assert problem.phase_capacity_kw[0] == pytest.approx((1.3, 2.3, 2.3))
    assert problem.capacity_kw == pytest.approx((3.5, 5.0, 5.0))


def test_the_bench_replan_is_the_mpc_decision() -> None:
    grid, loads, cars, observed = realistic.synthetic_site(30, seed=3, slots=24)
    plan, result = realistic.replan(grid, loads, cars, slot_minutes=15, now=0.0,
                                    observed=observed)
    by_key = {v.key: v for v in cars}
    mpc = Mpc(slot_s=900.0)
    again = mpc.decide(grid, [Car(load, by_key[load.key].energy_kwh,
                                  by_key[load.key].departure_slot * 900.0)
                              for load in loads], 0.0, observed)
    assert again.pilots == result.pilots
    assert np.allclose(mpc.plan.power_kw, plan.power_kw)  # type: ignore[union-attr]


# --- the controller runs it --------------------------------------------------------------------


def test_the_controllers_pilots_are_the_mpc_decision_for_the_sites_state(session: Session
                                                                         ) -> None:
    a_site(session, phase_limit_a=32.0, policy="mpc")
    a_station(session, "A")
    a_station(session, "B", phases=1, rotation="RST")
    a_station(session, "C", phases=1, rotation="STR")
    charging(session, "A", tag="TA", minutes_ago=50)
    charging(session, "B", tag="TB", minutes_ago=40)
    tx_c = charging(session, "C", tag="TC", minutes_ago=30)
    service.create_plan(session, transaction_id=tx_c, departure_at=NOW + timedelta(hours=3),
                        energy_wh=4000, requested_by="t", now=NOW)
    site = state(session)
    # The plan's cost-minimising pilot for now (any; here 10 A) is C's fixed target.
    from load_manager.planning import ConnectorPlan
    planned = {("C", 1): ConnectorPlan(plan_id=1, now_a=10.0, periods_a=[(900, 10.0)],
                                       schedule={}, expected_energy_wh=4000,
                                       expected_cost_sek=None)}
    observed = {("A", 1): Observation(16.0, 9.0)}
    decision = controller.decide(site, planned=planned, now=NOW, observed=observed)

    # The same state, built here from what the test set up: the bench's MPC decides.
    def started(minutes: int) -> float:
        return (NOW - timedelta(minutes=minutes)).timestamp()

    stay = controller.DEFAULT_STAY.total_seconds()
    energy = controller.DEFAULT_ENERGY_KWH
    cars = [
        Car(connector_load(("A", 1), THREE, since=started(50),
                           departure=started(50) + stay, energy_needed_wh=energy * 1000),
            energy, started(50) + stay),
        Car(connector_load(("B", 1), Wiring(1, "RST", 32.0, 6.0), since=started(40),
                           departure=started(40) + stay, energy_needed_wh=energy * 1000),
            energy, started(40) + stay),
        Car(connector_load(("C", 1), Wiring(1, "STR", 32.0, 6.0), since=started(30),
                           departure=(NOW + timedelta(hours=3)).timestamp(),
                           energy_needed_wh=4000),
            4.0, (NOW + timedelta(hours=3)).timestamp(), 0.0, 10.0),
    ]
    reserved = [[0.0, 0.0], [2.3, 2.3], [0.0, 0.0]]  # C's 10 A on L2, two slots
    expected = Mpc(slot_s=900.0).decide(Grid(phase_limit_a=(32.0, 32.0, 32.0)), cars,
                                        NOW.timestamp(), observed, reserved_kw=reserved)
    assert decision.limits == expected.pilots
    assert decision.limits[("C", 1)] == 10.0
    # A gives back (9 A of 16): counted at 11; what the MPC leaves on L1 goes to B.
    assert decision.limits[("A", 1)] == 11.0 and decision.limits[("B", 1)] == 21.0


def test_other_policies_are_the_allocators_rules(session: Session) -> None:
    a_site(session, phase_limit_a=32.0, policy="equal_share")
    a_station(session, "A")
    a_station(session, "B")
    charging(session, "A", tag="TA", minutes_ago=50)
    charging(session, "B", tag="TB", minutes_ago=40)
    assert controller.decide(state(session), planned={}, now=NOW).limits == {
        ("A", 1): 16.0, ("B", 1): 16.0}
    service.set_site_grid(session, site_id="S", phase_limit_a=32.0, power_limit_kw=None,
                          policy=SitePolicy.mpc)
    # The MPC: the first to leave (A, by the default estimate) takes what it can now.
    assert controller.decide(state(session), planned={}, now=NOW).limits == {
        ("A", 1): 32.0, ("B", 1): 0.0}


# --- held cars ---------------------------------------------------------------------------------


def test_a_held_car_is_offered_what_nobody_else_can_use() -> None:
    grid = Grid(phase_limit_a=(32.0, 32.0, 32.0))
    loads = [Load("held", (0, 1, 2), 32.0), Load("B", (0,), 10.0, since=1.0)]
    # Held at 16 A (it draws 14.5: not all of it, not clearly less). B takes its 10 A; the
    # 22 A nobody else can use on L2 and L3 (6 A on L1) are offered to the held car.
    observed = {"held": Observation(16.0, 14.5)}
    assert counted_limit(observed["held"], min_a=6.0) == 16.0
    result = dispatch(grid, loads, Policy.equal_share, step_a=1.0, observed=observed)
    assert result.pilots == {"held": 22.0, "B": 10.0}
    # Had it refused 24 A a moment ago (drawn clearly less under it), 22 A is not offered.
    refused = {"held": Observation(16.0, 14.5, refused_a=24.0)}
    result = dispatch(grid, loads, Policy.equal_share, step_a=1.0, observed=refused)
    assert result.pilots == {"held": 16.0, "B": 10.0}
    # More than it refused is.
    refused = {"held": Observation(16.0, 14.5, refused_a=20.0)}
    result = dispatch(grid, loads, Policy.equal_share, step_a=1.0, observed=refused)
    assert result.pilots == {"held": 22.0, "B": 10.0}


def test_a_held_planned_car_is_not_offered_more_than_its_plan_without_fill() -> None:
    grid = Grid(phase_limit_a=(32.0, 32.0, 32.0))
    loads = [Load("P", (0, 1, 2), 32.0)]
    result = dispatch(grid, loads, Policy.equal_share, step_a=1.0,
                      observed={"P": Observation(12.0, 10.5)}, targets={"P": 12.0})
    assert result.pilots == {"P": 12.0}
    result = dispatch(grid, loads, Rule.least_laxity, step_a=1.0,
                      observed={"P": Observation(12.0, 10.5)}, targets={"P": 12.0},
                      target_policy=Rule.least_laxity, fill=True)
    assert result.pilots == {"P": 32.0}


def test_a_refusal_counts_above_the_current_pilot_and_for_a_while() -> None:
    seen = [(32.0, 14.5, 0.0), (16.0, 14.5, 60.0)]
    assert refused_pilot(seen, offered_a=16.0, now=60.0) == 32.0
    assert refused_pilot(seen, offered_a=16.0, now=REOFFER_S + 1) is None
    # Under 20 A it drew 18: it took what it was offered, nearly all of it.
    assert refused_pilot([(20.0, 18.0, 0.0)], offered_a=16.0, now=1.0) is None


def test_the_meter_watch_remembers_what_a_car_refused() -> None:
    clock = [0.0]
    watch = MeterWatch(clock=lambda: clock[0])
    key = ("A", 1)
    watch.pilot(key, transaction_id=7, amps=32.0)
    clock[0] += PILOT_SETTLE_S
    assert watch.saw(key, transaction_id=7, reading=Reading(current_a=14.5))
    assert watch.observation(7, phases=3, voltage_v=230) == Observation(32.0, 14.5)
    watch.pilot(key, transaction_id=7, amps=16.0)
    clock[0] += PILOT_SETTLE_S
    assert watch.saw(key, transaction_id=7, reading=Reading(current_a=14.5))
    assert watch.observation(7, phases=3, voltage_v=230) == Observation(16.0, 14.5, 32.0)
    clock[0] += REOFFER_S
    assert watch.observation(7, phases=3, voltage_v=230) == Observation(16.0, 14.5)


# --- readings kept across a restart ------------------------------------------------------------


def test_readings_are_stored_only_when_they_change() -> None:
    clock = [0.0]
    watch = MeterWatch(clock=lambda: clock[0])
    key = ("A", 1)
    watch.pilot(key, transaction_id=7, amps=16.0)
    clock[0] += PILOT_SETTLE_S
    watch.saw(key, transaction_id=7, reading=Reading(current_a=9.0))
    pending = watch.to_store(7)
    assert pending == (16.0, Reading(current_a=9.0))
    watch.stored(7, offered_a=16.0, reading=Reading(current_a=9.0))
    for amps in (9.1, 9.3, 8.8):  # meter noise: nothing to write
        watch.saw(key, transaction_id=7, reading=Reading(current_a=amps))
        assert watch.to_store(7) is None
    watch.saw(key, transaction_id=7, reading=Reading(current_a=8.4))  # it moved
    assert watch.to_store(7) == (16.0, Reading(current_a=8.4))
    watch.stored(7, offered_a=16.0, reading=Reading(current_a=8.4))
    watch.pilot(key, transaction_id=7, amps=10.0)  # a new pilot
    clock[0] += PILOT_SETTLE_S
    watch.saw(key, transaction_id=7, reading=Reading(current_a=8.4))
    assert watch.to_store(7) == (10.0, Reading(current_a=8.4))


def test_a_restored_reading_survives_the_reconnection_that_follows_a_restart() -> None:
    watch = MeterWatch(clock=lambda: 0.0)
    assert watch.restore(7, offered_a=16.0, reading=Reading(current_a=6.7))
    watch.pilot(("A", 1), transaction_id=7, amps=8.0)
    watch.forget_station("A")
    assert watch.observation(7, phases=3, voltage_v=230) == Observation(16.0, 6.7)
    # A newer reading is never replaced by a restored one.
    assert not watch.restore(7, offered_a=32.0, reading=Reading(current_a=1.0))


def test_stored_readings_of_open_transactions_come_back(session: Session) -> None:
    a_site(session)
    a_station(session, "A")
    a_station(session, "B")
    open_tx = charging(session, "A")
    closed = charging(session, "B", tag="T2")
    for station_id, tx, amps in (("A", open_tx, 6.7), ("B", closed, 3.0)):
        service.store_meter_reading(session, station_id=station_id, connector_id=1,
                                    transaction_id=tx, offered_a=16.0, current_a=amps,
                                    power_w=None, phase_power_w=None)
    service.store_meter_reading(session, station_id="A", connector_id=1,
                                transaction_id=open_tx, offered_a=16.0, current_a=6.5,
                                power_w=None, phase_power_w=None)  # replaces its row
    stations.stop_transaction(session, station_id="B", transaction_id=closed, meter_stop_wh=100,
                              timestamp=NOW, reason="Local")
    rows = service.open_meter_readings(session)
    assert [(r.station_id, r.transaction_id, r.offered_a, r.current_a) for r in rows] == [
        ("A", open_tx, 16.0, 6.5)]
