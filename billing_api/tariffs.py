"""OCPI 2.2.1 Tariff objects: parsing, export and the compiled form the rating engine uses.

Models follow the Tariffs module (mod_tariffs, "Object description" and "Data types") field by
field. Unknown fields are tolerated on the Tariff itself (later OCPI versions add some), but not
inside elements, price components or restrictions: a misspelt restriction silently ignored would
make an element apply everywhere and bill the wrong price.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from billing_api.money import Exact, dumps, ratio, to_exact, to_jsonable


class BillingInputError(ValueError):
    """Input to billing (a tariff or a metered session) that cannot be rated as given."""


class InvalidTariffError(BillingInputError):
    """A tariff that is not a valid OCPI 2.2.1 Tariff object."""


class TariffDimensionType(StrEnum):
    ENERGY = "ENERGY"
    FLAT = "FLAT"
    PARKING_TIME = "PARKING_TIME"
    TIME = "TIME"


class DayOfWeek(StrEnum):
    MONDAY = "MONDAY"
    TUESDAY = "TUESDAY"
    WEDNESDAY = "WEDNESDAY"
    THURSDAY = "THURSDAY"
    FRIDAY = "FRIDAY"
    SATURDAY = "SATURDAY"
    SUNDAY = "SUNDAY"


class TariffType(StrEnum):
    AD_HOC_PAYMENT = "AD_HOC_PAYMENT"
    PROFILE_CHEAP = "PROFILE_CHEAP"
    PROFILE_FAST = "PROFILE_FAST"
    PROFILE_GREEN = "PROFILE_GREEN"
    REGULAR = "REGULAR"


class ReservationRestrictionType(StrEnum):
    RESERVATION = "RESERVATION"
    RESERVATION_EXPIRES = "RESERVATION_EXPIRES"


NonNegative = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
ClockTime = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
LocalDate = Annotated[
    str, Field(pattern=r"^[12][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")
]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Price(_Strict):
    excl_vat: NonNegative
    incl_vat: NonNegative | None = None


class DisplayText(_Strict):
    language: Annotated[str, Field(min_length=2, max_length=2)]
    text: Annotated[str, Field(max_length=512)]


class PriceComponent(_Strict):
    type: TariffDimensionType
    price: NonNegative
    vat: NonNegative | None = None
    step_size: Annotated[int, Field(ge=0)]


class TariffRestrictions(_Strict):
    start_time: ClockTime | None = None
    end_time: ClockTime | None = None
    start_date: LocalDate | None = None
    end_date: LocalDate | None = None
    min_kwh: NonNegative | None = None
    max_kwh: NonNegative | None = None
    min_current: NonNegative | None = None
    max_current: NonNegative | None = None
    min_power: NonNegative | None = None
    max_power: NonNegative | None = None
    min_duration: Annotated[int, Field(ge=0)] | None = None
    max_duration: Annotated[int, Field(ge=0)] | None = None
    day_of_week: list[DayOfWeek] = Field(default_factory=list)
    reservation: ReservationRestrictionType | None = None

    @field_validator("start_date", "end_date")
    @classmethod
    def _real_calendar_date(cls, value: str | None) -> str | None:
        if value is not None:
            date.fromisoformat(value)
        return value


RESERVATION_DIMENSIONS = frozenset({TariffDimensionType.FLAT, TariffDimensionType.TIME})


class TariffElement(_Strict):
    price_components: Annotated[list[PriceComponent], Field(min_length=1)]
    restrictions: TariffRestrictions | None = None

    @model_validator(mode="after")
    def _reservation_prices_flat_and_time_only(self) -> TariffElement:
        # "A reservation can only have: FLAT and TIME TariffDimensions" (TariffRestrictions,
        # reservation): an ENERGY or PARKING_TIME price there could never be billed, so an
        # import carrying one is a mistake worth refusing rather than ignoring.
        if self.restrictions is not None and self.restrictions.reservation is not None:
            others = sorted(
                {pc.type.value for pc in self.price_components} - RESERVATION_DIMENSIONS
            )
            if others:
                raise ValueError(
                    f"an element with a reservation restriction prices only FLAT and TIME,"
                    f" not {', '.join(others)}"
                )
        return self


class EnergySource(_Strict):
    source: str
    percentage: Annotated[Decimal, Field(ge=0, le=100)]


class EnvironmentalImpact(_Strict):
    category: str
    amount: NonNegative


class EnergyMix(_Strict):
    is_green_energy: bool
    energy_sources: list[EnergySource] = Field(default_factory=list)
    environ_impact: list[EnvironmentalImpact] = Field(default_factory=list)
    supplier_name: str | None = None
    energy_product_name: str | None = None


class Tariff(BaseModel):
    """An OCPI 2.2.1 Tariff. Build it with :func:`parse_tariff`; export with :meth:`to_ocpi`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    country_code: Annotated[str, Field(min_length=2, max_length=2)] | None = None
    party_id: Annotated[str, Field(min_length=3, max_length=3)] | None = None
    id: Annotated[str, Field(min_length=1, max_length=36)]
    currency: str
    type: TariffType | None = None
    tariff_alt_text: list[DisplayText] = Field(default_factory=list)
    tariff_alt_url: str | None = None
    min_price: Price | None = None
    max_price: Price | None = None
    elements: Annotated[list[TariffElement], Field(min_length=1)]
    start_date_time: AwareDatetime | None = None
    end_date_time: AwareDatetime | None = None
    energy_mix: EnergyMix | None = None
    last_updated: AwareDatetime

    _compiled: CompiledTariff | None = PrivateAttr(default=None)

    @field_validator("currency")
    @classmethod
    def _iso_4217(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z]{3}", value):
            raise ValueError(
                f"currency must be an ISO 4217 code of three capital letters such as SEK or EUR,"
                f" not {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _price_bounds_in_order(self) -> Tariff:
        low, high = self.min_price, self.max_price
        if low is not None and high is not None:
            if low.excl_vat > high.excl_vat or (
                low.incl_vat is not None
                and high.incl_vat is not None
                and low.incl_vat > high.incl_vat
            ):
                raise ValueError("min_price is higher than max_price")
        if (
            self.start_date_time is not None
            and self.end_date_time is not None
            and self.start_date_time >= self.end_date_time
        ):
            raise ValueError("start_date_time must be before end_date_time")
        return self

    def to_ocpi(self) -> dict[str, Any]:
        """The OCPI JSON shape as a dict; prices stay Decimal (write it with :func:`dumps`)."""
        return to_jsonable(self.model_dump(exclude_none=True, exclude_defaults=False))

    def to_json(self) -> str:
        """OCPI JSON text with prices written as JSON numbers, exactly as held."""
        return dumps(self.to_ocpi())

    def __eq__(self, other: object) -> bool:
        # the compiled cache is derived state and must not make equal tariffs unequal
        if not isinstance(other, Tariff):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # holds lists; equality is by value

    def compiled(self) -> CompiledTariff:
        """The restriction predicates in plain numbers, built once per tariff object."""
        # read the private slot directly: pydantic's lookup of private attributes costs
        # 2.5 µs a call, a few percent of rating a session
        private = self.__pydantic_private__
        compiled = private.get("_compiled") if private is not None else None
        if compiled is None:
            compiled = compile_tariff(self)
            self._compiled = compiled
        return compiled


def parse_tariff(data: Tariff | dict[str, Any] | str | bytes) -> Tariff:
    """Read an OCPI Tariff from a dict or JSON text; raise :class:`InvalidTariffError`.

    JSON text is read with Decimal numbers so that prices such as 0.1 stay exact.
    """
    if isinstance(data, Tariff):
        return data
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise InvalidTariffError(f"tariff is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidTariffError(f"a tariff must be a JSON object, not {type(data).__name__}")
    try:
        return Tariff.model_validate(data)
    except ValidationError as exc:
        raise InvalidTariffError(_describe(exc, data)) from None


def _describe(exc: ValidationError, data: dict[str, Any]) -> str:
    name = data.get("id", "?")
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "tariff"
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return f"tariff {name!r} is not a valid OCPI tariff: " + "; ".join(problems)


# --- compiled form -------------------------------------------------------------------------

WEEKDAY_NUMBER = {day: number for number, day in enumerate(DayOfWeek)}  # date.weekday() order
MICROS_PER_SECOND = 1_000_000


@dataclass(frozen=True, slots=True)
class Component:
    """One price component, with the numbers the engine multiplies by."""

    dimension: TariffDimensionType
    element_index: int
    price: Decimal
    price_exact: Exact
    vat: Decimal | None
    step_size: int
    price_ratio: tuple[int, int]  # price_exact as (numerator, denominator)
    vat_ratio: tuple[int, int]  # percent; (0, 1) when no VAT applies
    # Set on the components of reservation elements: they price the reservation, not charging.
    reservation: ReservationRestrictionType | None = None


def _minute_of_day(clock: str | None) -> int | None:
    if clock is None:
        return None
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def _exact(value: Decimal | None, scale: int = 1) -> Exact | None:
    return None if value is None else to_exact(value) * scale


@dataclass(frozen=True, slots=True)
class CompiledElement:
    """A tariff element's restrictions as plain comparisons (units: µs of day, Wh, W, A, µs)."""

    index: int
    components: dict[TariffDimensionType, Component]
    window_start_us: int | None
    window_end_us: int | None
    start_date: date | None
    end_date: date | None
    weekdays: frozenset[int] | None
    min_wh: Exact | None
    max_wh: Exact | None
    min_current: Exact | None
    max_current: Exact | None
    min_power_w: Exact | None
    max_power_w: Exact | None
    min_duration_us: int | None
    max_duration_us: int | None
    reservation: ReservationRestrictionType | None
    uses_clock: bool

    @property
    def for_reservation(self) -> bool:
        return self.reservation is not None

    @classmethod
    def build(cls, index: int, element: TariffElement) -> CompiledElement:
        components: dict[TariffDimensionType, Component] = {}
        reservation = element.restrictions.reservation if element.restrictions else None
        for pc in element.price_components:
            # An element listing the same dimension twice is malformed; the first one wins,
            # mirroring the spec's "first element with that dimension" rule.
            price = to_exact(pc.price)
            vat = ratio(to_exact(pc.vat)) if pc.vat else (0, 1)
            components.setdefault(
                pc.type,
                Component(
                    pc.type, index, pc.price, price, pc.vat, pc.step_size, ratio(price), vat,
                    reservation,
                ),
            )
        r = element.restrictions or TariffRestrictions()
        start_minute, end_minute = _minute_of_day(r.start_time), _minute_of_day(r.end_time)
        minute_us = 60 * MICROS_PER_SECOND
        uses_clock = bool(r.start_time or r.end_time or r.start_date or r.end_date or r.day_of_week)
        return cls(
            index=index,
            components=components,
            window_start_us=None if start_minute is None else start_minute * minute_us,
            window_end_us=None if end_minute is None else end_minute * minute_us,
            start_date=date.fromisoformat(r.start_date) if r.start_date else None,
            end_date=date.fromisoformat(r.end_date) if r.end_date else None,
            weekdays=frozenset(WEEKDAY_NUMBER[d] for d in r.day_of_week) or None,
            min_wh=_exact(r.min_kwh, 1000),
            max_wh=_exact(r.max_kwh, 1000),
            min_current=_exact(r.min_current),
            max_current=_exact(r.max_current),
            min_power_w=_exact(r.min_power, 1000),
            max_power_w=_exact(r.max_power, 1000),
            min_duration_us=None if r.min_duration is None else r.min_duration * MICROS_PER_SECOND,
            max_duration_us=None if r.max_duration is None else r.max_duration * MICROS_PER_SECOND,
            reservation=r.reservation,
            uses_clock=uses_clock,
        )

    def clock_matches(self, us_of_day: int, day: date) -> bool:
        """Time-of-day window (end exclusive, wrapping midnight when end < start), dates
        (end exclusive) and weekdays, all in the site's local time."""
        start, end = self.window_start_us, self.window_end_us
        if start is not None and end is not None:
            if start < end:
                if not start <= us_of_day < end:
                    return False
            elif start > end and end <= us_of_day < start:
                return False
        elif start is not None and us_of_day < start:
            return False
        elif end is not None and us_of_day >= end:
            return False
        if self.start_date is not None and day < self.start_date:
            return False
        if self.end_date is not None and day >= self.end_date:
            return False
        return self.weekdays is None or day.weekday() in self.weekdays

    def meter_matches(
        self, energy_wh: Exact, duration_us: Exact, power_w: Exact, current_a: Exact
    ) -> bool:
        """Energy, duration, power and current restrictions: minimums inclusive, maximums
        exclusive, so adjacent elements (max_kwh 1 / min_kwh 1) never both or neither apply."""
        if self.min_wh is not None and energy_wh < self.min_wh:
            return False
        if self.max_wh is not None and energy_wh >= self.max_wh:
            return False
        if self.min_duration_us is not None and duration_us < self.min_duration_us:
            return False
        if self.max_duration_us is not None and duration_us >= self.max_duration_us:
            return False
        if self.min_power_w is not None and power_w < self.min_power_w:
            return False
        if self.max_power_w is not None and power_w >= self.max_power_w:
            return False
        if self.min_current is not None and current_a < self.min_current:
            return False
        return self.max_current is None or current_a < self.max_current


@dataclass(frozen=True, slots=True)
class CompiledTariff:
    """Per dimension, the elements that price it, in tariff order; plus what the engine must
    split the timeline at (clock minutes, energy and duration thresholds)."""

    tariff_id: str
    valid_from_us: int | None  # start_date_time, µs since the epoch
    valid_until_us: int | None  # end_date_time, exclusive
    by_dimension: dict[TariffDimensionType, tuple[CompiledElement, ...]]
    clock_minutes: tuple[int, ...]
    energy_marks_wh: tuple[Exact, ...]
    duration_marks_us: tuple[int, ...]
    uses_clock: bool
    uses_energy: bool
    needs_power: bool
    needs_current: bool
    # Reservation pricing, kept apart so sessions without a reservation never look at it:
    # per dimension (FLAT, TIME) the RESERVATION elements, and the elements an expired
    # reservation is priced with (RESERVATION_EXPIRES first, then RESERVATION), in order.
    reservation: dict[TariffDimensionType, tuple[CompiledElement, ...]]
    reservation_expired: dict[TariffDimensionType, tuple[CompiledElement, ...]]
    reservation_clock_minutes: tuple[int, ...]
    reservation_duration_marks_us: tuple[int, ...]


def compile_tariff(tariff: Tariff) -> CompiledTariff:
    """Precompute restriction predicates. Reservation elements are compiled apart from the
    charging ones: they price the time before charging starts (see the rating module)."""
    elements = [
        CompiledElement.build(index, element) for index, element in enumerate(tariff.elements)
    ]
    charging = [e for e in elements if not e.for_reservation]
    by_dimension = {
        dimension: tuple(e for e in charging if dimension in e.components)
        for dimension in TariffDimensionType
    }
    minutes = _clock_minutes(charging)
    energy_marks = {m for e in charging for m in (e.min_wh, e.max_wh) if m is not None}
    duration_marks = _duration_marks(charging)
    reserving = [e for e in elements if e.reservation is ReservationRestrictionType.RESERVATION]
    expiring = [
        e for e in elements if e.reservation is ReservationRestrictionType.RESERVATION_EXPIRES
    ]
    return CompiledTariff(
        tariff_id=tariff.id,
        valid_from_us=_epoch_us(tariff.start_date_time),
        valid_until_us=_epoch_us(tariff.end_date_time),
        by_dimension=by_dimension,
        clock_minutes=tuple(sorted(minutes)),
        energy_marks_wh=tuple(sorted(energy_marks)),
        duration_marks_us=tuple(sorted(m for m in duration_marks if m > 0)),
        uses_clock=any(e.uses_clock for e in charging),
        uses_energy=any(e.min_wh is not None or e.max_wh is not None for e in charging),
        needs_power=any(e.min_power_w is not None or e.max_power_w is not None for e in charging),
        needs_current=any(e.min_current is not None or e.max_current is not None for e in charging),
        reservation={
            dimension: tuple(e for e in reserving if dimension in e.components)
            for dimension in RESERVATION_DIMENSIONS
        },
        # OCPI 2.2.1 ReservationRestrictionType note: with both kinds pricing TIME, an expired
        # reservation's time is priced by RESERVATION_EXPIRES; the tariff order decides within
        # each kind, as everywhere else.
        reservation_expired={
            dimension: tuple(e for e in expiring + reserving if dimension in e.components)
            for dimension in RESERVATION_DIMENSIONS
        },
        reservation_clock_minutes=tuple(sorted(_clock_minutes(reserving + expiring))),
        reservation_duration_marks_us=tuple(
            sorted(m for m in _duration_marks(reserving + expiring) if m > 0)
        ),
    )


def _clock_minutes(elements: list[CompiledElement]) -> set[int]:
    """The minutes of the local day at which the elements' clock restrictions may change."""
    minutes: set[int] = set()
    for e in elements:
        for boundary in (e.window_start_us, e.window_end_us):
            if boundary is not None:
                minutes.add(boundary // (60 * MICROS_PER_SECOND))
        if e.uses_clock:
            minutes.add(0)  # dates, weekdays and one-sided windows change at midnight
    return minutes


def _duration_marks(elements: list[CompiledElement]) -> set[int]:
    return {m for e in elements for m in (e.min_duration_us, e.max_duration_us) if m is not None}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_us(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - _EPOCH) // timedelta(microseconds=1)
