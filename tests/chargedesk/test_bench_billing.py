"""`chargedesk bench billing` at toy scale: real worker processes, real databases."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

from chargedesk.bench import billing
from chargedesk.cli import app
from chargedesk.db import make_engine, normalise_url
from tests.conftest import IN_CI, POSTGRES_URL


def assert_sound(figures: dict[str, Any], *, sessions: int, drivers: int) -> None:
    rating, baseline = figures["rating"], figures["rating_baseline"]
    assert rating["sessions_per_s"] > 0
    assert all(rate > 0 for rate in rating["per_worker_sessions_per_s"])
    assert len(rating["per_worker_sessions_per_s"]) == figures["workers"]
    assert 0 < rating["session_p50_us"] <= rating["session_p99_us"]
    assert 25 <= rating["samples_per_session"] <= 35
    assert baseline["sessions_per_s"] > 0 and baseline["sample_rows"] == rating["samples"]
    assert figures["rating_vs_baseline"] > 0
    assert figures["failures"] == []
    run, checks = figures["invoice_run"], figures["checks"]
    assert run["seconds"] > 0 and figures["invoice_baseline"]["median_s"] > 0
    assert run["invoices"] == checks["invoices"] == checks["drivers_in_aggregate"] == drivers
    assert checks["matches_aggregate"] and checks["unbilled_sessions"] == 0
    assert run["total_ore"] == checks["total_ore"] > checks["net_ore"] > 0
    assert figures["sessions"] == sessions


def test_a_small_run_on_a_sqlite_file_invoices_what_the_aggregate_sums(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    lines: list[str] = []

    figures = billing.run(sessions=300, drivers=30, workers=2, database_url=url,
                          progress=lines.append)

    assert_sound(figures, sessions=300, drivers=30)
    assert figures["database"] == "sqlite"
    assert any("rated and loaded 300/300" in line for line in lines)
    engine = make_engine(url)
    try:
        assert "bench_sample" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    assert "invoice run 2026-10: 30 invoices" in billing.summary(figures)


def test_a_small_run_on_a_fresh_postgresql_schema_drops_it_afterwards() -> None:
    schema = f"bench_billing_test_{os.getpid()}"
    admin = create_engine(normalise_url(POSTGRES_URL))
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach the server
        admin.dispose()
        if IN_CI:
            pytest.fail(f"PostgreSQL unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    os.environ["CHARGEDESK_BENCH_POSTGRES_URL"] = POSTGRES_URL
    try:
        figures = billing.run(sessions=300, drivers=30, workers=2, schema=schema)
    finally:
        del os.environ["CHARGEDESK_BENCH_POSTGRES_URL"]
    try:
        assert_sound(figures, sessions=300, drivers=30)
        assert figures["database"] == "postgresql"
        with admin.connect() as conn:
            left = conn.execute(text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"),
                                {"s": schema}).scalar_one()
        assert left == 0
    finally:
        admin.dispose()


def test_on_a_given_empty_database_only_bench_rows_stay(database_url: str) -> None:
    figures = billing.run(sessions=200, drivers=40, workers=2, database_url=database_url)

    assert_sound(figures, sessions=200, drivers=40)
    engine = make_engine(database_url)
    try:
        assert "bench_sample" not in inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM invoice")).scalar_one() == 40
    finally:
        engine.dispose()


def test_a_run_that_disagrees_with_the_aggregate_fails_loudly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    figures = billing.run(sessions=60, drivers=6, workers=1, database_url=url, keep=True)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT s.driver_id, l.vat_rate, sum(l.net_ore) FROM session_cost_line l"
                " JOIN charging_session s ON s.id = l.session_id"
                " GROUP BY s.driver_id, l.vat_rate")).all()
        aggregate = [(int(d), Decimal(str(r)), int(n)) for d, r, n in rows]
        db = billing.Database(url, engine, None)
        report = _Report(invoices=6, total_ore=figures["invoice_run"]["total_ore"])
        run_id = 1

        aggregate_ok = billing.check_run(db, run_id, report, aggregate)
        off_by_one = [(d, r, n + (1 if i == 0 else 0)) for i, (d, r, n) in enumerate(aggregate)]

        assert aggregate_ok["invoices"] == 6
        with pytest.raises(billing.BenchError, match="differ from the aggregate"):
            billing.check_run(db, run_id, report, off_by_one)
        with pytest.raises(billing.BenchError, match="5 invoices"):
            billing.check_run(db, run_id, _Report(5, report.total_ore), aggregate)
    finally:
        engine.dispose()


class _Report:
    def __init__(self, invoices: int, total_ore: int) -> None:
        self.invoices, self.total_ore = invoices, total_ore


def test_sessions_are_realistic_and_the_same_for_any_worker_count() -> None:
    by_driver: dict[int, list[str]] = defaultdict(list)
    for number in range(2000):
        plan, report = billing.generate(7, number, sessions=2000, drivers=100)
        samples = report["samples"]
        assert 27 <= len(samples) <= 34
        assert samples[0]["status"] == "Charging" and samples[-1]["status"] == "Finishing"
        assert samples[-2]["status"] == "SuspendedEV"
        energies = [s["energy_wh"] for s in samples]
        assert energies == sorted(energies) and energies[-1] > energies[0]
        end = datetime.fromisoformat(samples[-1]["timestamp"])
        assert billing.MONTH_FIRST_UTC <= datetime.fromisoformat(samples[0]["timestamp"])
        assert end < billing.MONTH_END_UTC
        by_driver[plan.driver_id].append(samples[0]["timestamp"])
    assert len(by_driver) == 100
    assert all(len(set(starts)) == len(starts) == 20 for starts in by_driver.values())
    # Generated from (seed, number) alone: a worker's share does not change a session.
    assert billing.generate(7, 1234, sessions=2000, drivers=100) == billing.generate(
        7, 1234, sessions=2000, drivers=100)
    assert billing.generate(8, 1234, sessions=2000, drivers=100) != billing.generate(
        7, 1234, sessions=2000, drivers=100)


def test_the_tariff_does_all_its_kinds_of_work() -> None:
    from billing_api.rating import rate
    from billing_api.tariffs import parse_tariff

    tariff = parse_tariff(billing.TARIFF_JSON)
    dimensions: set[tuple[str, str]] = set()
    for number in range(300):
        _plan, report = billing.generate(1, number, sessions=300, drivers=30)
        cdr = rate(tariff, report)
        dimensions |= {(line.dimension, str(line.unit_price)) for line in cdr.cost_breakdown}
    assert {("FLAT", "2.00"), ("ENERGY", "1.56"), ("ENERGY", "2.56"),
            ("PARKING_TIME", "48.00")} <= dimensions


def test_vat_is_half_up_on_the_summed_base() -> None:
    assert billing.expected_vat_ore(Decimal("25"), 10_002) == 2501  # 2500.5 -> 2501
    assert billing.expected_vat_ore(Decimal("25"), 10_001) == 2500  # 2500.25 -> 2500
    assert billing.expected_vat_ore(None, 10_001) == 0


def test_the_command_prints_a_summary_or_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"

    result = CliRunner().invoke(app, ["bench", "billing", "--sessions", "100", "--drivers",
                                      "10", "--workers", "1", "--database-url", url, "--json"])

    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["invoice_run"]["invoices"] == 10
    assert figures["rating"]["sessions_per_s"] > 0
    refused = CliRunner().invoke(app, ["bench", "billing", "--sessions", "100",
                                       "--database-url", url])
    assert refused.exit_code == 1
    assert "not empty" in refused.output

