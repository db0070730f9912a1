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
from load_manager.controller import decide, grid_of, observations, safe_default_limit, tx_profile
from load_manager.dispatch import Observation
from load_manager.meters import PILOT_SETTLE_S, MeterWatch, Reading, reading_of
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


def meter(samples: dict[str, str], *, measurand: str = "Current.Import",
          unit: str = "A") -> list[Sample]:
    """One instant's meter values: {phase ("" for none): value}."""
    return [Sample(timestamp=NOW, measurand=measurand, phase=phase, location="Outlet",
                   context="Sample.Periodic", unit=unit, value=Decimal(value))
            for phase, value in samples.items()]


class Clock:
    """The watch's clock, moved by hand: a pilot settles without a test waiting for it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watched(key: tuple[str, int], tx: int, pilot: float, samples: list[Sample], *,
            clock: Clock | None = None, watch: MeterWatch | None = None) -> MeterWatch:
    """A watch that saw the station accept ``pilot`` and, once settled, ``samples``."""
    clock = clock or Clock()
    watch = watch or MeterWatch(clock=clock)
    watch.pilot(key, transaction_id=tx, amps=pilot)
    clock.now += PILOT_SETTLE_S
    assert watch.saw(key, transaction_id=tx, reading=reading_of(samples))
    return watch


def test_the_observed_car_gives_back_what_it_does_not_take(session: Session) -> None:
    a_site(session, phase_limit_a=32.0)
    a_station(session, "A")
    a_station(session, "B")
    slow = charging(session, "A")
    charging(session, "B", tag="T2")
    site = state(session)
    watch = watched(("A", 1), slow, 16.0, meter({"L1": "9.5", "L2": "9.4", "L3": "9.5"}))
    # A draws 9.5 A of its 16 A: it is counted at 11.5, 11 A in whole amperes, and B gets
    # the rest, also in whole amperes.
    assert decide(site, planned={}, now=NOW, observed=observations(site, watch)).limits == {
        ("A", 1): 11.0, ("B", 1): 21.0}


def test_the_latest_reading_counts_not_the_peak(session: Session) -> None:
    # A took its whole 16 A first, then tapered to 4 A: the taper is what it gives back.
    a_site(session, phase_limit_a=32.0)
    a_station(session, "A")
    a_station(session, "B")
    tapering = charging(session, "A")
    charging(session, "B", tag="T2")
    clock = Clock()
    watch = watched(("A", 1), tapering, 16.0, meter({"L1": "16", "L2": "16", "L3": "16"}),
                    clock=clock)
    site = state(session)
    assert decide(site, planned={}, now=NOW, observed=observations(site, watch)).limits == {
        ("A", 1): 16.0, ("B", 1): 16.0}
    clock.now += 60
    assert watch.saw(("A", 1), transaction_id=tapering,
                     reading=reading_of(meter({"L1": "4", "L2": "4", "L3": "4"})))
    limits = decide(site, planned={}, now=NOW, observed=observations(site, watch)).limits
    assert limits == {("A", 1): 6.0, ("B", 1): 26.0}


def test_a_reading_is_only_taken_under_a_settled_pilot_of_the_same_transaction() -> None:
    clock = Clock()
    watch = MeterWatch(clock=clock)
    key, reading = ("A", 1), reading_of(meter({"L1": "4"}))
    assert not watch.saw(key, transaction_id=7, reading=reading)  # no pilot known
    watch.pilot(key, transaction_id=7, amps=16.0)
    clock.now += PILOT_SETTLE_S - 0.1
    assert not watch.saw(key, transaction_id=7, reading=reading)  # the car may still follow
    clock.now += 0.1
    assert not watch.saw(key, transaction_id=8, reading=reading)  # another transaction
    assert watch.saw(key, transaction_id=7, reading=reading)
    assert watch.observation(7, phases=1, voltage_v=230) == Observation(16.0, 4.0)
    # A refresh of the same pilot does not unsettle it; a new pilot does, and until it has
    # settled the reading under the old one still stands.
    watch.pilot(key, transaction_id=7, amps=16.0)
    assert watch.saw(key, transaction_id=7, reading=reading_of(meter({"L1": "5"})))
    watch.pilot(key, transaction_id=7, amps=8.0)
    assert not watch.saw(key, transaction_id=7, reading=reading_of(meter({"L1": "8"})))
    assert watch.observation(7, phases=1, voltage_v=230) == Observation(16.0, 5.0)
    # A pilot whose first period has run out (a plan's next period applies) is not known.
    watch.pilot(key, transaction_id=7, amps=10.0, lasts_s=PILOT_SETTLE_S + 1)
    clock.now += PILOT_SETTLE_S + 1
    assert not watch.saw(key, transaction_id=7, reading=reading)
    watch.forget_station("A")
    assert watch.observation(7, phases=1, voltage_v=230) is None


def test_power_alone_counts_over_the_cars_phases_and_one_phase_when_unknown() -> None:
    three = reading_of(meter({"": "6900"}, measurand="Power.Active.Import", unit="W"))
    assert three is not None
    assert three.drawn_a(phases=3, voltage_v=230) == pytest.approx(10.0)
    # Phases unknown: as if all on one phase, never less than the car really draws.
    assert three.drawn_a(phases=None, voltage_v=230) == pytest.approx(30.0)
    kw = reading_of(meter({"": "2.3"}, measurand="Power.Active.Import", unit="kW"))
    assert kw is not None and kw.drawn_a(phases=1, voltage_v=230) == pytest.approx(10.0)
    # Current wins over power; the busiest phase counts; the transaction's first sample and
    # the car's own (location EV) do not.
    mixed = meter({"L1": "7.5", "L2": "7.9", "L3": "7.7"}) + meter(
        {"": "9000"}, measurand="Power.Active.Import", unit="W")
    assert reading_of(mixed) == Reading(current_a=7.9)
    begin = [s.model_copy(update={"context": "Transaction.Begin"}) for s in meter({"L1": "0"})]
    car = [s.model_copy(update={"location": "EV"}) for s in meter({"L1": "3"})]
    assert reading_of(begin + car) is None


def test_a_car_that_has_drawn_nothing_keeps_the_minimum_and_leaves_the_rest(
    session: Session,
) -> None:
    # The give-back rule is dispatch.counted_limit, shared with the realistic bench: A was
    # offered 16 A and its meter shows nothing. It keeps the 6 A minimum (so it can start)
    # but is counted at 0 A, so B gets the whole phase.
    a_site(session, phase_limit_a=32.0)
    a_station(session, "A")
    a_station(session, "B")
    idle = charging(session, "A")
    charging(session, "B", tag="T2")
    site = state(session)
    watch = watched(("A", 1), idle, 16.0, meter({"L1": "0.0", "L2": "0.0", "L3": "0.0"}))
    assert decide(site, planned={}, now=NOW, observed=observations(site, watch)).limits == {
        ("A", 1): 6.0, ("B", 1): 32.0}


def test_single_phase_cars_on_one_phase_get_whole_amperes_of_at_least_the_minimum(
    session: Session,
) -> None:
    # Three single-phase connectors all on L1 of a 20 A phase: 7 + 7 + 6, not 6.7 each.
    a_site(session, phase_limit_a=20.0)
    for n in range(3):
        a_station(session, f"P{n}", phases=1, rotation="RST")
        charging(session, f"P{n}", tag=f"T{n}", minutes_ago=30 - n)
    limits = decide(state(session), planned={}, now=NOW).limits
    assert sorted(limits.values()) == [6.0, 7.0, 7.0]
    # At 16 A the three minimums do not fit: the latest arrival pauses, the others share.
    service.set_site_grid(session, site_id="S", phase_limit_a=16.0, power_limit_kw=None)
    assert decide(state(session), planned={}, now=NOW).limits == {
        ("P0", 1): 8.0, ("P1", 1): 8.0, ("P2", 1): 0.0}


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
    # L2 carries three connectors (A1, A2 and B): 32 / 3 A, floored to whole amperes.
    assert safe_default_limit(site, "A") == 10.0


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
