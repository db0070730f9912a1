"""Rate a metered charging session against an OCPI 2.2.1 tariff, exactly.

Rules implemented, with the OCPI 2.2.1 section (mod_tariffs.asciidoc, mod_cdrs.asciidoc) each
comes from:

* **Element in force** (Tariffs, "Tariff Object"): per dimension (ENERGY, TIME, PARKING_TIME,
  FLAT) the first element, in tariff order, that has a price component of that dimension and
  whose restrictions all match is in force; with none, that dimension is free. Restrictions
  describe "if and when a TariffElement becomes active or inactive during a Charging Session"
  (Tariffs, "TariffRestrictions class"), so they are re-evaluated along the session: the
  timeline is cut at every sample, every local clock boundary of the tariff (start_time,
  end_time, midnight for dates and weekdays, both folds of a DST change), every duration
  threshold and every instant the energy consumed reaches a min_kwh/max_kwh threshold. Each
  piece is priced by the elements matching at its start.
* **Restriction semantics**: start_time inclusive, end_time exclusive, in the site's local time,
  wrapping midnight when end_time < start_time (start_time == end_time means all day);
  start_date inclusive, end_date exclusive ("valid until this day (exclusive)"); day_of_week on
  the local calendar day of the instant; min_duration inclusive, max_duration exclusive (spec);
  min_kwh/min_power/min_current inclusive and max_kwh/max_power/max_current exclusive (the spec
  leaves equality open; this choice makes "max 32 A" / "min 32 A" elements partition the range).
  kWh thresholds count energy consumed since plug-in; power and current are the sample's
  instantaneous values, held until the next sample. Elements with a ``reservation`` restriction
  describe reservation costs and never apply to a metered charging session.
* **TIME vs PARKING_TIME** (Tariffs, "TariffDimensionType"): TIME is time charging, PARKING_TIME
  time not charging. Status Charging and SuspendedEVSE (the station, not the car, paused) count
  as charging; SuspendedEV and Finishing (car full or transaction over, still plugged) count as
  parking; Preparing, Available, Reserved, Unavailable and Faulted are idle: not billed by time.
* **Energy** between two samples is the register difference, spread linearly over the interval
  when a cut falls inside it (Fraction arithmetic, no rounding).
* **step_size** (Tariffs, "PriceComponent class" and its errata note with the "switching to
  different Tariff Element" examples): applied once per dimension per session. The priced volume
  of the dimension is summed over the session and rounded up to a multiple of the step_size of
  the price component in force in the last period that had volume in that dimension; the extra
  volume is billed at that component's price. Steps are 1 Wh for ENERGY, 1 s for the times.
* **FLAT** is charged once per session, from the first FLAT element that matches at any point.
* **Money**: each cost line (one per price component used) is quantity x price at full
  precision, rounded to 0.01 with ROUND_HALF_UP. VAT is computed per rate on the sum of that
  rate's rounded net lines; the VAT total is the exact sum rounded once, and the per-rate
  amounts are apportioned to it by largest remainder so they add up. (Rounding each rate
  separately would make the spec's "Complex Tariff" Monday session 10.01 instead of 10.00.)
  A component without ``vat`` carries no VAT ("If omitted, no VAT is applicable").
* **min_price/max_price** (Tariffs, "Tariff Object" notes): clamp the total excl. VAT and the
  total incl. VAT independently; the difference is reported as ``price_limit_adjustment``.
  When a bound has no incl_vat, the incl. total moves by the same amount as the excl. total.
* **Validity**: a tariff whose start_date_time/end_date_time excludes the plug-in instant is
  refused: the driver agreed to the tariff valid when the session started (Tariff Object note).
* **CDR** (CDRs, "CDR Object", "ChargingPeriod", "CdrDimensionType"): a new charging period
  starts whenever the state (charging/parking/idle) or an element in force changes; volumes in
  kWh and hours. OCPI 2.2.1 has no FLAT CDR dimension; the flat fee shows in total_fixed_cost.
  Exported volumes are rounded to 6 decimals for display only; money uses exact values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billing_api.money import (
    Exact,
    dumps,
    parse_number,
    quantity,
    round_half_up,
    round_money,
    to_exact,
)
from billing_api.tariffs import (
    BillingInputError,
    CompiledElement,
    CompiledTariff,
    Component,
    Tariff,
    TariffDimensionType,
    parse_tariff,
)

ENERGY = TariffDimensionType.ENERGY
FLAT = TariffDimensionType.FLAT
TIME = TariffDimensionType.TIME
PARKING_TIME = TariffDimensionType.PARKING_TIME

CHARGING, PARKING, IDLE = "charging", "parking", "idle"
STATE_OF_STATUS = {
    "Charging": CHARGING,
    "SuspendedEVSE": CHARGING,
    "SuspendedEV": PARKING,
    "Finishing": PARKING,
    "Preparing": IDLE,
    "Available": IDLE,
    "Reserved": IDLE,
    "Unavailable": IDLE,
    "Faulted": IDLE,
}

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
MICROS_PER_HOUR = 3_600_000_000
MICROS_PER_SECOND = 1_000_000
WH_PER_KWH = 1000
UNIT_OF = {ENERGY: "kWh", TIME: "h", PARKING_TIME: "h", FLAT: "session"}


class InvalidSessionError(BillingInputError):
    """Metered session data that cannot be rated (order, register, missing values)."""


class TariffNotApplicableError(BillingInputError):
    """The tariff was not valid when the session started."""


# --- session input -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """A station report; power, current and status hold until the next sample."""

    at_us: int
    energy_wh: Exact
    power_w: Exact | None
    current_a: Exact | None
    status: str
    state: str


@dataclass(frozen=True, slots=True)
class Session:
    """A parsed metering timeline: first sample at plug-in, last at unplug."""

    time_zone: ZoneInfo
    samples: tuple[Sample, ...]

    @property
    def start(self) -> datetime:
        return _utc(self.samples[0].at_us)

    @property
    def end(self) -> datetime:
        return _utc(self.samples[-1].at_us)


def parse_session(data: Mapping[str, Any]) -> Session:
    """Validate a station's report ``{"time_zone": ..., "samples": [...]}`` once, into plain
    numbers; raise :class:`InvalidSessionError` saying which sample is wrong and why."""
    if not isinstance(data, Mapping):
        raise InvalidSessionError("a session must be an object with time_zone and samples")
    zone_name = data.get("time_zone")
    if not isinstance(zone_name, str) or not zone_name:
        raise InvalidSessionError("time_zone is missing; give the site's IANA zone name")
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSessionError(
            f"unknown time_zone {zone_name!r}; use an IANA name such as Europe/Stockholm"
        ) from None
    raw = data.get("samples")
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes) or len(raw) < 2:
        raise InvalidSessionError(
            "samples must be a list of at least two readings: at plug-in and at unplug"
        )
    samples = tuple(_parse_sample(number, item) for number, item in enumerate(raw, 1))
    for number, (before, after) in enumerate(pairwise(samples), 2):
        if after.at_us <= before.at_us:
            raise InvalidSessionError(
                f"sample {number} ({_utc(after.at_us).isoformat()}) is not later than sample"
                f" {number - 1} ({_utc(before.at_us).isoformat()}); samples must be in time"
                " order without duplicates"
            )
        if after.energy_wh < before.energy_wh:
            raise InvalidSessionError(
                f"the energy register goes down from {_show(before.energy_wh)} Wh at sample"
                f" {number - 1} to {_show(after.energy_wh)} Wh at sample {number}; a meter"
                " register only grows (meter reset or wrong unit?)"
            )
    return Session(time_zone=zone, samples=samples)


def _parse_sample(number: int, item: object) -> Sample:
    if not isinstance(item, Mapping):
        raise InvalidSessionError(f"sample {number} must be an object")
    stamp = item.get("timestamp")
    try:
        moment = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp))
    except ValueError:
        raise InvalidSessionError(
            f"sample {number}: timestamp {stamp!r} is not an ISO 8601 date and time"
        ) from None
    if moment.utcoffset() is None:
        raise InvalidSessionError(
            f"sample {number}: timestamp {stamp!r} has no UTC offset; add Z or +01:00"
        )
    if "energy_wh" not in item:
        raise InvalidSessionError(f"sample {number}: energy_wh (the register reading) is missing")
    energy = _number(number, "energy_wh", item["energy_wh"])
    power = None if item.get("power_w") is None else _number(number, "power_w", item["power_w"])
    current = (
        None if item.get("current_a") is None else _number(number, "current_a", item["current_a"])
    )
    status = item.get("status") or "Charging"
    state = STATE_OF_STATUS.get(status) if isinstance(status, str) else None
    if state is None:
        raise InvalidSessionError(
            f"sample {number}: unknown status {status!r}; expected one of "
            + ", ".join(STATE_OF_STATUS)
        )
    return Sample((moment - EPOCH) // ONE_MICROSECOND, energy, power, current, status, state)


def _number(number: int, name: str, value: object) -> Exact:
    try:
        parsed = parse_number(value)
    except ValueError as exc:
        raise InvalidSessionError(f"sample {number}: {name}: {exc}") from None
    if parsed < 0:
        raise InvalidSessionError(f"sample {number}: {name} is negative ({value})")
    return parsed


# --- CDR output ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Price:
    excl_vat: Decimal
    incl_vat: Decimal

    def to_ocpi(self) -> dict[str, Decimal]:
        return {"excl_vat": self.excl_vat, "incl_vat": self.incl_vat}


@dataclass(frozen=True, slots=True)
class CdrDimension:
    type: str
    volume: Decimal


@dataclass(frozen=True, slots=True)
class ChargingPeriod:
    start_date_time: datetime
    dimensions: tuple[CdrDimension, ...]
    tariff_id: str | None


@dataclass(frozen=True, slots=True)
class CostLine:
    """One invoice line: a price component and the volume billed at it."""

    dimension: str
    element_index: int
    quantity: Decimal  # billed, after step_size rounding
    measured_quantity: Decimal
    unit: str
    unit_price: Decimal  # excl. VAT, as in the tariff
    amount: Decimal  # excl. VAT, rounded to 0.01
    vat_rate: Decimal | None  # percent; None means no VAT applicable


@dataclass(frozen=True, slots=True)
class VatLine:
    rate: Decimal | None
    base: Decimal
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Cdr:
    """The rated session in OCPI CDR terms, plus the invoice lines that explain the total."""

    tariff_id: str
    currency: str
    start_date_time: datetime
    end_date_time: datetime
    charging_periods: tuple[ChargingPeriod, ...]
    total_cost: Price
    total_fixed_cost: Price | None
    total_energy: Decimal
    total_energy_cost: Price | None
    total_time: Decimal
    total_time_cost: Price | None
    total_parking_time: Decimal
    total_parking_cost: Price | None
    cost_breakdown: tuple[CostLine, ...]
    vat: tuple[VatLine, ...]
    price_limit_adjustment: Price | None

    def to_ocpi(self) -> dict[str, Any]:
        """OCPI CDR fields this engine owns (Decimals kept), plus cost_breakdown and vat."""
        out: dict[str, Any] = {
            "currency": self.currency,
            "start_date_time": self.start_date_time,
            "end_date_time": self.end_date_time,
            "charging_periods": [
                {
                    "start_date_time": p.start_date_time,
                    "dimensions": [{"type": d.type, "volume": d.volume} for d in p.dimensions],
                    "tariff_id": p.tariff_id,
                }
                for p in self.charging_periods
            ],
            "total_cost": self.total_cost.to_ocpi(),
            "total_energy": self.total_energy,
            "total_time": self.total_time,
            "total_parking_time": self.total_parking_time,
        }
        for name in ("total_fixed_cost", "total_energy_cost", "total_time_cost"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.to_ocpi()
        if self.total_parking_cost is not None:
            out["total_parking_cost"] = self.total_parking_cost.to_ocpi()
        out["cost_breakdown"] = [
            {
                "dimension": line.dimension,
                "tariff_element": line.element_index,
                "quantity": line.quantity,
                "measured_quantity": line.measured_quantity,
                "unit": line.unit,
                "unit_price": line.unit_price,
                "amount": line.amount,
                "vat_rate": line.vat_rate,
            }
            for line in self.cost_breakdown
        ]
        out["vat"] = [{"rate": v.rate, "base": v.base, "amount": v.amount} for v in self.vat]
        if self.price_limit_adjustment is not None:
            out["price_limit_adjustment"] = self.price_limit_adjustment.to_ocpi()
        return out

    def to_json(self) -> str:
        return dumps(self.to_ocpi())


# --- the engine ----------------------------------------------------------------------------


def rate(tariff: Tariff | Mapping[str, Any], session: Session | Mapping[str, Any]) -> Cdr:
    """Price a session under a tariff and return the CDR with its cost breakdown.

    Accepts parsed objects (the fast path: parse a tariff once, reuse it) or raw dicts.
    Raises a :class:`BillingInputError` (a ValueError) for input that cannot be rated.
    """
    tariff = tariff if isinstance(tariff, Tariff) else parse_tariff(dict(tariff))
    session = session if isinstance(session, Session) else parse_session(session)
    compiled = tariff.compiled()
    _check_applicable(tariff, session)
    _check_measurements(compiled, session)
    walk = _walk(compiled, session, _cut_points(compiled, session))
    return _bill(tariff, session, walk)


def _check_applicable(tariff: Tariff, session: Session) -> None:
    start = session.start
    if tariff.start_date_time is not None and start < tariff.start_date_time:
        raise TariffNotApplicableError(
            f"tariff {tariff.id!r} only applies from {tariff.start_date_time.isoformat()};"
            f" the session started {start.isoformat()}"
        )
    if tariff.end_date_time is not None and start >= tariff.end_date_time:
        raise TariffNotApplicableError(
            f"tariff {tariff.id!r} ended {tariff.end_date_time.isoformat()};"
            f" the session started {start.isoformat()}"
        )


def _check_measurements(compiled: CompiledTariff, session: Session) -> None:
    """Power and current restrictions need the values while charging; when not charging, a
    missing value means nothing flows and is read as zero."""
    needed = [
        (name, attribute)
        for name, attribute, wanted in (
            ("power_w", "power_w", compiled.needs_power),
            ("current_a", "current_a", compiled.needs_current),
        )
        if wanted
    ]
    for number, sample in enumerate(session.samples[:-1], 1):
        for name, attribute in needed:
            if sample.state == CHARGING and getattr(sample, attribute) is None:
                raise InvalidSessionError(
                    f"sample {number}: {name} is missing, but tariff {compiled.tariff_id!r}"
                    f" prices by {name.split('_')[0]} while charging"
                )


def _cut_points(compiled: CompiledTariff, session: Session) -> list[Exact]:
    """Every instant at which an element in force may change."""
    samples = session.samples
    start, end = samples[0].at_us, samples[-1].at_us
    points: set[Exact] = {sample.at_us for sample in samples}
    if compiled.clock_minutes:
        zone = session.time_zone
        day = _utc(start).astimezone(zone).date() - timedelta(days=1)
        last_day = _utc(end).astimezone(zone).date() + timedelta(days=1)
        while day <= last_day:
            for minute in compiled.clock_minutes:
                instants = [
                    (_local(day, minute, zone, fold) - EPOCH) // ONE_MICROSECOND for fold in (0, 1)
                ]
                if instants[0] != instants[1]:
                    # the clock time is skipped or repeated by a DST change: the local clock
                    # jumps across the window boundary at the change itself
                    instants.append(_offset_change(zone, min(instants), max(instants)))
                points.update(at for at in instants if start < at < end)
            day += timedelta(days=1)
    for mark in compiled.duration_marks_us:
        if start + mark < end:
            points.add(start + mark)
    if compiled.energy_marks_wh:
        base = samples[0].energy_wh
        for mark in compiled.energy_marks_wh:
            target = base + mark
            for before, after in pairwise(samples):
                if before.energy_wh < target <= after.energy_wh:
                    points.add(_crossing(before, after, target))
                    break
    return sorted(points)


def _local(day: date, minute: int, zone: ZoneInfo, fold: int) -> datetime:
    hour, minute = divmod(minute, 60)
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone, fold=fold)


def _offset_change(zone: ZoneInfo, low_us: int, high_us: int) -> int:
    """The first microsecond in (low, high] carrying high's UTC offset (bisection)."""
    target = _utc(high_us).astimezone(zone).utcoffset()
    while high_us - low_us > 1:
        middle = (low_us + high_us) // 2
        if _utc(middle).astimezone(zone).utcoffset() == target:
            high_us = middle
        else:
            low_us = middle
    return high_us


def _crossing(before: Sample, after: Sample, energy: Exact) -> Exact:
    """When the linearly spread register reaches ``energy`` between two samples."""
    at = before.at_us + Fraction(energy - before.energy_wh) * (after.at_us - before.at_us) / (
        after.energy_wh - before.energy_wh
    )
    return at.numerator if at.denominator == 1 else at


def _energy_at(samples: tuple[Sample, ...], index: int, at: Exact) -> Exact:
    sample = samples[index]
    if at == sample.at_us:
        return sample.energy_wh
    following = samples[index + 1]
    if at == following.at_us:
        return following.energy_wh
    spread = Fraction(following.energy_wh - sample.energy_wh) * (at - sample.at_us)
    return sample.energy_wh + spread / (following.at_us - sample.at_us)


@dataclass(slots=True)
class _Period:
    start_us: Exact
    state: str
    energy: Component | None
    time: Component | None
    energy_wh: Exact = 0
    duration_us: Exact = 0
    powers: list[Exact] = field(default_factory=list)
    currents: list[Exact] = field(default_factory=list)


@dataclass(slots=True)
class _Walk:
    periods: list[_Period]
    flat: Component | None


def _first(
    elements: tuple[CompiledElement, ...],
    dimension: TariffDimensionType,
    clock: tuple[int, date] | None,
    energy_wh: Exact,
    duration_us: Exact,
    power_w: Exact,
    current_a: Exact,
) -> Component | None:
    for element in elements:
        if element.uses_clock and clock is not None and not element.clock_matches(*clock):
            continue
        if element.meter_matches(energy_wh, duration_us, power_w, current_a):
            return element.components[dimension]
    return None


def _walk(compiled: CompiledTariff, session: Session, points: list[Exact]) -> _Walk:
    """Price each piece between cut points by the elements matching at its start, merging
    consecutive pieces with the same state and elements into charging periods."""
    samples = session.samples
    zone = session.time_zone
    energy_elements = compiled.by_dimension[ENERGY]
    time_elements = compiled.by_dimension[TIME]
    parking_elements = compiled.by_dimension[PARKING_TIME]
    flat_elements = compiled.by_dimension[FLAT]
    flat: Component | None = None
    start_us = samples[0].at_us
    base_wh = samples[0].energy_wh
    periods: list[_Period] = []
    period: _Period | None = None
    index = 0
    energy_a = base_wh
    last_sample_in_period = -1
    for a, b in pairwise(points):
        while samples[index + 1].at_us <= a:
            index += 1
        sample = samples[index]
        energy_b = _energy_at(samples, index, b)
        clock = None
        if compiled.uses_clock:
            local = _utc(int(a)).astimezone(zone)
            us_of_day = (
                (local.hour * 60 + local.minute) * 60 + local.second
            ) * MICROS_PER_SECOND + local.microsecond
            clock = (us_of_day, local.date())
        consumed = energy_a - base_wh
        duration = a - start_us
        power = sample.power_w or 0
        current = sample.current_a or 0
        energy_c = _first(energy_elements, ENERGY, clock, consumed, duration, power, current)
        if sample.state == CHARGING:
            time_c = _first(time_elements, TIME, clock, consumed, duration, power, current)
        elif sample.state == PARKING:
            time_c = _first(
                parking_elements, PARKING_TIME, clock, consumed, duration, power, current
            )
        else:
            time_c = None
        if flat is None and flat_elements:
            flat = _first(flat_elements, FLAT, clock, consumed, duration, power, current)
        if (
            period is None
            or period.state != sample.state
            or period.energy is not energy_c
            or period.time is not time_c
        ):
            period = _Period(a, sample.state, energy_c, time_c)
            periods.append(period)
            last_sample_in_period = -1
        period.energy_wh += energy_b - energy_a
        period.duration_us += b - a
        if index != last_sample_in_period:
            last_sample_in_period = index
            if sample.power_w is not None:
                period.powers.append(sample.power_w)
            if sample.current_a is not None:
                period.currents.append(sample.current_a)
        energy_a = energy_b
    return _Walk(periods, flat)


@dataclass(slots=True)
class _Line:
    component: Component
    measured: Exact = 0
    billed: Exact = 0


def _bill(tariff: Tariff, session: Session, walk: _Walk) -> Cdr:
    lines: dict[int, _Line] = {}
    last_priced: dict[TariffDimensionType, Component] = {}
    for period in walk.periods:
        for component, volume in (
            (period.energy, period.energy_wh),
            (period.time, period.duration_us),
        ):
            if component is None or volume == 0:
                continue
            line = lines.setdefault(id(component), _Line(component))
            line.measured += volume
            last_priced[component.dimension] = component
    for line in lines.values():
        line.billed = line.measured
    for dimension, component in last_priced.items():
        # step_size counts Wh for ENERGY and seconds for the times
        step = component.step_size * (1 if dimension == ENERGY else MICROS_PER_SECOND)
        if step <= 0:
            continue
        total = sum(
            (ln.measured for ln in lines.values() if ln.component.dimension == dimension), 0
        )
        rounded_up = -(-total // step) * step
        lines[id(component)].billed += rounded_up - total

    order = {FLAT: 0, ENERGY: 1, TIME: 2, PARKING_TIME: 3}
    cost_lines: list[CostLine] = []
    if walk.flat is not None:
        cost_lines.append(_cost_line(walk.flat, 1, 1))
    for line in sorted(lines.values(), key=lambda ln: order[ln.component.dimension]):
        scale = WH_PER_KWH if line.component.dimension == ENERGY else MICROS_PER_HOUR
        cost_lines.append(
            _cost_line(
                line.component, Fraction(line.billed) / scale, Fraction(line.measured) / scale
            )
        )

    vat_lines = _vat(cost_lines)
    net = sum((line.amount for line in cost_lines), Decimal("0.00"))
    gross = net + sum((v.amount for v in vat_lines), Decimal("0.00"))
    total, adjustment = _apply_price_limits(tariff, net, gross)

    samples = session.samples
    parking_us = sum((p.duration_us for p in walk.periods if p.state == PARKING), 0)
    return Cdr(
        tariff_id=tariff.id,
        currency=tariff.currency,
        start_date_time=session.start,
        end_date_time=session.end,
        charging_periods=tuple(_cdr_period(p, tariff.id) for p in walk.periods),
        total_cost=total,
        total_fixed_cost=_subtotal(cost_lines, FLAT),
        total_energy=quantity(samples[-1].energy_wh - samples[0].energy_wh, WH_PER_KWH),
        total_energy_cost=_subtotal(cost_lines, ENERGY),
        total_time=quantity(samples[-1].at_us - samples[0].at_us, MICROS_PER_HOUR),
        total_time_cost=_subtotal(cost_lines, TIME),
        total_parking_time=quantity(parking_us, MICROS_PER_HOUR),
        total_parking_cost=_subtotal(cost_lines, PARKING_TIME),
        cost_breakdown=tuple(cost_lines),
        vat=vat_lines,
        price_limit_adjustment=adjustment,
    )


def _cost_line(component: Component, billed: Exact, measured: Exact) -> CostLine:
    return CostLine(
        dimension=component.dimension.value,
        element_index=component.element_index,
        quantity=quantity(billed),
        measured_quantity=quantity(measured),
        unit=UNIT_OF[component.dimension],
        unit_price=component.price,
        amount=round_money(billed * component.price_exact),
        vat_rate=component.vat,
    )


def _vat(lines: list[CostLine]) -> tuple[VatLine, ...]:
    """VAT per rate on the summed net lines, apportioned so the rates add up to the VAT total
    rounded once (largest remainder; ties go to the larger base, then the earlier rate)."""
    bases: dict[Decimal | None, Decimal] = {}
    for line in lines:
        bases[line.vat_rate] = bases.get(line.vat_rate, Decimal("0.00")) + line.amount
    exact = {
        rate: (Fraction(to_exact(base) * to_exact(rate), 100) if rate is not None else Fraction(0))
        for rate, base in bases.items()
    }
    cents = {rate: math.floor(Fraction(value) * 100) for rate, value in exact.items()}
    total_cents = int(round_money(sum(exact.values(), Fraction(0))) * 100)
    missing = total_cents - sum(cents.values())
    ranked = sorted(
        enumerate(bases),
        key=lambda item: (
            -(Fraction(exact[item[1]]) * 100 - cents[item[1]]),
            -bases[item[1]],
            item[0],
        ),
    )
    for _, rate in ranked[:missing]:
        cents[rate] += 1
    return tuple(
        VatLine(rate=rate, base=base, amount=Decimal(cents[rate]).scaleb(-2))
        for rate, base in bases.items()
    )


def _apply_price_limits(tariff: Tariff, net: Decimal, gross: Decimal) -> tuple[Price, Price | None]:
    """Clamp excl. and incl. VAT totals independently. Bounds finer than a cent are taken to
    the cent inside the range, so the rounded total still honours them."""
    low, high = tariff.min_price, tariff.max_price
    excl, incl = net, gross
    if low is not None and excl < low.excl_vat:
        excl = _cent_up(low.excl_vat)
        if low.incl_vat is None:
            incl += excl - net
    if high is not None and excl > high.excl_vat:
        excl = _cent_down(high.excl_vat)
        if high.incl_vat is None:
            incl += excl - net
    if low is not None and low.incl_vat is not None and incl < low.incl_vat:
        incl = _cent_up(low.incl_vat)
    if high is not None and high.incl_vat is not None and incl > high.incl_vat:
        incl = _cent_down(high.incl_vat)
    adjustment = None
    if excl != net or incl != gross:
        adjustment = Price(excl_vat=excl - net, incl_vat=incl - gross)
    return Price(excl_vat=excl, incl_vat=incl), adjustment


def _cent_up(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_CEILING)


def _cent_down(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_FLOOR)


def _subtotal(lines: list[CostLine], dimension: TariffDimensionType) -> Price | None:
    """Informational per-dimension total; incl. VAT rounded from the exact line values, so it
    may differ by a cent from the apportioned VAT of the invoice total."""
    chosen = [line for line in lines if line.dimension == dimension]
    if not chosen:
        return None
    excl = sum((line.amount for line in chosen), Decimal("0.00"))
    gross = sum(
        (
            to_exact(line.amount)
            * (1 + (to_exact(line.vat_rate) if line.vat_rate else 0) / Fraction(100))
            for line in chosen
        ),
        Fraction(0),
    )
    return Price(excl_vat=excl, incl_vat=round_money(gross))


def _cdr_period(period: _Period, tariff_id: str) -> ChargingPeriod:
    dimensions = [CdrDimension("ENERGY", quantity(period.energy_wh, WH_PER_KWH))]
    hours = quantity(period.duration_us, MICROS_PER_HOUR)
    if period.state == CHARGING:
        dimensions.append(CdrDimension("TIME", hours))
    elif period.state == PARKING:
        dimensions.append(CdrDimension("PARKING_TIME", hours))
    if period.powers:
        dimensions.append(CdrDimension("MIN_POWER", quantity(min(period.powers), 1000)))
        dimensions.append(CdrDimension("MAX_POWER", quantity(max(period.powers), 1000)))
    if period.currents:
        dimensions.append(CdrDimension("MIN_CURRENT", quantity(min(period.currents))))
        dimensions.append(CdrDimension("MAX_CURRENT", quantity(max(period.currents))))
    return ChargingPeriod(
        start_date_time=_utc(int(period.start_us)),
        dimensions=tuple(dimensions),
        tariff_id=tariff_id,
    )


def _utc(at_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=at_us)


def _show(value: Exact) -> str:
    return str(value) if isinstance(value, int) else str(round_half_up(value, 3))
