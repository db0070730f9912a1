"""`chargedesk bench analytics`: the full usage analytics over a year of visits, beside a
plain SQL aggregate over the same table.

What happens, in order:

1. A database: by default a fresh PostgreSQL schema (``bench_analytics``) on the local
   server, migrated; or the empty database at ``--database-url`` (SQLite allowed).
2. The patterns of the Trondheim residential charging data (``trondheim_residential_2018-
   2020.csv``, 6,878 sessions in 24 garages, 97 users) are learnt: every session's local hour
   of the week and minute of plug-in, its duration and energy, grouped by garage.
3. N visits are generated for 2025 over N/1,000 sites (so about 1,000 sites for a million,
   each with two-connector stations for its expected occupancy times 1.3-3, plus one
   connector: a few thousand connectors). Each site copies
   one garage's mix (garages chosen in proportion to their sessions) and gets a lognormal
   share of the visits; a visit resamples one of its garage's sessions (hour of week, minute,
   duration and energy, jittered by ±10 %) into a random week of the year. The car's charging
   power (3.6, 7.2 or 11 kW, per simulated user) splits the duration into charging and idle
   time. 2 % of visits fail to start; most stations fault on 0.5 % of visits, one in twenty on
   10 %. Visits are put on the site's connectors in order of arrival: a driver finding all of
   them taken waits up to an hour, else comes back one to three weeks later; so no connector
   is ever occupied twice. Each site draws 30 % more candidates than its share and keeps its
   share of those placed, at random. 80 % of sites are in Europe/Oslo, the rest in
   Stockholm and Helsinki; 30 %
   have a grid limit below what their connectors could draw.
4. Sites, stations, connectors, grid limits and the visits are loaded outside the timed part
   (COPY on PostgreSQL, executemany on SQLite), then analysed (VACUUM ANALYZE on PostgreSQL).
5. Timed three times each, alternating: the full analytics (``load_manager.analytics.analyse``:
   query + per site and hour of week + per station + Erlang-C + grid upgrade + bottlenecks +
   recommendations) and the baseline ``SELECT station_id, count(*), sum(...) GROUP BY
   station_id``. The medians are reported with each phase's time from the median run. The
   analytics' visit count and energy are checked against the baseline's.
6. The schema (or, on a given database, the bench's rows) is dropped unless ``keep``.
"""

from __future__ import annotations

import csv
import heapq
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from sqlalchemy import text

from chargedesk.bench.billing import Sink
from chargedesk.bench.database import (
    BenchError,
    Database,
    drop_own_schema,
    open_database,
)
from chargedesk.db import make_engine

Progress = Callable[[str], None]

DEFAULT_SCHEMA = "bench_analytics"
DATA_FILE = (Path(__file__).resolve().parents[3] / "shared" / "data" / "sessions"
             / "trondheim_residential_2018-2020.csv")
YEAR_START = datetime(2025, 1, 1, tzinfo=UTC)
YEAR_END = datetime(2026, 1, 1, tzinfo=UTC)
SESSIONS_PER_SITE = 1_000
CONNECTORS_PER_STATION = 2
ZONES = (("Europe/Oslo", 0.8), ("Europe/Stockholm", 0.1), ("Europe/Helsinki", 0.1))
CAR_KW = (3.6, 7.2, 11.0)
FAILED_START_SHARE = 0.02
MAX_WAIT_S = 3600.0
SPARES = 1.3
MAX_DURATION_S = 72 * 3600.0
REPEATS = 3
TARGET_S = 10.0
BASELINE_SQL = ("SELECT station_id, count(*), sum(energy_wh), sum(charging_s), sum(idle_s)"
                " FROM usage_session GROUP BY station_id")
TABLES = ("site", "station", "connector", "site_grid", "usage_session")
USAGE_COLUMNS = ("station_id", "connector_id", "site_id", "plugged_in_at", "unplugged_at",
                 "charging_s", "idle_s", "energy_wh", "outcome")


# ---------------------------------------------------------------- learning the patterns


@dataclass
class Patterns:
    """The Trondheim sessions as arrays: plug-in local hour of week and minute, duration (s),
    energy (Wh), and each session's garage code."""

    how: np.ndarray
    minute: np.ndarray
    duration_s: np.ndarray
    energy_wh: np.ndarray
    garage: np.ndarray
    garages: list[str]
    users: int


def learn(path: Path = DATA_FILE) -> Patterns:
    """Read the ``;``-separated, decimal-comma file; sessions without a duration are skipped."""
    if not path.exists():
        raise BenchError(f"the session patterns are missing: {path}")
    how, minute, duration, energy, garage = [], [], [], [], []
    garages: dict[str, int] = {}
    users: set[str] = set()
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter=";"):
            if "NA" in (row["Duration_hours"], row["El_kWh"]):
                continue
            plugged = datetime.strptime(row["Start_plugin"], "%d.%m.%Y %H:%M")
            how.append(plugged.weekday() * 24 + plugged.hour)
            minute.append(plugged.minute)
            duration.append(float(row["Duration_hours"].replace(",", ".")) * 3600)
            energy.append(float(row["El_kWh"].replace(",", ".")) * 1000)
            garage.append(garages.setdefault(row["Garage_ID"], len(garages)))
            users.add(row["User_ID"])
    return Patterns(np.array(how), np.array(minute), np.array(duration), np.array(energy),
                    np.array(garage), list(garages), len(users))


# ---------------------------------------------------------------- generating the network


@dataclass
class Network:
    sites: list[tuple[str, str, str]]  # id, name, zone
    stations: list[tuple[str, str]]  # id, site id
    grid: list[tuple[str, float]]  # site id, kW
    usage: dict[str, Any]  # column arrays of usage_session
    connectors: int
    energy_wh: int
    waited: int


def generate(patterns: Patterns, *, sessions: int, seed: int = 1) -> Network:
    """A year of visits with the patterns' mix, deterministic for a seed (see module doc)."""
    rng = np.random.default_rng(seed)
    n_sites = max(1, round(sessions / SESSIONS_PER_SITE))
    garage_sessions = np.bincount(patterns.garage, minlength=len(patterns.garages))
    site_garage = rng.choice(len(patterns.garages), size=n_sites,
                             p=garage_sessions / garage_sessions.sum())
    weight = rng.lognormal(0.0, 0.6, size=n_sites)
    per_site = rng.multinomial(sessions, weight / weight.sum())
    # Stations for the site's expected occupancy times a margin that leaves some sites tight.
    garage_duration = np.bincount(patterns.garage, weights=np.minimum(
        patterns.duration_s, MAX_DURATION_S), minlength=len(patterns.garages)) / garage_sessions
    busy = per_site * garage_duration[site_garage] / (YEAR_END - YEAR_START).total_seconds()
    connectors_needed = np.ceil(busy * rng.uniform(1.3, 3.0, n_sites)) + 1
    stations_per_site = np.maximum(1, np.ceil(connectors_needed / CONNECTORS_PER_STATION)
                                   ).astype(int)
    zone_names = [z for z, _ in ZONES]
    site_zone = rng.choice(len(ZONES), size=n_sites, p=[p for _, p in ZONES])
    sites = [(f"BENCH-SITE-{i:05d}", f"Bench site {i}", zone_names[site_zone[i]])
             for i in range(n_sites)]
    stations: list[tuple[str, str]] = []
    site_stations: list[list[str]] = []
    for i in range(n_sites):
        ids = [f"BENCH-{i:05d}-{k}" for k in range(stations_per_site[i])]
        site_stations.append(ids)
        stations += [(sid, sites[i][0]) for sid in ids]
    faulty = {sid for sid, _ in stations if rng.random() < 0.05}
    grid = [(sites[i][0], round(float(stations_per_site[i] * CONNECTORS_PER_STATION * 11.04
                                      * rng.uniform(0.3, 0.7)), 1))
            for i in range(n_sites) if rng.random() < 0.3]
    by_garage = [np.flatnonzero(patterns.garage == g) for g in range(len(patterns.garages))]
    weeks = (YEAR_END - YEAR_START).days // 7 + 1
    # The Monday 00:00 UTC on or before the year's start; local time is shifted per zone.
    monday0 = YEAR_START.timestamp() - ((YEAR_START.weekday()) * 86400)
    zone_offset = {z: ZoneInfo(z).utcoffset(datetime(2025, 1, 15)).total_seconds()  # type: ignore[union-attr]
                   for z in zone_names}

    year_lo, year_hi = YEAR_START.timestamp(), YEAR_END.timestamp()
    cols: dict[str, list[Any]] = {c: [] for c in USAGE_COLUMNS}
    energy_total = waited = 0
    for i in range(n_sites):
        k = int(per_site[i])
        if k == 0:
            continue
        pool = by_garage[site_garage[i]]
        # Candidates beyond k: some fall outside the year or give up; k of those placed stay.
        m = int(k * SPARES) + 5
        picks = pool[rng.integers(0, len(pool), size=m)]
        jitter = rng.uniform(0.9, 1.1, size=m)
        week = rng.integers(0, weeks, size=m)
        starts = (monday0 + week * 604_800 + patterns.how[picks] * 3600.0
                  + patterns.minute[picks] * 60.0 + rng.uniform(0, 60, size=m)
                  - zone_offset[sites[i][2]])
        durations = np.minimum(patterns.duration_s[picks] * jitter, MAX_DURATION_S)
        energies = np.round(patterns.energy_wh[picks] * jitter)
        car_kw = np.array(CAR_KW)[rng.integers(0, len(CAR_KW), size=m)]
        failed = rng.random(m) < FAILED_START_SHARE
        fault_draw = rng.random(m)
        come_back = rng.integers(1, 4, size=m) * 604_800.0
        connectors = [(sid, c + 1) for sid in site_stations[i]
                      for c in range(CONNECTORS_PER_STATION)]
        free: list[tuple[float, int]] = [(0.0, n) for n in range(len(connectors))]
        pending = [(float(starts[j]), j) for j in range(m) if year_lo <= starts[j] < year_hi]
        heapq.heapify(pending)
        placed: list[tuple[Any, ...]] = []
        while pending:
            t, j = heapq.heappop(pending)
            free_at, n = free[0]
            if free_at > t + MAX_WAIT_S:
                # All taken for too long: the driver comes back one to three weeks later.
                if t + come_back[j] < year_hi:
                    heapq.heappush(pending, (t + come_back[j], j))
                continue
            begin = max(t, free_at)
            if begin >= year_hi:
                continue
            station_id, connector_id = connectors[n]
            if failed[j]:
                # A refused card or a car that would not start: a few minutes.
                duration, charging, wh, outcome = (60.0 + 540 * float(fault_draw[j]), 0.0, 0,
                                                   "failed_start")
            else:
                duration = float(durations[j])
                wh = int(energies[j])
                charging = min(duration, wh / car_kw[j] * 3.6)
                rate = 0.10 if station_id in faulty else 0.005
                outcome = "faulted" if fault_draw[j] < rate else "completed"
            heapq.heapreplace(free, (begin + duration, n))
            placed.append((station_id, connector_id, begin, begin + duration, round(charging),
                           round(duration - charging), wh, outcome, begin > t))
        if len(placed) < k:
            raise BenchError(f"site {sites[i][0]} took {len(placed)} of its {k} visits")
        # Leaving visits out frees connectors, so any k of them still never overlap.
        for n in np.sort(rng.choice(len(placed), size=k, replace=False)).tolist():
            station_id, connector_id, begin, end, charging, idle, wh, outcome, w = placed[n]
            cols["station_id"].append(station_id)
            cols["connector_id"].append(connector_id)
            cols["site_id"].append(sites[i][0])
            cols["plugged_in_at"].append(begin)
            cols["unplugged_at"].append(end)
            cols["charging_s"].append(charging)
            cols["idle_s"].append(idle)
            cols["energy_wh"].append(wh)
            cols["outcome"].append(outcome)
            energy_total += wh
            waited += w
    if len(cols["station_id"]) != sessions:
        raise BenchError(f"generated {len(cols['station_id'])} visits, not {sessions}")
    return Network(sites, stations, grid, cols, len(stations) * CONNECTORS_PER_STATION,
                   energy_total, waited)


# ---------------------------------------------------------------- the database


def _open(url: str | None, schema: str, say: Progress) -> Database:
    return open_database(url, schema, say, must_be_empty=('usage_session', 'station'))


def _timestamps(epoch: list[float], *, postgres: bool) -> list[str]:
    micros = np.round(np.array(epoch, dtype=np.float64) * 1e6).astype(np.int64)
    text_ = np.datetime_as_string(micros.astype("datetime64[us]"), unit="us")
    if postgres:
        return [t + "+00" for t in text_.tolist()]
    # SQLAlchemy's SQLite DateTime form: naive UTC with a space and microseconds.
    return [t.replace("T", " ") for t in text_.tolist()]


def _load(db: Database, net: Network, say: Progress) -> float:
    now = datetime.now(UTC)
    now_text = _timestamps([now.timestamp()], postgres=db.postgres)[0]
    usage = dict(net.usage)
    usage["plugged_in_at"] = _timestamps(usage["plugged_in_at"], postgres=db.postgres)
    usage["unplugged_at"] = _timestamps(usage["unplugged_at"], postgres=db.postgres)
    usage_rows = list(zip(*(usage[c] for c in USAGE_COLUMNS), strict=True))
    sink = Sink(db.url, threading.Lock())
    began = time.perf_counter()
    try:
        sink.write([
            ("site", ("id", "name", "time_zone", "created_at"),
             [(*s, now_text) for s in net.sites]),
            ("station", ("id", "site_id", "registration", "online", "created_at"),
             [(sid, site, "accepted", "false" if db.postgres else 0, now_text)
              for sid, site in net.stations]),
            ("connector", ("station_id", "connector_id", "status", "error_code", "status_at"),
             [(sid, c + 1, "Available", "NoError", now_text) for sid, _ in net.stations
              for c in range(CONNECTORS_PER_STATION)]),
            ("site_grid", ("site_id", "power_limit_kw", "voltage_v", "policy", "enabled",
                           "updated_at"),
             [(site, kw, 230.0, "equal_share", "true" if db.postgres else 1, now_text)
              for site, kw in net.grid]),
        ])
        step = 100_000
        for first in range(0, len(usage_rows), step):
            sink.write([("usage_session", USAGE_COLUMNS, usage_rows[first:first + step])])
            say(f"loaded {min(first + step, len(usage_rows)):,}/{len(usage_rows):,} visits")
    finally:
        sink.close()
    insert_s = time.perf_counter() - began
    if db.postgres:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in TABLES:
                conn.execute(text(f'VACUUM (ANALYZE) "{table}"'))
    else:
        with db.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return insert_s


def _close(db: Database, keep: bool, say: Progress) -> None:
    db.engine.dispose()
    if keep:
        say(f"kept: {db.url}")
        return
    if drop_own_schema(db, say):
        return
    # Someone else's database: take out the bench's rows, children first.
    engine = make_engine(db.url)
    try:
        with engine.begin() as conn:
            for table in reversed(TABLES):
                conn.execute(text(f'DELETE FROM "{table}"'))
    finally:
        engine.dispose()
    say("deleted the bench rows")


# ---------------------------------------------------------------- the run


def run(*, sessions: int = 1_000_000, database_url: str | None = None, keep: bool = False,
        seed: int = 1, schema: str = DEFAULT_SCHEMA, progress: Progress | None = None,
        data_file: Path = DATA_FILE) -> dict[str, Any]:
    """Generate and load ``sessions`` visits, then time the analytics beside the baseline."""
    from load_manager.analytics import analyse

    say = progress or (lambda _text: None)
    if sessions < 1:
        raise BenchError("sessions must be positive")
    patterns = learn(data_file)
    say(f"learnt {len(patterns.how):,} Trondheim sessions, {len(patterns.garages)} garages,"
        f" {patterns.users} users")
    began = time.perf_counter()
    net = generate(patterns, sessions=sessions, seed=seed)
    generate_s = time.perf_counter() - began
    say(f"generated {sessions:,} visits at {len(net.sites):,} sites, {len(net.stations):,}"
        f" stations, {net.connectors:,} connectors ({generate_s:.1f} s)")
    db = _open(database_url, schema, say)
    try:
        insert_s = _load(db, net, say)
        analytics_runs: list[float] = []
        phases: list[dict[str, float]] = []
        baseline_runs: list[float] = []
        report = None
        baseline: list[Any] = []
        for k in range(REPEATS):
            t = time.perf_counter()
            with db.engine.connect() as conn:
                baseline = conn.execute(text(BASELINE_SQL)).all()
            baseline_runs.append(time.perf_counter() - t)
            timings: dict[str, float] = {}
            t = time.perf_counter()
            report = analyse(db.engine, start=YEAR_START, end=YEAR_END, timings=timings)
            analytics_runs.append(time.perf_counter() - t)
            phases.append(timings)
            say(f"run {k + 1}/{REPEATS}: analytics {analytics_runs[-1]:.2f} s,"
                f" baseline {baseline_runs[-1]:.3f} s")
        assert report is not None
        base_visits = sum(int(r[1]) for r in baseline)
        base_energy = sum(int(r[2]) for r in baseline)
        analysed_energy = int(report.stations.energy_wh.sum())
        failures = []
        if report.visits != sessions or base_visits != sessions:
            failures.append(f"analytics saw {report.visits} visits, the baseline {base_visits},"
                            f" {sessions} were loaded")
        if analysed_energy != base_energy or base_energy != net.energy_wh:
            failures.append(f"energy: analytics {analysed_energy} Wh, baseline {base_energy} Wh,"
                            f" generated {net.energy_wh} Wh")
        median = statistics.median(analytics_runs)
        base_median = statistics.median(baseline_runs)
        median_run = phases[analytics_runs.index(sorted(analytics_runs)[len(analytics_runs) // 2])]
        kinds: dict[str, int] = {}
        for f in report.recommendations:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        return {
            "database": db.engine.dialect.name, "sessions": sessions, "seed": seed,
            "sites": len(net.sites), "stations": len(net.stations),
            "connectors": net.connectors, "sites_with_grid_limit": len(net.grid),
            "waited_visits": int(net.waited),
            "generate_s": round(generate_s, 3), "insert_s": round(insert_s, 3),
            "analytics": {"median_s": round(median, 4),
                          "runs_s": [round(t, 4) for t in analytics_runs],
                          "phases_s_of_median_run": {k: round(v, 4)
                                                     for k, v in median_run.items()}},
            "baseline": {"what": BASELINE_SQL, "median_s": round(base_median, 4),
                         "runs_s": [round(t, 4) for t in baseline_runs],
                         "groups": len(baseline)},
            "analytics_vs_baseline": round(median / base_median, 2) if base_median else None,
            "target_s": TARGET_S, "target_met": median < TARGET_S and not failures,
            "findings": {"bottlenecks": len(report.bottlenecks),
                         "recommendations": kinds,
                         "top_recommendation": (report.recommendations[0].text
                                                if report.recommendations else None)},
            "kept": db.url if keep else None,
            "failures": failures,
        }
    finally:
        _close(db, keep, say)


def summary(figures: dict[str, Any]) -> str:
    a, b = figures["analytics"], figures["baseline"]
    phases = ", ".join(f"{k} {v:.2f}" for k, v in a["phases_s_of_median_run"].items())
    lines = [
        f"bench analytics: {figures['sessions']:,} visits, {figures['sites']:,} sites,"
        f" {figures['stations']:,} stations, {figures['connectors']:,} connectors,"
        f" {figures['database']}",
        f"  loaded in {figures['insert_s']:.1f} s (generated in {figures['generate_s']:.1f} s;"
        " not timed)",
        f"  full analytics: {a['median_s']:.2f} s median of {len(a['runs_s'])}"
        f" ({', '.join(f'{t:.2f}' for t in a['runs_s'])})",
        f"    phases (s): {phases}",
        f"  baseline GROUP BY station_id: {b['median_s']:.3f} s median;"
        f" analytics/baseline = {figures['analytics_vs_baseline']}",
        f"  target < {figures['target_s']:.0f} s: {'met' if figures['target_met'] else 'MISSED'}",
        f"  findings: {figures['findings']['bottlenecks']:,} bottlenecks, recommendations"
        f" {figures['findings']['recommendations']}",
    ]
    if figures["findings"]["top_recommendation"]:
        lines.append(f"  top: {figures['findings']['top_recommendation']}")
    if figures.get("kept"):
        lines.append(f"kept: {figures['kept']}")
    lines += [f"FAILED: {f}" for f in figures["failures"]]
    return "\n".join(lines)
