"""Rating real sessions from what stations reported: the transaction, its meter samples and
the connector's statuses, stored by station_api as the central system stores them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlmodel import Session, col, select

from billing_api import service
from billing_api.models import ChargingSession, DriverIdTag, SessionCostLine, SessionStatus
from billing_api.sessions import cost_explanation, open_session, rate_session, session_input
from billing_api.tariffs import parse_tariff
from chargedesk import errors
from chargedesk.settings import Settings
from station_api import service as stations
from station_api.models import Transaction
from tests.billing_api.factories import make_driver

# A Wednesday; Stockholm is UTC+1 in March.
T0 = datetime(2026, 3, 4, 8, 0, tzinfo=UTC)
SEK = {"currency": "SEK", "last_updated": "2026-01-01T00:00:00Z"}


def energy_price(price: str, **restrictions: Any) -> dict[str, Any]:
    element: dict[str, Any] = {
        "price_components": [
            {"type": "ENERGY", "price": Decimal(price), "vat": Decimal(25), "step_size": 1}
        ]
    }
    if restrictions:
        element["restrictions"] = restrictions
    return element


def store_tariff(
    session: Session, tariff_id: str, *elements: dict[str, Any], station_id: str = "SE-STO-01",
    driver_group: str | None = None,
) -> None:
    tariff = parse_tariff({"id": tariff_id, "elements": list(elements), **SEK})
    since = T0 - timedelta(days=30)
    service.import_tariff(session, tariff=tariff, created_by="test", valid_from=since)
    service.assign_tariff(session, tariff_id=tariff_id, created_by="test", station_id=station_id,
                          driver_group=driver_group, valid_from=since)


def station(session: Session, station_id: str = "SE-STO-01", zone: str = "Europe/Stockholm"
            ) -> str:
    site = f"site-{station_id}"
    stations.create_site(session, site_id=site, name=site, time_zone=zone)
    stations.register_station(session, station_id=station_id, password="correct-horse-battery",
                              site_id=site)
    return station_id


def energy(wh: int, *, location: str = "Outlet", phase: str | None = None,
           context: str = "Sample.Periodic") -> dict[str, Any]:
    return _sampled("Energy.Active.Import.Register", wh, "Wh", location, phase) | {
        "context": context}


def power(w: int, *, phase: str | None = None) -> dict[str, Any]:
    return _sampled("Power.Active.Import", w, "W", "Outlet", phase)


def current(a: int, *, phase: str | None = None) -> dict[str, Any]:
    return _sampled("Current.Import", a, "A", "Outlet", phase)


def _sampled(measurand: str, value: int, unit: str, location: str, phase: str | None
             ) -> dict[str, Any]:
    # the shape the ocpp library hands the central system: snake_case SampledValue
    out = {"value": str(value), "measurand": measurand, "unit": unit, "location": location,
           "context": "Sample.Periodic"}
    if phase is not None:
        out["phase"] = phase
    return out


@dataclass
class Charge:
    """One charging transaction, reported through station_api's services in the order a
    station sends it. Times are minutes after ``start``."""

    session: Session
    station_id: str
    id_tag: str
    start: datetime = T0
    meter_start: int = 10_000
    connector_id: int = 1
    transaction_id: int = 0

    def at(self, minutes: float) -> datetime:
        return self.start + timedelta(minutes=minutes)

    def begin(self) -> Charge:
        self.status(0, "Preparing", offset_s=-30)
        tx, _, _ = stations.start_transaction(
            self.session, station_id=self.station_id, connector_id=self.connector_id,
            id_tag=self.id_tag, meter_start_wh=self.meter_start, timestamp=self.start,
        )
        assert tx.id is not None
        self.transaction_id = tx.id
        self.status(0, "Charging")
        return self

    def status(self, minutes: float, status: str, *, offset_s: int = 0) -> Charge:
        stations.record_status(
            self.session, station_id=self.station_id, connector_id=self.connector_id,
            status=status, error_code="NoError",
            timestamp=self.at(minutes) + timedelta(seconds=offset_s),
        )
        return self

    def meter(self, minutes: float, *sampled: dict[str, Any]) -> Charge:
        stations.record_meter_values(
            self.session, station_id=self.station_id, connector_id=self.connector_id,
            transaction_id=self.transaction_id, meter_values=[(self.at(minutes), list(sampled))],
        )
        return self

    def end(self, minutes: float, meter_stop: int) -> Charge:
        self.status(minutes, "Finishing")
        stations.stop_transaction(
            self.session, station_id=self.station_id, transaction_id=self.transaction_id,
            meter_stop_wh=meter_stop, timestamp=self.at(minutes), reason="Local",
        )
        return self

    @property
    def transaction(self) -> Transaction:
        found = self.session.get(Transaction, self.transaction_id)
        assert found is not None
        return found


def charge(session: Session, *, id_tag: str | None = None, **fields: Any) -> Charge:
    """A started transaction, by a new driver's tag unless ``id_tag`` is given."""
    if id_tag is None:
        driver = make_driver(session)
        id_tag = session.exec(
            select(DriverIdTag.id_tag).where(DriverIdTag.driver_id == driver.id)
        ).one()
    return Charge(session, fields.pop("station_id", "SE-STO-01"), id_tag, **fields).begin()


def cdr_of(row: ChargingSession) -> dict[str, Any]:
    assert row.cdr is not None
    return json.loads(row.cdr, parse_float=Decimal)


# ---------------------------------------------------------------- tests


def test_energy_only_session_is_rated_from_the_outlet_register(
    session: Session, settings: Settings
) -> None:
    station(session)
    store_tariff(session, "ENERGY-320", energy_price("3.20"))
    c = charge(session)
    # The Inlet meter also counts the station's own losses; it must not be what is sold.
    for minute, wh in ((15, 13_000), (30, 16_000), (45, 19_000)):
        c.meter(minute, energy(wh), energy(wh + 400, location="Inlet"), power(12_000))
    c.end(60, 22_000)

    outcome = rate_session(session, transaction_id=c.transaction_id, settings=settings)

    row = outcome.row
    # 12 kWh x 3.20 = 38.40 excl. VAT; VAT 25 % = 9.60; 48.00 incl.
    assert (row.status, row.total_excl_vat_ore, row.total_incl_vat_ore) == (
        SessionStatus.rated, 3840, 4800)
    assert (row.energy_wh, row.end_at, row.error) == (12_000, c.at(60), None)
    assert (outcome.rerated, outcome.changed) == (False, False)
    assert cdr_of(row)["total_energy"] == Decimal("12.000")
    rated_input = session_input(session, transaction=c.transaction, time_zone=row.time_zone)
    assert [s["energy_wh"] for s in rated_input["samples"]] == [
        10_000, 13_000, 16_000, 19_000, 22_000]
    lines = session.exec(
        select(SessionCostLine).where(SessionCostLine.session_id == row.id)
    ).all()
    assert [(x.dimension, x.quantity, x.net_ore) for x in lines] == [
        ("ENERGY", Decimal("12"), 3840)]


def test_time_of_day_tariff_uses_the_sites_zone_across_the_boundary(
    session: Session, settings: Settings
) -> None:
    station(session, zone="Europe/Helsinki")  # UTC+2: 22:00 local is 20:00 UTC
    store_tariff(session, "NIGHT", energy_price("1.00", start_time="22:00", end_time="06:00"),
                 energy_price("2.00"))
    c = charge(session, start=datetime(2026, 3, 4, 19, 30, tzinfo=UTC), meter_start=0)
    c.meter(30, energy(4_000)).end(60, 8_000)

    row = rate_session(session, transaction_id=c.transaction_id, settings=settings).row

    assert row.time_zone == "Europe/Helsinki"
    # 21:30-22:00 local: 4 kWh x 2.00 = 8.00; 22:00-22:30: 4 kWh x 1.00 = 4.00 -> 12.00 excl.
    # (In Stockholm's time, which is settings.time_zone, all of it would cost 16.00.)
    assert (row.total_excl_vat_ore, row.total_incl_vat_ore) == (1200, 1500)
    amounts = [(ln["unit_price"], ln["amount"]) for ln in cdr_of(row)["cost_breakdown"]]
    assert amounts == [(Decimal("2.00"), Decimal("8.00")), (Decimal("1.00"), Decimal("4.00"))]


def test_suspended_ev_is_parking_and_suspended_evse_is_charging_time(
    session: Session, settings: Settings
) -> None:
    station(session)
    store_tariff(session, "TIME-PARK", {"price_components": [
        {"type": "TIME", "price": Decimal("6.00"), "vat": Decimal(25), "step_size": 60},
        {"type": "PARKING_TIME", "price": Decimal("30.00"), "vat": Decimal(25), "step_size": 60},
    ]})
    c = charge(session)
    c.meter(30, energy(15_000)).status(30, "SuspendedEVSE")  # the station paused: still charging
    c.status(45, "Charging").meter(60, energy(20_000))
    c.status(60, "SuspendedEV")  # the car is full: parking from here
    c.end(80, 20_000)

    row = rate_session(session, transaction_id=c.transaction_id, settings=settings).row

    cdr = cdr_of(row)
    # charging 0-60 min (SuspendedEVSE included): 1 h x 6.00 = 6.00;
    # parking 60-80 min: 20/60 h x 30.00 = 10.00; 16.00 excl., 20.00 incl. 25 % VAT
    assert (row.total_excl_vat_ore, row.total_incl_vat_ore) == (1600, 2000)
    assert cdr["total_parking_time"] == Decimal("0.333333")
    assert cdr["total_time_cost"]["excl_vat"] == Decimal("6.00")
    assert cdr["total_parking_cost"]["excl_vat"] == Decimal("10.00")
    statuses = [s["status"] for s in session_input(
        session, transaction=c.transaction, time_zone=row.time_zone)["samples"]]
    assert statuses == ["Charging", "SuspendedEVSE", "Charging", "SuspendedEV", "Finishing"]


def test_late_meter_values_rate_again_and_report_the_change(
    session: Session, settings: Settings
) -> None:
    station(session)
    store_tariff(session, "NIGHT", energy_price("1.00", start_time="22:00", end_time="06:00"),
                 energy_price("2.00"))
    # 21:00-23:00 Stockholm; the station reported only the start and stop registers
    c = charge(session, start=datetime(2026, 3, 4, 20, 0, tzinfo=UTC), meter_start=0)
    c.end(120, 20_000)
    first = rate_session(session, transaction_id=c.transaction_id, settings=settings)
    # spread evenly: 10 kWh before 22:00 x 2.00 + 10 kWh after x 1.00 = 30.00 excl., 37.50 incl.
    assert (first.row.total_excl_vat_ore, first.row.total_incl_vat_ore) == (3000, 3750)

    c.meter(60, energy(16_000))  # queued offline, delivered after the stop
    again = rate_session(session, transaction_id=c.transaction_id, settings=settings)

    # 16 kWh before 22:00 x 2.00 = 32.00 + 4 kWh after x 1.00 = 4.00 -> 36.00, 45.00 incl.
    assert (again.rerated, again.changed) == (True, True)
    assert (again.previous_excl_ore, again.previous_incl_ore) == (3000, 3750)
    assert (again.row.total_excl_vat_ore, again.row.total_incl_vat_ore) == (3600, 4500)
    unchanged = rate_session(session, transaction_id=c.transaction_id, settings=settings)
    assert (unchanged.rerated, unchanged.changed) == (True, False)
    rows = session.exec(select(ChargingSession).where(
        ChargingSession.transaction_id == c.transaction_id)).all()
    assert len(rows) == 1


def test_the_meters_own_end_reading_corrects_meter_stop(
    session: Session, settings: Settings
) -> None:
    station(session)
    store_tariff(session, "ENERGY-320", energy_price("3.20"))
    c = charge(session).end(60, 20_000)
    first = rate_session(session, transaction_id=c.transaction_id, settings=settings)
    assert (first.row.energy_wh, first.row.total_excl_vat_ore) == (10_000, 3200)

    c.meter(60, energy(22_000, context="Transaction.End"))  # the meter's reading, sent late
    again = rate_session(session, transaction_id=c.transaction_id, settings=settings)

    # 12 kWh x 3.20 = 38.40 excl., 48.00 incl.
    assert (again.row.energy_wh, again.row.total_excl_vat_ore, again.changed) == (
        12_000, 3840, True)


def test_no_tariff_fails_with_a_message_and_an_assignment_repairs_it(
    session: Session, settings: Settings
) -> None:
    station(session)
    c = charge(session)
    opened = open_session(session, transaction_id=c.transaction_id, settings=settings)
    assert (opened.status, opened.tariff_id) == (SessionStatus.open, None)
    c.meter(30, energy(15_000)).end(60, 20_000)

    failed = rate_session(session, transaction_id=c.transaction_id, settings=settings).row

    assert failed.status == SessionStatus.failed
    assert failed.error is not None
    assert "no tariff applied at station SE-STO-01 connector 1" in failed.error
    assert (failed.cdr, failed.total_excl_vat_ore, failed.total_incl_vat_ore) == (None,) * 3
    store_tariff(session, "LATE-FIX", energy_price("2.00"))  # valid from before the start
    repaired = rate_session(session, transaction_id=c.transaction_id, settings=settings)
    # 10 kWh x 2.00 = 20.00 excl., 25.00 incl.
    assert (repaired.row.status, repaired.row.tariff_id, repaired.row.total_excl_vat_ore) == (
        SessionStatus.rated, "LATE-FIX", 2000)
    assert (repaired.rerated, repaired.changed) == (True, True)


def test_per_phase_power_is_summed_for_a_power_restriction(
    session: Session, settings: Settings
) -> None:
    station(session)
    store_tariff(session, "BY-POWER", energy_price("2.00", max_power=Decimal(11)),
                 energy_price("4.00"))
    c = charge(session, meter_start=0)
    phases = ("L1", "L2", "L3")
    # 3 x 3 680 W = 11 040 W: at or above 11 kW, so the fallback 4.00 prices it
    c.meter(0, *(power(3_680, phase=p) for p in phases), *(current(16, phase=p) for p in phases),
            current(1, phase="N"))
    # 3 x 2 300 W = 6 900 W: below 11 kW, the 2.00 element
    c.meter(30, energy(5_520), *(power(2_300, phase=p) for p in phases),
            *(current(10, phase=p) for p in phases))
    c.end(60, 8_970)

    row = rate_session(session, transaction_id=c.transaction_id, settings=settings).row

    # 5.520 kWh x 4.00 = 22.08 + 3.450 kWh x 2.00 = 6.90 -> 28.98; VAT 7.245 -> 7.25; 36.23
    assert (row.total_excl_vat_ore, row.total_incl_vat_ore) == (2898, 3623)
    samples = session_input(session, transaction=c.transaction, time_zone=row.time_zone)[
        "samples"]
    # current is the sum over the phases (OCPI min/max_current); the neutral is no phase
    assert [(s.get("power_w"), s.get("current_a")) for s in samples] == [
        (11_040, 48), (6_900, 30), (6_900, 30)]


def test_a_driver_groups_tariff_prices_a_driver_of_that_group_via_a_child_tag(
    session: Session, settings: Settings
) -> None:
    station(session)
    store_tariff(session, "ADHOC", energy_price("3.00"))
    store_tariff(session, "MEMBERS", energy_price("2.00"), driver_group="members")
    member = make_driver(session, driver_group="members", id_tags=("COMPANY-1",))
    stations.create_id_tag(session, id_tag="COMPANY-1-CAR", parent_id_tag="COMPANY-1")
    c = charge(session, id_tag="COMPANY-1-CAR")
    c.end(60, 20_000)

    row = rate_session(session, transaction_id=c.transaction_id, settings=settings).row

    assert (row.driver_id, row.tariff_id, row.tariff_version) == (member.id, "MEMBERS", 1)
    # 10 kWh x 2.00 = 20.00 excl., 25.00 incl. (3.00 for everyone else)
    assert (row.total_excl_vat_ore, row.total_incl_vat_ore) == (2000, 2500)
    other = charge(session, connector_id=2)
    other.end(60, 20_000)
    adhoc = rate_session(session, transaction_id=other.transaction_id, settings=settings).row
    assert (adhoc.tariff_id, adhoc.total_excl_vat_ore) == ("ADHOC", 3000)


def test_opening_is_idempotent_and_a_running_transaction_is_not_rated(
    session: Session, settings: Settings
) -> None:
    station(session)
    store_tariff(session, "ENERGY-320", energy_price("3.20"))
    c = charge(session)
    first = open_session(session, transaction_id=c.transaction_id, settings=settings)
    second = open_session(session, transaction_id=c.transaction_id, settings=settings)
    assert first.id == second.id
    assert (first.tariff_id, first.currency, first.start_at) == ("ENERGY-320", "SEK", T0)
    count = session.exec(select(col(ChargingSession.id)).where(
        ChargingSession.transaction_id == c.transaction_id)).all()
    assert len(count) == 1
    with pytest.raises(errors.Conflict, match="has not stopped yet"):
        rate_session(session, transaction_id=c.transaction_id, settings=settings)


def test_a_missed_start_is_opened_when_the_stop_is_rated(
    session: Session, settings: Settings
) -> None:
    station(session)
    store_tariff(session, "ENERGY-320", energy_price("3.20"))
    c = charge(session).end(30, 12_500)  # nothing opened the session at the start

    outcome = rate_session(session, transaction_id=c.transaction_id, settings=settings)

    # 2.5 kWh x 3.20 = 8.00 excl., 10.00 incl.
    assert (outcome.row.tariff_id, outcome.row.total_incl_vat_ore) == ("ENERGY-320", 1000)
    assert outcome.rerated is False


def test_cost_explanation_gives_lines_vat_and_totals(
    session: Session, settings: Settings
) -> None:
    station(session)
    store_tariff(session, "FEE-ENERGY", {"price_components": [
        {"type": "FLAT", "price": Decimal("5.00"), "vat": Decimal(25), "step_size": 1}]},
        energy_price("3.20"))
    c = charge(session).end(60, 22_000)
    row = rate_session(session, transaction_id=c.transaction_id, settings=settings).row

    explained = cost_explanation(row)

    # fee 5.00 + 12 kWh x 3.20 = 38.40 -> 43.40 excl.; VAT 25 % = 10.85; 54.25 incl.
    assert [(ln.dimension, ln.quantity, ln.unit, ln.unit_price, ln.amount_excl_vat, ln.vat_rate)
            for ln in explained.lines] == [
        ("FLAT", Decimal("1"), "session", Decimal("5.00"), Decimal("5.00"), Decimal(25)),
        ("ENERGY", Decimal("12"), "kWh", Decimal("3.20"), Decimal("38.40"), Decimal(25)),
    ]
    assert [(v.rate, v.base, v.amount) for v in explained.vat] == [
        (Decimal(25), Decimal("43.40"), Decimal("10.85"))]
    assert (explained.total_excl_vat, explained.total_incl_vat) == (
        Decimal("43.40"), Decimal("54.25"))
    assert (explained.currency, explained.energy_kwh, explained.tariff_id) == (
        "SEK", Decimal("12"), "FEE-ENERGY")


def test_cost_explanation_refuses_a_session_that_was_not_rated(
    session: Session, settings: Settings
) -> None:
    station(session)
    c = charge(session).end(60, 12_000)
    row = rate_session(session, transaction_id=c.transaction_id, settings=settings).row
    with pytest.raises(service.BillingError, match="has no cost to explain: it is failed"):
        cost_explanation(row)
