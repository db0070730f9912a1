"""Billing's side of a charging transaction: open it when it starts, rate it when it stops.

The station reports what happened (station_api: transactions, meter samples, statuses); this
module turns that into the rating engine's input, prices it with the tariff fixed at the start
and keeps the CDR on the ``charging_session`` row. Plain keyword-only functions taking a
session; callers own the transaction and decide what a rating means for wallets and invoices.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlmodel import Session, col, select

from billing_api import invoicing
from billing_api.models import (
    ChargingSession,
    Driver,
    DriverIdTag,
    SessionStatus,
    TariffVersion,
)
from billing_api.money import dumps
from billing_api.rating import Cdr, rate
from billing_api.service import BillingError, NotFound, load, tariff_in_force, tariff_version
from billing_api.tariffs import BillingInputError
from chargedesk import errors
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from station_api import service as stations
from station_api.models import IdTag, MeterSample, StatusEvent, Transaction

ENERGY_REGISTER = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"
CURRENT = "Current.Import"
# OCPP 1.6 names a phase's conductor either way; line-to-line and neutral readings are not
# a phase's share of the total.
CONDUCTOR = {"L1": "L1", "L2": "L2", "L3": "L3", "L1-N": "L1", "L2-N": "L2", "L3-N": "L3"}
PREFERRED_LOCATION = "Outlet"  # what the car received: the station's own losses are not sold
ERROR_LENGTH = 500  # ChargingSession.error


class _Unratable(BillingError):
    """Why a session cannot be rated; stored on the row rather than raised."""


# ---------------------------------------------------------------- opening


def open_session(session: Session, *, transaction_id: int, settings: Settings) -> ChargingSession:
    """The billing session of a transaction, created when it starts (idempotent).

    Fixes who pays (the driver linked to the id tag, or to its parent tag), the time zone
    (the station's site, else ``settings.time_zone``) and the tariff version in force at the
    start for that connector and the driver's group. When no tariff applies the row is still
    created without one, so the session is not lost: rating it later fails with a clear error
    until an operator assigns a tariff.
    """
    existing = _session_of(session, transaction_id)
    if existing is not None:
        return existing
    transaction = _transaction(session, transaction_id)
    driver = _driver_of(session, transaction.id_tag)
    version = _tariff_at_start(session, transaction, driver)
    currency = (
        version.currency if version is not None
        else driver.currency if driver is not None
        else settings.currency
    )
    row = {
        "transaction_id": transaction_id,
        "station_id": transaction.station_id,
        "connector_id": transaction.connector_id,
        "id_tag": transaction.id_tag,
        "driver_id": driver.id if driver is not None else None,
        "start_at": transaction.start_timestamp,
        "tariff_id": version.tariff_id if version is not None else None,
        "tariff_version": version.version if version is not None else None,
        "currency": currency,
        "time_zone": stations.station_time_zone(
            session, station_id=transaction.station_id, default=settings.time_zone
        ),
        "status": SessionStatus.open,
    }
    # The start and a late-arriving stop may open the same session concurrently: the unique
    # transaction_id lets exactly one insert through and the other reads its row.
    stations.insert_ignore(session, ChargingSession, [row], key=("transaction_id",))
    opened = _session_of(session, transaction_id)
    assert opened is not None  # inserted now or by the concurrent opener
    return opened


def _session_of(session: Session, transaction_id: int, *, lock: bool = False
                ) -> ChargingSession | None:
    query = select(ChargingSession).where(ChargingSession.transaction_id == transaction_id)
    if lock:
        query = query.with_for_update()
    return session.exec(query).first()


def _transaction(session: Session, transaction_id: int) -> Transaction:
    transaction = session.get(Transaction, transaction_id)
    if transaction is None:
        raise NotFound(f"no transaction {transaction_id}")
    return transaction


def _driver_of(session: Session, id_tag: str) -> Driver | None:
    """The driver an id tag belongs to: linked directly, or through its parent tag (a
    company card's sub-cards, say)."""
    link = session.get(DriverIdTag, id_tag)
    if link is None:
        tag = session.get(IdTag, id_tag)
        if tag is not None and tag.parent_id_tag:
            link = session.get(DriverIdTag, tag.parent_id_tag)
    return session.get(Driver, link.driver_id) if link is not None else None


def _tariff_at_start(
    session: Session, transaction: Transaction, driver: Driver | None
) -> TariffVersion | None:
    try:
        return tariff_in_force(
            session,
            station_id=transaction.station_id,
            connector_id=transaction.connector_id,
            driver_group=driver.driver_group if driver is not None else None,
            at=transaction.start_timestamp,
        )
    except NotFound:
        return None


# ---------------------------------------------------------------- what the station reported


def session_input(
    session: Session, *, transaction: Transaction, time_zone: str
) -> dict[str, Any]:
    """The rating engine's input for a stopped transaction, from what the station stored.

    One sample per instant at which something was reported between start and stop (samples
    at the same timestamp merge into one):

    * ``energy_wh``: the Energy.Active.Import.Register reading, from the Outlet meter when
      the station reports one (else the location it does report); the total register, or
      the sum of the per-phase registers when only those exist. The first sample is at the
      start and the last at the stop, with ``meter_start`` and ``meter_stop`` unless the meter
      itself reported a reading at that instant (Transaction.Begin/End sampled values): that
      reading wins, so a corrected end reading delivered late re-rates the session. Where
      only the status changed, the last known reading carries forward.
    * ``power_w``: Power.Active.Import, the total when reported, else the sum over L1-L3.
    * ``current_a``: Current.Import summed over the phases L1-L3 when per-phase values exist,
      else the phase-less value: OCPI 2.2.1 defines min_current/max_current as the "sum of
      the ... current in A over all phases" (TariffRestrictions class).
    * ``status``: the connector's StatusNotifications within the transaction. The start
      counts as Charging until the station says otherwise: the transaction has begun, and
      the status that says so often arrives a moment later.

    Power and current hold until the next reading, as in the engine. Meter values sent
    without a transactionId on the same connector during the transaction are included.
    """
    start, stop = transaction.start_timestamp, transaction.stop_timestamp
    if stop is None or transaction.meter_stop_wh is None:
        raise errors.Conflict(f"transaction {transaction.id} has not stopped yet")
    readings = session.exec(
        select(
            MeterSample.timestamp, MeterSample.measurand, MeterSample.phase,
            MeterSample.location, MeterSample.value,
        )
        .where(
            MeterSample.station_id == transaction.station_id,
            MeterSample.connector_id == transaction.connector_id,
            col(MeterSample.measurand).in_((ENERGY_REGISTER, POWER, CURRENT)),
            MeterSample.timestamp >= start,
            MeterSample.timestamp <= stop,
            (col(MeterSample.transaction_id) == transaction.id)
            | col(MeterSample.transaction_id).is_(None),
        )
        .order_by(col(MeterSample.timestamp), col(MeterSample.id))
    ).all()
    statuses = session.exec(
        select(StatusEvent.timestamp, StatusEvent.status)
        .where(
            StatusEvent.station_id == transaction.station_id,
            StatusEvent.connector_id == transaction.connector_id,
            StatusEvent.timestamp >= start,
            StatusEvent.timestamp <= stop,
        )
        .order_by(col(StatusEvent.timestamp), col(StatusEvent.id))
    ).all()
    energy = _per_instant(readings, ENERGY_REGISTER, total_first=True)
    power = _per_instant(readings, POWER, total_first=True)
    current = _per_instant(readings, CURRENT, total_first=False)
    status_at = {at: status for at, status in statuses}  # the later of two at one instant
    instants = sorted({start, stop, *energy, *power, *current, *status_at})
    samples: list[dict[str, Any]] = []
    held: dict[str, Any] = {"energy_wh": transaction.meter_start_wh, "status": "Charging"}
    for at in instants:
        held["energy_wh"] = energy.get(at, held["energy_wh"])
        if at in power:
            held["power_w"] = power[at]
        if at in current:
            held["current_a"] = current[at]
        held["status"] = status_at.get(at, held["status"])
        if at == stop and at not in energy:
            held["energy_wh"] = transaction.meter_stop_wh
        samples.append({"timestamp": at.astimezone(UTC).isoformat(), **held})
    return {"time_zone": time_zone, "samples": samples}


def _per_instant(
    readings: Sequence[Any], measurand: str, *, total_first: bool
) -> dict[datetime, int | Decimal]:
    """One value per timestamp of a measurand, at the preferred location: the phase-less
    total or the sum over the phases, whichever ``total_first`` puts first."""
    mine = [r for r in readings if r.measurand == measurand and r.value is not None]
    if not mine:
        return {}
    locations = {r.location for r in mine}
    location = PREFERRED_LOCATION if PREFERRED_LOCATION in locations else min(locations)
    totals: dict[datetime, Decimal] = {}
    phases: dict[datetime, dict[str, Decimal]] = {}
    for r in mine:
        if r.location != location:
            continue
        if r.phase == "":
            totals[r.timestamp] = r.value
        elif r.phase in CONDUCTOR:
            # one value per conductor: "L1" and "L1-N" are the same phase
            phases.setdefault(r.timestamp, {}).setdefault(CONDUCTOR[r.phase], r.value)
    out: dict[datetime, int | Decimal] = {}
    for at in sorted(totals.keys() | phases.keys()):
        summed = sum(phases[at].values(), Decimal(0)) if at in phases else None
        total = totals.get(at)
        if total_first:
            value = total if total is not None else summed
        else:
            value = summed if summed is not None else total
        assert value is not None
        out[at] = _plain(value)
    return out


def _plain(value: Decimal) -> int | Decimal:
    """Whole readings as ``int`` (the engine's fast path); others stay exact Decimals."""
    return int(value) if value == value.to_integral_value() else value.normalize()


# ---------------------------------------------------------------- rating


@dataclass(frozen=True)
class RatingOutcome:
    """What rating a session did. ``changed`` is set when a session rated before now has
    other totals (or none, having failed): the caller decides what that means for money."""

    row: ChargingSession
    rerated: bool
    changed: bool
    previous_excl_ore: int | None
    previous_incl_ore: int | None


def rate_session(session: Session, *, transaction_id: int, settings: Settings) -> RatingOutcome:
    """Rate a stopped transaction and keep its CDR, totals in öre and cost lines.

    Opens the billing session first if its start was missed. Called again (late meter
    values, a tariff assigned after a failure) it rates anew from everything stored and
    reports whether the totals changed. Data that cannot be rated, or no tariff, sets the
    status to failed with the reason instead of raising; the CDR and totals are then
    cleared, so nothing bills a figure that no longer stands. Wallets and invoices are left
    to the caller.
    """
    transaction = _transaction(session, transaction_id)
    if transaction.stop_timestamp is None:
        raise errors.Conflict(
            f"transaction {transaction_id} has not stopped yet; it is rated when it stops"
        )
    open_session(session, transaction_id=transaction_id, settings=settings)
    # Late meter values may re-rate while another rating runs: one at a time per session.
    row = _session_of(session, transaction_id, lock=True)
    assert row is not None
    rerated = row.status != SessionStatus.open
    previous = (row.total_excl_vat_ore, row.total_incl_vat_ore)
    row.end_at = transaction.stop_timestamp
    row.energy_wh = transaction.energy_wh
    row.rated_at = utcnow()
    try:
        cdr, data = _rate(session, row, transaction)
    except (BillingInputError, _Unratable) as exc:
        _store_failure(session, row, str(exc))
    else:
        _store_cdr(session, row, cdr)
        samples = data["samples"]
        row.energy_wh = _whole_wh(samples[-1]["energy_wh"] - samples[0]["energy_wh"])
    session.add(row)
    session.flush()
    now = (row.total_excl_vat_ore, row.total_incl_vat_ore)
    return RatingOutcome(
        row=row,
        rerated=rerated,
        changed=rerated and now != previous,
        previous_excl_ore=previous[0],
        previous_incl_ore=previous[1],
    )


def _rate(
    session: Session, row: ChargingSession, transaction: Transaction
) -> tuple[Cdr, dict[str, Any]]:
    if row.tariff_id is None:
        # none applied at the start; one assigned since (valid from before the start) can
        # still price it, which is how an operator repairs such a session
        version = _tariff_at_start(
            session, transaction,
            session.get(Driver, row.driver_id) if row.driver_id is not None else None,
        )
        if version is None:
            raise _Unratable(
                f"no tariff applied at station {row.station_id} connector {row.connector_id}"
                f" when the session started ({row.start_at.isoformat()}); assign one valid"
                " from before then and rate the session again"
            )
        row.tariff_id, row.tariff_version = version.tariff_id, version.version
        row.currency = version.currency
    try:
        version = tariff_version(
            session, tariff_id=row.tariff_id, version=row.tariff_version
        )
    except NotFound as exc:
        raise _Unratable(str(exc)) from None
    data = session_input(session, transaction=transaction, time_zone=row.time_zone)
    return rate(load(version), data), data


def _store_cdr(session: Session, row: ChargingSession, cdr: Cdr) -> None:
    ocpi = cdr.to_ocpi()
    row.status = SessionStatus.rated
    row.error = None
    row.currency = cdr.currency
    row.cdr = dumps(ocpi)
    row.total_excl_vat_ore = _ore(cdr.total_cost.excl_vat)
    row.total_incl_vat_ore = _ore(cdr.total_cost.incl_vat)
    # invoicing owns how a CDR becomes cost lines (and keeps credits granted on the session)
    invoicing.record_cost_lines(session, row=row, cdr=ocpi)


def _store_failure(session: Session, row: ChargingSession, reason: str) -> None:
    row.status = SessionStatus.failed
    row.error = reason if len(reason) <= ERROR_LENGTH else reason[: ERROR_LENGTH - 1] + "…"
    row.cdr = None
    row.total_excl_vat_ore = row.total_incl_vat_ore = None
    invoicing.record_cost_lines(session, row=row, cdr={})


def _whole_wh(energy: int | Decimal) -> int:
    return int(Decimal(energy).to_integral_value(ROUND_HALF_UP))


def _ore(amount: Decimal) -> int:
    """An amount the engine rounded to 0.01 as whole öre; anything finer is a bug."""
    scaled = amount.scaleb(2)
    whole = scaled.to_integral_value()
    if scaled != whole:
        raise ValueError(f"{amount} is not a whole number of öre")
    return int(whole)


# ---------------------------------------------------------------- explaining


@dataclass(frozen=True)
class ExplainedLine:
    """One cost line: what was priced, how much of it, at what price, and its VAT rate."""

    dimension: str  # ENERGY, TIME (charging), PARKING_TIME, FLAT (a fee)
    reservation: str | None  # RESERVATION / RESERVATION_EXPIRES when it prices a reservation
    quantity: Decimal  # billed, after step_size rounding
    measured_quantity: Decimal  # as measured
    unit: str  # kWh, h, session
    unit_price: Decimal  # excl. VAT
    amount_excl_vat: Decimal
    vat_rate: Decimal | None  # percent; None: no VAT applies


@dataclass(frozen=True)
class ExplainedVat:
    rate: Decimal | None
    base: Decimal
    amount: Decimal


@dataclass(frozen=True)
class CostExplanation:
    """A rated session's cost as structured lines the assistant can phrase."""

    session_id: int | None
    transaction_id: int
    station_id: str
    connector_id: int
    currency: str
    tariff_id: str | None
    tariff_version: int | None
    start_at: datetime
    end_at: datetime | None
    energy_kwh: Decimal
    total_hours: Decimal
    parking_hours: Decimal
    lines: tuple[ExplainedLine, ...]
    vat: tuple[ExplainedVat, ...]
    # What min_price/max_price moved the totals by, excl. and incl. VAT; None when unbounded.
    price_limit_adjustment: tuple[Decimal, Decimal] | None
    reservation_excl_vat: Decimal | None
    total_excl_vat: Decimal
    total_incl_vat: Decimal


def cost_explanation(row: ChargingSession) -> CostExplanation:
    """Explain a rated session's cost from its stored CDR, line by line: per cost line the
    dimension, quantity with unit, unit price, amount excl. VAT and VAT rate; then the VAT
    per rate and the totals. Raises :class:`BillingError` for a session not (yet) rated."""
    if row.status != SessionStatus.rated or row.cdr is None:
        reason = f": {row.error}" if row.error else ""
        raise BillingError(
            f"session {row.id} (transaction {row.transaction_id}) has no cost to explain:"
            f" it is {row.status.value}{reason}"
        )
    cdr = json.loads(row.cdr, parse_float=Decimal, parse_int=Decimal)
    limit = cdr.get("price_limit_adjustment")
    reservation = cdr.get("total_reservation_cost")
    return CostExplanation(
        session_id=row.id,
        transaction_id=row.transaction_id,
        station_id=row.station_id,
        connector_id=row.connector_id,
        currency=cdr["currency"],
        tariff_id=row.tariff_id,
        tariff_version=row.tariff_version,
        start_at=row.start_at,
        end_at=row.end_at,
        energy_kwh=cdr["total_energy"],
        total_hours=cdr["total_time"],
        parking_hours=cdr["total_parking_time"],
        lines=tuple(
            ExplainedLine(
                dimension=line["dimension"],
                reservation=line.get("reservation"),
                quantity=line["quantity"],
                measured_quantity=line["measured_quantity"],
                unit=line["unit"],
                unit_price=line["unit_price"],
                amount_excl_vat=line["amount"],
                vat_rate=line["vat_rate"],
            )
            for line in cdr["cost_breakdown"]
        ),
        vat=tuple(
            ExplainedVat(rate=v["rate"], base=v["base"], amount=v["amount"]) for v in cdr["vat"]
        ),
        price_limit_adjustment=(limit["excl_vat"], limit["incl_vat"]) if limit else None,
        reservation_excl_vat=reservation["excl_vat"] if reservation else None,
        total_excl_vat=cdr["total_cost"]["excl_vat"],
        total_incl_vat=cdr["total_cost"]["incl_vat"],
    )
