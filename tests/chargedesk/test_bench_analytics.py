"""`chargedesk bench analytics` at toy scale: the real generator, databases and analytics."""

from __future__ import annotations

import json
import os
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from chargedesk.bench import analytics as bench
from chargedesk.cli import app
from chargedesk.db import make_engine, normalise_url
from tests.conftest import IN_CI, POSTGRES_URL

# The Trondheim sessions live in ../shared/data beside the checkout, never in the project.
pytestmark = pytest.mark.skipif(not bench.DATA_FILE.exists(),
                                reason=f"no {bench.DATA_FILE} beside the checkout")


def assert_sound(figures: dict, *, sessions: int) -> None:
    assert figures["failures"] == []
    assert figures["sessions"] == sessions
    a, b = figures["analytics"], figures["baseline"]
    assert len(a["runs_s"]) == len(b["runs_s"]) == 3
    assert a["median_s"] == sorted(a["runs_s"])[1] and b["median_s"] == sorted(b["runs_s"])[1]
    assert set(a["phases_s_of_median_run"]) == {
        "inventory", "query", "site_hours", "stations", "erlang_c", "grid", "bottlenecks",
        "recommendations"}
    assert b["groups"] == figures["stations"]
    assert figures["analytics_vs_baseline"] > 0 and figures["insert_s"] > 0
    assert figures["target_met"]


def test_the_patterns_are_learnt_from_the_trondheim_file() -> None:
    p = bench.learn()

    assert len(p.how) == 6844  # 6,878 sessions, 34 without a duration
    assert len(p.garages) == 24 and p.users == 96
    assert 0 <= p.how.min() and p.how.max() < 168
    assert np.median(p.duration_s) == pytest.approx(10.03 * 3600, rel=0.01)
    assert np.mean(p.energy_wh) == pytest.approx(12_700, rel=0.01)


def test_generated_visits_are_exact_in_number_deterministic_and_never_overlap() -> None:
    p = bench.learn()

    net = bench.generate(p, sessions=5_000, seed=3)
    again = bench.generate(p, sessions=5_000, seed=3)

    u = net.usage
    assert len(u["station_id"]) == 5_000 and u == again.usage
    assert len(net.sites) == 5 and net.connectors == 2 * len(net.stations)
    start, end = np.array(u["plugged_in_at"]), np.array(u["unplugged_at"])
    assert (start >= bench.YEAR_START.timestamp()).all()
    assert (start < bench.YEAR_END.timestamp()).all() and (end > start).all()
    by_connector: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for s, c, a, b in zip(u["station_id"], u["connector_id"], start, end, strict=True):
        by_connector.setdefault((s, c), []).append((a, b))
    for spans in by_connector.values():
        spans.sort()
        assert all(b1 <= a2 for (_, b1), (a2, _) in pairwise(spans))
    outcomes = {o: u["outcome"].count(o) for o in set(u["outcome"])}
    assert 50 < outcomes["failed_start"] < 160  # 2 %
    assert sum(u["energy_wh"]) == net.energy_wh
    # Charging and idle time split the visit (each rounded to the second).
    split = np.array(u["charging_s"]) + np.array(u["idle_s"])
    assert np.abs(split - (end - start)).max() <= 1.0


def test_a_small_run_on_a_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    lines: list[str] = []

    figures = bench.run(sessions=3_000, database_url=url, progress=lines.append)

    assert_sound(figures, sessions=3_000)
    assert figures["database"] == "sqlite" and figures["sites"] == 3
    assert any("loaded 3,000/3,000 visits" in line for line in lines)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM usage_session")).scalar_one() == 0
    finally:
        engine.dispose()
    assert "full analytics:" in bench.summary(figures)


def test_a_small_run_on_a_fresh_postgresql_schema_drops_it_afterwards() -> None:
    schema = f"bench_analytics_test_{os.getpid()}"
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
        figures = bench.run(sessions=3_000, schema=schema)
    finally:
        del os.environ["CHARGEDESK_BENCH_POSTGRES_URL"]
    try:
        assert_sound(figures, sessions=3_000)
        assert figures["database"] == "postgresql"
        with admin.connect() as conn:
            left = conn.execute(text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"),
                                {"s": schema}).scalar_one()
        assert left == 0
    finally:
        admin.dispose()


def test_the_command_prints_json_and_refuses_a_used_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"

    result = CliRunner().invoke(app, ["bench", "analytics", "--sessions", "1000",
                                      "--database-url", url, "--json", "--keep"])

    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["sessions"] == 1000 and figures["failures"] == []
    assert figures["kept"] == url
    refused = CliRunner().invoke(app, ["bench", "analytics", "--sessions", "1000",
                                       "--database-url", url])
    assert refused.exit_code == 1 and "not empty" in refused.output
