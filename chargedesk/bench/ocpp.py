"""`chargedesk bench ocpp`: the central system under a network's load, against a bare one.

Three kinds of process share the machine, so none measures itself:

- the central system: `chargedesk serve` on a fresh SQLite database, or the bare central
  system of :mod:`chargedesk.bench.bare_csms` (``python -m chargedesk.bench.ocpp bare``);
- one or two station workers (``python -m chargedesk.bench.ocpp stations``), each running
  simulated stations that boot, start one transaction and then send a Heartbeat and a
  MeterValues every ten seconds;
- this process, which orchestrates, issues the remote commands to ChargeDesk over REST and
  measures the server's CPU and memory from outside with psutil.

Children speak JSON lines on stdin/stdout: one request, one answer. Stations connect at a
steady rate; the ramp-up and a settling period are not measured. In the steady window
commands (TriggerMessage and UnlockConnector, alternating, round-robin over the stations)
go out on a fixed clock, so a slow server shows up as latency rather than as a lower rate.
Afterwards the stations fall silent and drain, and every CALL they sent is checked against
what the server counted and what came back.

The figures: `messages_per_s` is the server's own count of station CALLs over the window
(`chargedesk_ocpp_messages_total` from /metrics, the bare server's counters); command round
trips are wall clock at the issuer (the REST client for ChargeDesk, `issue_commands` inside
the bare server), over the commands a station answered; CPU figures are percent of one core
over the window (server with children, the station workers, the whole host); `rss_mb` is the
server's peak resident memory sampled each second of the window. `lost` counts station
CALLs without an answer or missing from the server's count, plus commands that got no answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import socket
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from chargedesk.bench import stats

HEARTBEAT_S = 10
METER_S = 10
PASSWORD = "bench-station-secret-0001"
STATION_PREFIX = "BENCH"
# Connections per second during ramp-up: ChargeDesk checks each password with scrypt.
CONNECT_RATE = 50.0
COMMAND_TIMEOUT_S = 10.0
STATIONS_PER_WORKER = 1500
LIMIT_STEP = 500
LIMIT_CAP = 6000
LIMIT_WINDOW_S = 20.0
# Commands as OCPP payloads (camelCase); UnlockConnector targets the idle connector 2,
# because unlocking connector 1 would end the transaction whose meter values we want.
COMMANDS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("TriggerMessage", {"requestedMessage": "Heartbeat"}),
    ("UnlockConnector", {"connectorId": 2}),
)
_MODULE = "chargedesk.bench.ocpp"
# What ChargeDesk must achieve (issue 3, 1,000 stations on two cores): every station connected
# and charging, no station CALL or command lost, and remote commands answered with a p99
# under 100 ms at the REST client. The bare system is the baseline, with no targets.
TARGETS: dict[str, Any] = {"all_stations_connected_and_charging": True, "lost": 0,
                           "command_p99_ms_below": 100.0}

Progress = Callable[[str], None]
Collect = Callable[[], Awaitable["CommandTally"]]


def run(
    *,
    stations: int,
    duration: float,
    command_rate: float,
    find_limit: bool,
    progress: Progress | None,
    limit_step: int = LIMIT_STEP,
    limit_cap: int = LIMIT_CAP,
) -> dict[str, Any]:
    """Benchmark ChargeDesk and the bare central system under the same load; the figures."""
    say = progress or (lambda _text: None)
    return asyncio.run(
        _run(stations, duration, command_rate, find_limit, say, limit_step, limit_cap)
    )


async def _run(
    stations: int,
    duration: float,
    rate: float,
    find_limit: bool,
    say: Progress,
    limit_step: int,
    limit_cap: int,
) -> dict[str, Any]:
    settle = min(float(HEARTBEAT_S), duration)
    figures: dict[str, Any] = {
        "stations": stations,
        "duration_s": duration,
        "command_rate": rate,
        "heartbeat_interval_s": HEARTBEAT_S,
        "meter_interval_s": METER_S,
        "cpus": os.cpu_count(),
        # Other work on the machine skews every figure; it is noted before and after.
        "load_average_1m": {"start": round(os.getloadavg()[0], 2)},
    }
    with tempfile.TemporaryDirectory(prefix="chargedesk-bench-") as tmp:
        say(f"ChargeDesk: {stations} stations, {duration:g} s window, {rate:g} commands/s")
        figures["chargedesk"] = await _bench_or_error(
            ChargeDeskServer(Path(tmp) / "chargedesk", stations), stations, duration, rate,
            settle, say,
        )
        say(f"bare central system: {stations} stations, {duration:g} s window")
        figures["bare"] = await _bench_or_error(
            BareServer(Path(tmp) / "bare"), stations, duration, rate, settle, say
        )
        figures["ratio"] = _ratios(figures["chargedesk"], figures["bare"])
        if find_limit:
            steps = list(range(limit_step, limit_cap + 1, limit_step))
            figures.update(await _find_limit(Path(tmp) / "limit", steps, rate, say))
    figures["load_average_1m"]["end"] = round(os.getloadavg()[0], 2)
    figures["targets"] = TARGETS
    figures["failures"] = missed_targets(figures["chargedesk"], stations)
    for failure in figures["failures"]:
        say(f"target missed: {failure}")
    return figures


def missed_targets(chargedesk: dict[str, Any], stations: int) -> list[str]:
    """What ChargeDesk's run missed of :data:`TARGETS`, in words (empty: all met)."""
    if "error" in chargedesk:
        return [f"the run failed: {chargedesk['error']}"]
    missed = []
    for key in ("stations_connected", "stations_charging"):
        if chargedesk[key] < stations:
            missed.append(f"{key} {chargedesk[key]} of {stations}")
    if chargedesk["lost"] > TARGETS["lost"]:
        missed.append(f"lost {chargedesk['lost']} station CALLs or commands")
    p99 = chargedesk["command_p99_ms"]
    if p99 is None or p99 >= TARGETS["command_p99_ms_below"]:
        missed.append(f"command p99 {p99} ms, target below {TARGETS['command_p99_ms_below']} ms")
    return missed


# ---------------------------------------------------------------- one measured run


async def _bench_or_error(
    server: Server, stations: int, duration: float, rate: float, settle: float, say: Progress
) -> dict[str, Any]:
    """One system's figures; a run that breaks down (an overloaded server that stops
    answering /metrics, say) is reported as such, and the other system is still measured."""
    try:
        return await _bench(server, stations, duration, rate, settle, say)
    except Exception as exc:
        say(f"{server.label}: the run failed: {exc!r}")
        return {"error": repr(exc)}


async def _bench(
    server: Server, stations: int, duration: float, rate: float, settle: float, say: Progress
) -> dict[str, Any]:
    ids = station_ids(stations)
    workers: list[Child] = []
    try:
        await server.start()
        workers = await _start_workers(server, len(ids))
        connected = await _ramp_up(server, workers, ids, CONNECT_RATE, say)
        say(f"{server.label}: {connected}/{len(ids)} connected; settling {settle:g} s")
        await asyncio.sleep(settle)
        window = await _window(server, workers, ids, duration, rate, say)
        say(f"{server.label}: draining the stations")
        drained = await _drain(workers)
        server_received = await server.messages()
        return _figures(window, drained, server_received, len(ids))
    finally:
        await _stop_all(workers)
        await server.stop()


@dataclass
class Window:
    """What one steady window measured."""

    seconds: float
    connected_start: int
    connected_end: int
    charging: int
    messages: int
    cpu_percent: float
    rss_mb: float
    stations_cpu_percent: float
    host_cpu_percent: float
    commands: CommandTally


@dataclass
class CommandTally:
    """Commands issued in a window, as the issuer saw them."""

    sent: int = 0
    round_trips_ms: list[float] = field(default_factory=list)
    ok: int = 0
    rejected: int = 0
    offline: int = 0
    unanswered: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def note(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def percentile_ms(self, p: int) -> float | None:
        return percentile(self.round_trips_ms, p)


def percentile(values: Sequence[float], p: int) -> float | None:
    """The p-th percentile in ms, rounded for the report (the method of `stats.percentile`)."""
    value = stats.percentile(values, p)
    return None if value is None else round(value, 2)


async def _window(
    server: Server,
    workers: Sequence[Child],
    ids: Sequence[str],
    duration: float,
    rate: float,
    say: Progress,
) -> Window:
    server_cpu, workers_cpu = CpuMeter(server.pid), CpuMeter(*(w.pid for w in workers))
    psutil.cpu_percent(interval=None)
    connected_start = await server.connected()
    charging = sum(s["charging"] for s in await _statuses(workers))
    messages_start = await server.messages()
    server_cpu.start()
    workers_cpu.start()
    started = time.monotonic()
    collect = await server.start_commands(ids, rate, duration)
    rss = server_cpu.rss()
    next_report = started
    while (left := started + duration - time.monotonic()) > 0:
        await asyncio.sleep(min(1.0, left))
        rss = max(rss, server_cpu.rss())
        if time.monotonic() >= next_report and left > 1:
            say(f"{server.label}: steady window, {left:.0f} s left")
            next_report += 10
    messages_end = await server.messages()
    seconds = time.monotonic() - started
    cpu, stations_cpu = server_cpu.percent(), workers_cpu.percent()
    host_cpu = psutil.cpu_percent(interval=None) * (os.cpu_count() or 1)
    connected_end = await server.connected()
    commands = await collect()
    return Window(
        seconds=seconds,
        connected_start=connected_start,
        connected_end=connected_end,
        charging=charging,
        messages=messages_end - messages_start,
        cpu_percent=cpu,
        rss_mb=rss / 2**20,
        stations_cpu_percent=stations_cpu,
        host_cpu_percent=host_cpu,
        commands=commands,
    )


def _figures(
    window: Window, drained: dict[str, int], server_received: int, stations: int
) -> dict[str, Any]:
    c = window.commands
    sent, results, errors = (
        drained["calls_sent"], drained["results_received"], drained["errors_received"]
    )
    # A station CALL is lost if it got no answer, or if the server never counted it.
    lost_calls = max(sent - results - errors, sent - server_received, 0)
    return {
        "stations_connected": min(window.connected_start, window.connected_end),
        "stations_charging": window.charging,
        "reconnects": max(0, drained["connects"] - stations),
        "window_s": round(window.seconds, 2),
        "messages_in_window": window.messages,
        "messages_per_s": round(window.messages / window.seconds, 1),
        "command_p50_ms": c.percentile_ms(50),
        "command_p99_ms": c.percentile_ms(99),
        "command_max_ms": round(max(c.round_trips_ms), 2) if c.round_trips_ms else None,
        "commands_sent": c.sent,
        "commands_ok": c.ok,
        "commands_failed": c.sent - c.ok,
        "command_outcomes": dict(sorted(c.outcomes.items())),
        "commands_received_by_stations": drained["commands_received"],
        "commands_answered_by_stations": drained["commands_answered"],
        "cpu_percent": round(window.cpu_percent, 1),
        "rss_mb": round(window.rss_mb, 1),
        "stations_cpu_percent": round(window.stations_cpu_percent, 1),
        "host_cpu_percent": round(window.host_cpu_percent, 1),
        "messages_sent": sent,
        "results_received": results,
        "call_errors": errors,
        "call_timeouts": drained["timeouts"],
        "server_received": server_received,
        "lost": lost_calls + c.unanswered,
    }


def _ratios(chargedesk: dict[str, Any], bare: dict[str, Any]) -> dict[str, float | None]:
    def ratio(key: str) -> float | None:
        if "error" in chargedesk or "error" in bare:
            return None
        a, b = chargedesk.get(key), bare.get(key)
        if a is None or not b:
            return None
        return round(a / b, 2)

    return {
        key: ratio(key)
        for key in ("command_p50_ms", "command_p99_ms", "cpu_percent", "rss_mb",
                    "messages_per_s")
    }


# ---------------------------------------------------------------- finding the limit


async def _find_limit(
    directory: Path, steps: Sequence[int], rate: float, say: Progress
) -> dict[str, Any]:
    """Add stations step by step to one ChargeDesk until command p99 passes one second."""
    server = ChargeDeskServer(directory, steps[-1])
    ids = station_ids(steps[-1])
    workers: list[Child] = []
    results: list[dict[str, Any]] = []
    found: int | None = None
    reason: str | None = None
    step = steps[0]
    try:
        await server.start()
        workers = await _start_workers(server, steps[-1])
        have = 0
        for step in steps:
            say(f"limit: ramping ChargeDesk to {step} stations")
            await _ramp_up(server, workers, ids[have:step], CONNECT_RATE, say, already=have)
            have = step
            await asyncio.sleep(HEARTBEAT_S)
            window = await _window(server, workers, ids[:step], LIMIT_WINDOW_S, rate, say)
            c = window.commands
            # Unanswered and failed commands count as slow: the p99 is over everything sent.
            everything = c.round_trips_ms + [COMMAND_TIMEOUT_S * 1000] * c.unanswered
            p99 = percentile(everything, 99)
            results.append({
                "stations": step,
                "stations_connected": min(window.connected_start, window.connected_end),
                "messages_per_s": round(window.messages / window.seconds, 1),
                "command_p50_ms": percentile(everything, 50),
                "command_p99_ms": p99,
                "commands_sent": c.sent,
                "commands_ok": c.ok,
                "cpu_percent": round(window.cpu_percent, 1),
                "rss_mb": round(window.rss_mb, 1),
                "stations_cpu_percent": round(window.stations_cpu_percent, 1),
                "host_cpu_percent": round(window.host_cpu_percent, 1),
            })
            say(f"limit: {step} stations, command p99 {p99} ms")
            if p99 is None or p99 > 1000:
                found, reason = step, "command p99 over 1 s"
                break
            if results[-1]["stations_connected"] < 0.99 * step:
                found = step
                reason = f"only {results[-1]['stations_connected']} stations stay connected"
                break
    except Exception as exc:
        # An overloaded server that stops answering /metrics is past its limit too; either
        # way the figures so far and the main comparison are worth keeping.
        found, reason = step, f"failed at {step} stations: {exc!r}"
    finally:
        await _stop_all(workers)
        await server.stop()
    return {
        "p99_over_1s_at": found if found is not None else f"not reached up to {steps[-1]}",
        "limit_reason": reason,
        "limit_steps": results,
    }


# ---------------------------------------------------------------- stations


def station_ids(count: int) -> list[str]:
    return [f"{STATION_PREFIX}{n:05d}" for n in range(1, count + 1)]


def id_tag_for(station_id: str) -> str:
    """Each station its own tag: ChargeDesk refuses a tag already in a transaction."""
    return "TAG" + station_id.removeprefix(STATION_PREFIX)


async def _start_workers(server: Server, stations: int) -> list[Child]:
    count = max(1, min(2, math.ceil(stations / STATIONS_PER_WORKER)))
    return list(await asyncio.gather(*(
        Child.start(f"stations-{n}", ["stations", "--url", server.ocpp_url], server.directory)
        for n in range(count)
    )))


async def _statuses(workers: Sequence[Child]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(w.ask("status") for w in workers)))


async def _ramp_up(
    server: Server,
    workers: Sequence[Child],
    ids: Sequence[str],
    rate: float,
    say: Progress,
    *,
    already: int = 0,
) -> int:
    """Connect `ids`, spread over the workers, and wait until each has a transaction."""
    total = already + len(ids)
    share = [list(ids[n :: len(workers)]) for n in range(len(workers))]
    await asyncio.gather(*(
        w.ask("add", ids=part, rate=rate / len(workers))
        for w, part in zip(workers, share, strict=True)
    ))
    deadline = time.monotonic() + len(ids) / rate + 60
    last_report = 0.0
    connected = 0
    while True:
        await asyncio.sleep(1)
        statuses = await _statuses(workers)
        charging = sum(s["charging"] for s in statuses)
        with contextlib.suppress(httpx.HTTPError):
            # A server busy accepting connections may answer slowly; ask again next round.
            connected = await server.connected()
        now = time.monotonic()
        if charging >= total and connected >= total:
            return connected
        if now > deadline:
            say(f"{server.label}: ramp-up timed out, {connected}/{total} connected")
            return connected
        if now - last_report >= 2:
            say(f"{server.label}: ramp-up {connected}/{total} connected, "
                f"{charging} charging")
            last_report = now


async def _drain(workers: Sequence[Child]) -> dict[str, int]:
    """Silence the stations, wait for their last answers, and sum their counters."""
    answers = await asyncio.gather(*(w.ask("drain", timeout=30) for w in workers))
    total: dict[str, int] = {}
    for answer in answers:
        for key, value in answer["counters"].items():
            total[key] = total.get(key, 0) + value
    return total


async def _stop_all(children: Sequence[Child]) -> None:
    await asyncio.gather(*(c.stop() for c in children), return_exceptions=True)


# ---------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def _end_process(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class Child:
    """A helper process of this module, asked one JSON line at a time."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name, self.proc, self.log = name, proc, log
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(cls, name: str, args: list[str], directory: Path) -> Child:
        log = directory / f"{name}.log"
        with log.open("ab") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", _MODULE, *args,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
                limit=2**24, cwd=directory,
            )
        return cls(name, proc, log)

    async def read(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            await asyncio.wait_for(self.proc.wait(), 5)
            raise RuntimeError(
                f"{self.name} exited ({self.proc.returncode}):\n{_tail(self.log)}"
            )
        return json.loads(line)

    async def ask(self, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        async with self._lock:
            self.proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
            await self.proc.stdin.drain()
            return await self.read(timeout + 5)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.ask("stop", timeout=15)
        await _end_process(self.proc, 10)


class CpuMeter:
    """CPU time and memory of processes (and their children), seen from outside."""

    def __init__(self, *pids: int) -> None:
        self.processes = [psutil.Process(pid) for pid in pids]
        self._cpu = 0.0
        self._at = 0.0

    def _family(self) -> list[psutil.Process]:
        family = []
        for p in self.processes:
            with contextlib.suppress(psutil.Error):
                family += [p, *p.children(recursive=True)]
        return family

    def _seconds(self) -> float:
        total = 0.0
        for p in self._family():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total

    def start(self) -> None:
        self._cpu, self._at = self._seconds(), time.monotonic()

    def percent(self) -> float:
        """Percent of one core used since `start`."""
        return 100 * (self._seconds() - self._cpu) / max(1e-9, time.monotonic() - self._at)

    def rss(self) -> int:
        total = 0
        for p in self._family():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total


class Server(ABC):
    """A central system under test, in its own process."""

    label = "server"
    directory: Path
    ocpp_url: str

    @property
    @abstractmethod
    def pid(self) -> int: ...

    @abstractmethod
    async def start(self) -> None:
        ...

    @abstractmethod
    async def stop(self) -> None:
        ...

    @abstractmethod
    async def connected(self) -> int:
        """Stations connected, as the server sees them."""
        ...

    @abstractmethod
    async def messages(self) -> int:
        """CALLs received from stations since the server started."""
        ...

    @abstractmethod
    async def start_commands(self, ids: Sequence[str], rate: float, duration: float
                             ) -> Collect:
        """Start issuing commands; what it returns waits for them and tallies them."""
        ...


class ChargeDeskServer(Server):
    """`chargedesk serve` on a fresh SQLite database with `stations` registered."""

    label = "ChargeDesk"

    def __init__(self, directory: Path, stations: int) -> None:
        self.directory = directory
        self.stations = stations
        self.proc: asyncio.subprocess.Process | None = None
        self.client: httpx.AsyncClient | None = None
        self.log = directory / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{self.directory / 'bench.db'}"
        key = await asyncio.to_thread(_prepare_database, url, station_ids(self.stations))
        port = _free_port()
        env = {
            **os.environ,
            "CHARGEDESK_DATABASE_URL": url,
            "CHARGEDESK_HEARTBEAT_INTERVAL": str(HEARTBEAT_S),
            "CHARGEDESK_LOG_LEVEL": "WARNING",
            "CHARGEDESK_COMMAND_TIMEOUT": str(COMMAND_TIMEOUT_S),
            # The bench measures the central system; the NLU model has no part in it.
            "CHARGEDESK_NLU_WARM_UP": "false",
        }
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "from chargedesk.cli import app; app()",
                "serve", "--host", "127.0.0.1", "--port", str(port),
                stdout=out, stderr=out, env=env, cwd=self.directory,
            )
        base = f"http://127.0.0.1:{port}"
        self.ocpp_url = f"ws://127.0.0.1:{port}/ocpp"
        self.client = httpx.AsyncClient(
            base_url=base,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(COMMAND_TIMEOUT_S + 20),
            limits=httpx.Limits(max_connections=500, max_keepalive_connections=100),
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(f"chargedesk serve exited:\n{_tail(self.log)}")
            with contextlib.suppress(httpx.HTTPError):
                if (await self.client.get("/healthz", timeout=2)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"chargedesk serve did not come up:\n{_tail(self.log)}")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.proc is not None:
            await _end_process(self.proc, 15)

    async def _metrics(self) -> str:
        assert self.client is not None
        response = await self.client.get("/metrics")
        response.raise_for_status()
        return response.text

    async def connected(self) -> int:
        return int(metric_sum(await self._metrics(), "chargedesk_stations_connected"))

    async def messages(self) -> int:
        return int(metric_sum(await self._metrics(), "chargedesk_ocpp_messages_total"))

    async def start_commands(self, ids: Sequence[str], rate: float, duration: float
                             ) -> Collect:
        """POST commands at `rate` for `duration`, timing each at the REST client."""
        assert self.client is not None
        client = self.client
        tally = CommandTally()
        kinds = itertools.cycle(COMMANDS)
        targets = itertools.cycle(ids)

        async def one(station_id: str, action: str, payload: dict[str, Any]) -> None:
            started = time.perf_counter()
            try:
                response = await client.post(
                    f"/api/v1/stations/{station_id}/commands/{action}", json=payload,
                    params={"timeout": COMMAND_TIMEOUT_S},
                )
            except httpx.HTTPError as exc:
                tally.unanswered += 1
                tally.note(type(exc).__name__)
                return
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                tally.unanswered += 1
                tally.note(f"http {response.status_code}")
                return
            outcome = response.json()["outcome"]
            tally.note(outcome)
            if outcome == "offline":
                tally.offline += 1
            elif outcome == "timeout":
                tally.unanswered += 1
            else:
                # The station answered (accepted, rejected or a CALLERROR): a round trip.
                tally.round_trips_ms.append(elapsed)
                tally.ok += outcome == "accepted"
                tally.rejected += outcome != "accepted"

        clock = asyncio.create_task(
            _on_a_clock(rate, duration, lambda: one(next(targets), *next(kinds)), tally)
        )

        async def collect() -> CommandTally:
            await clock
            return tally

        return collect


def _prepare_database(url: str, ids: Sequence[str]) -> str:
    """Migrate, register stations with their id tags, and return an operator API key."""
    from chargedesk.auth import create_api_key
    from chargedesk.db import make_engine, session_scope, upgrade
    from chargedesk.models import Role
    from station_api import service
    from station_api.models import IdTag, Station

    upgrade(url)
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            first = service.register_station(session, station_id=ids[0], password=PASSWORD)
            # One scrypt for all: every station has the same password, hashed once.
            session.add_all(Station(id=i, password_hash=first.password_hash) for i in ids[1:])
            session.add_all(IdTag(id_tag=id_tag_for(i)) for i in ids)
            _, key = create_api_key(session, name="bench", role=Role.operator)
        return key
    finally:
        engine.dispose()


def metric_sum(text: str, name: str) -> float:
    """The sum over all label sets of one Prometheus metric in text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _on_a_clock(
    rate: float, duration: float, send: Callable[[], Any], tally: CommandTally
) -> None:
    """Start `send()` every 1/rate seconds for `duration`, then wait for the stragglers."""
    loop = asyncio.get_running_loop()
    in_flight: set[asyncio.Task[None]] = set()
    start = loop.time()
    for n in itertools.count():
        due = start + n / rate
        if due - start >= duration:
            break
        await asyncio.sleep(max(0.0, due - loop.time()))
        tally.sent += 1
        task = asyncio.ensure_future(send())
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight, timeout=COMMAND_TIMEOUT_S + 20)


class BareServer(Server):
    """The bare central system in its own process; it issues and times the commands."""

    label = "bare"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.child: Child | None = None

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.child = await Child.start(
            "bare", ["bare", "--heartbeat", str(HEARTBEAT_S)], self.directory
        )
        port = (await self.child.read(60))["port"]
        self.ocpp_url = f"ws://127.0.0.1:{port}/ocpp"

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop()

    async def connected(self) -> int:
        assert self.child is not None
        return (await self.child.ask("status"))["connected"]

    async def messages(self) -> int:
        assert self.child is not None
        return (await self.child.ask("status"))["messages"]

    async def start_commands(self, ids: Sequence[str], rate: float, duration: float
                             ) -> Collect:
        child = self.child
        assert child is not None
        await child.ask("commands", rate=rate, duration=duration)
        return lambda: self._results(child)

    async def _results(self, child: Child) -> CommandTally:
        stats = await child.ask("results", timeout=COMMAND_TIMEOUT_S + 30)
        tally = CommandTally(
            sent=stats["sent"],
            round_trips_ms=[s * 1000 for s in stats["round_trips"]],
            ok=stats["accepted"],
            rejected=len(stats["round_trips"]) - stats["accepted"],
            unanswered=stats["timeouts"] + stats["errors"],
        )
        tally.outcomes = {"accepted": tally.ok, "rejected": tally.rejected,
                          "timeout": stats["timeouts"], "error": stats["errors"]}
        return tally


# ---------------------------------------------------------------- child process: stations


async def _serve_lines(handle: Callable[[dict[str, Any]], Any]) -> None:
    """Answer JSON-line requests from stdin until `stop` or end of input."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        request = json.loads(line)
        answer = await handle(request)
        _reply(answer)
        if request["op"] == "stop":
            return


def _reply(answer: dict[str, Any], out: IO[str] = sys.stdout) -> None:
    out.write(json.dumps(answer) + "\n")
    out.flush()


async def _stations_worker(url: str) -> None:
    from station_api.simulator import Battery, SimulatedStation

    fleet: dict[str, SimulatedStation] = {}
    charging: set[str] = set()
    tasks: set[asyncio.Task[Any]] = set()

    async def bring_up(station: SimulatedStation) -> None:
        await station.start()
        while True:
            await station.booted.wait()
            # A battery that never fills: the transaction and its meter values run on.
            battery = Battery(capacity_kwh=1_000_000.0, soc=0.1)
            transaction = await station.plug_in(
                1, id_tag_for(station.station_id), battery=battery
            )
            if transaction is not None:
                charging.add(station.station_id)
                return
            await station.unplug(1)
            await asyncio.sleep(1)

    async def add(ids: list[str], rate: float) -> None:
        for station_id in ids:
            station = SimulatedStation(
                station_id, url, password=PASSWORD, connectors=2, meter_interval=METER_S,
                heartbeat_interval=HEARTBEAT_S, seed=len(fleet),
            )
            fleet[station_id] = station
            task = asyncio.create_task(bring_up(station))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(1 / rate)

    def counters() -> dict[str, int]:
        total: dict[str, int] = {}
        for station in fleet.values():
            for key, value in asdict(station.counters).items():
                total[key] = total.get(key, 0) + value
        return total

    async def drain(timeout: float) -> dict[str, Any]:
        for station in fleet.values():
            _silence(station)
        deadline = time.monotonic() + timeout
        previous = None
        while time.monotonic() < deadline:
            now = counters()
            pending = now["calls_sent"] - now["results_received"] - now["errors_received"] \
                - now["timeouts"]
            if pending == 0 and now == previous:
                break
            previous = now
            await asyncio.sleep(0.5)
        return {"counters": counters()}

    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "add":
            task = asyncio.create_task(add(request["ids"], request["rate"]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return {"adding": len(request["ids"])}
        if op == "status":
            return {
                "stations": len(fleet),
                "connected": sum(s.connected.is_set() for s in fleet.values()),
                "booted": sum(s.booted.is_set() for s in fleet.values()),
                "charging": len(charging),
            }
        if op == "drain":
            return await drain(request.get("timeout", 30))
        if op == "stop":
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(s.stop() for s in fleet.values()), return_exceptions=True)
            return {"stopped": True}
        return {"error": f"unknown op {op}"}

    try:
        await _serve_lines(handle)
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*(s.stop() for s in fleet.values()), return_exceptions=True)


def _silence(station: Any) -> None:
    """Stop a station's periodic messages but keep its connection, so in-flight ones finish.

    The simulator has no pause switch; this does what a ChangeConfiguration of
    HeartbeatInterval does inside it, and ends the meter loops.
    """
    for connector in station.connectors.values():
        if connector.meter_task is not None:
            connector.meter_task.cancel()
    station.config["HeartbeatInterval"].value = "86400"
    station._config_changed.set()


# ---------------------------------------------------------------- child process: bare server


async def _bare_server(heartbeat: int) -> None:
    from ocpp.v16 import call
    from ocpp.v16.enums import MessageTrigger

    from chargedesk.bench.bare_csms import CommandStats, issue_commands, serve_bare

    csms = await serve_bare(heartbeat_interval=heartbeat, response_timeout=COMMAND_TIMEOUT_S)
    _reply({"port": csms.port})
    commands = (
        lambda: call.TriggerMessage(requested_message=MessageTrigger.heartbeat),
        lambda: call.UnlockConnector(connector_id=2),
    )
    issuing: asyncio.Task[CommandStats] | None = None

    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        nonlocal issuing
        op = request["op"]
        if op == "status":
            return {"connected": len(csms.stations), "messages": sum(csms.counts.values())}
        if op == "commands":
            issuing = asyncio.create_task(issue_commands(
                csms, rate=request["rate"], duration=request["duration"], commands=commands,
                timeout=COMMAND_TIMEOUT_S,
            ))
            return {"started": True}
        if op == "results":
            assert issuing is not None
            stats = await issuing
            # issue_commands keeps no outcomes; every answer to these two is accepted
            # by the simulator, so count the answers as accepted.
            return {"sent": stats.sent, "round_trips": stats.round_trips,
                    "accepted": len(stats.round_trips), "errors": stats.errors,
                    "timeouts": stats.timeouts}
        if op == "stop":
            await csms.close()
            return {"stopped": True}
        return {"error": f"unknown op {op}"}

    try:
        await _serve_lines(handle)
    finally:
        await csms.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}")
    sub = parser.add_subparsers(dest="role", required=True)
    stations = sub.add_parser("stations", help="simulated stations, driven over stdin")
    stations.add_argument("--url", required=True)
    bare = sub.add_parser("bare", help="the bare central system, driven over stdin")
    bare.add_argument("--heartbeat", type=int, default=HEARTBEAT_S)
    args = parser.parse_args(argv)
    if args.role == "stations":
        asyncio.run(_stations_worker(args.url))
    else:
        asyncio.run(_bare_server(args.heartbeat))


if __name__ == "__main__":
    main()
