"""`chargedesk bench billing`: rating throughput and the monthly invoice run, each beside a
plain SQL aggregate over the same rows.

What happens, in order:

1. A database: by default a fresh PostgreSQL schema (``bench_billing``) on the local server,
   migrated; or the empty database at ``--database-url`` (SQLite allowed).
2. Drivers (M) and a few stations are inserted by this process.
3. W worker processes (``spawn``) generate and rate the N sessions. Each session is generated
   deterministically from (seed, session number), so the same seed gives the same sessions
   whatever the worker count: a realistic meter timeline of about 30 samples (plug-in,
   charging at varying power with a reading every few minutes, a SuspendedEV tail, unplug)
   priced with a Swedish tariff (session fee, day/night energy, parking after a grace period).
   Work goes in rounds: every worker generates its chunk, all meet at a barrier, all rate
   (timed: ``rating_batch.rate_batch(tariff, reports)`` over the round's reports, parsing
   included; sessions it cannot rate go through ``rating.rate`` one by one inside it, and
   are counted), then build their rows (timed apart), rate every CHECK_EVERY-th session
   again with the exact engine (``rating.rate``, untimed as rating; CPU time kept) and fail
   if anything differs, meet again, and load their rows. Rating therefore runs on all workers
   at once with nothing else of the bench on the machine; a round's rating wall time is from
   the first worker's start to the last worker's end, and sessions/s is N over the sum of
   those. CPU µs per session of the batch and of the exact engine on the sample are reported
   side by side: on a shared machine that ratio is steadier than the wall times.
4. Each worker loads, outside the timed part, what the invoice run reads: transactions,
   ``charging_session`` rows (status rated, totals as billing stores them, no CDR JSON) and
   ``session_cost_line`` rows (``cost_lines_of`` of the CDR, as the batch gives them), plus
   every sample into the plain table ``bench_sample`` for the rating baseline (COPY on
   PostgreSQL, executemany on SQLite).
5. Rating baseline: ``GROUP BY session_id`` over ``bench_sample`` (energy = max - min,
   duration), timed three times; its sessions/s shows what reading the same data costs.
6. Invoice baseline: the per-driver, per-VAT-rate sum of cost lines, three times; then
   ``run_invoices`` for October 2026 (issued 2026-11-02), once. The run is checked against
   the aggregate driver by driver (invoice count, nets, VAT) and a mismatch fails the bench.
7. The schema (or, on a given database, ``bench_sample``) is dropped unless ``keep``.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import queue
import random
import statistics
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, text

from chargedesk.bench import stats
from chargedesk.bench.database import (
    BenchError,
    Database,
    drop_own_schema,
    open_database,
)
from chargedesk.db import make_engine, normalise_url, session_scope

Progress = Callable[[str], None]

DEFAULT_SCHEMA = "bench_billing"
ZONE = "Europe/Stockholm"
PERIOD_START = date(2026, 10, 1)
ISSUE_DATE = date(2026, 11, 2)
# October 2026 in Stockholm, as UTC: sessions start from the first and end before the
# period's end (local midnight, CET after the 25 October DST change).
MONTH_FIRST_UTC = datetime(2026, 10, 1, tzinfo=ZoneInfo(ZONE)).astimezone(UTC)
MONTH_END_UTC = datetime(2026, 11, 1, tzinfo=ZoneInfo(ZONE)).astimezone(UTC)
# No generated session lasts this long, so one starting before the window's end ends in
# October.
LONGEST_SESSION_S = 12 * 3600
STATIONS = 20
CONNECTORS = 2
TARIFF_ID = "BENCH-SE"
# A Swedish public tariff shaped like the demo's SE-STANDARD, with the parts it lacks so the
# engine does all its kinds of work: a session fee, energy cheaper 22-06 local time (the
# clock cut), and a parking fee once the session has lasted an hour (a duration cut).
# Prices excl. VAT; JSON text so that parse_tariff reads them as exact Decimals.
TARIFF_JSON = """{
 "country_code": "SE", "party_id": "CDK", "id": "BENCH-SE", "currency": "SEK",
 "elements": [
  {"price_components": [{"type": "FLAT", "price": 2.00, "vat": 25, "step_size": 1}]},
  {"price_components": [{"type": "ENERGY", "price": 1.56, "vat": 25, "step_size": 1}],
   "restrictions": {"start_time": "22:00", "end_time": "06:00"}},
  {"price_components": [{"type": "ENERGY", "price": 2.56, "vat": 25, "step_size": 1}]},
  {"price_components": [{"type": "PARKING_TIME", "price": 48.00, "vat": 25, "step_size": 60}],
   "restrictions": {"min_duration": 3600}}
 ],
 "last_updated": "2026-09-01T00:00:00Z"
}"""
# Sessions each worker generates and rates per round: big enough that the barrier costs
# nothing, small enough that a round's samples (about 75,000 dicts) stay a few tens of MB.
CHUNK = 2500
# Every this many sessions one is rated again by the exact engine and compared (untimed).
CHECK_EVERY = 25
BASELINE_REPEATS = 3
PROGRESS_EVERY_S = 5.0
BARRIER_TIMEOUT_S = 900.0

SAMPLE_COLUMNS = ("session_id", "at_s", "energy_wh", "power_w", "status")
TRANSACTION_COLUMNS = (
    "id", "station_id", "connector_id", "id_tag", "id_tag_status", "meter_start_wh",
    "start_timestamp", "meter_stop_wh", "stop_timestamp", "stop_reason", "created_at",
)
SESSION_COLUMNS = (
    "id", "transaction_id", "station_id", "connector_id", "id_tag", "driver_id", "start_at",
    "end_at", "energy_wh", "tariff_id", "tariff_version", "currency", "time_zone", "status",
    "total_excl_vat_ore", "total_incl_vat_ore", "rated_at",
)
COST_LINE_COLUMNS = (
    "session_id", "dimension", "quantity", "unit", "unit_price", "net_ore", "vat_rate",
)
# The tables the bench fills; bench_sample last (it is the bench's own).
BENCH_TABLES = ("driver", "transaction", "charging_session", "session_cost_line", "bench_sample")
DRIVER_COLUMNS = ("id", "name", "email", "language", "currency", "payment_method",
                  "created_at")

RATING_BASELINE_SQL = """
SELECT count(*), coalesce(sum(energy_wh), 0), coalesce(sum(duration_s), 0)
FROM (SELECT session_id, max(energy_wh) - min(energy_wh) AS energy_wh,
             max(at_s) - min(at_s) AS duration_s
      FROM bench_sample GROUP BY session_id) AS per_session
"""
INVOICE_BASELINE_SQL = """
SELECT s.driver_id, l.vat_rate, sum(l.net_ore)
FROM session_cost_line l JOIN charging_session s ON s.id = l.session_id
WHERE s.status = 'rated' AND s.invoice_id IS NULL AND s.driver_id IS NOT NULL
  AND s.end_at < :cutoff AND s.rated_at <= :snapshot
GROUP BY s.driver_id, l.vat_rate
"""


# ---------------------------------------------------------------- the sessions


@dataclass(frozen=True, slots=True)
class Plan:
    """Who charges where and when: the part of a session the database keys on."""

    session_id: int
    driver_id: int
    station_id: str
    connector_id: int
    id_tag: str
    meter_start_wh: int


def station_ids() -> list[str]:
    return [f"BENCH-STO-{n:02d}" for n in range(1, STATIONS + 1)]


def id_tag_of(driver_id: int) -> str:
    return f"BENCH{driver_id:08d}"


def generate(seed: int, number: int, *, sessions: int, drivers: int
             ) -> tuple[Plan, dict[str, Any]]:
    """Session ``number`` (0-based) of a bench run: its plan and what the station reported.

    Driver ``number % drivers`` charges its k-th session (k = number // drivers) in the k-th
    slot of the month, so a driver's sessions never share a start and every driver charges
    once the run has at least as many sessions as drivers."""
    rng = random.Random(seed * 1_000_000_007 + number)
    driver_id = number % drivers + 1
    slots = math.ceil(sessions / drivers)
    window = (MONTH_END_UTC - MONTH_FIRST_UTC).total_seconds() - LONGEST_SESSION_S
    slot = window / slots
    start = int(MONTH_FIRST_UTC.timestamp() + slot * (number // drivers + rng.random()))
    meter = rng.randrange(100_000, 50_000_000)
    plan = Plan(
        session_id=number + 1, driver_id=driver_id,
        station_id=f"BENCH-STO-{rng.randrange(STATIONS) + 1:02d}",
        connector_id=rng.randrange(CONNECTORS) + 1, id_tag=id_tag_of(driver_id),
        meter_start_wh=meter,
    )
    return plan, {"time_zone": ZONE, "samples": _timeline(rng, start, meter)}


def _timeline(rng: random.Random, at: int, energy: int) -> list[dict[str, Any]]:
    """Plug-in, charging with a reading every few minutes, SuspendedEV tail, unplug."""
    if rng.random() < 0.3:  # DC fast charger: short, strong, tapering from 60 %
        rated_w = rng.choice((50_000, 100_000, 150_000))
        volts, gap, taper_from = 400, (60, 150), 0.6
    else:  # AC: 3.7-11 kW for hours, the car's charger easing off near full
        rated_w = rng.choice((3_700, 7_400, 11_000))
        volts, gap, taper_from = 690, (300, 720), 0.85
    charging = rng.randint(24, 28)
    samples = []
    for k in range(charging):
        progress = k / charging
        power = rated_w * rng.randint(900, 1000) // 1000
        if progress > taper_from:
            power = int(power * (1 - (progress - taper_from) / (1 - taper_from) * 0.7))
        samples.append(_sample(at, energy, power, power // volts, "Charging"))
        step = rng.randint(*gap)
        energy += power * step // 3600
        at += step
    for _ in range(rng.randint(2, 4)):  # car full, still plugged in: parking
        samples.append(_sample(at, energy, 0, 0, "SuspendedEV"))
        at += rng.randint(300, 1200)
    samples.append(_sample(at, energy, 0, 0, "Finishing"))
    return samples


def _sample(at: int, energy: int, power: int, current: int, status: str) -> dict[str, Any]:
    return {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(at)),
            "energy_wh": energy, "power_w": power, "current_a": current, "status": status}


# ---------------------------------------------------------------- database rows


def _epoch_s(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp())


@dataclass
class Rows:
    """One round's rows for each table a worker loads."""

    transactions: list[tuple[Any, ...]] = field(default_factory=list)
    sessions: list[tuple[Any, ...]] = field(default_factory=list)
    cost_lines: list[tuple[Any, ...]] = field(default_factory=list)
    samples: list[tuple[Any, ...]] = field(default_factory=list)


def add_rows(rows: Rows, plan: Plan, report: dict[str, Any], rated: Any,
             rated_at: datetime) -> int:
    """Append one rated session's rows (``rated``: a ``rating_batch.Rated``, what billing
    stores of it); returns its energy in Wh."""
    samples = report["samples"]
    start, end = rated.start, rated.end
    stop_wh = samples[-1]["energy_wh"]
    energy = stop_wh - plan.meter_start_wh
    sid = plan.session_id
    rows.transactions.append((
        sid, plan.station_id, plan.connector_id, plan.id_tag, "Accepted", plan.meter_start_wh,
        start, stop_wh, end, "EVDisconnected", start,
    ))
    rows.sessions.append((
        sid, sid, plan.station_id, plan.connector_id, plan.id_tag, plan.driver_id, start, end,
        energy, TARIFF_ID, 1, "SEK", ZONE, "rated", rated.total_excl_vat_ore,
        rated.total_incl_vat_ore, rated_at,
    ))
    for line in rated.lines:
        rows.cost_lines.append((sid, line.dimension, line.quantity, line.unit,
                                line.unit_price, line.net_ore, line.vat_rate))
    for s in samples:
        rows.samples.append((sid, _epoch_s(s["timestamp"]), s["energy_wh"], s["power_w"],
                             s["status"]))
    return energy


class Sink:
    """Bulk-loads rows: COPY on PostgreSQL, executemany on SQLite (one writer at a time)."""

    def __init__(self, url: str, lock: Any) -> None:
        self.postgres = not normalise_url(url).startswith("sqlite")
        self.lock = lock
        if self.postgres:
            import psycopg

            conninfo = normalise_url(url).replace("postgresql+psycopg://", "postgresql://", 1)
            self.conn: Any = psycopg.connect(conninfo)
        else:
            import sqlite3

            from sqlalchemy.engine import make_url

            self.conn = sqlite3.connect(make_url(url).database or ":memory:", timeout=60)

    def write(self, tables: Iterable[tuple[str, Sequence[str], list[tuple[Any, ...]]]]) -> None:
        """Load several tables in one transaction, in the order given (foreign keys)."""
        if self.postgres:
            with self.conn.cursor() as cur:
                for table, columns, rows in tables:
                    if rows:
                        with cur.copy(f'COPY "{table}" ({", ".join(columns)}) FROM STDIN') as cp:
                            cp.write(_copy_text(rows))
            self.conn.commit()
            return
        with self.lock:
            for table, columns, rows in tables:
                if rows:
                    marks = ", ".join("?" * len(columns))
                    self.conn.executemany(
                        f'INSERT INTO "{table}" ({", ".join(columns)}) VALUES ({marks})',
                        [tuple(_sqlite_value(v) for v in row) for row in rows])
            self.conn.commit()

    def close(self) -> None:
        self.conn.close()


def _copy_text(rows: list[tuple[Any, ...]]) -> str:
    """COPY text format. Our values hold no tabs, newlines or backslashes, so no escaping."""
    return "".join("\t".join(_copy_value(v) for v in row) + "\n" for row in rows)


def _copy_value(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _sqlite_value(value: Any) -> Any:
    # SQLAlchemy's SQLite DateTime stores naive UTC text in this form and compares in SQL
    # against binds rendered the same way, so the rows must match it exactly.
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, Decimal):
        return str(value)
    return value


# ---------------------------------------------------------------- the workers


@dataclass(frozen=True)
class WorkerJob:
    index: int
    workers: int
    url: str
    seed: int
    sessions: int
    drivers: int
    chunk: int
    rated_at: datetime


@dataclass
class WorkerResult:
    index: int
    sessions: int = 0
    samples: int = 0
    energy_wh: int = 0
    cost_lines: int = 0
    generate_s: float = 0.0
    # CPU time this worker's thread spent rating: against the wall time it shows how much
    # of the core the worker actually had (the machine is shared).
    rating_cpu_s: float = 0.0
    load_s: float = 0.0
    # Per round: (rating start, rating end, cost lines end), perf_counter (system-wide
    # monotonic clock, so comparable between processes); None for an idle round.
    rounds: list[tuple[float, float, float] | None] = field(default_factory=list)
    # Per round: the batch's wall time over its sessions (parsing included), in µs.
    latencies_us: list[float] = field(default_factory=list)
    # Sessions the batch rater left to the exact path (rating.rate, one by one), and why.
    exact_path: int = 0
    exact_reasons: dict[str, int] = field(default_factory=dict)
    # The cross-check: every CHECK_EVERY-th session also rated by rating.rate, CPU time.
    checked: int = 0
    check_cpu_s: float = 0.0


def _rounds(sessions: int, workers: int, chunk: int) -> int:
    return max(1, math.ceil(sessions / (workers * chunk)))


def _chunk_of(job: WorkerJob, round_no: int) -> range:
    first = (round_no * job.workers + job.index) * job.chunk
    return range(min(first, job.sessions), min(first + job.chunk, job.sessions))


def worker_main(job: WorkerJob, barrier: Any, lock: Any, events: Any) -> None:
    """A worker process: generate, rate and load its share, round by round."""
    try:
        events.put(("done", job.index, _work(job, barrier, lock, events)))
    except BaseException:
        barrier.abort()  # the others would wait for this worker forever
        events.put(("error", job.index, traceback.format_exc()))


def _work(job: WorkerJob, barrier: Any, lock: Any, events: Any) -> WorkerResult:
    from billing_api.rating import rate
    from billing_api.rating_batch import rate_batch, rated_from_cdr
    from billing_api.tariffs import parse_tariff

    tariff = parse_tariff(TARIFF_JSON)
    tariff.compiled()  # compiled once per worker, not inside the first timed round
    # Imports and first-call set-up (numpy, the invoicing module) outside the timed rounds.
    warm = generate(job.seed, 0, sessions=job.sessions, drivers=job.drivers)[1]
    rate_batch(tariff, [warm])
    rated_from_cdr(rate(tariff, warm))
    sink = Sink(job.url, lock)
    result = WorkerResult(index=job.index)
    clock = time.perf_counter
    try:
        for round_no in range(_rounds(job.sessions, job.workers, job.chunk)):
            began = clock()
            generated = [generate(job.seed, n, sessions=job.sessions, drivers=job.drivers)
                         for n in _chunk_of(job, round_no)]
            result.generate_s += clock() - began
            # The round's reports are held until they are loaded: long-lived objects, which
            # the cyclic garbage collector would otherwise scan again and again while the
            # rating allocates (rating itself makes no reference cycles). Frozen, they are
            # out of its sight; unfrozen after the round, so they are freed as usual.
            gc.freeze()
            barrier.wait(BARRIER_TIMEOUT_S)
            reports = [report for _plan, report in generated]
            cpu_start = time.thread_time()
            rating_start = clock()
            batch = rate_batch(tariff, reports)
            rating_end = clock()
            result.rating_cpu_s += time.thread_time() - cpu_start
            if generated:
                result.latencies_us.append((rating_end - rating_start) * 1e6 / len(generated))
            result.exact_path += batch.exact
            for reason, count in batch.reasons.items():
                result.exact_reasons[reason] = result.exact_reasons.get(reason, 0) + count
            rows = Rows()
            for (plan, report), rated in zip(generated, batch.results, strict=True):
                if isinstance(rated, Exception):
                    raise BenchError(f"session {plan.session_id} not rated: {rated}")
                result.energy_wh += add_rows(rows, plan, report, rated, job.rated_at)
            lines_end = clock()
            # Not timed as rating: a sample rated again one by one by the exact engine must
            # come out the same, to the öre and the character.
            cpu_start = time.thread_time()
            for number in range(0, len(generated), CHECK_EVERY):
                expected = rated_from_cdr(rate(tariff, reports[number]))
                got = batch.results[number]
                if got[:5] != expected[:5] or [str(x.quantity) for x in got.lines] != [
                        str(x.quantity) for x in expected.lines]:
                    raise BenchError(f"session {generated[number][0].session_id}: the batch"
                                     f" rater gave {got}, the exact engine {expected}")
                result.checked += 1
            result.check_cpu_s += time.thread_time() - cpu_start
            result.rounds.append((rating_start, rating_end, lines_end) if generated else None)
            barrier.wait(BARRIER_TIMEOUT_S)
            began = clock()
            sink.write([
                ("transaction", TRANSACTION_COLUMNS, rows.transactions),
                ("charging_session", SESSION_COLUMNS, rows.sessions),
                ("session_cost_line", COST_LINE_COLUMNS, rows.cost_lines),
                ("bench_sample", SAMPLE_COLUMNS, rows.samples),
            ])
            result.load_s += clock() - began
            gc.unfreeze()
            result.sessions += len(generated)
            result.samples += len(rows.samples)
            result.cost_lines += len(rows.cost_lines)
            events.put(("progress", job.index, len(generated)))
    finally:
        sink.close()
    return result


def _rate_in_workers(*, url: str, seed: int, sessions: int, drivers: int, workers: int,
                     rated_at: datetime, say: Progress) -> list[WorkerResult]:
    # spawn, not fork: the parent holds database connections and logging threads.
    ctx = multiprocessing.get_context("spawn")
    # A small run still gives every worker a share.
    chunk = min(CHUNK, math.ceil(sessions / workers))
    barrier, lock, events = ctx.Barrier(workers), ctx.Lock(), ctx.Queue()
    procs = [
        ctx.Process(target=worker_main, name=f"bench-billing-{i}", args=(
            WorkerJob(i, workers, url, seed, sessions, drivers, chunk, rated_at),
            barrier, lock, events))
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    results: dict[int, WorkerResult] = {}
    done = 0
    started = last = time.monotonic()
    try:
        while len(results) < workers:
            try:
                kind, index, payload = events.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise BenchError(
                        f"worker {dead[0].name} died (exit {dead[0].exitcode})") from None
                continue
            if kind == "error":
                raise BenchError(f"worker {index} failed:\n{payload}")
            if kind == "done":
                results[index] = payload
            elif kind == "progress":
                done += payload
                now = time.monotonic()
                if now - last >= PROGRESS_EVERY_S or done == sessions:
                    last = now
                    say(f"rated and loaded {done:,}/{sessions:,} sessions"
                        f" ({now - started:.0f} s)")
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return [results[i] for i in range(workers)]


def rating_figures(results: Sequence[WorkerResult], cpus: int) -> dict[str, Any]:
    """Wall time of the rounds (first start to last end over the workers), and rates."""
    rating_wall = lines_wall = 0.0
    for spans in zip(*(r.rounds for r in results), strict=True):
        busy = [s for s in spans if s is not None]
        if busy:
            first = min(s[0] for s in busy)
            rating_wall += max(s[1] for s in busy) - first
            lines_wall += max(s[2] for s in busy) - first
    sessions = sum(r.sessions for r in results)
    per_worker, per_worker_cpu, cpu_share = [], [], []
    for r in results:
        own = sum(s[1] - s[0] for s in r.rounds if s is not None)
        per_worker.append(round(r.sessions / own) if own else None)
        per_worker_cpu.append(round(r.sessions / r.rating_cpu_s) if r.rating_cpu_s else None)
        cpu_share.append(round(r.rating_cpu_s / own, 3) if own else None)
    latencies = sorted(v for r in results for v in r.latencies_us)
    total = sessions / rating_wall if rating_wall else None
    reasons: dict[str, int] = defaultdict(int)
    for r in results:
        for reason, count in r.exact_reasons.items():
            reasons[reason] += count
    checked = sum(r.checked for r in results)
    check_cpu = sum(r.check_cpu_s for r in results)
    batch_cpu = sum(r.rating_cpu_s for r in results)
    return {
        "sessions_per_s": round(total) if total else None,
        "per_core_sessions_per_s": round(total / min(len(results), cpus)) if total else None,
        "per_worker_sessions_per_s": per_worker,
        "rating_wall_s": round(rating_wall, 6),
        "per_worker_cpu_sessions_per_s": per_worker_cpu,
        "per_worker_cpu_share": cpu_share,
        "with_cost_lines_sessions_per_s": round(sessions / lines_wall) if lines_wall else None,
        # per round: the batch's wall time over its sessions
        "session_p50_us": _round(stats.percentile(latencies, 50)),
        "session_p99_us": _round(stats.percentile(latencies, 99)),
        "exact_path_sessions": sum(r.exact_path for r in results),
        "exact_path_reasons": dict(reasons),
        "checked_against_exact": checked,
        # CPU µs per session: the batch, and the exact engine (rating.rate) on the sample
        "batch_cpu_us_per_session": _round(batch_cpu * 1e6 / sessions) if sessions else None,
        "exact_cpu_us_per_session": _round(check_cpu * 1e6 / checked) if checked else None,
        "batch_vs_exact_cpu": _ratio(check_cpu / checked, batch_cpu / sessions)
        if checked and sessions and batch_cpu else None,
        "generate_s": round(max(r.generate_s for r in results), 3),
        "load_s": round(max(r.load_s for r in results), 3),
    }


def _round(value: float | None, places: int = 1) -> float | None:
    return None if value is None else round(value, places)


# ---------------------------------------------------------------- the database


def _open_database(url: str | None, schema: str, say: Progress) -> Database:
    return open_database(url, schema, say, must_be_empty=('charging_session', 'driver'))


def _prepare(db: Database, *, drivers: int, say: Progress) -> None:
    now = datetime.now(UTC)
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_sample"))
        # Unlogged: a scratch copy of the samples for the baseline, not data to keep safe.
        unlogged = "UNLOGGED " if db.postgres else ""
        conn.execute(text(
            f"CREATE {unlogged}TABLE bench_sample (session_id integer NOT NULL,"
            " at_s bigint NOT NULL, energy_wh bigint NOT NULL, power_w integer,"
            " status varchar(20) NOT NULL)"))
        if db.postgres:
            # Autovacuum waking up mid-round would steal a core from the rating; the tables
            # are analysed once loading is done instead.
            for table in BENCH_TABLES:
                conn.execute(text(f'ALTER TABLE "{table}" SET (autovacuum_enabled = false)'))
    from station_api.models import Station

    # Through the model, so its defaults fill the columns the bench does not care about.
    with session_scope(db.engine) as session:
        session.add_all([Station(id=sid) for sid in station_ids()])
    say(f"inserting {drivers:,} drivers")
    methods = ("invoice", "autogiro", "autogiro", "prepaid")
    rows = [
        (n, f"Bench Driver {n}", f"driver{n}@bench.example", "sv" if n % 5 else "en", "SEK",
         methods[n % len(methods)], now)
        for n in range(1, drivers + 1)
    ]
    sink = Sink(db.url, threading.Lock())
    try:
        for first in range(0, len(rows), 50_000):
            sink.write([("driver", DRIVER_COLUMNS, rows[first:first + 50_000])])
    finally:
        sink.close()


def _after_load(db: Database, sessions: int, say: Progress) -> None:
    with db.engine.begin() as conn:
        if db.postgres:
            # The rows came with explicit ids; later inserts must not collide with them.
            for table in ("transaction", "charging_session", "driver"):
                conn.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'),"
                    f" (SELECT max(id) FROM \"{table}\"))"))
    if db.postgres:
        say("vacuum analyse (as autovacuum would have, on a live database)")
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in BENCH_TABLES:
                conn.execute(text(f'VACUUM (ANALYZE) "{table}"'))
    else:
        with db.engine.begin() as conn:
            conn.execute(text("ANALYZE"))


def _close_database(db: Database, keep: bool, say: Progress) -> None:
    db.engine.dispose()
    if keep:
        say(f"kept: {db.url}")
        return
    if not drop_own_schema(db, say):
        # Someone else's database: leave it as the bench found it, but for the rows.
        engine = make_engine(db.url)
        try:
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE IF EXISTS bench_sample"))
                if engine.dialect.name == "postgresql":
                    for table in BENCH_TABLES[:-1]:
                        conn.execute(text(f'ALTER TABLE "{table}" RESET (autovacuum_enabled)'))
        finally:
            engine.dispose()
        say("dropped bench_sample")


# ---------------------------------------------------------------- baselines and the run


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - began)
    return times, result


def _rating_baseline(db: Database) -> tuple[list[float], tuple[int, int, int]]:
    def query() -> tuple[int, int, int]:
        with db.engine.connect() as conn:
            count, energy, duration = conn.execute(text(RATING_BASELINE_SQL)).one()
        return int(count), int(energy), int(duration)

    return _timed(query, BASELINE_REPEATS)


def _invoice_baseline(db: Database, cutoff: datetime, snapshot: datetime
                      ) -> tuple[list[float], list[tuple[int, Decimal | None, int]]]:
    from chargedesk.types import UTCDateTime

    # The bind type the ORM uses, so SQLite compares against its stored text form.
    statement = text(INVOICE_BASELINE_SQL).bindparams(
        bindparam("cutoff", cutoff, type_=UTCDateTime()),
        bindparam("snapshot", snapshot, type_=UTCDateTime()),
    )

    def query() -> list[tuple[int, Decimal | None, int]]:
        with db.engine.connect() as conn:
            return [(int(d), None if r is None else Decimal(str(r)), int(n))
                    for d, r, n in conn.execute(statement)]

    return _timed(query, BASELINE_REPEATS)


def expected_vat_ore(rate: Decimal | None, base_ore: int) -> int:
    """VAT on a rate's summed base, half up to the öre: computed here independently of the
    invoicing module, so the check is not the code checking itself."""
    if rate is None:
        return 0
    return int((Decimal(base_ore) * rate / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def check_run(db: Database, run_id: int, report: Any,
               aggregate: list[tuple[int, Decimal | None, int]]) -> dict[str, Any]:
    """Compare the run's invoices with the plain aggregate, driver by driver."""
    expected_net: dict[int, int] = defaultdict(int)
    expected_vat: dict[int, int] = defaultdict(int)
    for driver_id, rate, net in aggregate:
        expected_net[driver_id] += net
        expected_vat[driver_id] += expected_vat_ore(rate, net)
    with db.engine.connect() as conn:
        invoices = {int(d): (int(n), int(v), int(t)) for d, n, v, t in conn.execute(
            text("SELECT driver_id, net_ore, vat_ore, total_ore FROM invoice"
                 " WHERE run_id = :run"), {"run": run_id})}
        unbilled = conn.execute(text(
            "SELECT count(*) FROM charging_session WHERE invoice_id IS NULL")).scalar_one()
    problems = []
    if len(invoices) != len(expected_net):
        problems.append(f"{len(invoices)} invoices for {len(expected_net)} drivers with sessions")
    if report.invoices != len(invoices):
        problems.append(f"run reported {report.invoices} invoices, {len(invoices)} stored")
    wrong = [d for d in expected_net
             if invoices.get(d, (None, None))[:2] != (expected_net[d], expected_vat[d])]
    if wrong:
        d = wrong[0]
        problems.append(f"{len(wrong)} drivers' invoices differ from the aggregate, e.g."
                        f" driver {d}: invoice (net, vat) {invoices.get(d, (None, None))[:2]},"
                        f" aggregate ({expected_net[d]}, {expected_vat[d]})")
    net_sum = sum(v[0] for v in invoices.values())
    total_sum = sum(v[2] for v in invoices.values())
    if net_sum != sum(expected_net.values()):
        problems.append(f"invoice nets sum to {net_sum}, the aggregate to"
                        f" {sum(expected_net.values())}")
    if report.total_ore != total_sum:
        problems.append(f"run reported {report.total_ore} öre, invoices hold {total_sum}")
    if unbilled:
        problems.append(f"{unbilled} sessions left unbilled")
    if problems:
        raise BenchError("invoice run does not match the SQL aggregate: " + "; ".join(problems))
    return {"invoices": len(invoices), "drivers_in_aggregate": len(expected_net),
            "net_ore": net_sum, "total_ore": total_sum, "unbilled_sessions": int(unbilled),
            "matches_aggregate": True}


def run(
    *,
    sessions: int = 1_000_000,
    drivers: int | None = None,
    database_url: str | None = None,
    workers: int | None = None,
    keep: bool = False,
    seed: int = 1,
    schema: str = DEFAULT_SCHEMA,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Rate ``sessions`` sessions in ``workers`` processes, invoice ``drivers`` drivers for
    October 2026, each beside its SQL baseline; the figures. Raises :class:`BenchError` when
    it cannot run; a failed or mismatching invoice run is listed in ``figures["failures"]``
    (after the figures are complete), and the command then exits non-zero."""
    from billing_api.invoicing import period_bounds, run_invoices
    from chargedesk.settings import Settings

    say = progress or (lambda _text: None)
    drivers = drivers or max(1, sessions // 10)
    workers = workers or os.cpu_count() or 1
    cpus = os.cpu_count() or 1
    if sessions < 1 or drivers < 1 or workers < 1:
        raise BenchError("sessions, drivers and workers must be positive")
    db = _open_database(database_url, schema, say)
    try:
        figures: dict[str, Any] = {
            "database": db.engine.dialect.name, "sessions": sessions, "drivers": drivers,
            "workers": workers, "cpus": cpus, "seed": seed, "tariff": TARIFF_ID,
            "period": f"{PERIOD_START:%Y-%m}", "issue_date": ISSUE_DATE.isoformat(),
        }
        _prepare(db, drivers=drivers, say=say)
        # Rated shortly after they ended, in October: all before the run's snapshot.
        rated_at = datetime.now(UTC) - timedelta(hours=1)
        say(f"generating, rating and loading {sessions:,} sessions in {workers} workers")
        began = time.perf_counter()
        results = _rate_in_workers(url=db.url, seed=seed, sessions=sessions, drivers=drivers,
                                   workers=workers, rated_at=rated_at, say=say)
        load_wall = time.perf_counter() - began
        samples = sum(r.samples for r in results)
        energy = sum(r.energy_wh for r in results)
        _after_load(db, sessions, say)

        rating = rating_figures(results, cpus)
        rating["samples"] = samples
        rating["samples_per_session"] = round(samples / sessions, 1)
        rating["cost_lines"] = sum(r.cost_lines for r in results)
        rating["generate_rate_load_wall_s"] = round(load_wall, 1)
        figures["rating"] = rating

        say(f"rating baseline: SQL aggregate over {samples:,} sample rows,"
            f" {BASELINE_REPEATS} times")
        times, (count, sql_energy, _duration) = _rating_baseline(db)
        if count != sessions or sql_energy != energy:
            raise BenchError(f"bench_sample holds {count} sessions and {sql_energy} Wh; rating"
                             f" saw {sessions} and {energy} Wh")
        base = statistics.median(times)
        figures["rating_baseline"] = {
            "what": "SELECT per session max-min energy and duration FROM bench_sample",
            "sessions_per_s": round(sessions / base),
            "median_s": round(base, 6), "runs_s": [round(t, 6) for t in times],
            "sample_rows": samples, "energy_wh": sql_energy,
        }
        figures["rating_vs_baseline"] = _ratio(figures["rating_baseline"]["sessions_per_s"],
                                               rating["sessions_per_s"])

        settings = Settings()
        _end, cutoff = period_bounds(PERIOD_START, settings.time_zone)
        say(f"invoice baseline: SQL aggregate of cost lines per driver, {BASELINE_REPEATS} times")
        times, aggregate = _invoice_baseline(db, cutoff, datetime.now(UTC))
        inv_base = statistics.median(times)
        figures["invoice_baseline"] = {
            "what": "SELECT driver_id, vat_rate, sum(net_ore) FROM session_cost_line JOIN"
                    " charging_session GROUP BY driver_id, vat_rate",
            "median_s": round(inv_base, 6), "runs_s": [round(t, 6) for t in times],
            "rows": len(aggregate),
        }

        say(f"invoice run {PERIOD_START:%Y-%m} for {drivers:,} drivers")
        last = [time.monotonic()]

        def on_batch(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S or done == total:
                last[0] = now
                say(f"invoice run: {done:,}/{total:,} drivers")

        failures: list[str] = []
        began = time.perf_counter()
        try:
            report = run_invoices(db.engine, period_start=PERIOD_START, settings=settings,
                                  started_by="bench", today=ISSUE_DATE, on_batch=on_batch)
        except Exception as exc:  # reported with the figures, then the bench fails
            run_s = time.perf_counter() - began
            failures.append(f"invoice run failed after {run_s:.1f} s:"
                            f" {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            figures["invoice_run"] = {"seconds": round(run_s, 6), "invoices": None,
                                      "total_ore": None, "drivers_per_s": None}
            figures["checks"] = None
        else:
            run_s = time.perf_counter() - began
            figures["invoice_run"] = {
                "seconds": round(run_s, 6), "invoices": report.invoices,
                "total_ore": report.total_ore, "drivers_per_s": round(report.invoices / run_s),
            }
            try:
                figures["checks"] = check_run(db, report.run_id, report, aggregate)
            except BenchError as exc:
                failures.append(str(exc))
                figures["checks"] = None
        figures["invoice_run_vs_baseline"] = _ratio(run_s, inv_base)
        figures["failures"] = failures
        figures["targets"] = {
            "rating_sessions_per_s": 20_000,
            "rating_met": (rating["sessions_per_s"] or 0) >= 20_000,
            "invoice_run_s_for_100k_drivers": 60,
            # The target is for 100,000 drivers on PostgreSQL; smaller runs are scaled to it.
            "invoice_run_s_scaled_to_100k": round(run_s * 100_000 / max(1, drivers), 1),
            "invoice_met": db.postgres and not failures and run_s * 100_000 / max(1, drivers) < 60,
        }
        figures["kept"] = db.url if keep else None
        return figures
    finally:
        _close_database(db, keep, say)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 2)


def summary(figures: dict[str, Any]) -> str:
    """The figures as a few readable lines."""
    r, rb = figures["rating"], figures["rating_baseline"]
    i, ib, t = figures["invoice_run"], figures["invoice_baseline"], figures["targets"]
    per_worker = ", ".join(f"{v:,}" for v in r["per_worker_sessions_per_s"] if v)
    cpu_rates = ", ".join(f"{v:,}" for v in r["per_worker_cpu_sessions_per_s"] if v)
    shares = ", ".join(f"{v:.0%}" for v in r["per_worker_cpu_share"] if v)
    if figures["database"] != "postgresql":
        invoice_target = "n/a (the target is for PostgreSQL)"
    else:
        invoice_target = "met" if t["invoice_met"] else "MISSED"
    lines = [
        f"bench billing: {figures['sessions']:,} sessions, {figures['drivers']:,} drivers,"
        f" {figures['workers']} workers on {figures['cpus']} CPUs, {figures['database']}",
        f"  samples: {r['samples']:,} ({r['samples_per_session']} per session),"
        f" cost lines: {r['cost_lines']:,}",
        "rating (rate_batch(tariff, reports) per round, parsing included, all workers at once):",
        f"  {r['sessions_per_s']:,} sessions/s total, {r['per_core_sessions_per_s']:,}/s per"
        f" core (per worker: {per_worker}); {r['rating_wall_s']:.1f} s wall",
        f"  per CPU-second of each worker: {cpu_rates}/s; share of the wall each worker"
        f" had a core: {shares}",
        f"  per session (a round's batch over its sessions) p50 {r['session_p50_us']} µs,"
        f" p99 {r['session_p99_us']} µs; with the rows built:"
        f" {r['with_cost_lines_sessions_per_s']:,} sessions/s",
        f"  exact path (rating.rate one by one): {r['exact_path_sessions']:,} sessions"
        + (f" ({', '.join(f'{k}: {v:,}' for k, v in r['exact_path_reasons'].items())})"
           if r["exact_path_reasons"] else ""),
        f"  checked against the exact engine: {r['checked_against_exact']:,} sessions, all"
        f" equal; CPU per session: batch {r['batch_cpu_us_per_session']} µs, exact"
        f" {r['exact_cpu_us_per_session']} µs (exact/batch = {r['batch_vs_exact_cpu']})",
        f"  baseline, SQL aggregate over the samples: {rb['sessions_per_s']:,} sessions/s"
        f" ({rb['median_s']:.2f} s median of {len(rb['runs_s'])});"
        f" baseline/rating = {figures['rating_vs_baseline']}",
        f"  target >= 20,000 sessions/s: {'met' if t['rating_met'] else 'MISSED'}",
        f"invoice run {figures['period']}: {i['invoices'] or 0:,} invoices in"
        f" {i['seconds']:.2f} s ({i['drivers_per_s'] or 0:,} drivers/s),"
        f" total {(i['total_ore'] or 0) / 100:,.2f} SEK",
        f"  baseline, SQL aggregate of the cost lines: {ib['median_s']:.3f} s"
        f" (median of {len(ib['runs_s'])}); run/baseline = {figures['invoice_run_vs_baseline']}",
        ("  checked against the aggregate driver by driver:"
         f" {figures['checks']['invoices']:,} invoices, nets and VAT match"
         if figures["checks"] else "  NOT checked: the run did not complete"),
        f"  target < 60 s for 100,000 drivers on PostgreSQL:"
        f" {t['invoice_run_s_scaled_to_100k']} s scaled to 100k,"
        f" {invoice_target}",
        f"  (generate + rate + load took {r['generate_rate_load_wall_s']:.0f} s, not measured"
        " as rating)",
    ]
    if figures.get("kept"):
        lines.append(f"kept: {figures['kept']}")
    lines += [f"FAILED: {failure}" for failure in figures.get("failures", [])]
    return "\n".join(lines)
