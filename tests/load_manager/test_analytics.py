"""Analytics on hand-made visits, against values worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from load_manager import analytics as an
from load_manager.models import ConnectorWiring, SiteGrid, UsageOutcome, UsageSession
from station_api import service

STOCKHOLM = ZoneInfo("Europe/Stockholm")
# Monday 2 March 2026, 00:00 in Stockholm (CET, UTC+1): hour of week 0.
MONDAY = datetime(2026, 3, 2, tzinfo=STOCKHOLM)
WEEK = (MONDAY, MONDAY + timedelta(days=7))


def local(day: int, hour: float) -> datetime:
    return MONDAY + timedelta(days=day, hours=hour)


def row(start: datetime, end: datetime | None, *, station: str = "ST-1", connector: int = 1,
        site: str | None = "SITE-A", charging_h: float = 0.0, idle_h: float = 0.0,
        wh: int = 0, outcome: str = "completed") -> tuple[Any, ...]:
    return (station, connector, site, start.timestamp(),
            None if end is None else end.timestamp(), charging_h * 3600, idle_h * 3600, wh,
            outcome)


def inventory(connectors: int = 2, **extra: Any) -> an.Inventory:
    return an.Inventory(site_zone={"SITE-A": "Europe/Stockholm"}, site_name={"SITE-A": "Site A"},
                        station_site={"ST-1": "SITE-A"},
                        station_connectors={"ST-1": set(range(1, connectors + 1))}, **extra)


def test_spread_counts_partial_hours_to_the_second() -> None:
    # 00:30 to 03:10, and 04:00 to 04:00:50, on an hourly timeline from 0.
    out = an.spread(np.array([0, 0]), np.array([1800.0, 14_400.0]),
                    np.array([3 * 3600 + 600.0, 14_450.0]), groups=1, origin=0.0, step=3600.0,
                    bins=6)

    assert out.tolist() == [[1800.0, 3600.0, 3600.0, 600.0, 50.0, 0.0]]


def test_spread_clips_to_the_timeline_and_weighs() -> None:
    out = an.spread(np.array([1, 0]), np.array([-500.0, 7000.0]), np.array([1000.0, 9000.0]),
                    groups=2, origin=0.0, step=3600.0, bins=2, weight=np.array([2.0, 3.0]))

    assert out.tolist() == [[0.0, 3 * 200.0], [2 * 1000.0, 0.0]]


def test_erlang_c_matches_the_textbook() -> None:
    # A = 2 Erlangs on 3 servers: P(wait) = 4/9; A = 1 on 2: 1/3.
    assert an.erlang_c(3, 2.0) == pytest.approx(4 / 9, abs=1e-12)
    assert an.erlang_c(2, 1.0) == pytest.approx(1 / 3, abs=1e-12)
    # Overloaded (c <= A): everyone waits; no load: nobody does.
    assert an.erlang_c([2, 3], [2.5, 0.0]).tolist() == [1.0, 0.0]


def test_required_connectors_is_the_smallest_c_under_the_target() -> None:
    need = an.required_connectors([2.0, 3.0, 0.0, 0.1], target=0.2)

    assert need.tolist() == [4, 6, 0, 1]
    assert an.erlang_c(3, 2.0) > 0.2 >= an.erlang_c(4, 2.0)
    assert an.erlang_c(5, 3.0) > 0.2 >= an.erlang_c(6, 3.0)


def test_hour_of_week_follows_the_dst_change() -> None:
    # Sunday 29 March 2026: Stockholm skips 02:00-03:00 local (01:00 UTC).
    origin = datetime(2026, 3, 29, 0, tzinfo=UTC).timestamp()

    how, offsets = an.hour_of_week_map("Europe/Stockholm", origin=origin, hours=3)

    assert how.tolist() == [6 * 24 + 1, 6 * 24 + 3, 6 * 24 + 4]
    assert offsets.tolist() == [3600, 7200, 7200]


def test_describe_hours_merges_days_with_the_same_hours() -> None:
    hows = [d * 24 + h for d in range(5) for h in (17, 18)] + [5 * 24 + 10]

    assert an.describe_hours(hows) == (
        "Mon\u2013Fri 17:00\u201319:00; Sat 10:00\u201311:00")


def test_one_visit_spread_over_its_hours_of_the_week() -> None:
    visits = an.visits_from_rows([
        row(local(0, 10.5), local(0, 13 + 1 / 6), charging_h=2, idle_h=0.5, wh=14_000)])

    h = an.site_hours(visits, inventory(connectors=2), start=WEEK[0], end=WEEK[1])

    i = h.sites.index("SITE-A")
    assert h.connectors[i] == 2
    assert h.occurrences[i].tolist() == [1.0] * 168
    util = h.utilisation[i]
    assert util[10] == pytest.approx(1800 / 7200)
    assert util[11] == util[12] == pytest.approx(0.5)
    assert util[13] == pytest.approx(600 / 7200)
    assert util.sum() == pytest.approx(9600 / 7200)
    assert h.started[i, 10] == 1 and h.started[i].sum() == 1
    assert h.mean_duration_s[i, 10] == pytest.approx(9600)
    assert h.mean_charging_s[i, 10] == pytest.approx(7200)
    assert h.idle_share[i, 10] == pytest.approx(1800 / 9600)
    assert h.energy_wh[i, 10] == 14_000
    assert h.daily_energy_wh[i].sum() == 14_000
    day = h.first_day + timedelta(days=int(np.flatnonzero(h.daily_energy_wh[i])[0]))
    assert day.isoformat() == "2026-03-02"


def test_shares_and_open_visits() -> None:
    now = local(2, 12)
    visits = an.visits_from_rows([
        row(local(1, 8), local(1, 9), wh=0, outcome="failed_start"),
        row(local(1, 8.25), local(1, 9), connector=2, charging_h=0.5, wh=1_000,
            outcome="faulted"),
        row(local(1, 8.5), local(1, 9.5), station="ST-2", connector=1, charging_h=1,
            wh=9_000),
        row(local(2, 11), None, charging_h=0, outcome="open"),
    ])
    inv = inventory()
    inv.station_site["ST-2"] = "SITE-A"

    h = an.site_hours(visits, inv, start=WEEK[0], end=WEEK[1], now=now)
    s = an.station_stats(visits, inv, start=WEEK[0], end=WEEK[1], now=now)

    i = h.sites.index("SITE-A")
    assert h.connectors[i] == 3  # ST-1's two, and ST-2's one seen in use
    assert h.started[i, 24 + 8] == 3 and h.closed[i, 24 + 8] == 3
    assert h.failed_share[i, 24 + 8] == pytest.approx(1 / 3)
    assert h.fault_rate[i, 24 + 8] == pytest.approx(1 / 3)
    # The open visit occupies its connector until now, and is in no mean.
    assert h.occupied_s[i, 48 + 11] == 3600 and h.closed[i, 48 + 11] == 0
    st1 = s.stations.index("ST-1")
    assert s.connectors[st1] == 2
    assert s.occupied_s[st1] == 3600 + 2700 + 3600
    assert s.utilisation[st1] == pytest.approx((3600 + 2700 + 3600) / (2 * 7 * 86400))
    assert s.failed_share[st1] == pytest.approx(1 / 2)


def test_capacity_plan_and_its_recommendation() -> None:
    # Three cars on Monday 17-18 in a one-week period, an hour each: λ = 3/h, A = 3 Erlangs.
    visits = an.visits_from_rows([
        row(local(0, 17), local(0, 18), connector=1 + k, charging_h=1, wh=5_000)
        for k in range(3)])
    inv = inventory(connectors=3)
    h = an.site_hours(visits, inv, start=WEEK[0], end=WEEK[1])
    s = an.station_stats(visits, inv, start=WEEK[0], end=WEEK[1])

    plan = an.capacity_plan(h, target=0.2)
    recs = an.recommendations(h, plan, [], s, inv)

    i = h.sites.index("SITE-A")
    assert plan.offered_load[i, 17] == pytest.approx(3.0)
    assert h.pointwise_load[i, 17] == pytest.approx(3.0)
    assert plan.required[i, 17] == 6 and plan.required[i].sum() == 6
    assert plan.p_wait_now[i, 17] == 1.0
    [rec] = recs
    assert rec.kind == "add_connectors" and rec.id == "SITE-A"
    assert rec.text == ("Add 3 connectors at Site A: Mon 17:00\u201318:00 P(wait)=1.00"
                        " with 3 connectors")
    assert rec.reason["hours_of_week"] == [17]
    assert rec.reason["waiting_arrivals_per_week"] == pytest.approx(3.0)
    assert rec.severity == pytest.approx(3.0)


def test_long_visits_starting_in_a_burst_load_the_hours_they_span() -> None:
    # Two cars plug in at Friday 18:00 and stay 38 h: λ/μ = 2/h x 38 h = 76 Erlangs in that
    # hour, but only two connectors are ever busy: the modified offered load is 2.
    friday = 4 * 24 + 18
    visits = an.visits_from_rows([
        row(local(4, 18), local(6, 8), connector=1 + k, charging_h=4, idle_h=34, wh=30_000)
        for k in range(2)])
    h = an.site_hours(visits, inventory(connectors=4), start=WEEK[0], end=WEEK[1])

    i = h.sites.index("SITE-A")
    assert h.pointwise_load[i, friday] == pytest.approx(76.0)
    assert h.offered_load[i, friday] == pytest.approx(2.0)
    assert h.offered_load[i, friday + 37] == pytest.approx(2.0)
    assert h.offered_load[i, friday + 38] == 0.0
    assert an.capacity_plan(h).required[i].max() == 4  # C(3, 2) = 4/9; C(4, 2) = 0.17


def test_grid_upgrade_model_by_hand() -> None:
    # 10 kW connectors, 12 kW limit. A charges for its whole 2 h visit and gets 10 kWh, so it
    # left without 10 kWh (10 kW x 2 h - 10); B is full after 30 min of its hour, 5 kWh.
    start = datetime(2026, 3, 1, tzinfo=UTC)
    visits = an.visits_from_rows([
        ("ST-1", 1, "SITE-A", start.timestamp(), start.timestamp() + 7200, 7200.0, 0.0,
         10_000, "completed"),
        ("ST-1", 2, "SITE-A", start.timestamp(), start.timestamp() + 3600, 1800.0, 1800.0,
         5_000, "completed"),
    ])
    inv = inventory(connector_kw={("ST-1", 1): 10.0, ("ST-1", 2): 10.0},
                    site_limit_kw={"SITE-A": 12.0})

    [g] = an.grid_upgrade(visits, inv, start=start, end=start + timedelta(days=30),
                          extra_kw=5.0)

    # Demand 20 kW for the first two 15-min slots, 10 kW after: 8 kW over the limit for 0.5 h.
    assert g.peak_demand_kw == pytest.approx(20.0)
    assert g.slots_over == 2
    assert g.deferred_kwh == pytest.approx(4.0)
    assert g.unmet_kwh == pytest.approx(10.0)
    assert g.held_back_kwh == pytest.approx(4.0)
    assert g.upgrade_kwh == pytest.approx(2.5)  # min(8, 5) kW x 0.5 h
    assert g.months == pytest.approx(1.0)
    assert g.upgrade_kwh_per_month == pytest.approx(2.5)


def test_bottlenecks_rank_by_how_far_over_the_threshold() -> None:
    rows = [row(local(d, 8), local(d, 18), charging_h=2, idle_h=8, wh=10_000)
            for d in range(7)]
    rows += [row(local(d, 20), local(d, 20.5), station="ST-2", outcome="failed_start")
             for d in range(7)] * 2
    visits = an.visits_from_rows(rows)
    inv = inventory(connectors=1)
    inv.station_site["ST-2"] = "SITE-A"
    h = an.site_hours(visits, inv, start=WEEK[0], end=WEEK[1])
    s = an.station_stats(visits, inv, start=WEEK[0], end=WEEK[1])

    found = an.bottlenecks(h, s, inv, thresholds=an.Thresholds(min_visits=5,
                                                               site_peak_utilisation=0.5))

    kinds = [(f.scope, f.id, f.kind) for f in found]
    assert ("station", "ST-2", "failed_starts") in kinds
    assert ("station", "ST-1", "idle_blocking") in kinds
    assert ("site", "SITE-A", "high_occupancy") in kinds
    assert [f.severity for f in found] == sorted((f.severity for f in found), reverse=True)
    st2 = next(f for f in found if f.id == "ST-2" and f.kind == "failed_starts")
    assert st2.reason["value"] == 1.0 and st2.severity == pytest.approx(10.0)
    idle = next(f for f in found if f.id == "ST-1" and f.kind == "idle_blocking")
    assert idle.reason["value"] == pytest.approx(0.8)


def test_analyse_reads_the_database_and_exports_csv(session: Any, engine: Any) -> None:
    service.create_site(session, site_id="SITE-A", name="Site A")
    service.register_station(session, station_id="ST-1", password=None, site_id="SITE-A")
    session.add(ConnectorWiring(station_id="ST-1", connector_id=1, max_current_a=16))
    session.add(ConnectorWiring(station_id="ST-1", connector_id=2, max_current_a=16))
    session.add(SiteGrid(site_id="SITE-A", power_limit_kw=11.0))
    session.add(UsageSession(station_id="ST-1", connector_id=1, site_id="SITE-A",
                             transaction_id=7, plugged_in_at=local(0, 10.5),
                             unplugged_at=local(0, 13 + 1 / 6), charging_s=7200, idle_s=1800,
                             energy_wh=14_000, outcome=UsageOutcome.completed))
    # Outside the period: not loaded.
    session.add(UsageSession(station_id="ST-1", connector_id=1, site_id="SITE-A",
                             plugged_in_at=local(9, 1), unplugged_at=local(9, 2),
                             outcome=UsageOutcome.failed_start))
    session.commit()

    report = an.analyse(engine, start=WEEK[0], end=WEEK[1])

    assert report.visits == 1
    [cell] = [r for r in an.site_hour_rows(report, site_id="SITE-A") if r["hour_of_week"] == 11]
    assert cell["utilisation"] == 0.5 and cell["connectors"] == 2
    [station] = an.station_rows(report)
    assert station["station_id"] == "ST-1" and station["energy_kwh"] == 14.0
    assert [g.site_id for g in report.grid] == ["SITE-A"]
    text = an.to_csv(an.export_rows(report, "stations"))
    assert text.splitlines()[0].startswith("station_id,site_id,connectors,utilisation")
    assert "ST-1,SITE-A,2," in text
    with pytest.raises(ValueError, match="unknown export kind"):
        an.export_rows(report, "nope")
    hours = an.station_hour_rows(report, engine, station_id="ST-1")
    assert len(hours) == 168 and hours[12]["utilisation"] == 0.5
    assert hours[12]["station_id"] == "ST-1" and hours[12]["site_id"] == "SITE-A"


def test_periods_need_zones_and_order() -> None:
    visits = an.visits_from_rows([])
    with pytest.raises(ValueError, match="time zone"):
        an.site_hours(visits, inventory(), start=datetime(2026, 3, 2), end=WEEK[1])
    with pytest.raises(ValueError, match="after"):
        an.site_hours(visits, inventory(), start=WEEK[1], end=WEEK[0])


def test_an_empty_period_gives_zeros_not_errors() -> None:
    h = an.site_hours(an.visits_from_rows([]), inventory(), start=WEEK[0], end=WEEK[1])

    assert h.sites == ["SITE-A"] and h.utilisation.sum() == 0
    plan = an.capacity_plan(h)
    assert plan.required.sum() == 0




def test_visits_of_a_station_missing_from_the_registry_still_load(session: Any,
                                                                  engine: Any) -> None:
    session.add(UsageSession(station_id="GONE-1", connector_id=1, site_id=None,
                             plugged_in_at=local(0, 10), unplugged_at=local(0, 11),
                             charging_s=3600, energy_wh=5_000,
                             outcome=UsageOutcome.completed))
    session.add(UsageSession(station_id="GONE-1", connector_id=2, site_id=None,
                             plugged_in_at=local(1, 10), unplugged_at=None,
                             outcome=UsageOutcome.open))
    session.commit()

    visits = an.load_visits(engine, start=WEEK[0], end=WEEK[1])

    assert visits.stations == ["GONE-1"] and visits.sites == [None]
    assert sorted(visits.energy_wh.tolist()) == [0.0, 5000.0]
    assert np.isnan(visits.end).sum() == 1
    assert np.nanmin(visits.start) == local(0, 10).timestamp()
