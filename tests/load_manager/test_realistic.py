"""The realistic scheduling model: the site, the cars and their batteries, what drivers say,
the simulator's physics, every scheduler on it, and the LP's taper."""

from __future__ import annotations

import csv
import dataclasses
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from load_manager import lp
from load_manager import realistic as R
from load_manager import simulation as sim
from load_manager.dispatch import Wiring
from load_manager.realistic import Algorithm

COLUMNS = ("session_id", "station_id", "arrival", "departure", "arrival_slot",
           "departure_slot", "requested_energy_kwh", "max_power_kw")
SLOT0 = datetime(2019, 3, 4)  # a Monday
CONTROLLED = [a for a in Algorithm if a is not Algorithm.uncontrolled]


def write_sessions(path: Path, rows: list[tuple[str, int, int, float]]) -> sim.SessionSet:
    """rows: (station, arrival slot, departure slot, kWh)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for n, (station, a, d, kwh) in enumerate(rows):
            w.writerow([f"s{n}", station, (SLOT0 + timedelta(minutes=5 * a)).isoformat(),
                        (SLOT0 + timedelta(minutes=5 * d)).isoformat(), a, d, kwh, 6.6])
    return sim.load_sessions(path)


def random_sessions(tmp_path: Path, seed: int, count: int = 30) -> sim.SessionSet:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        a = int(rng.integers(0, 250))
        d = a + int(rng.integers(6, 150))
        stay_h = (d - a) / 12
        rows.append((f"S{int(rng.integers(0, 9)):02d}", a, d,
                     round(float(rng.uniform(0.5, min(30.0, 6.0 * stay_h))), 3)))
    return write_sessions(tmp_path / f"r{seed}.csv", rows)


# --- the site and the fleet -------------------------------------------------------------------


def test_the_site_limit_per_phase_is_whole_amperes_of_a_400_v_supply() -> None:
    assert R.phase_limit_a(10) == 14.0  # 10,000 / (3 x 230) = 14.49
    assert R.phase_limit_a(30) == 43.0
    assert R.phase_limit_a(80) == 115.0


def test_stations_rotate_so_single_phase_cars_spread_over_the_phases() -> None:
    wiring = R.station_wiring(["C", "A", "B", "D"])
    assert [wiring[s].rotation for s in "ABCD"] == ["RST", "STR", "TRS", "RST"]
    assert [wiring[s].site_phases(1) for s in "ABC"] == [(0,), (1,), (2,)]
    assert wiring["B"].site_phases(3) == (1, 2, 0)
    mixed = R.station_wiring(list("ABCDEF"), single_phase_share=1 / 3)
    assert [mixed[s].phases for s in "ABCDEF"] == [3, 3, 1, 3, 3, 1]


def test_the_fleet_is_seeded_and_states_noisy_departures_and_energies(tmp_path: Path) -> None:
    sessions = random_sessions(tmp_path, 1, count=200)
    fleet = R.build_fleet(sessions, seed=3)
    again = R.build_fleet(sessions, seed=3)
    other = R.build_fleet(sessions, seed=4)
    assert np.array_equal(fleet.stated_kwh, again.stated_kwh) and fleet.kind == again.kind
    assert not np.array_equal(fleet.stated_kwh, other.stated_kwh)
    # +/- 30 minutes (6 slots), never before the first slot after arrival; +/- 20 % energy.
    shift = fleet.stated_departure - fleet.departure
    assert shift.min() >= -6 and shift.max() <= 6 and len(set(shift.tolist())) > 5
    assert (fleet.stated_departure > fleet.arrival).all()
    ratio = fleet.stated_kwh / fleet.energy_kwh
    assert ratio.min() >= 0.8 - 1e-12 and ratio.max() <= 1.2 + 1e-12
    # Cars of each type, on the phases their station's rotation gives.
    assert set(fleet.kind) == {t[0] for t in R.CAR_TYPES}
    for i, kind in enumerate(fleet.kind):
        n = 3 if kind.startswith("three") else 1
        station = fleet.wiring[sessions.sessions[i].station_id]
        assert fleet.phases[i] == station.site_phases(n)
        assert fleet.max_a[i] == (32.0 if kind == "single_phase_32a" else 16.0)


def test_every_battery_lets_its_session_fit_charging_flat_out(tmp_path: Path) -> None:
    sessions = random_sessions(tmp_path, 2, count=200)
    fleet = R.build_fleet(sessions, seed=0)
    slots = fleet.departure - fleet.arrival
    got = R._full_rate_delivery(fleet.max_a, fleet.kw_per_a, fleet.battery_kwh,
                                fleet.arrival_soc, fleet.energy_kwh, slots)
    assert fleet.unservable == 0
    assert (got >= fleet.energy_kwh * (1 - 1e-6)).all()
    # Large sessions in short stays need their battery estimated up: some taper all the same.
    end_soc = fleet.arrival_soc + fleet.energy_kwh / fleet.battery_kwh
    assert (end_soc <= 0.98 + 1e-9).all() and (end_soc > R.TAPER_SOC).any()


def test_a_car_takes_its_maximum_then_tapers_above_80_percent_and_stops_at_its_energy(
        tmp_path: Path) -> None:
    sessions = write_sessions(tmp_path / "one.csv", [("A", 0, 120, 30.0)])
    fleet = dataclasses.replace(R.build_fleet(sessions, 0), battery_kwh=np.array([50.0]),
                                arrival_soc=np.array([0.5]))
    ids = np.array([0])
    full = fleet.max_a[0]
    assert fleet.acceptance_a(ids, np.array([10.0]))[0] == full  # 70 %
    assert fleet.acceptance_a(ids, np.array([15.0]))[0] == pytest.approx(full)  # 80 %
    assert fleet.acceptance_a(ids, np.array([20.0]))[0] == pytest.approx(full / 2)  # 90 %
    assert fleet.acceptance_a(ids, np.array([30.0]))[0] == 0.0  # it has its 30 kWh
    # The last bit of energy takes only what is missing.
    per_slot_kwh = full * fleet.kw_per_a[0] * R.SLOT_HOURS
    almost = np.array([30.0 - per_slot_kwh / 10])
    assert fleet.acceptance_a(ids, almost)[0] == pytest.approx(full / 10 * 2, rel=1e-6) or (
        fleet.acceptance_a(ids, almost)[0] <= full / 10 + 1e-9)


# --- the LP's taper ---------------------------------------------------------------------------


def test_the_lp_taper_is_the_simulators_discrete_taper() -> None:
    # 11 kW, taper from 20 kWh, full at 35 kWh; 30 kWh wanted in 2 hours of 5-minute slots.
    car = lp.Vehicle("a", 0, 24, 30.0, 11.0, (0, 1, 2), taper_kwh=(20.0, 35.0))
    problem = lp.Problem(5, [100.0] * 24, [car])
    plan = lp.solve(problem, minimise_cost=False)
    e, expected = 0.0, []
    for _ in range(24):
        p = min(11.0, 11.0 * (35.0 - e) / 15.0, (30.0 - e) * 12)
        expected.append(p)
        e += p / 12
    assert plan.row("a") == pytest.approx(expected, abs=1e-3)  # the IPM's tolerance
    assert lp.max_energy(problem) == pytest.approx(e, abs=1e-4)
    assert lp.violations(problem, plan) == []
    flat = lp.Plan(("a",), 5, np.full((1, 24), 11.0), np.array([22.0]), None, 0.0)
    assert "'a' above its taper" in lp.violations(problem, flat)
    with pytest.raises(ValueError, match="taper"):
        lp.Vehicle("b", 0, 4, 1.0, 1.0, taper_kwh=(5.0, 5.0))


def test_a_tapering_car_leaves_the_phase_to_others_in_the_offline_optimum() -> None:
    # Two single-phase cars share 14 A (3.22 kW) for 2 hours. The one deep in its taper can
    # take little, so the LP gives the other the rest rather than leave it unused.
    tapering = lp.Vehicle("t", 0, 24, 5.0, 7.36, (0,), taper_kwh=(0.0, 6.0))
    plain = lp.Vehicle("p", 0, 24, 20.0, 7.36, (0,))
    problem = lp.Problem(5, [3.22 * 3] * 24, [tapering, plain], None,
                         [[3.22] * 24, [3.22] * 24, [3.22] * 24])
    plan = lp.solve(problem, minimise_cost=False)
    assert lp.violations(problem, plan) == []
    assert plan.site_kw() == pytest.approx([3.22] * 24, abs=1e-4)


def test_window_weight_and_discount_are_checked() -> None:
    problem = lp.Problem(15, [10.0], [lp.Vehicle("a", 0, 1, 1.0, 1.0)])
    with pytest.raises(ValueError):
        lp.solve(problem, window_weight=-1.0)
    with pytest.raises(ValueError):
        lp.solve(problem, discount_per_hour=1.0)


def test_the_window_weight_serves_the_car_leaving_first_among_equal_plans() -> None:
    # Both cars can be served in full; 3.22 kW on the one phase; the early leaver goes first.
    soon = lp.Vehicle("soon", 0, 12, 1.5, 7.36, (0,))
    late = lp.Vehicle("late", 0, 48, 1.5, 7.36, (0,))
    problem = lp.Problem(5, [9.66] * 48, [soon, late], None, [[3.22] * 48] * 3)
    plan = lp.solve(problem, minimise_cost=False, window_weight=1.0)
    assert plan.row("soon")[0] == pytest.approx(3.22, abs=1e-3)
    assert plan.total_energy_kwh == pytest.approx(3.0, abs=1e-4)


def test_a_discount_prefers_energy_now() -> None:
    # 14 A on each phase for two hours. A single-phase car on L1 leaving after the first hour
    # wants all of L1 for it (3.22 kWh); a three-phase car staying two hours wants 9.66 kWh,
    # an hour at full power, which it cannot have beside the other. Most energy: the
    # single-phase car first, the three-phase car in the second hour. Valuing energy now
    # (as if the second hour were going to be taken by others) serves the three-phase car
    # at once and lets the single-phase car go short.
    single = lp.Vehicle("1", 0, 12, 3.22, 7.36, (0,))
    three = lp.Vehicle("3", 0, 24, 9.66, 9.66, (0, 1, 2))
    problem = lp.Problem(5, [9.66] * 24, [single, three], None, [[3.22] * 24] * 3)
    patient = lp.solve(problem, minimise_cost=False)
    assert patient.total_energy_kwh == pytest.approx(12.88, abs=1e-3)
    assert patient.row("3")[:12] == pytest.approx([0.0] * 12, abs=1e-3)
    eager = lp.solve(problem, minimise_cost=False, discount_per_hour=0.9)
    assert eager.row("3")[:6] == pytest.approx([9.66] * 6, abs=1e-3)
    assert eager.total_energy_kwh < patient.total_energy_kwh - 2.5


# --- the simulator -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("capacity", [6.0, 15.0])
def test_every_scheduler_keeps_the_phase_limits_and_none_beats_the_lp_bound(
        tmp_path: Path, seed: int, capacity: float) -> None:
    fleet = R.build_fleet(random_sessions(tmp_path, seed), seed=seed)
    results = {a: R.simulate(fleet, capacity, a) for a in Algorithm}
    bound = results[Algorithm.offline].lp_bound_kwh
    assert bound is not None
    limit = R.phase_limit_a(capacity)
    for algorithm, result in results.items():
        m = result.metrics()
        assert (result.delivered_kwh <= fleet.energy_kwh + 1e-9).all()
        assert (result.phase_a >= 0).all()
        if algorithm is Algorithm.uncontrolled:
            assert m["energy_pct"] == pytest.approx(100.0)  # every battery fits
            assert m["slots_over_limit"] > 0
            continue
        assert m["slots_over_limit"] == 0
        assert max(m["peak_phase_a"]) <= limit + 1e-9
        assert result.delivered_kwh.sum() <= bound * (1 + 1e-6) + 1e-6
        assert m["decisions"] > 0 and m["decision_p95_ms"] >= 0
    offline = results[Algorithm.offline].metrics()
    # The rounded optimum is a schedule the site can run, close to its own LP bound.
    assert offline["delivered_kwh"] >= 0.95 * offline["lp_bound_kwh"]
    assert offline["lp_solves"] == 1


def test_pilots_a_station_cannot_give_are_refused(tmp_path: Path) -> None:
    fleet = R.build_fleet(write_sessions(tmp_path / "s.csv", [("A", 0, 12, 2.0)]), 0)
    with pytest.raises(AssertionError, match=r"pilot 4\.0 A"):
        R._checked({0: 4.0}, np.array([0]), fleet)
    with pytest.raises(AssertionError, match=r"pilot 6\.5 A"):
        R._checked({0: 6.5}, np.array([0]), fleet)
    assert R._checked({0: 6.0}, np.array([0]), fleet).tolist() == [6.0]


def test_a_tapering_car_gives_the_rest_back_within_the_slot(tmp_path: Path) -> None:
    # Two single-phase cars on L1 (stations A and D both wired RST) under 14 A. Car 0 is
    # nearly full and takes about 2 A; the second pass of the slot hands the rest to car 1.
    sessions = write_sessions(tmp_path / "s.csv", [("A", 0, 24, 0.5), ("D", 0, 24, 10.0)])
    fleet = R.build_fleet(sessions, 0)
    rst = Wiring(3, "RST", 32.0, 6.0)
    single = dataclasses.replace(fleet, wiring={"A": rst, "D": rst}, phases=((0,), (0,)),
                                 max_a=np.array([32.0, 32.0]),
                                 battery_kwh=np.array([40.0, 40.0]),
                                 arrival_soc=np.array([0.95, 0.2]))
    result = R.simulate(single, 10.0, Algorithm.equal_share)
    first = result.phase_a[0, 0]
    assert result.second_passes >= 1
    assert first == pytest.approx(14.0, abs=1e-9) or first <= 14.0
    assert result.metrics()["slots_over_limit"] == 0
    # Equal share would give each 7 A; the tapering car takes ~1.9 A and car 1 the rest.
    assert result.delivered_kwh[1] > 7 * 0.23 / 12 * 1.5


def test_the_mpc_replans_when_a_car_stays_past_its_stated_departure(tmp_path: Path) -> None:
    sessions = write_sessions(tmp_path / "s.csv", [("A", 0, 40, 20.0), ("B", 2, 30, 3.0)])
    fleet = R.build_fleet(sessions, 0)
    late = dataclasses.replace(fleet, stated_departure=np.array([20, 30]),
                               stated_kwh=fleet.energy_kwh.copy())
    result = R.simulate(late, 10.0, Algorithm.mpc)
    # Arrivals at 0 and 2, the departure at 30, and the overstay from slot 20 on.
    assert result.metrics()["lp_solves"] >= 4
    assert result.delivered_kwh[0] > 0


def test_the_forecast_expects_yesterdays_arrivals_again(tmp_path: Path) -> None:
    day = R.SLOTS_PER_DAY
    sessions = write_sessions(tmp_path / "s.csv", [
        ("A", 96, 180, 10.0),  # Monday 08:00-15:00
        ("B", day + 96, day + 180, 12.0),  # Tuesday
        ("C", day + 60, day + 90, 1.0),  # Tuesday 05:00, already here at the re-plan
    ])
    fleet = R.build_fleet(sessions, 0)
    forecast = R.ArrivalForecast(fleet)
    forecast.observe(0)
    forecast.observe(2)
    # Tuesday 06:00: Monday's 08:00 arrival is expected at 08:00, weighted by one day.
    cars = forecast.vehicles(day + 72)
    assert len(cars) == 1
    [car] = cars
    assert car.arrival_slot == 24 and car.phases == fleet.phases[0]
    assert car.energy_kwh == pytest.approx(float(fleet.stated_kwh[0]))
    stay = int(fleet.stated_departure[0] - fleet.arrival[0])
    assert car.departure_slot - car.arrival_slot == stay


def test_run_all_reports_the_mpc_against_the_offline_optimum_and_its_bound(
        tmp_path: Path) -> None:
    fleet = R.build_fleet(random_sessions(tmp_path, 5), seed=5)
    out = R.run_all(fleet, 10.0, (Algorithm.mpc, Algorithm.offline))
    mpc = out["mpc"]
    assert mpc["energy_vs_offline_pct"] == pytest.approx(
        100 * mpc["delivered_kwh"] / out["offline"]["delivered_kwh"], abs=1e-3)
    assert mpc["energy_vs_lp_bound_pct"] <= 100 + 1e-6
    assert 0 <= out["offline"]["unbalance_pct"] <= 200


def test_the_500_car_replan_gives_valid_pilots_within_the_limits() -> None:
    grid, loads, cars, observed = R.synthetic_site(120, slots=24)
    plan, result = R.replan(grid, loads, cars, slot_minutes=15, now=0.0, observed=observed)
    used = [0.0, 0.0, 0.0]
    for load in loads:
        pilot = result.pilots[load.key]
        assert pilot == 0 or (R.MIN_A <= pilot <= load.max_a and pilot == round(pilot))
        for phase in load.phases:
            used[phase] += result.counted[load.key]
    assert all(u <= grid.phase_limit_a[0] + 1e-9 for u in used)
    assert max(used) >= grid.phase_limit_a[0] - 6  # the site is used, not left idle
    assert lp.violations(R.site_problem(grid, cars, 15), plan) == []
