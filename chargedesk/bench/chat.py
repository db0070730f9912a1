"""`chargedesk bench chat`: the web chat under many concurrent conversations, beside `/healthz`.

Each conversation opens a chat session (``POST /chat/session``) and then says its turns over
Rasa's REST channel (``POST /webhooks/rest/webhook``), one at a time, each waiting for the
bot's answer: a scripted, realistic mix of anonymous questions (prices, station status,
where to charge, greetings, thanks) in Swedish and English, about the demo network's sites.

Turns go out on a clock: the conversations together send ``rate`` turns per second (each
conversation one turn every ``conversations / rate`` seconds, starts staggered), so a slow
server shows as latency rather than as a lower offered load, as a human's next message does
not wait for the server to be fast. A turn that is still waiting when its next one is due
delays that one. The figures are per turn, wall clock at the client: p50, p99, max, and turns
per second (completed turns over the time from the first send to the last answer).

Sessions are opened with httpx; the measured requests go over one plain keep-alive
HTTP/1.1 connection per conversation (:class:`Connection`), because httpx's own CPU cost
per request would make the load generator the bottleneck on a 2-core machine.

The baseline is ``GET /healthz`` (one ``SELECT 1``) under exactly the same schedule in the
same run against the same server: the floor of the HTTP stack, database pool and this
client on this machine. Beside the wall-clock figures each phase reports the CPU time per
request of the server (when the bench started it) and of this client, and the bench the
load average before and after: on a machine shared with other work the latencies mostly
measure that work, while CPU per turn is what the server itself spends.

Without ``--url`` the bench starts its own server (``chargedesk serve``) on a fresh SQLite
file, or on ``--database-url`` (PostgreSQL: give an empty database or schema), migrated and
seeded with the demo network, with the scheduler off; it waits for the NLU model to load.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from chargedesk.bench import stats
from chargedesk.bench.keepalive import Connection
from chargedesk.bench.serving import DemoServer

P99_TARGET_MS = 50.0
TURNS_PER_S_TARGET = 500.0
REQUEST_TIMEOUT_S = 30.0

Progress = Callable[[str], None]

# Conversations as a driver would have them, anonymous: each is said in order, then again.
SCRIPTS: tuple[tuple[str, ...], ...] = (
    ("Hej!", "Vad kostar det att ladda på Odenplan?", "Är SE-STO-ODEN-01 ledig just nu?",
     "Var kan jag ladda i Göteborg?", "Vad kostar snabbladdning?", "Okej, tack!",
     "Fungerar laddaren vid Uppsala resecentrum?", "Vad är priset per kWh på natten?",
     "Finns det någon ledig laddare i Stockholm?", "Hej då"),
    ("Hi there", "How much does charging cost at Stockholm City garage?",
     "Is SE-STO-CITY-01 available?", "Where can I charge near Uppsala?",
     "What's the price for fast charging?", "Thanks!", "Is the station at Odenplan working?",
     "Where is the nearest charger in Gothenburg?", "Does it cost more during the day?",
     "Bye"),
    ("Hallå", "Är laddstationen i Göteborg hamnen ur funktion?", "Var kan jag ladda bilen?",
     "Vad kostar det per kilowattimme?", "Tar ni betalt för parkering efter laddning?",
     "Tack så mycket", "Är SE-UPP-RESE-01 upptagen?", "Finns det laddare vid Odenplan?",
     "Vad kostar det att ladda i Uppsala?", "Adjö"),
    ("Hello", "What does it cost to charge at Odenplan?", "Is there a free charger in Göteborg?",
     "Is SE-GBG-HAMN-01 online?", "Find me a charger in Stockholm", "Great, thank you",
     "How much per kWh at night?", "Is the charger at Uppsala resecentrum free?",
     "What's the fee per minute?", "Goodbye"),
)


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    empty: int = 0
    first_send: float | None = None
    last_done: float = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def figures(self, attempted: int) -> dict[str, Any]:
        done = len(self.latencies_ms)
        span = self.last_done - (self.first_send or self.last_done)
        ordered = sorted(self.latencies_ms)

        def rounded(value: float | None) -> float | None:
            return round(value, 2) if value is not None else None

        return {
            "attempted": attempted,
            "completed": done,
            "errors": dict(self.errors),
            "empty_answers": self.empty,
            "per_s": round(done / span, 1) if span > 0 else None,
            "p50_ms": rounded(stats.percentile(ordered, 50)),
            "p99_ms": rounded(stats.percentile(ordered, 99)),
            "max_ms": rounded(ordered[-1] if ordered else None),
            "mean_ms": rounded(sum(ordered) / done if done else None),
            "span_s": round(span, 3),
        }


def run(*, conversations: int, turns: int, rate: float, url: str | None,
        database_url: str | None, progress: Progress | None = None) -> dict[str, Any]:
    """Run the chat load and the /healthz baseline; the figures, with ``failures``."""
    say = progress or (lambda _text: None)
    return asyncio.run(_run(conversations, turns, rate, url, database_url, say))


async def _run(conversations: int, turns: int, rate: float, url: str | None,
               database_url: str | None, say: Progress) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "conversations": conversations, "turns": turns, "rate": rate, "cpus": os.cpu_count(),
        "targets": {"p99_ms": P99_TARGET_MS, "turns_per_s": TURNS_PER_S_TARGET},
    }
    server: DemoServer | None = None
    with tempfile.TemporaryDirectory(prefix="chargedesk-bench-chat-") as tmp:
        try:
            if url is None:
                server = DemoServer(Path(tmp), database_url)
                say(f"starting a server on {server.database_label}")
                url = await server.start(say)
                figures["database"] = server.database_label
            else:
                figures["database"] = "(running server)"
            figures["url"] = url
            limits = httpx.Limits(max_connections=conversations + 10,
                                  max_keepalive_connections=conversations + 10)
            async with httpx.AsyncClient(base_url=url, limits=limits,
                                         timeout=REQUEST_TIMEOUT_S) as client:
                say(f"opening {conversations} chat sessions")
                sessions = await _open_sessions(client, conversations)
                await _warm_up(client, sessions[0])
            figures["load_average"] = [_load_average()]
            say(f"chat: {conversations} conversations x {turns} turns at {rate:g} turns/s")
            figures["chat"] = await _measured(server, _load(url, sessions, turns, rate,
                                                            _chat_turn))
            say("baseline: GET /healthz on the same schedule")
            figures["healthz"] = await _measured(server, _load(url, sessions, turns, rate,
                                                               _healthz))
            figures["load_average"].append(_load_average())
        finally:
            if server is not None:
                await server.stop()
    chat, base = figures["chat"], figures["healthz"]
    figures["ratio"] = {
        key: round(chat[key] / base[key], 2) if chat[key] and base[key] else None
        for key in ("p50_ms", "p99_ms", "per_s", "server_cpu_ms")
    }
    figures["failures"] = _failures(figures)
    return figures


async def _measured(server: DemoServer | None, load: Awaitable[dict[str, Any]]
                    ) -> dict[str, Any]:
    """A load's figures with the CPU time each completed request cost the server (when this
    bench started it) and this client: on a machine shared with other work, what a turn
    costs says more than how fast it came back."""
    server_before = server.cpu_seconds() if server is not None else None
    client_before = time.process_time()
    figures = await load
    client = time.process_time() - client_before
    server_after = server.cpu_seconds() if server is not None else None
    done = figures["completed"] or 1
    figures["server_cpu_ms"] = (
        round((server_after - server_before) * 1000 / done, 3)
        if server_before is not None and server_after is not None else None)
    figures["client_cpu_ms"] = round(client * 1000 / done, 3)
    return figures


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _failures(figures: dict[str, Any]) -> list[str]:
    chat = figures["chat"]
    failures = []
    if chat["errors"] or chat["completed"] < chat["attempted"]:
        failures.append(f"{chat['attempted'] - chat['completed']} turns failed: {chat['errors']}")
    if chat["empty_answers"]:
        failures.append(f"{chat['empty_answers']} turns got no answer")
    if chat["p99_ms"] is None or chat["p99_ms"] >= P99_TARGET_MS:
        failures.append(f"p99 {chat['p99_ms']} ms, target under {P99_TARGET_MS:g} ms")
    if chat["per_s"] is None or chat["per_s"] < TURNS_PER_S_TARGET:
        failures.append(f"{chat['per_s']} turns/s, target at least {TURNS_PER_S_TARGET:g}")
    return failures


# ---------------------------------------------------------------- client


# ---------------------------------------------------------------- load


@dataclass(frozen=True)
class ChatSession:
    index: int
    sender: str
    token: str


async def _open_sessions(client: httpx.AsyncClient, count: int) -> list[ChatSession]:
    async def one(index: int) -> ChatSession:
        response = await client.post("/chat/session")
        response.raise_for_status()
        body = response.json()
        return ChatSession(index, body["sender"], body["token"])

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def _warm_up(client: httpx.AsyncClient, session: ChatSession) -> None:
    """One turn before measuring: the first parse may still load the NLU model."""
    response = await client.post(
        "/webhooks/rest/webhook", json={"sender": session.sender, "message": "Hej"},
        headers={"Authorization": f"Bearer {session.token}"}, timeout=120)
    response.raise_for_status()


Turn = Callable[[Connection, ChatSession, int], Awaitable[bool]]


async def _chat_turn(conn: Connection, session: ChatSession, turn: int) -> bool:
    script = SCRIPTS[session.index % len(SCRIPTS)]
    body = json.dumps({"sender": session.sender, "message": script[turn % len(script)]})
    code, payload = await conn.request("POST", "/webhooks/rest/webhook", body.encode(),
                                       {"Authorization": f"Bearer {session.token}"})
    if code != 200:
        raise StatusError(code)
    answer = json.loads(payload)
    return isinstance(answer, list) and bool(answer) and all("text" in m or "buttons" in m
                                                             for m in answer)


async def _healthz(conn: Connection, session: ChatSession, turn: int) -> bool:
    code, _ = await conn.request("GET", "/healthz")
    if code != 200:
        raise StatusError(code)
    return True


class StatusError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"http {code}")
        self.code = code


async def _load(url: str, sessions: list[ChatSession], turns: int, rate: float,
                turn_fn: Turn) -> dict[str, Any]:
    tally = Tally()
    period = len(sessions) / rate
    target = httpx.URL(url)
    start = time.perf_counter() + 0.5

    async def conversation(session: ChatSession) -> None:
        conn = Connection(target.host, target.port or 80)
        due = start + period * session.index / len(sessions)
        try:
            for turn in range(turns):
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent = time.perf_counter()
                if tally.first_send is None or sent < tally.first_send:
                    tally.first_send = sent
                try:
                    ok = await asyncio.wait_for(turn_fn(conn, session, turn), REQUEST_TIMEOUT_S)
                except StatusError as exc:
                    tally.error(str(exc))
                except (OSError, ConnectionError, TimeoutError, ValueError) as exc:
                    tally.error(type(exc).__name__)
                    await conn.close()
                else:
                    done = time.perf_counter()
                    tally.latencies_ms.append((done - sent) * 1000)
                    tally.last_done = max(tally.last_done, done)
                    tally.empty += not ok
                due += period
        finally:
            await conn.close()

    await asyncio.gather(*(conversation(s) for s in sessions))
    return tally.figures(len(sessions) * turns)


# ---------------------------------------------------------------- own server


# ---------------------------------------------------------------- report


def summary(figures: dict[str, Any]) -> str:
    chat, base = figures["chat"], figures["healthz"]
    loads = " -> ".join(_num(v) for v in figures.get("load_average") or [])
    lines = [
        f"bench chat: {figures['conversations']} conversations x {figures['turns']} turns, "
        f"offered {figures['rate']:g} turns/s, {figures['database']}, "
        f"{figures['cpus']} CPUs, load average {loads or '-'}",
        f"{'':10} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7} "
        f"{'server CPU ms':>14} {'client CPU ms':>14}",
    ]
    for name, row in (("chat", chat), ("/healthz", base)):
        errors = sum(row["errors"].values()) + row["empty_answers"]
        lines.append(f"{name:10} {_num(row['per_s']):>8} {_num(row['p50_ms']):>8} "
                     f"{_num(row['p99_ms']):>8} {_num(row['max_ms']):>8} {errors:>7} "
                     f"{_num(row.get('server_cpu_ms')):>14} "
                     f"{_num(row.get('client_cpu_ms')):>14}")
    ratio = figures["ratio"]
    lines.append(f"chat / healthz: p50 x{ratio['p50_ms']}, p99 x{ratio['p99_ms']}, "
                 f"server CPU per request x{ratio.get('server_cpu_ms')}")
    lines.append("targets met" if not figures["failures"]
                 else "missed: " + "; ".join(figures["failures"]))
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
