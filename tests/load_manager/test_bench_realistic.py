"""`chargedesk bench schedule --realistic` at toy scale: a day of the real Caltech sessions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chargedesk.bench import schedule
from chargedesk.cli import app

SESSIONS = Path(__file__).resolve().parents[3] / "shared" / "data" / "sessions" / \
    "acn_caltech_2019-03.csv"
SCHEDULERS = ["uncontrolled", "equal_share", "least_laxity", "earliest_deadline", "mpc",
              "offline"]

pytestmark = pytest.mark.skipif(not SESSIONS.exists(), reason=f"no {SESSIONS}")


def assert_sound(figures: dict[str, Any], capacities: list[str]) -> None:
    assert list(figures["results"]) == capacities
    for cap, algs in figures["results"].items():
        assert list(algs) == SCHEDULERS
        limit = figures["model"]["phase_limit_a"][cap]
        bound = algs["offline"]["lp_bound_kwh"]
        for name in SCHEDULERS[1:]:
            m = algs[name]
            assert m["slots_over_limit"] == 0, (cap, name)
            assert max(m["peak_phase_a"]) <= limit + 1e-9
            assert 0 < m["delivered_kwh"] <= bound * (1 + 1e-6)  # nobody beats the LP bound
            assert 0 <= m["unbalance_pct"] and m["decision_p95_ms"] >= m["decision_p50_ms"]
        assert algs["uncontrolled"]["energy_pct"] == pytest.approx(100.0)
        mpc = algs["mpc"]
        assert mpc["lp_solves"] >= 1 and mpc["lp_p95_ms"] >= mpc["lp_p50_ms"] > 0
        assert mpc["energy_vs_offline_pct"] == pytest.approx(
            100 * mpc["delivered_kwh"] / algs["offline"]["delivered_kwh"], abs=1e-3)
        assert mpc["energy_vs_lp_bound_pct"] <= 100 + 1e-6
    offline = [figures["results"][c]["offline"]["energy_pct"] for c in capacities]
    assert offline == sorted(offline)  # more capacity never delivers less
    replan = figures["replan"]
    assert replan["violations"] == [] and replan["charging"] > 0
    assert 0 < replan["baseline_build_matrix_p50_ms"] < replan["p50_ms"] <= replan["p95_ms"]
    assert replan["baseline_one_stage_p50_ms"] > 0 and replan["baseline_pilots_p50_ms"] > 0
    assert set(figures["targets"]) == {"mpc_vs_offline_energy", "no_slot_over_limit",
                                       "mpc_beats_llf_where_limits_bind",
                                       "replan_500_three_phase"}
    assert figures["targets"]["no_slot_over_limit"]["met"]
    assert figures["failures"] == [n for n, t in figures["targets"].items() if not t["met"]]


def test_a_day_of_caltech_sessions_on_the_realistic_site() -> None:
    lines: list[str] = []
    figures = schedule.run_realistic(sessions_path=SESSIONS, capacities=[10, 30], days=1,
                                     replan_runs=2, replan_vehicles=60, progress=lines.append)
    assert_sound(figures, ["10", "30"])
    assert figures["sessions"]["count"] < 954 and figures["model"]["seed"] == 0
    assert figures["model"]["phase_limit_a"] == {"10": 14.0, "30": 43.0}
    assert figures["replan"]["vehicles"] == 60
    assert any(line.startswith("30 kW: offline") for line in lines)
    text = schedule.realistic_summary(figures)
    assert "re-plan 60 cars" in text and "targets:" in text and "% of offline" in text


def test_the_cli_prints_one_json_object_and_fails_on_a_missed_target() -> None:
    result = CliRunner().invoke(app, [
        "bench", "schedule", "--realistic", "--sessions", str(SESSIONS), "--capacity-kw", "20",
        "--days", "1", "--seed", "2", "--replan-runs", "1", "--json"])
    figures = json.loads(result.stdout)
    assert_sound(figures, ["20"])
    assert figures["model"]["seed"] == 2 and figures["replan"]["vehicles"] == 500
    assert result.exit_code == (1 if figures["failures"] else 0)
