"""Usage analytics and capacity planning over ``usage_session`` (one row per visit).

The model
---------
A *visit* occupies a connector from plug-in to unplug; within it the car drew power for
``charging_s`` and sat suspended by the car (full, or finishing) for ``idle_s``. Every figure
here is computed from visits loaded with one SQL query into numpy arrays, for a period
``[start, end)``:

* **Utilisation** of a group (a station, or a site in one hour of the week) is occupied
  connector-seconds over available connector-seconds. A visit is clipped to the period and
  spread over the clock hours it spans, partial hours counted to the second (:func:`spread`);
  a visit still open counts until ``min(end, now)``. Available connector-seconds are the
  group's connectors times the seconds of the period falling in those hours.
* **Hour of week** is local to each site (Monday 00:00-01:00 is 0, Sunday 23:00-24:00 is
  167). Time is binned on the UTC hour grid and each UTC hour is given the local hour of week
  in which it starts, so a DST change is exact: the skipped spring hour has no occurrence that
  week, the repeated autumn hour has two (and twice the available time). Zones whose offset is
  not a whole number of hours (India, Newfoundland) are attributed by the hour's start.
* **Frequency, duration, charging time, idle share, energy, failed starts, faults** are
  counted by the hour of week in which a visit *started* (plug-in), over visits started in the
  period. Means and shares use closed visits only (an open visit has no duration yet).
  Idle share is ``idle_s / (unplugged - plugged)``; failed-start share and fault rate are
  failed_start and faulted visits over closed visits.
* **Erlang-C sizing** (M/M/c): per site and hour of week, arrivals λ per hour are the visits
  started in that hour of week over the number of times that hour occurred in the period
  (fractional at the period's edges), and 1/μ is the mean duration of the closed visits started
  in it. The pointwise offered load λ/μ assumes arrivals hold steady for a whole visit; with
  visits of many hours starting in bursts it is far off (in the Trondheim patterns, Friday
  18:00 arrivals stay 38 h on average: λ/μ = 200 Erlangs at a site that never holds more than
  15 cars). So the load used is the *modified offered load* of time-varying queues (Jennings,
  Mandelbaum, Massey & Whitt, 1996): the expected number of visits in progress in that hour,
  i.e. occupied connector-hours over the hour's occurrences, which is λ/μ exactly when
  arrivals are steady (Little's law). Both are reported. The connectors needed are the smallest
  c with P(wait) = C(c, A) ≤ ``target`` (default 0.2), compared with those the site has.
* **Grid upgrade** (:func:`grid_upgrade`, with its precise model in the docstring): energy a
  site's grid limit held back and what ``extra_kw`` more would have delivered.
* **Bottlenecks** and **recommendations** rank findings by how far each exceeds its threshold
  (``severity = value / threshold``), every one with a machine-readable ``reason``.

The pure functions (:func:`spread`, :func:`erlang_c`, :func:`required_connectors`,
:func:`hour_of_week_map`, :func:`grid_upgrade`, …) take arrays and return arrays so they can be
checked against hand-computed values; :func:`analyse` chains them over the database.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, select
from sqlmodel import Session

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

HOURS_PER_WEEK = 168
DASH = "\u2013"
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# 16 A on three phases at 230 V: the wiring default of load_manager.models.ConnectorWiring.
DEFAULT_CONNECTOR_KW = 16.0 * 3 * 230.0 / 1000
DEFAULT_ZONE = "Europe/Stockholm"
# Codes of UsageSession.outcome in the arrays.
OPEN, COMPLETED, FAILED_START, FAULTED = 0, 1, 2, 3
_OUTCOME_CODE = {"open": OPEN, "completed": COMPLETED, "failed_start": FAILED_START,
                 "faulted": FAULTED}
# Groups per block when spreading visits over a timeline: bounds memory to about
# block x bins x 8 bytes (200 sites x a year of hours = 14 MB) whatever the network's size.
_BLOCK_BINS = 2_000_000
_SECONDS_PER_MONTH = 30 * 86400


# ---------------------------------------------------------------- inputs


@dataclass
class Visits:
    """Visits as column arrays; ``station``/``site`` are codes into ``stations``/``sites``."""

    stations: list[str]
    sites: list[str | None]
    station: IntArray
    connector: IntArray
    site: IntArray
    start: FloatArray  # epoch seconds, UTC
    end: FloatArray  # epoch seconds; NaN while open
    charging_s: FloatArray
    idle_s: FloatArray
    energy_wh: FloatArray
    outcome: IntArray

    def __len__(self) -> int:
        return int(self.start.shape[0])


@dataclass
class Inventory:
    """What the network has, as analytics need it: zones, connectors, power, grid limits."""

    site_zone: dict[str, str] = field(default_factory=dict)
    site_name: dict[str, str] = field(default_factory=dict)
    station_site: dict[str, str | None] = field(default_factory=dict)
    # Physical connectors (connector table, id > 0, and configured wiring) per station.
    station_connectors: dict[str, set[int]] = field(default_factory=dict)
    connector_kw: dict[tuple[str, int], float] = field(default_factory=dict)
    site_limit_kw: dict[str, float] = field(default_factory=dict)
    default_zone: str = DEFAULT_ZONE


def load_inventory(session: Session, *, default_zone: str = DEFAULT_ZONE) -> Inventory:
    """Sites (zones, names), stations' sites, connectors and their power, grid limits."""
    from load_manager.models import ConnectorWiring, SiteGrid
    from station_api.models import Connector, Site, Station

    inv = Inventory(default_zone=default_zone)
    for site_id, name, zone in session.execute(select(Site.id, Site.name, Site.time_zone)):
        inv.site_zone[site_id], inv.site_name[site_id] = zone, name
    for station_id, site_id in session.execute(select(Station.id, Station.site_id)):
        inv.station_site[station_id] = site_id
    for station_id, connector_id in session.execute(
            select(Connector.station_id, Connector.connector_id).where(
                Connector.connector_id > 0)):
        inv.station_connectors.setdefault(station_id, set()).add(connector_id)
    for w in session.execute(select(ConnectorWiring)).scalars():
        inv.station_connectors.setdefault(w.station_id, set()).add(w.connector_id)
        inv.connector_kw[(w.station_id, w.connector_id)] = (
            w.max_current_a * w.phases * 230.0 / 1000)
    for grid in session.execute(select(SiteGrid)).scalars():
        limit = site_limit_kw(power_limit_kw=grid.power_limit_kw,
                              phase_limit_a=grid.phase_limit_a, voltage_v=grid.voltage_v)
        if grid.enabled and limit is not None:
            inv.site_limit_kw[grid.site_id] = limit
    return inv


def site_limit_kw(*, power_limit_kw: float | None, phase_limit_a: float | None,
                  voltage_v: float) -> float | None:
    """A site's limit in kW: the tighter of its kW limit and three phases at the A limit."""
    limits = [v for v in (power_limit_kw,
                          None if phase_limit_a is None else 3 * phase_limit_a * voltage_v / 1000)
              if v is not None]
    return min(limits) if limits else None


_COLUMNS = ("station_id, connector_id, site_id, {start}, {end}, charging_s, idle_s,"
            " energy_wh, outcome")


def load_visits(engine: Engine, *, start: datetime, end: datetime,
                site_ids: Sequence[str] | None = None,
                station_ids: Sequence[str] | None = None) -> Visits:
    """Visits overlapping ``[start, end)``, in one query through the raw DBAPI connection.

    On PostgreSQL the rows come as a binary COPY of fixed-width columns, stations and sites
    already turned into integer codes by the database, so numpy reads them in one call
    (:func:`_load_postgres`). On SQLite, through the cursor: timestamps as epoch seconds
    computed by the database, strings coded with one dictionary pass.
    """
    if engine.dialect.name == "postgresql":
        return _load_postgres(engine, start=start, end=end, site_ids=site_ids,
                              station_ids=station_ids)
    return _load_cursor(engine, start=start, end=end, site_ids=site_ids,
                        station_ids=station_ids, postgres=False)


_WHERE = "plugged_in_at < {mark} AND (unplugged_at IS NULL OR unplugged_at > {mark})"
# One COPY row: a field count, then each field's length and value, big-endian; every field
# is fixed-width and never NULL (an open visit's end is 'infinity', no site is -1).
# Timestamps travel as PostgreSQL's own binary form, µs since 2000-01-01 UTC.
_COPY_ROW = np.dtype([
    ("fields", ">i2"), ("l0", ">i4"), ("station", ">i4"), ("l1", ">i4"), ("connector", ">i4"),
    ("l2", ">i4"), ("site", ">i4"), ("l3", ">i4"), ("start", ">i8"), ("l4", ">i4"),
    ("end", ">i8"), ("l5", ">i4"), ("charging_s", ">i8"), ("l6", ">i4"), ("idle_s", ">i8"),
    ("l7", ">i4"), ("energy_wh", ">i8"), ("l8", ">i4"), ("outcome", ">i2"),
])
_COPY_HEADER = 19  # signature (11), flags (4), header extension length (4)
_POSTGRES_EPOCH_S = 946_684_800  # 2000-01-01 UTC
_INFINITY = np.iinfo(np.int64).max
# Codes from the small station and site tables: a hash join, not a DISTINCT over the visits.
_POSTGRES_SQL = """
WITH station_code AS (
    SELECT id, (row_number() OVER (ORDER BY id) - 1)::int4 AS code FROM station
), site_code AS (
    SELECT id, (row_number() OVER (ORDER BY id) - 1)::int4 AS code FROM site
)
"""
_POSTGRES_ROWS = """
SELECT coalesce(st.code, -1)::int4, v.connector_id::int4,
       (CASE WHEN v.site_id IS NULL THEN -1 ELSE coalesce(si.code, -2) END)::int4,
       v.plugged_in_at, coalesce(v.unplugged_at, 'infinity'::timestamptz),
       v.charging_s::int8, v.idle_s::int8, v.energy_wh::int8,
       (CASE v.outcome WHEN 'open' THEN 0 WHEN 'completed' THEN 1 WHEN 'failed_start' THEN 2
                       ELSE 3 END)::int2
FROM usage_session v LEFT JOIN station_code st ON st.id = v.station_id
LEFT JOIN site_code si ON si.id = v.site_id
WHERE {where}
"""


def _load_postgres(engine: Engine, *, start: datetime, end: datetime,
                   site_ids: Sequence[str] | None, station_ids: Sequence[str] | None
                   ) -> Visits:
    from psycopg import sql

    where = sql.SQL(_WHERE).format(mark=sql.Placeholder())
    params: list[Any] = [end, start]
    for column, values in (("site_id", site_ids), ("station_id", station_ids)):
        if values is not None:
            where = sql.SQL("{} AND v.{} = ANY({})").format(where, sql.Identifier(column),
                                                            sql.Placeholder())
            params.append(list(values))
    prefix = sql.SQL(_POSTGRES_SQL)
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        with conn.transaction():
            cursor = conn.cursor()
            # One snapshot for the rows and the code lists, so the codes match.
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            copy = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(
                sql.Composed([prefix, sql.SQL(_POSTGRES_ROWS).format(where=where)]))
            buffer = bytearray()
            with cursor.copy(copy, params) as out:
                for chunk in out:
                    buffer += chunk
            cursor.execute(sql.Composed([prefix, sql.SQL(
                "SELECT 0, id FROM station_code UNION ALL SELECT 1, id FROM site_code"
                " ORDER BY 1, 2")]))
            names = cursor.fetchall()
            cursor.close()
    finally:
        raw.close()
    body = memoryview(buffer)[_COPY_HEADER:len(buffer) - 2]  # the trailer is -1 as int16
    if len(body) % _COPY_ROW.itemsize:
        raise RuntimeError("unexpected COPY row layout")
    arr = np.frombuffer(body, dtype=_COPY_ROW)
    station = arr["station"].astype(np.int64)
    site = arr["site"].astype(np.int64)
    if (station < 0).any() or (site < -1).any():
        # A visit of a station or site no longer in its table: rare, so the general path.
        return _load_cursor(engine, start=start, end=end, site_ids=site_ids,
                            station_ids=station_ids, postgres=True)
    # Only the stations and sites seen, renumbered densely.
    all_stations = [str(n) for kind, n in names if kind == 0]
    all_sites: list[str | None] = [str(n) for kind, n in names if kind == 1]
    seen_st, station = np.unique(station, return_inverse=True)
    seen_si, site = np.unique(site, return_inverse=True)
    sites = [None if k < 0 else all_sites[k] for k in seen_si.tolist()]
    end_us = arr["end"]
    return Visits(
        stations=[all_stations[k] for k in seen_st.tolist()], sites=sites,
        station=station.astype(np.int64), connector=arr["connector"].astype(np.int64),
        site=site.astype(np.int64),
        start=arr["start"] / 1e6 + _POSTGRES_EPOCH_S,
        end=np.where(end_us == _INFINITY, np.nan, end_us / 1e6 + _POSTGRES_EPOCH_S),
        charging_s=arr["charging_s"].astype(np.float64),
        idle_s=arr["idle_s"].astype(np.float64),
        energy_wh=arr["energy_wh"].astype(np.float64),
        outcome=arr["outcome"].astype(np.int64))


def _load_cursor(engine: Engine, *, start: datetime, end: datetime,
                 site_ids: Sequence[str] | None, station_ids: Sequence[str] | None,
                 postgres: bool) -> Visits:
    """Through the cursor, timestamps as epoch seconds computed by the database."""
    if postgres:
        columns = _COLUMNS.format(start="date_part('epoch', plugged_in_at)",
                                  end="date_part('epoch', unplugged_at)")
        mark, params = "%s", [end, start]
    else:
        # SQLite keeps naive UTC text; julianday reads it with its fraction of a second.
        columns = _COLUMNS.format(start="(julianday(plugged_in_at) - 2440587.5) * 86400.0",
                                  end="(julianday(unplugged_at) - 2440587.5) * 86400.0")
        mark, params = "?", [_sqlite_time(end), _sqlite_time(start)]
    sql = f"SELECT {columns} FROM usage_session WHERE {_WHERE.format(mark=mark)}"
    for column, values in (("site_id", site_ids), ("station_id", station_ids)):
        if values is not None:
            sql += f" AND {column} IN ({', '.join([mark] * len(values))})" if values else (
                " AND 1 = 0")
            params += list(values)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        cursor.close()
    finally:
        raw.close()
    visits = visits_from_rows(rows)
    if not postgres:
        # julianday arithmetic is off by microseconds (20:00:00 comes back as 19:59:59.99999),
        # which would put a visit starting on the hour into the hour before; SQLAlchemy
        # stores microseconds, julianday resolves milliseconds.
        visits.start = np.round(visits.start, 3)
        visits.end = np.round(visits.end, 3)
    return visits


def _sqlite_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def visits_from_rows(rows: Sequence[Sequence[Any]]) -> Visits:
    """Column arrays from rows of (station_id, connector_id, site_id, start epoch, end epoch
    or None, charging_s, idle_s, energy_wh, outcome)."""
    n = len(rows)
    if n == 0:
        empty_f, empty_i = np.zeros(0), np.zeros(0, dtype=np.int64)
        return Visits([], [], empty_i, empty_i, empty_i, empty_f, empty_f, empty_f, empty_f,
                      empty_f, empty_i)
    station_col, connector_col, site_col, start_col, end_col, ch, idle, wh, out = zip(
        *rows, strict=True)
    station_index: dict[str, int] = {}
    site_index: dict[str | None, int] = {}
    station = np.fromiter((station_index.setdefault(s, len(station_index)) for s in station_col),
                          dtype=np.int64, count=n)
    site = np.fromiter((site_index.setdefault(s, len(site_index)) for s in site_col),
                       dtype=np.int64, count=n)
    outcome = np.fromiter((_OUTCOME_CODE[o] for o in out), dtype=np.int64, count=n)
    return Visits(
        stations=list(station_index), sites=list(site_index), station=station,
        connector=np.array(connector_col, dtype=np.int64), site=site,
        start=np.array(start_col, dtype=np.float64),
        end=np.array([np.nan if e is None else e for e in end_col], dtype=np.float64)
        if None in end_col else np.array(end_col, dtype=np.float64),
        charging_s=np.array(ch, dtype=np.float64), idle_s=np.array(idle, dtype=np.float64),
        energy_wh=np.array(wh, dtype=np.float64), outcome=outcome,
    )


# ---------------------------------------------------------------- pure building blocks


def spread(group: IntArray, a: FloatArray, b: FloatArray, *, groups: int, origin: float,
           step: float, bins: int, weight: FloatArray | None = None) -> FloatArray:
    """Seconds of ``[a, b)`` falling in each bin, summed per group (times ``weight``).

    Bin k of the timeline is ``[origin + k*step, origin + (k+1)*step)``; intervals are clipped
    to the timeline. Returns a ``(groups, bins)`` array. A visit adds its exact overlap to its
    first and last bin and ``step`` to every bin between, through a difference array, so the
    cost is linear in visits plus cells whatever the visits' lengths.
    """
    out = np.zeros((groups, bins))
    if bins == 0 or groups == 0:
        return out
    hi = origin + step * bins
    a = np.clip(a, origin, hi)
    b = np.clip(b, origin, hi)
    keep = b > a
    if not keep.all():
        group, a, b = group[keep], a[keep], b[keep]
        weight = None if weight is None else weight[keep]
    if group.size == 0:
        return out
    w = np.ones_like(a) if weight is None else weight
    ia = np.minimum(((a - origin) // step).astype(np.int64), bins - 1)
    ib = np.minimum(((b - origin) // step).astype(np.int64), bins - 1)
    same = ia == ib
    # First bin: to its end (or to b when the interval stays in it); last bin: from its start.
    first = np.where(same, b - a, origin + (ia + 1) * step - a) * w
    last = np.where(same, 0.0, b - (origin + ib * step)) * w
    size = groups * bins
    out += np.bincount(group * bins + ia, weights=first, minlength=size).reshape(groups, bins)
    out += np.bincount(group * bins + ib, weights=last, minlength=size).reshape(groups, bins)
    middle = ib - ia > 1
    if middle.any():
        g, lo, up, wm = group[middle], ia[middle] + 1, ib[middle], w[middle] * step
        width = bins + 1
        diff = np.bincount(g * width + lo, weights=wm, minlength=groups * width)
        diff -= np.bincount(g * width + up, weights=wm, minlength=groups * width)
        out += np.cumsum(diff.reshape(groups, width), axis=1)[:, :bins]
    return out


def spread_blocked(group: IntArray, a: FloatArray, b: FloatArray, *, groups: int,
                   origin: float, step: float, bins: int, weight: FloatArray | None = None,
                   reduce: Any) -> list[Any]:
    """:func:`spread` in blocks of groups, each ``(first_group, block_array)`` handed to
    ``reduce`` and its results returned in order: the full timeline of every group is never
    held at once."""
    block = max(1, _BLOCK_BINS // max(1, bins))
    order = np.argsort(group, kind="stable")
    sorted_groups = group[order]
    results = []
    for first in range(0, max(groups, 1), block):
        last = min(groups, first + block)
        lo, hi = np.searchsorted(sorted_groups, [first, last])
        idx = order[lo:hi]
        arr = spread(group[idx] - first, a[idx], b[idx], groups=last - first, origin=origin,
                     step=step, bins=bins, weight=None if weight is None else weight[idx])
        results.append(reduce(first, arr))
    return results


def hour_of_week_map(zone: str, *, origin: float, hours: int) -> tuple[IntArray, IntArray]:
    """For UTC hour k from ``origin`` (a whole UTC hour, epoch s): the local hour of week
    (Monday 00 = 0) in which it starts, and the zone's UTC offset then (s)."""
    tz = ZoneInfo(zone)
    offsets = np.fromiter(
        (int(datetime.fromtimestamp(origin + 3600 * k, tz).utcoffset().total_seconds())  # type: ignore[union-attr]
         for k in range(hours)), dtype=np.int64, count=hours)
    local = origin + 3600 * np.arange(hours, dtype=np.int64) + offsets
    day = local // 86400
    how = ((day + 3) % 7) * 24 + (local % 86400) // 3600  # 1970-01-01 was a Thursday
    return how.astype(np.int64), offsets


def erlang_c(servers: npt.ArrayLike, load: npt.ArrayLike) -> FloatArray:
    """P(wait) in an M/M/c queue with ``servers`` c and offered load ``load`` A (Erlangs).

    Through the Erlang-B recursion B(k) = A·B(k-1) / (k + A·B(k-1)), stable for large c, and
    C = c·B / (c - A·(1 - B)). Where c ≤ A the queue grows without bound: P(wait) = 1. With no
    load nobody waits: 0.
    """
    c = np.asarray(servers, dtype=np.int64)
    a = np.asarray(load, dtype=np.float64)
    c, a = np.broadcast_arrays(c, a)
    b = np.ones(a.shape)
    for k in range(1, int(c.max(initial=0)) + 1):
        step = a * b / (k + a * b)
        b = np.where(k <= c, step, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = c * b / (c - a * (1 - b))
    p = np.where(c <= a, 1.0, p)
    return np.where(a <= 0, 0.0, np.clip(p, 0.0, 1.0))


def required_connectors(load: npt.ArrayLike, *, target: float) -> IntArray:
    """The smallest c with P(wait) ≤ ``target`` for each offered load (0 where no load)."""
    a = np.asarray(load, dtype=np.float64)
    need = np.zeros(a.shape, dtype=np.int64)
    todo = a > 0
    # Erlang-B by recursion over c, all cells at once, stopping as soon as every cell is met.
    b = np.ones(a.shape)
    c = 0
    while todo.any():
        c += 1
        b = a * b / (c + a * b)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(c > a, c * b / (c - a * (1 - b)), 1.0)
        met = todo & (p <= target)
        need[met] = c
        todo &= ~met
    return need


def describe_hours(hours: Iterable[int]) -> str:
    """Hours of the week as text, days with the same hours merged: ``[17, 18, 41, 42]`` gives
    ``"Mon-Tue 17:00-19:00"`` (with en dashes)."""
    by_day: dict[int, list[int]] = {}
    for how in sorted({int(h) for h in hours}):
        by_day.setdefault(how // 24, []).append(how % 24)
    spans: dict[int, str] = {}
    for day, hs in by_day.items():
        runs: list[list[int]] = []
        for h in hs:
            if runs and runs[-1][1] == h:
                runs[-1][1] = h + 1
            else:
                runs.append([h, h + 1])
        spans[day] = ", ".join(f"{a:02d}:00{DASH}{b:02d}:00" for a, b in runs)
    parts: list[str] = []
    days = sorted(spans)
    i = 0
    while i < len(days):
        j = i
        while (j + 1 < len(days) and days[j + 1] == days[j] + 1
               and spans[days[j + 1]] == spans[days[i]]):
            j += 1
        label = DAYS[days[i]] if i == j else f"{DAYS[days[i]]}{DASH}{DAYS[days[j]]}"
        parts.append(f"{label} {spans[days[i]]}")
        i = j + 1
    return "; ".join(parts)


# ---------------------------------------------------------------- per site and hour of week


class VisitRatios:
    """Ratios of the summed visit figures a stats table holds (sites by hours, or stations)."""

    occupied_s: FloatArray
    available_s: FloatArray
    closed: FloatArray
    duration_s: FloatArray
    charging_s: FloatArray
    idle_s: FloatArray
    failed: FloatArray
    faulted: FloatArray

    @property
    def utilisation(self) -> FloatArray:
        return _ratio(self.occupied_s, self.available_s)

    @property
    def mean_duration_s(self) -> FloatArray:
        return _ratio(self.duration_s, self.closed)

    @property
    def mean_charging_s(self) -> FloatArray:
        return _ratio(self.charging_s, self.closed)

    @property
    def idle_share(self) -> FloatArray:
        return _ratio(self.idle_s, self.duration_s)

    @property
    def failed_share(self) -> FloatArray:
        return _ratio(self.failed, self.closed)

    @property
    def fault_rate(self) -> FloatArray:
        return _ratio(self.faulted, self.closed)


@dataclass
class SiteHours(VisitRatios):
    """Per site (rows) and local hour of week (168 columns)."""

    sites: list[str | None]
    zones: list[str]
    connectors: IntArray  # per site
    occupied_s: FloatArray
    available_s: FloatArray
    occurrences: FloatArray  # how many times each hour of week occurred in the period
    started: FloatArray
    closed: FloatArray
    duration_s: FloatArray  # sums over closed visits started in the hour
    charging_s: FloatArray
    idle_s: FloatArray
    energy_wh: FloatArray  # over every visit started in the hour
    failed: FloatArray
    faulted: FloatArray
    # Energy per local day of plug-in (rows: sites), days from ``first_day``.
    first_day: date
    daily_energy_wh: FloatArray

    @property
    def arrivals_per_hour(self) -> FloatArray:
        return _ratio(self.started, self.occurrences)

    @property
    def pointwise_load(self) -> FloatArray:
        """λ/μ in Erlangs: arrivals per hour times the mean occupancy (h) of those visits."""
        return self.arrivals_per_hour * self.mean_duration_s / 3600

    @property
    def offered_load(self) -> FloatArray:
        """The modified offered load (Erlangs): visits in progress in the hour on average,
        occupied connector-seconds over the hour's seconds. Equal to λ/μ when arrivals are
        steady; unlike it, right when long visits start in a burst (see the module doc)."""
        return _ratio(self.occupied_s, self.occurrences * 3600)


def _ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def _bounds(start: datetime, end: datetime, now: datetime | None) -> tuple[float, float, float]:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("give start and end with a time zone")
    if not end > start:
        raise ValueError("end must be after start")
    t0, t1 = start.timestamp(), end.timestamp()
    t_now = (now or datetime.now(UTC)).timestamp()
    return t0, t1, t_now


def _occupied_end(v: Visits, t1: float, t_now: float) -> FloatArray:
    """Where each visit stops occupying: its unplug, or for an open one now (at most end)."""
    return np.where(np.isnan(v.end), min(t1, t_now), v.end)


def _site_keys(v: Visits, inv: Inventory) -> tuple[list[str | None], IntArray]:
    """Each visit's site: the one recorded on it, else its station's current one."""
    station_site = [inv.station_site.get(s) for s in v.stations]
    keys: dict[str | None, int] = {}
    for s in v.sites:
        if s is not None:
            keys.setdefault(s, len(keys))
    for s in station_site:
        keys.setdefault(s, len(keys))
    for s in inv.site_zone:
        keys.setdefault(s, len(keys))
    recorded = np.array([keys[s] if s is not None else -1 for s in v.sites], dtype=np.int64)
    fallback = np.array([keys[s] for s in station_site], dtype=np.int64)
    if len(v) == 0:
        return list(keys), np.zeros(0, dtype=np.int64)
    site = recorded[v.site] if recorded.size else np.zeros(0, dtype=np.int64)
    site = np.where(site >= 0, site, fallback[v.station])
    return list(keys), site


def station_connector_counts(v: Visits, inv: Inventory) -> IntArray:
    """Connectors per station code: the known physical ones, or those seen if more."""
    seen: dict[int, set[int]] = {}
    if len(v):
        width = int(v.connector.max()) + 1
        for p in np.unique(v.station * width + v.connector).tolist():
            seen.setdefault(p // width, set()).add(p % width)
    return np.array([len(inv.station_connectors.get(s, set()) | seen.get(i, set()))
                     for i, s in enumerate(v.stations)], dtype=np.int64)


def site_hours(v: Visits, inv: Inventory, *, start: datetime, end: datetime,
               now: datetime | None = None) -> SiteHours:
    """Per site and local hour of week: utilisation, frequency, durations, energy, failures."""
    t0, t1, t_now = _bounds(start, end, now)
    sites, site = _site_keys(v, inv)
    n_sites = len(sites)
    zones = [inv.site_zone.get(s, inv.default_zone) if s else inv.default_zone for s in sites]
    zone_codes: dict[str, int] = {}
    site_zone = np.array([zone_codes.setdefault(z, len(zone_codes)) for z in zones],
                         dtype=np.int64)
    # Connectors per site: those of its stations now, plus stations seen there in the period.
    station_conn = station_connector_counts(v, inv)
    site_stations: dict[int, set[str]] = {}
    site_index = {s: i for i, s in enumerate(sites)}
    for st, s in inv.station_site.items():
        if s in site_index:
            site_stations.setdefault(site_index[s], set()).add(st)
    if len(v):
        width = len(v.stations)
        for p in np.unique(site * width + v.station).tolist():
            site_stations.setdefault(p // width, set()).add(v.stations[p % width])
    code_of = {s: i for i, s in enumerate(v.stations)}
    connectors = np.array([
        sum(int(station_conn[code_of[st]]) if st in code_of
            else len(inv.station_connectors.get(st, set()))
            for st in site_stations.get(i, set()))
        for i in range(n_sites)], dtype=np.int64)

    origin = math.floor(t0 / 3600) * 3600.0
    hours = math.ceil((t1 - origin) / 3600)
    maps = [hour_of_week_map(z, origin=origin, hours=hours) for z in zone_codes]
    how_of = np.stack([m[0] for m in maps]) if maps else np.zeros((0, hours), dtype=np.int64)
    offset_of = np.stack([m[1] for m in maps]) if maps else np.zeros((0, hours), dtype=np.int64)
    # Seconds of each hour inside the period (the first and last may be partial).
    bin_start = origin + 3600 * np.arange(hours)
    covered = np.clip(np.minimum(bin_start + 3600, t1) - np.maximum(bin_start, t0), 0, 3600)
    occurrences_zone = np.stack([
        np.bincount(how_of[z], weights=covered, minlength=HOURS_PER_WEEK) / 3600
        for z in range(len(zone_codes))]) if maps else np.zeros((0, HOURS_PER_WEEK))
    occurrences = occurrences_zone[site_zone] if n_sites else np.zeros((0, HOURS_PER_WEEK))
    available = occurrences * 3600 * connectors[:, None]

    # Occupied seconds per site and UTC hour, folded into hours of week block by block.
    a = np.maximum(v.start, t0)
    b = np.minimum(_occupied_end(v, t1, t_now), t1)

    def fold(first: int, block: FloatArray) -> FloatArray:
        rows = block.shape[0]
        idx = (np.arange(rows)[:, None] * HOURS_PER_WEEK + how_of[site_zone[first:first + rows]])
        return np.bincount(idx.ravel(), weights=block.ravel(),
                           minlength=rows * HOURS_PER_WEEK).reshape(rows, HOURS_PER_WEEK)

    parts = spread_blocked(site, a, b, groups=n_sites, origin=origin, step=3600.0, bins=hours,
                           reduce=fold)
    occupied = np.vstack(parts) if n_sites else np.zeros((0, HOURS_PER_WEEK))

    # Counts by the local hour of week of plug-in, over visits started in the period.
    began = (v.start >= t0) & (v.start < t1)
    s_site, s_start = site[began], v.start[began]
    s_bin = ((s_start - origin) // 3600).astype(np.int64)
    s_zone = site_zone[s_site]
    s_how = how_of[s_zone, s_bin]
    cell = s_site * HOURS_PER_WEEK + s_how
    closed = v.outcome[began] != OPEN
    dur = np.where(closed, v.end[began] - s_start, 0.0)

    def per_cell(weights: FloatArray | None) -> FloatArray:
        return np.bincount(cell, weights=weights, minlength=n_sites * HOURS_PER_WEEK).reshape(
            n_sites, HOURS_PER_WEEK).astype(np.float64)

    outcome = v.outcome[began]
    # Energy per local day of plug-in; local days run from 14 h before to 14 h after UTC's.
    local = s_start + offset_of[s_zone, s_bin]
    first_day_no = math.floor((t0 - 14 * 3600) / 86400)
    days = math.ceil((t1 + 14 * 3600) / 86400) - first_day_no
    day_idx = (local // 86400).astype(np.int64) - first_day_no
    daily = np.bincount(s_site * days + day_idx, weights=v.energy_wh[began],
                        minlength=n_sites * days).reshape(n_sites, days)
    return SiteHours(
        sites=sites, zones=zones, connectors=connectors, occupied_s=occupied,
        available_s=available, occurrences=occurrences, started=per_cell(None),
        closed=per_cell(closed.astype(np.float64)), duration_s=per_cell(dur),
        charging_s=per_cell(np.where(closed, v.charging_s[began], 0.0)),
        idle_s=per_cell(np.where(closed, v.idle_s[began], 0.0)),
        energy_wh=per_cell(v.energy_wh[began]),
        failed=per_cell((outcome == FAILED_START).astype(np.float64)),
        faulted=per_cell((outcome == FAULTED).astype(np.float64)),
        first_day=date(1970, 1, 1) + timedelta(days=first_day_no), daily_energy_wh=daily,
    )


# ---------------------------------------------------------------- per station


@dataclass
class StationStats(VisitRatios):
    """Per station over the whole period."""

    stations: list[str]
    sites: list[str | None]
    connectors: IntArray
    occupied_s: FloatArray
    available_s: FloatArray
    started: FloatArray
    closed: FloatArray
    duration_s: FloatArray
    charging_s: FloatArray
    idle_s: FloatArray
    energy_wh: FloatArray
    failed: FloatArray
    faulted: FloatArray


def station_stats(v: Visits, inv: Inventory, *, start: datetime, end: datetime,
                  now: datetime | None = None) -> StationStats:
    """Per station: utilisation over the period and the counts of visits started in it."""
    t0, t1, t_now = _bounds(start, end, now)
    n = len(v.stations)
    connectors = station_connector_counts(v, inv)
    a = np.maximum(v.start, t0)
    b = np.minimum(_occupied_end(v, t1, t_now), t1)
    occupied = np.bincount(v.station, weights=np.clip(b - a, 0, None), minlength=n)
    began = (v.start >= t0) & (v.start < t1)
    st = v.station[began]
    closed = v.outcome[began] != OPEN
    outcome = v.outcome[began]

    def count(weights: FloatArray | None) -> FloatArray:
        return np.bincount(st, weights=weights, minlength=n).astype(np.float64)

    site_names, site = _site_keys(v, inv)
    station_site: list[str | None] = [inv.station_site.get(s) for s in v.stations]
    if len(v):
        # The site recorded on the station's latest visit.
        last = np.zeros(n, dtype=np.int64) - 1
        order = np.argsort(v.start, kind="stable")
        last[v.station[order]] = site[order]
        station_site = [site_names[i] if i >= 0 else station_site[k]
                        for k, i in enumerate(last.tolist())]
    return StationStats(
        stations=list(v.stations), sites=station_site, connectors=connectors,
        occupied_s=occupied, available_s=connectors * (t1 - t0), started=count(None),
        closed=count(closed.astype(np.float64)),
        duration_s=count(np.where(closed, v.end[began] - v.start[began], 0.0)),
        charging_s=count(np.where(closed, v.charging_s[began], 0.0)),
        idle_s=count(np.where(closed, v.idle_s[began], 0.0)),
        energy_wh=count(v.energy_wh[began]),
        failed=count((outcome == FAILED_START).astype(np.float64)),
        faulted=count((outcome == FAULTED).astype(np.float64)),
    )


# ---------------------------------------------------------------- capacity


@dataclass
class CapacityPlan:
    """Erlang-C sizing per site (rows) and hour of week (columns)."""

    target: float
    offered_load: FloatArray
    required: IntArray
    p_wait_now: FloatArray  # with the connectors the site has


def capacity_plan(hours: SiteHours, *, target: float = 0.2) -> CapacityPlan:
    """Connectors needed per site and hour of week to keep P(wait) ≤ ``target``."""
    if not 0 < target < 1:
        raise ValueError("target must be between 0 and 1")
    load = hours.offered_load
    return CapacityPlan(
        target=target, offered_load=load, required=required_connectors(load, target=target),
        p_wait_now=erlang_c(np.broadcast_to(hours.connectors[:, None], load.shape), load),
    )


@dataclass
class GridUpgrade:
    """Per site with a grid limit: what the limit held back and what ``extra_kw`` would add."""

    site_id: str
    limit_kw: float
    extra_kw: float
    peak_demand_kw: float
    slots_over: int
    deferred_kwh: float
    unmet_kwh: float
    held_back_kwh: float
    upgrade_kwh: float
    months: float

    @property
    def held_back_kwh_per_month(self) -> float:
        return self.held_back_kwh / self.months if self.months else 0.0

    @property
    def upgrade_kwh_per_month(self) -> float:
        return self.upgrade_kwh / self.months if self.months else 0.0


def visit_power_kw(v: Visits, inv: Inventory) -> FloatArray:
    """Each visit's connector maximum (kW): its wiring, else 16 A on three phases."""
    if not inv.connector_kw or len(v) == 0:
        return np.full(len(v), DEFAULT_CONNECTOR_KW)
    width = int(v.connector.max()) + 1
    uniq, inverse = np.unique(v.station * width + v.connector, return_inverse=True)
    kw = np.array([inv.connector_kw.get((v.stations[k // width], k % width), DEFAULT_CONNECTOR_KW)
                   for k in uniq.tolist()])
    return kw[inverse]


def grid_upgrade(v: Visits, inv: Inventory, *, start: datetime, end: datetime,
                 extra_kw: float = 22.0, slot_s: float = 900.0,
                 unsatisfied_idle_s: float = 300.0) -> list[GridUpgrade]:
    """Energy each site's grid limit held back, and what ``extra_kw`` more would have delivered.

    The model, per site with a limit L (kW) and closed visits plugged in during the period:

    1. P_i, visit i's connector maximum (kW, from its wiring; 11.04 kW by default).
    2. U_i, the energy visit i left without (kWh): if the car was still charging when it left
       (``idle_s ≤ unsatisfied_idle_s`` and ``charging_s > 0``), what it would have taken at
       P_i over its charging time beyond what it got, ``max(0, P_i·charging_s/3600 - E_i)``;
       otherwise 0 (the car was full, so nothing was withheld from it).
    3. Its uncontrolled demand: P_i from plug-in until it has its wanted energy E_i + U_i,
       i.e. for (E_i + U_i)/P_i hours, cut at unplug.
    4. Per slot s of ``slot_s`` seconds (15 minutes), the demand D_s is the mean of the summed
       demands over the slot (kW); the excess X_s = max(0, D_s - L).
    5. deferred = Σ X_s·Δ (energy the limit pushed later or withheld), unmet = Σ U_i,
       held back = min(deferred, unmet): only energy drivers actually left without counts.
       The upgrade delivers min(Σ min(X_s, extra_kw)·Δ, unmet).

    Monthly figures divide by the period in 30-day months.
    """
    t0 = start.timestamp()
    t1 = end.timestamp()
    months = (t1 - t0) / _SECONDS_PER_MONTH
    sites, site = _site_keys(v, inv)
    limited = [i for i, s in enumerate(sites) if s is not None and s in inv.site_limit_kw]
    if not limited or len(v) == 0:
        return []
    code = np.full(len(sites), -1, dtype=np.int64)
    code[limited] = np.arange(len(limited))
    pick = ((code[site] >= 0) & (v.outcome != OPEN) & (v.start >= t0) & (v.start < t1)
            & (v.end > v.start))
    g = code[site[pick]]
    p_kw = visit_power_kw(v, inv)[pick]
    a, b = v.start[pick], v.end[pick]
    e_kwh = v.energy_wh[pick] / 1000
    charging, idle = v.charging_s[pick], v.idle_s[pick]
    unsatisfied = (idle <= unsatisfied_idle_s) & (charging > 0)
    unmet = np.where(unsatisfied, np.maximum(0.0, p_kw * charging / 3600 - e_kwh), 0.0)
    want_end = np.minimum(b, a + (e_kwh + unmet) / p_kw * 3600)
    unmet_by_site = np.bincount(g, weights=unmet, minlength=len(limited))
    origin = math.floor(t0 / slot_s) * slot_s
    bins = math.ceil((max(t1, float(b.max(initial=t1))) - origin) / slot_s)
    limits = np.array([inv.site_limit_kw[sites[i]] for i in limited])  # type: ignore[index]

    def excess(first: int, block: FloatArray) -> tuple[FloatArray, ...]:
        demand = block / slot_s  # kW-seconds per slot → mean kW
        over = np.maximum(0.0, demand - limits[first:first + block.shape[0], None])
        hours = slot_s / 3600
        return (over.sum(axis=1) * hours, np.minimum(over, extra_kw).sum(axis=1) * hours,
                demand.max(axis=1, initial=0.0), (over > 1e-9).sum(axis=1).astype(np.float64))

    parts = spread_blocked(g, a, want_end, groups=len(limited), origin=origin, step=slot_s,
                           bins=bins, weight=p_kw, reduce=excess)
    deferred, covered, peak, slots = (np.concatenate([p[k] for p in parts]) for k in range(4))
    result = []
    for k, i in enumerate(limited):
        unmet_k = float(unmet_by_site[k])
        result.append(GridUpgrade(
            site_id=str(sites[i]), limit_kw=float(limits[k]), extra_kw=extra_kw,
            peak_demand_kw=float(peak[k]), slots_over=int(slots[k]),
            deferred_kwh=float(deferred[k]), unmet_kwh=unmet_k,
            held_back_kwh=min(float(deferred[k]), unmet_k),
            upgrade_kwh=min(float(covered[k]), unmet_k), months=months,
        ))
    return result


# ---------------------------------------------------------------- findings


@dataclass(frozen=True)
class Thresholds:
    """When a station or site counts as a bottleneck. Shares are 0-1."""

    station_utilisation: float = 0.5
    site_peak_utilisation: float = 0.8
    failed_share: float = 0.1
    fault_rate: float = 0.05
    idle_share: float = 0.3
    # Fewer closed visits than this say nothing about shares.
    min_visits: int = 10
    # Capacity: recommend connectors only where this many arrivals a week would wait.
    min_waiting_per_week: float = 1.0
    # Grid: recommend an upgrade from this much energy a month.
    min_grid_kwh_per_month: float = 50.0


@dataclass(frozen=True)
class Finding:
    """A bottleneck or a recommendation; ``reason`` is machine-readable, ``text`` for people."""

    kind: str
    scope: str  # "station" or "site"
    id: str
    severity: float
    text: str
    reason: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "scope": self.scope, "id": self.id,
                "severity": round(self.severity, 4), "text": self.text, "reason": self.reason}


def _label(inv: Inventory, site_id: str | None) -> str:
    if site_id is None:
        return "unassigned stations"
    return inv.site_name.get(site_id) or site_id


def bottlenecks(hours: SiteHours, stations: StationStats, inv: Inventory, *,
                thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """Stations and sites over a threshold, most severe (value / threshold) first."""
    th = thresholds
    found: list[Finding] = []
    util = stations.utilisation
    for i, sid in enumerate(stations.stations):
        checks = [("high_occupancy", float(util[i]), th.station_utilisation, "utilisation", True)]
        if stations.closed[i] >= th.min_visits:
            checks += [
                ("failed_starts", float(stations.failed_share[i]), th.failed_share,
                 "failed_start_share", False),
                ("faults", float(stations.fault_rate[i]), th.fault_rate, "fault_rate", False),
                ("idle_blocking", float(stations.idle_share[i]), th.idle_share, "idle_share",
                 False),
            ]
        for kind, value, limit, metric, _ in checks:
            if value >= limit and value > 0:
                found.append(Finding(
                    kind=kind, scope="station", id=sid, severity=value / limit,
                    text=f"{sid}: {metric.replace('_', ' ')} {value:.0%} (threshold {limit:.0%})",
                    reason={"metric": metric, "value": round(value, 4), "threshold": limit,
                            "visits": int(stations.closed[i]), "site_id": stations.sites[i]}))
    util_h = hours.utilisation
    for i, site_id in enumerate(hours.sites):
        if hours.connectors[i] == 0 or not hours.started[i].any():
            continue
        peak_how = int(np.argmax(util_h[i]))
        peak = float(util_h[i, peak_how])
        closed = float(hours.closed[i].sum())
        key = site_id or ""
        if peak >= th.site_peak_utilisation:
            found.append(Finding(
                kind="high_occupancy", scope="site", id=key,
                severity=peak / th.site_peak_utilisation,
                text=f"{_label(inv, site_id)}: {peak:.0%} of connectors occupied at"
                     f" {describe_hours([peak_how])}",
                reason={"metric": "peak_utilisation", "value": round(peak, 4),
                        "threshold": th.site_peak_utilisation, "hour_of_week": peak_how,
                        "connectors": int(hours.connectors[i])}))
        if closed >= th.min_visits:
            duration = float(hours.duration_s[i].sum())
            for kind, value, limit, metric in (
                ("failed_starts", float(hours.failed[i].sum()) / closed, th.failed_share,
                 "failed_start_share"),
                ("faults", float(hours.faulted[i].sum()) / closed, th.fault_rate,
                 "fault_rate"),
                ("idle_blocking", float(hours.idle_s[i].sum()) / duration if duration else 0.0,
                 th.idle_share, "idle_share"),
            ):
                if value >= limit and value > 0:
                    found.append(Finding(
                        kind=kind, scope="site", id=key, severity=value / limit,
                        text=f"{_label(inv, site_id)}: {metric.replace('_', ' ')} {value:.0%}"
                             f" (threshold {limit:.0%})",
                        reason={"metric": metric, "value": round(value, 4), "threshold": limit,
                                "visits": int(closed)}))
    found.sort(key=lambda f: (-f.severity, f.scope, f.id, f.kind))
    return found


def recommendations(hours: SiteHours, plan: CapacityPlan, grid: Sequence[GridUpgrade],
                    stations: StationStats, inv: Inventory, *,
                    thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """Ranked actions: connectors to add (Erlang-C), grid upgrades, idle fees, inspections.

    Severity is the finding's measure over its threshold: waiting arrivals a week over
    ``min_waiting_per_week``, kWh a month over ``min_grid_kwh_per_month``, idle share and
    fault rate over theirs; the list is sorted by it, highest first.
    """
    th = thresholds
    out: list[Finding] = []
    short = plan.required > hours.connectors[:, None]
    waiting = hours.arrivals_per_hour * plan.p_wait_now  # per occurrence of the hour
    for i in np.flatnonzero(short.any(axis=1)).tolist():
        hows = np.flatnonzero(short[i])
        per_week = float(waiting[i, hows].sum())
        if per_week < th.min_waiting_per_week:
            continue
        add = int((plan.required[i, hows] - hours.connectors[i]).max())
        worst = int(hows[np.argmax(plan.p_wait_now[i, hows])])
        have = int(hours.connectors[i])
        p_now = float(plan.p_wait_now[i, worst])
        site_id = hours.sites[i]
        out.append(Finding(
            kind="add_connectors", scope="site", id=site_id or "",
            severity=per_week / th.min_waiting_per_week,
            text=f"Add {add} connector{'s' if add != 1 else ''} at {_label(inv, site_id)}:"
                 f" {describe_hours(hows.tolist())} P(wait)={p_now:.2f} with {have}"
                 f" connector{'s' if have != 1 else ''}",
            reason={"add": add, "connectors": have, "target_p_wait": plan.target,
                    "hours_of_week": hows.tolist(), "worst_hour_of_week": worst,
                    "p_wait_now": round(p_now, 4),
                    "offered_load_erlangs": round(float(plan.offered_load[i, worst]), 4),
                    "required": int(plan.required[i, worst]),
                    "waiting_arrivals_per_week": round(per_week, 3)}))
    for g in grid:
        per_month = g.upgrade_kwh_per_month
        if per_month < th.min_grid_kwh_per_month:
            continue
        out.append(Finding(
            kind="raise_grid", scope="site", id=g.site_id,
            severity=per_month / th.min_grid_kwh_per_month,
            text=f"Raise grid at {_label(inv, g.site_id)} by {g.extra_kw:g} kW:"
                 f" {g.held_back_kwh_per_month:,.0f} kWh/month held back,"
                 f" {per_month:,.0f} kWh/month delivered with +{g.extra_kw:g} kW",
            reason={"extra_kw": g.extra_kw, "limit_kw": g.limit_kw,
                    "peak_demand_kw": round(g.peak_demand_kw, 3),
                    "held_back_kwh_per_month": round(g.held_back_kwh_per_month, 3),
                    "upgrade_kwh_per_month": round(per_month, 3),
                    "slots_over_limit": g.slots_over}))
    for i, sid in enumerate(stations.stations):
        if stations.closed[i] < th.min_visits:
            continue
        idle = float(stations.idle_share[i])
        if idle >= th.idle_share:
            out.append(Finding(
                kind="idle_fee", scope="station", id=sid, severity=idle / th.idle_share,
                text=f"Charge an idle fee at {sid}: {idle:.0%} of the time cars are plugged in"
                     f" they do not charge",
                reason={"idle_share": round(idle, 4), "threshold": th.idle_share,
                        "mean_idle_h": round(float(stations.idle_s[i] / stations.closed[i])
                                             / 3600, 3)}))
        fault = float(stations.fault_rate[i])
        failed = float(stations.failed_share[i])
        if fault >= th.fault_rate or failed >= th.failed_share:
            severity = max(fault / th.fault_rate, failed / th.failed_share)
            out.append(Finding(
                kind="inspect_station", scope="station", id=sid, severity=severity,
                text=f"Inspect {sid}: {fault:.0%} of visits faulted, {failed:.0%} failed to start",
                reason={"fault_rate": round(fault, 4), "failed_start_share": round(failed, 4),
                        "thresholds": {"fault_rate": th.fault_rate,
                                       "failed_start_share": th.failed_share},
                        "visits": int(stations.closed[i])}))
    out.sort(key=lambda f: (-f.severity, f.kind, f.id))
    return out


# ---------------------------------------------------------------- the whole analysis


@dataclass
class Report:
    start: datetime
    end: datetime
    visits: int
    hours: SiteHours
    stations: StationStats
    plan: CapacityPlan
    grid: list[GridUpgrade]
    bottlenecks: list[Finding]
    recommendations: list[Finding]
    inventory: Inventory

    def site_index(self, site_id: str) -> int:
        for i, s in enumerate(self.hours.sites):
            if (s or "") == site_id:
                return i
        raise KeyError(site_id)


def analyse(engine: Engine, *, start: datetime, end: datetime, target: float = 0.2,
            extra_kw: float = 22.0, thresholds: Thresholds = Thresholds(),
            site_ids: Sequence[str] | None = None, station_ids: Sequence[str] | None = None,
            now: datetime | None = None, inventory: Inventory | None = None,
            timings: dict[str, float] | None = None) -> Report:
    """Load the visits of ``[start, end)`` and compute everything: per site and hour of week,
    per station, Erlang-C plan, grid upgrades, bottlenecks and recommendations.

    ``timings``, if given, receives the seconds each phase took (the bench reports them).
    """
    clock = _Clock(timings)
    if inventory is None:
        with Session(engine) as session:
            inventory = load_inventory(session)
    clock.lap("inventory")
    visits = load_visits(engine, start=start, end=end, site_ids=site_ids,
                         station_ids=station_ids)
    clock.lap("query")
    if site_ids is not None:
        # Only the asked sites, though the inventory knows them all.
        keep = set(site_ids)
        inventory = Inventory(
            site_zone={k: z for k, z in inventory.site_zone.items() if k in keep},
            site_name=inventory.site_name, station_site=inventory.station_site,
            station_connectors=inventory.station_connectors,
            connector_kw=inventory.connector_kw, site_limit_kw=inventory.site_limit_kw,
            default_zone=inventory.default_zone)
    hours = site_hours(visits, inventory, start=start, end=end, now=now)
    clock.lap("site_hours")
    stations = station_stats(visits, inventory, start=start, end=end, now=now)
    clock.lap("stations")
    plan = capacity_plan(hours, target=target)
    clock.lap("erlang_c")
    grid = grid_upgrade(visits, inventory, start=start, end=end, extra_kw=extra_kw)
    clock.lap("grid")
    found = bottlenecks(hours, stations, inventory, thresholds=thresholds)
    clock.lap("bottlenecks")
    recs = recommendations(hours, plan, grid, stations, inventory, thresholds=thresholds)
    clock.lap("recommendations")
    return Report(start=start, end=end, visits=len(visits), hours=hours, stations=stations,
                  plan=plan, grid=grid, bottlenecks=found, recommendations=recs,
                  inventory=inventory)


class _Clock:
    def __init__(self, into: dict[str, float] | None) -> None:
        self.into = into
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.into is not None:
            now = time.perf_counter()
            self.into[name] = now - self.last
            self.last = now


# ---------------------------------------------------------------- tables and CSV


def site_hour_rows(report: Report, *, site_id: str | None = None) -> list[dict[str, Any]]:
    """One row per site and hour of week (only ``site_id`` if given)."""
    h, p = report.hours, report.plan
    util, lam, mean_d, mean_c = (h.utilisation, h.arrivals_per_hour, h.mean_duration_s,
                                 h.mean_charging_s)
    idle, failed, fault = h.idle_share, h.failed_share, h.fault_rate
    rows = []
    for i, s in enumerate(h.sites):
        if site_id is not None and (s or "") != site_id:
            continue
        for w in range(HOURS_PER_WEEK):
            rows.append({
                "site_id": s, "hour_of_week": w, "day": DAYS[w // 24], "hour": w % 24,
                "connectors": int(h.connectors[i]), "utilisation": round(float(util[i, w]), 4),
                "sessions": int(h.started[i, w]),
                "arrivals_per_hour": round(float(lam[i, w]), 4),
                "mean_duration_h": round(float(mean_d[i, w]) / 3600, 4),
                "mean_charging_h": round(float(mean_c[i, w]) / 3600, 4),
                "idle_share": round(float(idle[i, w]), 4),
                "energy_kwh": round(float(h.energy_wh[i, w]) / 1000, 3),
                "failed_start_share": round(float(failed[i, w]), 4),
                "fault_rate": round(float(fault[i, w]), 4),
                "offered_load_erlangs": round(float(p.offered_load[i, w]), 4),
                "pointwise_load_erlangs": round(float(h.pointwise_load[i, w]), 4),
                "required_connectors": int(p.required[i, w]),
                "p_wait_now": round(float(p.p_wait_now[i, w]), 4),
            })
    return rows


def station_rows(report: Report, *, station_id: str | None = None) -> list[dict[str, Any]]:
    s = report.stations
    util, mean_d, mean_c = s.utilisation, s.mean_duration_s, s.mean_charging_s
    idle, failed, fault = s.idle_share, s.failed_share, s.fault_rate
    return [{
        "station_id": sid, "site_id": s.sites[i], "connectors": int(s.connectors[i]),
        "utilisation": round(float(util[i]), 4), "sessions": int(s.started[i]),
        "mean_duration_h": round(float(mean_d[i]) / 3600, 4),
        "mean_charging_h": round(float(mean_c[i]) / 3600, 4),
        "idle_share": round(float(idle[i]), 4),
        "energy_kwh": round(float(s.energy_wh[i]) / 1000, 3),
        "failed_start_share": round(float(failed[i]), 4),
        "fault_rate": round(float(fault[i]), 4),
    } for i, sid in enumerate(s.stations) if station_id is None or sid == station_id]


def station_hour_rows(report: Report, engine: Engine, *, station_id: str,
                      now: datetime | None = None) -> list[dict[str, Any]]:
    """Hour-of-week rows for one station, in its site's zone (computed on its visits)."""
    visits = load_visits(engine, start=report.start, end=report.end, station_ids=[station_id])
    inv = report.inventory
    site = inv.station_site.get(station_id)
    if site is None and visits.sites:
        site = visits.sites[0]
    zone = inv.site_zone.get(site or "", inv.default_zone)
    # The station as a site of its own: same computation, its connectors only.
    own = Inventory(site_zone={station_id: zone}, site_name={}, station_site={
        station_id: station_id}, station_connectors={
        station_id: inv.station_connectors.get(station_id, set())},
        connector_kw=inv.connector_kw, default_zone=inv.default_zone)
    visits.sites = [station_id] * max(1, len(visits.sites))
    visits.site = np.zeros(len(visits), dtype=np.int64)
    hours = site_hours(visits, own, start=report.start, end=report.end, now=now)
    plan = capacity_plan(hours, target=report.plan.target)
    sub = Report(start=report.start, end=report.end, visits=len(visits), hours=hours,
                 stations=report.stations, plan=plan, grid=[], bottlenecks=[],
                 recommendations=[], inventory=own)
    rows = site_hour_rows(sub, site_id=station_id)
    for row in rows:
        row["station_id"] = row.pop("site_id")
        row["site_id"] = site
    return rows


def grid_rows(report: Report) -> list[dict[str, Any]]:
    return [{
        "site_id": g.site_id, "limit_kw": round(g.limit_kw, 3), "extra_kw": g.extra_kw,
        "peak_demand_kw": round(g.peak_demand_kw, 3), "slots_over_limit": g.slots_over,
        "deferred_kwh": round(g.deferred_kwh, 3), "unmet_kwh": round(g.unmet_kwh, 3),
        "held_back_kwh": round(g.held_back_kwh, 3), "upgrade_kwh": round(g.upgrade_kwh, 3),
        "held_back_kwh_per_month": round(g.held_back_kwh_per_month, 3),
        "upgrade_kwh_per_month": round(g.upgrade_kwh_per_month, 3),
    } for g in report.grid]


def finding_rows(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    import json

    return [{**f.as_dict(), "reason": json.dumps(f.reason, sort_keys=True)} for f in findings]


def daily_energy_rows(report: Report, *, site_id: str | None = None) -> list[dict[str, Any]]:
    h = report.hours
    rows = []
    first, last = report.start.date() - timedelta(days=1), report.end.date() + timedelta(days=1)
    for i, s in enumerate(h.sites):
        if site_id is not None and (s or "") != site_id:
            continue
        for d in np.flatnonzero(h.daily_energy_wh[i]).tolist():
            day = h.first_day + timedelta(days=d)
            if first <= day <= last:
                rows.append({"site_id": s, "date": day.isoformat(),
                             "energy_kwh": round(float(h.daily_energy_wh[i, d]) / 1000, 3)})
    return rows


EXPORT_KINDS = ("site_hours", "stations", "bottlenecks", "recommendations", "grid",
                "daily_energy")


def export_rows(report: Report, kind: str, *, site_id: str | None = None
                ) -> list[dict[str, Any]]:
    """The rows of one export ``kind`` (see :data:`EXPORT_KINDS`)."""
    if kind == "site_hours":
        return site_hour_rows(report, site_id=site_id)
    if kind == "stations":
        return station_rows(report)
    if kind == "bottlenecks":
        return finding_rows(report.bottlenecks)
    if kind == "recommendations":
        return finding_rows(report.recommendations)
    if kind == "grid":
        return grid_rows(report)
    if kind == "daily_energy":
        return daily_energy_rows(report, site_id=site_id)
    raise ValueError(f"unknown export kind {kind!r}; one of {', '.join(EXPORT_KINDS)}")


def to_csv(rows: Sequence[dict[str, Any]], *, columns: Sequence[str] | None = None) -> str:
    """RFC 4180 CSV (CRLF line ends) with a header row."""
    buffer = io.StringIO()
    names = list(columns or (rows[0].keys() if rows else []))
    writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()
