"""The scheduling simulator: hand-checked cases, and properties on random session sets."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from load_manager import simulation as sim
from load_manager.simulation import Algorithm, Site

COLUMNS = ("session_id", "station_id", "arrival", "departure", "arrival_slot",
           "departure_slot", "requested_energy_kwh", "max_power_kw")
SLOT0 = datetime(2019, 3, 4)  # a Monday


def write_sessions(path: Path, rows: list[tuple[str, int, int, float, float]]) -> Path:
    """rows: (station, arrival slot, departure slot, kWh, max kW)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for n, (station, a, d, kwh, kw) in enumerate(rows):
            w.writerow([f"s{n}", station, (SLOT0 + timedelta(minutes=5 * a)).isoformat(),
                        (SLOT0 + timedelta(minutes=5 * d)).isoformat(), a, d, kwh, kw])
    return path


def flat_prices(first: int, count: int) -> list[float]:
    return [1.0] * count


def test_loading_keeps_slots_and_the_local_clock_and_can_cut_to_days(tmp_path: Path) -> None:
    path = write_sessions(tmp_path / "s.csv", [("A", 10, 30, 5.0, 6.6),
                                               ("B", 200, 220, 2.0, 6.6)])
    sessions = sim.load_sessions(path)
    assert sessions.slot0_local == SLOT0
    assert [s.arrival_slot for s in sessions.sessions] == [10, 200]
    assert len(sim.load_sessions(path, days=1).sessions) == 2
    assert len(sim.load_sessions(path, days=0.5).sessions) == 1
    bad = write_sessions(tmp_path / "bad.csv", [("A", 10, 10, 5.0, 6.6)])
    with pytest.raises(ValueError):
        sim.load_sessions(bad)


def test_least_laxity_serves_the_car_leaving_first_where_equal_share_does_not(
        tmp_path: Path) -> None:
    # 230 V x 15 A = 3.45 kW of capacity, a whole number of the allocator's 0.1 A steps. Car A
    # leaves after an hour and needs 3.45 kWh: the whole capacity for that hour. Car B needs as
    # much and stays two hours.
    path = write_sessions(tmp_path / "s.csv", [("A", 0, 12, 3.45, 6.9), ("B", 0, 24, 3.45, 6.9)])
    sessions = sim.load_sessions(path)
    site = Site.for_sessions(sessions, 3.45, phase_limits=False)
    got = {a: sim.simulate(sessions, site, a, flat_prices) for a in Algorithm}
    assert got[Algorithm.least_laxity].delivered_kwh.tolist() == pytest.approx([3.45, 3.45])
    assert got[Algorithm.equal_share].delivered_kwh.tolist() == pytest.approx([1.725, 3.45])
    assert got[Algorithm.offline].delivered_kwh.tolist() == pytest.approx([3.45, 3.45], abs=1e-6)
    assert got[Algorithm.mpc].delivered_kwh.tolist() == pytest.approx([3.45, 3.45], abs=1e-6)
    unc = got[Algorithm.uncontrolled].metrics()
    assert unc["peak_kw"] == pytest.approx(13.8) and unc["slots_over_limit"] == 6
    assert unc["energy_pct"] == 100.0
    for a in (Algorithm.equal_share, Algorithm.least_laxity, Algorithm.mpc, Algorithm.offline):
        m = got[a].metrics()
        assert m["slots_over_limit"] == 0 and m["peak_kw"] <= 3.45 + 1e-9
    assert got[Algorithm.equal_share].metrics()["fully_served_pct"] == 50.0
    assert got[Algorithm.offline].metrics()["energy_cost_sek"] == Decimal("6.90")


def random_sessions(tmp_path: Path, seed: int, count: int = 25) -> sim.SessionSet:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        a = int(rng.integers(0, 200))
        d = a + int(rng.integers(3, 120))
        rows.append((f"S{int(rng.integers(0, 12)):02d}", a, d,
                     round(float(rng.uniform(0.5, 25)), 3), 6.6))
    return sim.load_sessions(write_sessions(tmp_path / f"r{seed}.csv", rows))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("phase_limits", [False, True])
def test_controlled_algorithms_hold_the_limits_and_none_beats_the_offline_optimum(
        tmp_path: Path, seed: int, phase_limits: bool) -> None:
    sessions = random_sessions(tmp_path, seed)
    capacity = [7.0, 15.0, 25.0, 12.0][seed]
    site = Site.for_sessions(sessions, capacity, phase_limits)
    requested = np.array([s.requested_kwh for s in sessions.sessions])
    results = {a: sim.simulate(sessions, site, a, flat_prices) for a in Algorithm}
    offline = results[Algorithm.offline].delivered_kwh.sum()
    for algorithm, result in results.items():
        m = result.metrics()
        assert (result.delivered_kwh <= requested + 1e-9).all()
        assert (result.site_kw >= 0).all()
        assert np.allclose(result.phase_kw.sum(axis=0), result.site_kw)
        if algorithm is Algorithm.uncontrolled:
            assert result.delivered_kwh.sum() >= offline - 1e-6  # it ignores the limit
            continue
        assert m["slots_over_limit"] == 0
        assert m["peak_kw"] <= capacity + 1e-6
        if phase_limits:
            assert max(m["peak_phase_kw"]) <= capacity / 3 + 1e-6
        assert result.delivered_kwh.sum() <= offline * (1 + 1e-6) + 1e-6  # solver tolerance
        assert m["decisions"] >= 1 and m["decision_p50_ms"] >= 0


def test_run_all_reports_the_mpc_share_of_the_offline_optimum(tmp_path: Path) -> None:
    sessions = random_sessions(tmp_path, 7)
    out = sim.run_all(sessions, 10.0, False, flat_prices,
                      algorithms=(Algorithm.mpc, Algorithm.offline))
    share = out["mpc"]["energy_vs_offline_pct"]
    assert share == pytest.approx(
        100 * out["mpc"]["delivered_kwh"] / out["offline"]["delivered_kwh"], abs=1e-3)
    assert 90 <= share <= 100 + 1e-6
    assert out["offline"]["decisions"] == 1
