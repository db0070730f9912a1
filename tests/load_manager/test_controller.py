"""The load controller's decisions, from a site's state in the database to the limits and
profiles it sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlmodel import Session

from chargedesk.errors import NotFound
from load_manager import service
from load_manager.controller import decide, grid_of, safe_default_limit, tx_profile
from load_manager.models import StationCapability
from load_manager.service import InvalidSetting
from station_api import service as stations
from station_api.events import Sample

NOW = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)


def a_site(session: Session, *, phase_limit_a: float | None = 32.0,
           power_limit_kw: float | None = None, policy: str = "equal_share") -> None:
    stations.create_site(session, site_id="S", name="Site", time_zone="Europe/Stockholm")
    service.set_site_grid(session, site_id="S", phase_limit_a=phase_limit_a,
                          power_limit_kw=power_limit_kw, policy=policy)


def a_station(session: Session, station_id: str, *, connectors: int = 1, phases: int = 3,
              rotation: str = "RST", max_a: float = 32.0, online: bool = True) -> None:
    stations.register_station(session, station_id=station_id, password=None, site_id="S")
    stations.set_online(session, station_id=station_id, online=online, at=NOW)
    for connector_id in range(1, connectors + 1):
        service.set_wiring(session, station_id=station_id, connector_id=connector_id,
                           phases=phases, rotation=rotation, max_current_a=max_a)


def charging(session: Session, station_id: str, connector_id: int = 1, *, tag: str = "T1",
             minutes_ago: int = 30) -> int:
    if all(t.id_tag != tag for t in stations.list_id_tags(session)):
        stations.create_id_tag(session, id_tag=tag)
    tx, _, _ = stations.start_transaction(
        session, station_id=station_id, connector_id=connector_id, id_tag=tag,
        meter_start_wh=0, timestamp=NOW - timedelta(minutes=minutes_ago),
    )
    assert tx.id is not None
    return tx.id


def state(session: Session) -> service.SiteState:
    result = service.site_state(session, site_id="S", now=NOW)
    assert result is not None
    return result


def test_two_three_phase_cars_share_the_phase_limit_equally(session: Session) -> None:
    a_site(session)
    a_station(session, "A")
    a_station(session, "B")
    charging(session, "A")
    charging(session, "B", tag="T2")
    decision = decide(state(session), planned={}, now=NOW)
    assert decision.limits == {("A", 1): 16.0, ("B", 1): 16.0}


def test_single_phase_stations_on_rotated_wiring_load_different_phases(session: Session) -> None:
    a_site(session, phase_limit_a=20.0)
    a_station(session, "L1", phases=1, rotation="RST")
    a_station(session, "L2", phases=1, rotation="STR")
    a_station(session, "L2b", phases=1, rotation="SRT")
    for n, station_id in enumerate(("L1", "L2", "L2b")):
        charging(session, station_id, tag=f"T{n}")
    limits = decide(state(session), planned={}, now=NOW).limits
    # L1 is alone on its phase; the two on L2 split its 20 A.
    assert limits == {("L1", 1): 20.0, ("L2", 1): 10.0, ("L2b", 1): 10.0}


def test_other_load_and_a_fail_safe_station_are_taken_off_the_limit(session: Session) -> None:
    a_site(session, phase_limit_a=40.0)
    a_station(session, "A")
    a_station(session, "OFF", max_a=10.0, online=False)
    charging(session, "A")
    service.set_forecast(session, site_id="S",
                         points=[(NOW - timedelta(hours=1), 5.0, 8.0, 6.0)])
    site = state(session)
    assert grid_of(site).phase_limit_a == (25.0, 22.0, 24.0)
    # The offline station may draw its 10 A on every phase; L2 has 22 A left for A.
    assert decide(site, planned={}, now=NOW).limits == {("A", 1): 22.0}


def test_a_kw_limit_alone_is_shared_as_power(session: Session) -> None:
    a_site(session, phase_limit_a=None, power_limit_kw=11.04)
    a_station(session, "A")
    a_station(session, "B")
    charging(session, "A")
    charging(session, "B", tag="T2")
    # 11.04 kW over two three-phase cars at 230 V: 8 A each.
    assert decide(state(session), planned={}, now=NOW).limits == {("A", 1): 8.0,
                                                                   ("B", 1): 8.0}


def test_when_minimums_dont_fit_the_latest_arrival_is_paused(session: Session) -> None:
    a_site(session, phase_limit_a=10.0)
    a_station(session, "A")
    a_station(session, "B")
    charging(session, "A", minutes_ago=60)
    charging(session, "B", tag="T2", minutes_ago=5)
    assert decide(state(session), planned={}, now=NOW).limits == {("A", 1): 10.0,
                                                                   ("B", 1): 0.0}


def test_priority_tags_inherit_from_their_parent(session: Session) -> None:
    a_site(session, phase_limit_a=20.0, policy="priority")
    a_station(session, "A")
    a_station(session, "B")
    stations.create_id_tag(session, id_tag="FLEET")
    stations.create_id_tag(session, id_tag="VAN-1")
    stations.update_id_tag(session, id_tag="VAN-1", parent_id_tag="FLEET")
    service.set_tag_priority(session, id_tag="FLEET", priority=10)
    charging(session, "A", minutes_ago=60)
    charging(session, "B", tag="VAN-1", minutes_ago=5)
    # Everyone who fits keeps the minimum; the fleet van gets all the rest.
    assert decide(state(session), planned={}, now=NOW).limits == {("A", 1): 6.0,
                                                                   ("B", 1): 14.0}


def test_the_observed_car_gives_back_what_it_does_not_take(session: Session) -> None:
    a_site(session, phase_limit_a=32.0)
    a_station(session, "A")
    a_station(session, "B")
    slow = charging(session, "A")
    charging(session, "B", tag="T2")
    service.record_allocation(session, station_id="A", connector_id=1, transaction_id=slow,
                              limit_a=16.0, outcome="accepted")
    service.observe_meter_values(session, transaction_id=slow, samples=[
        Sample(timestamp=NOW, measurand="Current.Import", phase=phase, location="Outlet",
               context="Sample.Periodic", unit="A", value=Decimal("9.5"))
        for phase in ("L1", "L2", "L3")
    ])
    # A draws 9.5 A of its 16 A: it keeps 10.5 A and B gets the rest.
    assert decide(state(session), planned={}, now=NOW).limits == {("A", 1): 10.5,
                                                                   ("B", 1): 21.5}


def test_observed_phases_decide_where_a_car_on_a_three_phase_connector_draws(
    session: Session,
) -> None:
    a_site(session, phase_limit_a=16.0)
    a_station(session, "A", rotation="TRS")
    a_station(session, "B")
    one_phase = charging(session, "A")
    charging(session, "B", tag="T2")
    service.observe_meter_values(session, transaction_id=one_phase, samples=[
        Sample(timestamp=NOW, measurand="Current.Import", phase=phase, location="Outlet",
               context="Sample.Periodic", unit="A", value=Decimal(value))
        for phase, value in (("L1", "15.8"), ("L2", "0.0"), ("L3", "0.1"))
    ])
    site = state(session)
    car = next(c for c in site.active if c.station_id == "A")
    assert car.vehicle_phases == 1
    # A's connector L1 is the site's L3 (rotation TRS): A and B split L3, B is capped by it.
    assert decide(site, planned={}, now=NOW).limits == {("A", 1): 8.0, ("B", 1): 8.0}


def test_safe_default_shares_the_tightest_phase_among_all_connectors(session: Session) -> None:
    a_site(session, phase_limit_a=32.0)
    a_station(session, "A", connectors=2)
    a_station(session, "B", phases=1, rotation="SRT")
    site = state(session)
    # L2 carries three connectors (A1, A2 and B): 32 / 3 = 10.6 A (floored to 0.1 A).
    assert safe_default_limit(site, "A") == 10.6


def test_safe_default_is_zero_when_the_minimum_cannot_be_met(session: Session) -> None:
    a_site(session, phase_limit_a=16.0)
    a_station(session, "A", connectors=3)
    assert safe_default_limit(state(session), "A") == 0.0


def test_tx_profile_respects_units_and_period_count(session: Session) -> None:
    a_site(session)
    a_station(session, "A", phases=1)
    charging(session, "A")
    [connector] = state(session).active
    from load_manager.planning import ConnectorPlan

    plan = ConnectorPlan(plan_id=1, now_a=0.0, periods_a=[(900, 16.0), (1800, 10.0)],
                         schedule={}, expected_energy_wh=0, expected_cost_sek=None)
    power_only = StationCapability(station_id="A", rate_units="Power", max_periods=2,
                                   max_stack_level=0)
    profile = tx_profile(connector, 0.0, plan=plan, now=NOW, capability=power_only,
                         voltage=230.0, validity_s=3600)
    schedule = profile["chargingSchedule"]
    assert profile["stackLevel"] == 0
    assert profile["transactionId"] == connector.transaction_id
    assert schedule["chargingRateUnit"] == "W"
    assert schedule["duration"] == 3600
    # Two periods at most: now 0 W, then 16 A on one phase as watts.
    assert schedule["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": 0.0, "numberPhases": 1},
        {"startPeriod": 900, "limit": 3680.0, "numberPhases": 1},
    ]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"phase_limit_a": None, "power_limit_kw": None}, "give a limit"),
    ({"phase_limit_a": -5.0, "power_limit_kw": None}, "must be positive"),
    ({"phase_limit_a": 32.0, "power_limit_kw": None, "voltage_v": 400.0}, "phase-to-neutral"),
])
def test_grid_settings_that_cannot_be_right_are_refused(
    session: Session, kwargs: dict[str, Any], message: str
) -> None:
    stations.create_site(session, site_id="S", name="Site", time_zone="Europe/Stockholm")
    with pytest.raises(InvalidSetting, match=message):
        service.set_site_grid(session, site_id="S", **kwargs)


def test_wiring_is_checked(session: Session) -> None:
    a_site(session)
    a_station(session, "A")
    with pytest.raises(InvalidSetting, match="rotation"):
        service.set_wiring(session, station_id="A", connector_id=1, phases=3, rotation="XYZ",
                           max_current_a=16)
    with pytest.raises(InvalidSetting, match="1 or 3"):
        service.set_wiring(session, station_id="A", connector_id=1, phases=2, max_current_a=16)
    with pytest.raises(NotFound):
        service.set_wiring(session, station_id="NOPE", connector_id=1, phases=3,
                           max_current_a=16)


def test_plans_are_checked_and_replace_each_other(session: Session) -> None:
    a_site(session)
    a_station(session, "A")
    tx = charging(session, "A")
    with pytest.raises(InvalidSetting, match="future"):
        service.create_plan(session, transaction_id=tx, departure_at=NOW - timedelta(hours=1),
                            energy_wh=1000, requested_by="t", now=NOW)
    with pytest.raises(InvalidSetting, match="48 hours"):
        service.create_plan(session, transaction_id=tx, departure_at=NOW + timedelta(days=3),
                            energy_wh=1000, requested_by="t", now=NOW)
    first = service.create_plan(session, transaction_id=tx,
                                departure_at=NOW + timedelta(hours=5), energy_wh=1000,
                                requested_by="t", now=NOW)
    second = service.create_plan(session, transaction_id=tx,
                                 departure_at=NOW + timedelta(hours=6), energy_wh=2000,
                                 requested_by="t", now=NOW)
    assert first.status == "cancelled"
    assert service.active_plan(session, transaction_id=tx) == second
