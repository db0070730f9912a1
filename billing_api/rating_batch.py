"""Rate many sessions under one tariff at once, with numpy over all their timelines.

:func:`rate_batch` gives, for each station report, what billing stores of a rated session:
start and end, the totals excl. and incl. VAT in öre and the cost lines (as
``invoicing.cost_lines_of`` reads them from the CDR), the same values :func:`rating.rate`
and :func:`rating.rate_reference` give, exactly. It does not build the OCPI CDR (charging
periods and their dimensions); a session whose CDR is wanted is rated with ``rate``.

How, for the tariff shapes that are common (ENERGY, TIME, PARKING_TIME and FLAT components
with step sizes; time-of-day, date, weekday and duration restrictions; one VAT rate; min and
max price):

* Reading: the same checks as the engine's reader (``rating._read_columns``), made once over
  all samples of the batch, a column at a time; timestamps in the fixed-width form are read
  from their characters with numpy (any other form: as the engine reads them).
* The elements in force depend only on the local-clock stretch (between two consecutive
  clock boundaries of the tariff, ``rating._clock_instants``), the duration stretch (between
  two duration thresholds) and the state (charging, parking, idle). They are looked up once
  per combination with the engine's own predicates into small tables.
* Every timeline is cut at its samples, the clock boundaries and the duration thresholds
  inside it, all sessions at once (one sort). Consecutive pieces in one sample interval under
  one energy component are one run; a run's energy is ``ΔE x run / interval``: an integer
  part and a remainder, both int64, the remainder non-zero only where a component changes
  inside an interval. Volumes are summed per session and component with ``reduceat``.
* Money (step_size once per dimension on the component last in force with volume, each line
  rounded half up to the öre, VAT once on the sum, the price limits): in int64 over all
  sessions at once where every volume is whole and no product can overflow; otherwise in
  Python integers, session by session, with the volume as an exact ratio. Rounding never
  sees a float, and results are the engine's to the öre and to the digit.

Anything else goes through ``rating.rate`` one by one and is counted (``BatchResult.exact``,
with the reasons): a tariff with kWh, power or current restrictions or several VAT rates; a
report not in the usual shape, with a reservation, or invalid (``rate`` then raises and the
error is the session's result); a session the tariff is not valid for; a total that a
min_price or max_price moves; numbers too large for int64.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import chain
from operator import add, itemgetter
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from billing_api.money import round_ratio_to_cents
from billing_api.rating import (
    _HOURS_US,
    _REST_US,
    _VOLUME_DIMENSIONS,
    CHARGING,
    EPOCH,
    EPOCH_ORDINAL,
    LINE_ORDER,
    MICROS_PER_DAY,
    PARKING,
    SAMPLE_FIELDS,
    STATE_OF_STATUS,
    UNIT_OF,
    VOLUME_PER_STEP,
    WH_PER_KWH,
    Cdr,
    _clock_instants,
    _epoch_us,
    _flat_line,
    _local_clock,
    _read_session,
    _utc,
    rate,
)
from billing_api.tariffs import (
    BillingInputError,
    CompiledTariff,
    Component,
    Tariff,
    TariffDimensionType,
    parse_tariff,
)

ENERGY = TariffDimensionType.ENERGY
TIME = TariffDimensionType.TIME
PARKING_TIME = TariffDimensionType.PARKING_TIME
FLAT = TariffDimensionType.FLAT
STATE_CODE = {CHARGING: 0, PARKING: 1}
IDLE = 2  # every other state: not priced by time
NEVER = np.iinfo(np.int64).max
# A piece's energy numerator is ΔE (Wh) x piece length (µs); beyond this, int64 could
# overflow, and the session goes through the exact path.
SAFE_PRODUCT = 2**62
KNOWN_LINES = 20_000  # cost lines kept per component for reuse


class RatedLine(NamedTuple):
    """A cost line as billing stores it (``invoicing.cost_lines_of``)."""

    dimension: str
    quantity: Decimal
    unit: str
    unit_price: Decimal
    net_ore: int
    vat_rate: Decimal | None


class Rated(NamedTuple):
    """What billing stores of a rated session."""

    start: datetime
    end: datetime
    total_excl_vat_ore: int
    total_incl_vat_ore: int
    lines: tuple[RatedLine, ...]
    exact_path: bool  # rated one by one by rating.rate


class BatchResult(NamedTuple):
    """One result per report, in order: a :class:`Rated`, or the error that the report
    cannot be rated (a :class:`BillingInputError`, as ``rate`` raises it)."""

    results: list[Rated | BillingInputError]
    exact: int  # sessions that went through rating.rate
    reasons: Counter[str]  # why, by reason


def rated_from_cdr(cdr: Cdr, *, exact_path: bool = True) -> Rated:
    """What billing stores of a CDR: the same reading as the service's ``_store_cdr``."""
    from billing_api.invoicing import cost_lines_of

    return Rated(
        cdr.start_date_time,
        cdr.end_date_time,
        _whole_ore(cdr.total_cost.excl_vat),
        _whole_ore(cdr.total_cost.incl_vat),
        tuple(RatedLine(**line) for line in cost_lines_of(cdr.to_ocpi())),
        exact_path,
    )


def _whole_ore(amount: Decimal) -> int:
    value = amount * 100
    if value != value.to_integral_value():
        raise BillingInputError(f"amount {amount} is not a whole number of öre")
    return int(value)


def rate_batch(
    tariff: Tariff | Mapping[str, Any], reports: Sequence[Mapping[str, Any]]
) -> BatchResult:
    """Rate ``reports`` (station reports as ``rate`` takes them) under ``tariff``."""
    tariff = tariff if isinstance(tariff, Tariff) else parse_tariff(dict(tariff))
    results: list[Rated | BillingInputError | None] = [None] * len(reports)
    reasons: Counter[str] = Counter()
    exact: list[int] = []
    plan = _Plan.of(tariff)
    if isinstance(plan, str):
        reasons[plan] += len(reports)
        exact.extend(range(len(reports)))
    else:
        for zone, (indices, counts, columns) in _read(reports, exact, reasons).items():
            _rate_group(plan, zone, indices, counts, columns, results, exact, reasons)
    for index in exact:
        try:
            results[index] = rated_from_cdr(rate(tariff, reports[index]))
        except BillingInputError as exc:
            results[index] = exc
    return BatchResult(results, len(exact), reasons)  # type: ignore[arg-type]


_FIELD_GETTERS = [itemgetter(name) for name in SAMPLE_FIELDS]
_PREFIX = itemgetter(slice(None, 14))  # the keys of the engine's timestamp caches
_SUFFIX = itemgetter(slice(14, None))
# status: its state's code; the same statuses as the engine's STATE_OF_STATUS
CODE_OF_STATUS = {status: STATE_CODE.get(state, IDLE) for status, state in STATE_OF_STATUS.items()}
_Read = tuple[list[int], list[int], tuple[Sequence[Any], ...]]


def _read(
    reports: Sequence[Mapping[str, Any]], exact: list[int], reasons: Counter[str]
) -> dict[Any, _Read]:
    """The reports' samples as columns laid end to end, per time zone: (report indices,
    samples per report, (timestamps µs, energies, state codes)). The same checks as the
    engine's reader (``rating._read_columns``), made once over all samples of the batch
    instead of once per report; when any sample is unusual, each report is read by that
    reader instead. Reports it would not read go to ``exact``."""
    indices: list[int] = []
    zones: list[Any] = []
    raws: list[list[Any]] = []
    for index, report in enumerate(reports):
        read = _zone_and_samples(report)
        if read is None:
            exact.append(index)
            reasons[NOT_USUAL] += 1
        else:
            indices.append(index)
            zones.append(read[0])
            raws.append(read[1])
    counts = list(map(len, raws))
    columns = _columns(list(chain.from_iterable(raws)))
    if columns is None:  # something unusual somewhere: report by report
        return _read_one_by_one(reports, indices, exact, reasons)
    if len(set(zones)) == 1:
        return {zones[0]: (indices, counts, columns)}
    groups: dict[Any, _Read] = {}
    first = 0
    for index, zone, count in zip(indices, zones, counts, strict=True):
        group = groups.get(zone)
        if group is None:
            group = groups[zone] = ([], [], ([], [], []))
        group[0].append(index)
        group[1].append(count)
        for kept, column in zip(group[2], columns, strict=True):
            kept.extend(column[first:first + count])  # type: ignore[attr-defined]
        first += count
    return groups


NOT_USUAL = "report not in the usual shape, with a reservation, or invalid"
_ZONES: dict[str, ZoneInfo] = {}


def _zone_and_samples(report: object) -> tuple[ZoneInfo, list[Any]] | None:
    if type(report) is not dict or report.get("reservation") is not None:
        return None
    name, raw = report.get("time_zone"), report.get("samples")
    if type(name) is not str or type(raw) is not list or len(raw) < 2:
        return None
    zone = _ZONES.get(name)
    if zone is None:
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            return None
        if len(_ZONES) >= 1_000:
            _ZONES.clear()
        _ZONES[name] = zone
    return zone, raw


def _columns(samples: list[Any]) -> tuple[Sequence[int], Sequence[int], Sequence[int]] | None:
    """Timestamps (µs), energies and state codes of samples in the common shape; None when
    one is not (order is checked per report later)."""
    if set(map(type, samples)) != {dict}:
        return None
    try:  # a column at a time: no tuple per sample
        stamps, energies, powers, currents, statuses = [
            list(map(field, samples)) for field in _FIELD_GETTERS
        ]
    except KeyError:  # an optional field left out
        return None
    if (
        set(map(type, stamps)) != {str}
        or set(map(type, energies)) != {int}
        or not set(map(type, powers)) <= {int, type(None)}
        or not set(map(type, currents)) <= {int, type(None)}
        or min(filter(None, powers), default=0) < 0
        or min(filter(None, currents), default=0) < 0
        or set(map(type, statuses)) != {str}
        or not set(statuses) <= CODE_OF_STATUS.keys()
    ):
        return None
    times: Sequence[int | None] | np.ndarray | None = _fixed_width_us(stamps)
    if times is None:  # not all in the fixed-width form: as the engine reads them
        try:
            times = list(
                map(add, map(_HOURS_US.__getitem__, map(_PREFIX, stamps)),
                    map(_REST_US.__getitem__, map(_SUFFIX, stamps)))
            )
        except KeyError:  # a part not cached yet, or not in the fixed-width form
            times = list(map(_epoch_us, stamps))
            if None in times:
                return None
    return times, energies, list(map(CODE_OF_STATUS.__getitem__, statuses))  # type: ignore[return-value]


def _display(numerator: int, denominator: int) -> Decimal:
    """``money.quantity`` of a non-negative ratio: half up to 6 decimals, trailing zeros
    trimmed down to 3."""
    digits = (2 * numerator * 1_000_000 + denominator) // (2 * denominator)
    places = 6
    while places > 3 and digits % 10 == 0:
        digits //= 10
        places -= 1
    return Decimal(digits).scaleb(-places)


def _pair_values() -> np.ndarray:
    """For each two bytes read as a little-endian uint16: the two-digit number they spell
    in ASCII, or -1."""
    table = np.full(1 << 16, -1, dtype=np.int64)
    for tens in range(10):
        for ones in range(10):
            table[(ord("0") + tens) | (ord("0") + ones) << 8] = tens * 10 + ones
    return table


_PAIRS = _pair_values()
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _fixed_width_us(stamps: Sequence[str]) -> np.ndarray | None:
    """µs since the epoch of timestamps all written ``YYYY-MM-DDTHH:MM:SS`` plus ``Z`` or
    ``+HH:MM``/``-HH:MM``, read as numbers from their characters; None when any is not
    exactly that (with a valid date, hour < 24, minute and second < 60, offset < 24 h): the
    caller then reads them as the engine does. Those it reads, ``datetime.fromisoformat``
    reads to the same instant."""
    count = len(stamps)
    lengths = set(map(len, stamps))
    if not lengths <= {20, 25}:
        return None
    try:
        raw = np.array(stamps, dtype="S25")
    except UnicodeEncodeError:  # not ASCII
        return None
    chars = raw.view(np.uint8).reshape(count, 25)

    def pair(at: int) -> np.ndarray:  # the number the characters at, at + 1 spell, or -1
        return _PAIRS[np.ndarray((count,), "<u2", raw, at, (25,))]

    century, year, month, day = pair(0), pair(2), pair(5), pair(8)
    hour, minute, second = pair(11), pair(14), pair(17)
    if len(lengths) > 1:
        zulu = np.fromiter(map(len, stamps), np.int64, count) == 20
    else:
        zulu = np.full(count, 20 in lengths)
    if (
        (np.minimum(np.minimum(century, year), np.minimum(month, day)) < 0).any()
        or (np.minimum(np.minimum(hour, minute), second) < 0).any()
        or (chars[:, [4, 7]] != ord("-")).any()
        or (chars[:, 10] != ord("T")).any()
        or (chars[:, [13, 16]] != ord(":")).any()
        or ((chars[:, 19] == ord("Z")) != zulu).any()
    ):
        return None
    year += century * 100
    if (
        (year < 1).any() or (month < 1).any() or (month > 12).any() or (day < 1).any()
        or (hour >= 24).any() or (minute >= 60).any() or (second >= 60).any()
    ):
        return None
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    if (day > _DAYS_IN_MONTH[month] + (leap & (month == 2))).any():
        return None
    # days since 1970-01-01 of the civil date (H. Hinnant's days_from_civil)
    y = year - (month <= 2)
    era = y // 400
    of_era = y - era * 400
    of_year = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    days = era * 146097 + of_era * 365 + of_era // 4 - of_era // 100 + of_year - 719468
    seconds = ((days * 24 + hour) * 60 + minute) * 60 + second
    if not zulu.all():
        offset = ~zulu
        sign = chars[offset, 19]
        hours, minutes = pair(20)[offset], pair(23)[offset]
        if (
            ((sign != ord("+")) & (sign != ord("-"))).any()
            or (chars[offset, 22] != ord(":")).any()
            or (np.minimum(hours, minutes) < 0).any()
            or (hours >= 24).any()
            or (minutes >= 60).any()
        ):
            return None
        seconds[offset] -= np.where(sign == ord("+"), 60, -60) * (hours * 60 + minutes)
    return seconds * 1_000_000


def _read_one_by_one(
    reports: Sequence[Mapping[str, Any]], indices: list[int], exact: list[int],
    reasons: Counter[str],
) -> dict[Any, _Read]:
    groups: dict[Any, _Read] = {}
    for index in indices:
        read = _read_session(reports[index])
        if read is None:
            exact.append(index)
            reasons[NOT_USUAL] += 1
            continue
        zone, columns = read
        group = groups.get(zone)
        if group is None:
            group = groups[zone] = ([], [], ([], [], []))
        group[0].append(index)
        group[1].append(len(columns.times))
        group[2][0].extend(columns.times)  # type: ignore[attr-defined]
        group[2][1].extend(columns.energies)  # type: ignore[attr-defined]
        group[2][2].extend(CODE_OF_STATUS[status] for status in columns.statuses)  # type: ignore[attr-defined]
    return groups


class _Plan:
    """The tariff as the batch path needs it: its volume components numbered, per-component
    constants, and the limits in öre. Built only for shapes the batch path rates."""

    def __init__(self, tariff: Tariff, compiled: CompiledTariff) -> None:
        self.tariff, self.compiled = tariff, compiled
        self.components: list[Component] = []
        self.number: dict[int, int] = {}  # id(component): its number
        for dimension in (ENERGY, TIME, PARKING_TIME, FLAT):
            for element in compiled.by_dimension[dimension]:
                component = element.components[dimension]
                if id(component) not in self.number:
                    self.number[id(component)] = len(self.components)
                    self.components.append(component)
        self.dimension_code = np.array(
            [LINE_ORDER[c.dimension] for c in self.components] or [0], dtype=np.int8
        )
        self.marks = np.array(compiled.duration_marks_us, dtype=np.int64)
        vats = {c.vat_ratio for c in self.components}
        self.vat_ratio = vats.pop() if vats else (0, 1)
        self.vat_rate = self.components[0].vat if self.components else None
        # a flat fee's öre and quantity are the same in every session
        self.flat_lines = {
            n: (_flat_line(c).cents, _flat_line(c).line.quantity)
            for n, c in enumerate(self.components)
            if c.dimension is FLAT
        }
        self.limits = _limits(tariff)
        # per component, its cost line by whole volume (Wh or µs): the line is the same in
        # every session with that volume (records are immutable)
        self.known_lines: list[dict[int, RatedLine]] = [{} for _ in self.components]
        self._stretches: dict[tuple[Any, int, int], Any] = {}

    @classmethod
    def of(cls, tariff: Tariff) -> _Plan | str:
        """The plan, or why the batch path does not rate this tariff; built once per tariff
        object (the entry holds the tariff, so its id cannot be reused while cached)."""
        cached = _PLANS.get(id(tariff))
        if cached is None or cached[0] is not tariff:
            if len(_PLANS) >= 100:
                _PLANS.clear()
            cached = _PLANS[id(tariff)] = (tariff, cls._build(tariff))
        return cached[1]

    @classmethod
    def _build(cls, tariff: Tariff) -> _Plan | str:
        compiled = tariff.compiled()
        if compiled.uses_energy or compiled.needs_power or compiled.needs_current:
            return "tariff has kWh, power or current restrictions"
        if compiled.uses_clock and not compiled.clock_minutes:
            return "tariff has clock restrictions without boundaries"
        plan = cls(tariff, compiled)
        if len({c.vat for c in plan.components}) > 1:
            return "tariff has several VAT rates"
        if any(c.price_ratio[0] < 0 for c in plan.components):
            return "tariff has a negative price"
        return plan

    def stretches(
        self, zone: Any, first_day: int, last_day: int
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The clock boundaries of local days first_day..last_day (ordinals) and the
        :meth:`tables` between them; kept, since the batches of a run share their days."""
        key = (zone, first_day, last_day)
        found = self._stretches.get(key)
        if found is None:
            if len(self._stretches) >= 64:
                self._stretches.clear()
            clock = np.array(
                _clock_instants(zone, first_day, last_day, self.compiled.clock_minutes)
                if first_day <= last_day else (),
                dtype=np.int64,
            )
            found = self._stretches[key] = (clock, self.tables(zone, clock))
        return found

    def tables(self, zone: Any, clock: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Component numbers in force (-1: none) per clock stretch k (``clock[k-1] <= t <
        clock[k]``), duration stretch j and state: energy[k, j], time[k, j, state],
        flat[k, j]."""
        compiled = self.compiled
        stretches = len(clock) + 1
        durations = [0, *compiled.duration_marks_us]
        energy = np.full((stretches, len(durations)), -1, dtype=np.int64)
        time = np.full((stretches, len(durations), 3), -1, dtype=np.int64)
        flat = np.full((stretches, len(durations)), -1, dtype=np.int64)
        by = compiled.by_dimension
        for k in range(stretches):
            at = int(clock[k - 1]) if k else (int(clock[0]) - 1 if len(clock) else 0)
            local = _local_clock(zone, at) if compiled.uses_clock else None
            for j, duration in enumerate(durations):
                for table, index, dimension in (
                    (energy, (k, j), ENERGY),
                    (time, (k, j, 0), TIME),
                    (time, (k, j, 1), PARKING_TIME),
                    (flat, (k, j), FLAT),
                ):
                    for element in by[dimension]:
                        if element.uses_clock and local is not None and not element.clock_matches(
                            *local
                        ):
                            continue
                        if element.meter_matches(0, duration, 0, 0):
                            table[index] = self.number[id(element.components[dimension])]
                            break
        return energy, time, flat


_PLANS: dict[int, tuple[Tariff, _Plan | str]] = {}


def _limits(tariff: Tariff) -> tuple[int, int, int, int] | None:
    """min/max price as whole öre bounds a total may take without being moved:
    (low excl, high excl, low incl, high incl); None without limits."""
    low, high = tariff.min_price, tariff.max_price
    if low is None and high is None:
        return None
    big = 1 << 62

    def up(value: Decimal | None) -> int:
        return -big if value is None else int((value * 100).to_integral_value("ROUND_CEILING"))

    def down(value: Decimal | None) -> int:
        return big if value is None else int((value * 100).to_integral_value("ROUND_FLOOR"))

    return (
        up(None if low is None else low.excl_vat),
        down(None if high is None else high.excl_vat),
        up(None if low is None else low.incl_vat),
        down(None if high is None else high.incl_vat),
    )


def _rate_group(
    plan: _Plan,
    zone: Any,
    indices: list[int],
    count_list: list[int],
    columns: tuple[Sequence[Any], ...],
    results: list[Any],
    exact: list[int],
    reasons: Counter[str],
) -> None:
    """Rate the sessions of one time zone; those it cannot go to ``exact``."""
    n = len(indices)
    counts = np.array(count_list, dtype=np.int64)
    try:
        times = np.array(columns[0], dtype=np.int64)
        energies = np.array(columns[1], dtype=np.int64)
    except OverflowError:
        reasons["numbers too large for int64"] += n
        exact.extend(indices)
        return
    states = np.array(columns[2], dtype=np.int64)
    ends = np.cumsum(counts)
    # in order, as the engine's reader insists (else rate() says which sample is wrong)
    follows = np.ones(len(times), dtype=bool)
    follows[ends[:-1]] = False  # a report's first sample does not follow the one before
    follows[0] = False
    wrong = follows & (
        (times <= np.roll(times, 1)) | (energies < np.roll(energies, 1))
    )
    session_of_sample = np.repeat(np.arange(n), counts)
    disorder = np.zeros(n, dtype=bool)
    disorder[session_of_sample[wrong]] = True
    disorder |= energies[ends - counts] < 0
    if disorder.any():  # left out of the arrays altogether
        reasons[NOT_USUAL] += int(disorder.sum())
        exact.extend(index for index, bad in zip(indices, disorder.tolist(), strict=True) if bad)
        ordered = ~disorder
        if not ordered.any():
            return
        keep = ordered[session_of_sample]
        times, energies, states = times[keep], energies[keep], states[keep]
        indices = [index for index, ok in zip(indices, ordered.tolist(), strict=True) if ok]
        counts = counts[ordered]
        n = len(indices)
        ends = np.cumsum(counts)
        session_of_sample = np.repeat(np.arange(n), counts)
    firsts = ends - counts
    start, end = times[firsts], times[ends - 1]
    compiled = plan.compiled
    usable = np.ones(n, dtype=bool)
    if compiled.valid_from_us is not None:
        usable &= start >= compiled.valid_from_us
    if compiled.valid_until_us is not None:
        usable &= start < compiled.valid_until_us
    if not usable.all():
        reasons["tariff not valid when the session started"] += int((~usable).sum())

    # the cut points: clock boundaries and duration thresholds strictly inside each session
    if compiled.clock_minutes:
        days = (
            int(start.min()) // MICROS_PER_DAY + EPOCH_ORDINAL - 2,
            int(end.max()) // MICROS_PER_DAY + EPOCH_ORDINAL + 2,
        )
    else:
        days = (0, -1)  # no clock boundaries
    clock, (energy_table, time_table, flat_table) = plan.stretches(zone, *days)
    cut_sessions, cut_times = [], []
    if len(clock):
        low = np.searchsorted(clock, start, "right")
        high = np.searchsorted(clock, end, "left")
        many = np.maximum(high - low, 0)
        sessions = np.repeat(np.arange(n), many)
        within = np.arange(int(many.sum())) - np.repeat(np.cumsum(many) - many, many)
        cut_sessions.append(sessions)
        cut_times.append(clock[low[sessions] + within])
    for mark in compiled.duration_marks_us:
        inside = np.flatnonzero(start + mark < end)
        cut_sessions.append(inside)
        cut_times.append(start[inside] + mark)
    all_sessions = np.concatenate([session_of_sample, *cut_sessions])
    all_times = np.concatenate([times, *cut_times])
    is_cut = np.concatenate(
        [np.zeros(len(times), dtype=np.int8), *(np.ones(len(c), dtype=np.int8) for c in cut_times)]
    )
    span = int(all_times.max() - all_times.min()) if len(all_times) else 0
    if n < 1 << 19 and span < 1 << 43:
        # one int64 key (session, time, sample before cut); the samples come in order, the
        # cuts after them: a stable sort merges the two runs
        key = (all_sessions << 44) | ((all_times - all_times.min()) << 1) | is_cut
        order = np.argsort(key, kind="stable")
    else:
        order = np.lexsort((is_cut, all_times, all_sessions))
    p_session, p_time, p_cut = all_sessions[order], all_times[order], is_cut[order]
    keep = np.ones(len(order), dtype=bool)  # a cut on a sample (or on another cut) is no point
    keep[1:] = (p_session[1:] != p_session[:-1]) | (p_time[1:] != p_time[:-1]) | (p_cut[1:] == 0)
    p_session, p_time, p_cut = p_session[keep], p_time[keep], p_cut[keep]
    sample_of_point = np.cumsum(p_cut == 0) - 1

    # the pieces: from each point to the next one of the same session
    starts_piece = np.flatnonzero(p_session[:-1] == p_session[1:])
    session = p_session[starts_piece]
    a = p_time[starts_piece]
    d = p_time[starts_piece + 1] - a
    i = sample_of_point[starts_piece]
    state = states[i]
    k = np.searchsorted(clock, a, "right") if len(clock) else np.zeros(len(a), dtype=np.int64)
    j = (
        np.searchsorted(plan.marks, a - start[session], "right")
        if len(plan.marks)
        else np.zeros(len(a), dtype=np.int64)
    )
    energy_c = energy_table[k, j]
    time_c = time_table[k, j, state]  # idle: -1, nothing priced by time
    flat_c = flat_table[k, j]

    # energy per run of pieces in one sample interval under one component: ΔE x run / interval
    # is whole Wh unless a component changes inside the interval
    run = np.ones(len(i), dtype=bool)
    run[1:] = (i[1:] != i[:-1]) | (energy_c[1:] != energy_c[:-1])
    run_at = np.flatnonzero(run)  # the run's first piece
    run_i, run_c, run_session = i[run_at], energy_c[run_at], session[run_at]
    interval = times[run_i + 1] - times[run_i]
    delta = energies[run_i + 1] - energies[run_i]
    big = (delta.astype(np.float64) * interval.astype(np.float64)) >= SAFE_PRODUCT
    if big.any():
        too_big = np.zeros(n, dtype=bool)
        too_big[run_session[big]] = True
        reasons["numbers too large for int64"] += int((too_big & usable).sum())
        usable &= ~too_big
    numerator = delta * np.add.reduceat(d, run_at)
    whole, rest = np.divmod(numerator, interval)

    # per session and component: volume (whole Wh or µs), first piece with volume
    segments = np.searchsorted(session, np.arange(n))
    run_segments = np.searchsorted(run_session, np.arange(n))
    position = np.arange(len(session), dtype=np.int64)
    energy_nonzero = (run_c >= 0) & (numerator > 0)
    count = len(plan.components)
    volume = np.zeros((count, n), dtype=np.int64)
    first = np.full((count, n), NEVER, dtype=np.int64)
    for number, component in enumerate(plan.components):
        if component.dimension is FLAT:
            continue
        if component.dimension is ENERGY:
            mask = run_c == number
            if mask.any():
                volume[number] = np.add.reduceat(np.where(mask, whole, 0), run_segments)
                first[number] = np.minimum.reduceat(
                    np.where(mask & energy_nonzero, run_at, NEVER), run_segments
                )
            continue
        mask = time_c == number
        if mask.any():
            volume[number] = np.add.reduceat(np.where(mask, d, 0), segments)
            first[number] = np.minimum.reduceat(np.where(mask, position, NEVER), segments)
    last: dict[TariffDimensionType, np.ndarray] = {}
    where = np.maximum.reduceat(np.where(energy_nonzero, np.arange(len(run_at)), -1), run_segments)
    last[ENERGY] = np.where(where >= 0, run_c[np.maximum(where, 0)], -1)
    time_dimension = plan.dimension_code[np.maximum(time_c, 0)]
    for dimension in (TIME, PARKING_TIME):
        nonzero = (time_c >= 0) & (time_dimension == LINE_ORDER[dimension])
        where = np.maximum.reduceat(np.where(nonzero, position, -1), segments)
        last[dimension] = np.where(where >= 0, time_c[np.maximum(where, 0)], -1)
    flat_at = np.minimum.reduceat(np.where(flat_c >= 0, position, NEVER), segments)
    flat = np.where(flat_at < NEVER, flat_c[np.minimum(flat_at, len(flat_c) - 1)], -1)

    # fractions of a Wh, only where a component changes inside an interval with energy: the
    # energy volumes of such a session are counted over that interval's length (in µs), its
    # energy denominator, when all its fractions share one; else it is billed in Python
    partial = np.flatnonzero((run_c >= 0) & (rest != 0))
    in_python = np.zeros(n, dtype=bool)
    energy_den = np.ones(n, dtype=np.int64)
    numerators = volume
    if len(partial):
        p_session, p_interval = run_session[partial], interval[partial]
        energy_den[p_session] = p_interval
        in_python[p_session[energy_den[p_session] != p_interval]] = True
        extra = np.zeros_like(volume)
        np.add.at(extra, (run_c[partial], p_session), rest[partial])
        rows = [c for c, comp in enumerate(plan.components) if comp.dimension is ENERGY]
        scaled = volume[rows].astype(np.float64) * energy_den
        in_python |= (scaled >= SAFE_PRODUCT / 4).any(axis=0)
        numerators = volume.copy()
        numerators[rows] = volume[rows] * np.where(in_python, 1, energy_den) + extra[rows]
        energy_den[in_python] = 1

    # the money in int64 here; where a product could overflow, in Python integers
    lasts = [last[ENERGY], last[TIME], last[PARKING_TIME]]
    money = _money(plan, numerators, energy_den, first, lasts, flat, usable & ~in_python)
    in_python |= usable & ~money.ok
    _lines(plan, indices, start, end, usable & ~in_python, money, results)
    if in_python.any():
        fractions: dict[int, dict[int, tuple[int, int]]] = {}  # session: component: ratio
        chosen = np.flatnonzero(in_python)
        renumber = np.full(n, -1, dtype=np.int64)
        renumber[chosen] = np.arange(len(chosen))
        mine = partial[in_python[run_session[partial]]]
        for s, c, r, q in zip(
            renumber[run_session[mine]].tolist(),
            run_c[mine].tolist(),
            rest[mine].tolist(),
            interval[mine].tolist(),
            strict=True,
        ):
            extra_of = fractions.setdefault(s, {})
            before = extra_of.get(c)
            extra_of[c] = (r, q) if before is None else (
                before[0] * q + r * before[1], before[1] * q)
        _bill(
            plan, [indices[s] for s in chosen.tolist()], start[chosen].tolist(),
            end[chosen].tolist(), [True] * len(chosen), volume[:, chosen].T.tolist(),
            first[:, chosen].T.tolist(), [x[chosen].tolist() for x in lasts],
            flat[chosen].tolist(), fractions, results, exact, reasons,
        )
    if not usable.all():
        exact.extend(index for index, ok in zip(indices, usable.tolist(), strict=True)
                     if not ok)


class _Money(NamedTuple):
    billed: np.ndarray  # (component, session): volume after step_size (energy: over den)
    cents: np.ndarray  # (component, session): the line's öre
    net: np.ndarray
    gross: np.ndarray
    order: np.ndarray  # (session, rank): components in cost-line order
    lines: np.ndarray  # volume lines per session
    ok: np.ndarray  # rated here: else in Python (overflow) or exact (price limits)
    flat: np.ndarray  # the flat fee's component per session, -1 for none
    energy_den: np.ndarray  # per session: energy volumes are in Wh / energy_den


def _money(
    plan: _Plan,
    volume: np.ndarray,
    energy_den: np.ndarray,
    first: np.ndarray,
    lasts: list[np.ndarray],
    flat: np.ndarray,
    chosen: np.ndarray,
) -> _Money:
    """``rating._volumes`` and ``rating._bill_fast`` over all sessions at once, in int64
    (sessions where a product could overflow are not ``ok``). Energy volumes are in units
    of 1/energy_den Wh, the others whole µs."""
    components = plan.components
    count, n = volume.shape
    billed = volume.copy()
    ok = chosen.copy()
    steps = np.array(
        [c.step_size * VOLUME_PER_STEP.get(c.dimension, 0) for c in components] or [0],
        dtype=np.int64,
    )
    ones = np.ones(n, dtype=np.int64)
    for dimension, last in zip((ENERGY, TIME, PARKING_TIME), lasts, strict=True):
        mine = [c for c, component in enumerate(components) if component.dimension is dimension]
        if not mine:
            continue
        size = np.where(last >= 0, steps[np.maximum(last, 0)], 0)
        stepped = np.flatnonzero(size > 0)
        if len(stepped):
            total = volume[mine][:, stepped].sum(axis=0)
            size = size[stepped] * (energy_den[stepped] if dimension is ENERGY else 1)
            ok[stepped] &= (total.astype(np.float64) + size) < SAFE_PRODUCT
            billed[last[stepped], stepped] += -(-total // size) * size - total
    cents = np.zeros((count, n), dtype=np.int64)
    for c, component in enumerate(components):
        if component.dimension is FLAT:
            continue
        num, den = component.price_ratio
        den = den * _VOLUME_DIMENSIONS[component.dimension].scale * (
            energy_den if component.dimension is ENERGY else ones)
        ok &= den.astype(np.float64) < SAFE_PRODUCT / 4
        den = np.minimum(den, SAFE_PRODUCT // 4)
        # (2 x billed x num x 100 + den) // (2 x den): round half up to the öre, in int64
        safe = (SAFE_PRODUCT - den) // (200 * max(num, 1))
        ok &= billed[c] <= safe
        cents[c] = (200 * num * np.minimum(billed[c], safe) + den) // (2 * den)
    flat_cents = np.array(
        [plan.flat_lines.get(c, (0, None))[0] for c in range(count)] + [0], dtype=np.int64
    )
    net = cents.sum(axis=0) + flat_cents[flat]  # flat -1: the appended 0
    vat_num, vat_den = plan.vat_ratio
    vat_den *= 100 * 100
    safe = (SAFE_PRODUCT - vat_den) // (200 * max(vat_num, 1))
    ok &= net <= safe
    gross = net + (200 * vat_num * np.minimum(net, safe) + vat_den) // (2 * vat_den)
    if plan.limits is not None:  # moved totals: left to _bill, which sends them the exact way
        low, high, low_incl, high_incl = plan.limits
        ok &= (net >= low) & (net <= high) & (gross >= low_incl) & (gross <= high_incl)
    order_of = np.array([LINE_ORDER[c.dimension] for c in components], dtype=np.int64)
    key = np.where(first != NEVER, (order_of[:, None] << 48) | first, NEVER)
    order = np.argsort(key, axis=0, kind="stable").T
    lines = (first != NEVER).sum(axis=0)
    return _Money(billed, cents, net, gross, order, lines, ok, flat, energy_den)


def _lines(
    plan: _Plan,
    indices: list[int],
    start: np.ndarray,
    end: np.ndarray,
    rated: np.ndarray,
    money: _Money,
    results: list[Any],
) -> None:
    """The results of the sessions ``_money`` rated: records only, the numbers are done."""
    components = plan.components
    fixed = [
        (c.dimension.value, UNIT_OF[c.dimension], c.price, c.vat,
         _VOLUME_DIMENSIONS.get(c.dimension))
        for c in components
    ]
    flat_line = {
        c: tuple.__new__(RatedLine, (c_fixed[0], one, c_fixed[1], c_fixed[2], cents, c_fixed[3]))
        for c, (cents, one) in plan.flat_lines.items()
        for c_fixed in [fixed[c]]
    }
    chosen = np.flatnonzero(rated)
    new = tuple.__new__
    billed = money.billed[:, chosen].T.tolist()
    cents = money.cents[:, chosen].T.tolist()
    is_energy = [c.dimension is ENERGY for c in components]
    known = plan.known_lines
    epoch = EPOCH  # rating._utc, inlined
    for s, net, gross, order, count, flat, b, m, a, z, den in zip(
        chosen.tolist(), money.net[chosen].tolist(), money.gross[chosen].tolist(),
        money.order[chosen].tolist(), money.lines[chosen].tolist(),
        money.flat[chosen].tolist(), billed, cents, start[chosen].tolist(),
        end[chosen].tolist(), money.energy_den[chosen].tolist(), strict=True,
    ):
        lines = [flat_line[flat]] if flat >= 0 else []
        for c in order[:count]:
            name, unit, unit_price, vat, volumes = fixed[c]
            value = b[c]
            if den == 1 or not is_energy[c]:
                # a component's line depends on the volume alone: shared between sessions
                line = known[c].get(value)
                if line is None:
                    if len(known[c]) >= KNOWN_LINES:
                        known[c].clear()
                    line = known[c][value] = new(RatedLine, (
                        name, volumes[value].volume, unit, unit_price, m[c], vat  # type: ignore[index]
                    ))
                lines.append(line)
                continue
            if value % den == 0:
                shown = volumes[value // den].volume  # type: ignore[index]
            else:
                shown = _display(value, den * WH_PER_KWH)
            lines.append(new(RatedLine, (name, shown, unit, unit_price, m[c], vat)))
        results[indices[s]] = new(Rated, (
            epoch + timedelta(0, 0, a), epoch + timedelta(0, 0, z), net, gross, tuple(lines),
            False,
        ))


def _bill(
    plan: _Plan,
    indices: list[int],
    starts: list[int],
    ends: list[int],
    usable: list[bool],
    volumes: list[list[int]],
    firsts: list[list[int]],
    lasts: list[list[int]],
    flats: list[int],
    fractions: dict[int, dict[int, tuple[int, int]]],
    results: list[Any],
    exact: list[int],
    reasons: Counter[str],
) -> None:
    """Each session's lines and totals from its volumes, in Python integers, as
    ``rating._volumes`` and ``rating._bill_fast`` do it. A volume is a ratio (numerator,
    denominator), unreduced: rounding divides once, at the end."""
    components = plan.components
    count = len(components)
    dimension = [c.dimension for c in components]
    order = [LINE_ORDER[c.dimension] for c in components]
    step = [c.step_size * VOLUME_PER_STEP.get(c.dimension, 0) for c in components]
    volume_dims = [_VOLUME_DIMENSIONS.get(c.dimension) for c in components]
    price = [c.price_ratio for c in components]
    fixed = [
        (c.dimension.value, UNIT_OF[c.dimension], c.price, c.vat) for c in components
    ]
    flat_lines = plan.flat_lines
    vat_num, vat_den = plan.vat_ratio
    vat_rate_den = 100 * vat_den * 100
    limits = plan.limits
    new = tuple.__new__
    for s, index in enumerate(indices):
        if not usable[s]:
            exact.append(index)
            continue
        whole = volumes[s]
        first = firsts[s]
        present = sorted(
            [(order[c], first[c], c) for c in range(count) if first[c] != NEVER]
        )
        billed = {c: (whole[c], 1) for _, _, c in present}
        extra = fractions.get(s)
        if extra is not None:
            for c, (num, den) in extra.items():
                billed[c] = (whole[c] * den + num, den)
        for last in (lasts[0][s], lasts[1][s], lasts[2][s]):
            if last < 0 or step[last] <= 0:
                continue
            size = step[last]
            num, den = 0, 1
            for c, (v_num, v_den) in billed.items():
                if dimension[c] is dimension[last]:
                    num, den = (num + v_num, den) if v_den == den else (
                        num * v_den + v_num * den, den * v_den)
            steps = -(-num // (den * size))  # rounded up
            v_num, v_den = billed[last]
            up = steps * size * den - num  # over den
            billed[last] = (v_num + up, 1) if den == v_den == 1 else (
                v_num * den + up * v_den, v_den * den)
        lines = []
        net = 0
        flat = flats[s]
        if flat >= 0:
            cents, one = flat_lines[flat]
            name, unit, unit_price, vat = fixed[flat]
            lines.append(new(RatedLine, (name, one, unit, unit_price, cents, vat)))
            net += cents
        for _, _, c in present:
            v_num, v_den = billed[c]
            num, den = price[c]
            volumes_of = volume_dims[c]
            scale = volumes_of.scale  # type: ignore[union-attr]
            cents = round_ratio_to_cents(v_num * num, v_den * scale * den)
            name, unit, unit_price, vat = fixed[c]
            shown = (
                volumes_of[v_num // v_den].volume  # type: ignore[index]
                if v_num % v_den == 0 else _display(v_num, v_den * scale)
            )
            lines.append(new(RatedLine, (name, shown, unit, unit_price, cents, vat)))
            net += cents
        gross = net + round_ratio_to_cents(net * vat_num, vat_rate_den)
        if limits is not None and not (
            limits[0] <= net <= limits[1] and limits[2] <= gross <= limits[3]
        ):
            reasons["min_price or max_price moves the total"] += 1
            exact.append(index)
            continue
        results[index] = new(
            Rated, (_utc(starts[s]), _utc(ends[s]), net, gross, tuple(lines), False)
        )

