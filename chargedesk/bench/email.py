"""`chargedesk bench email`: messages ingested per second by the inbound SMTP server, and
answered, beside an SMTP sink that only accepts, in the same run on the same machine.

The bench starts ``chargedesk serve`` on a fresh SQLite file (or ``--database-url``),
migrated and seeded with the demo network, with its inbound SMTP server on a free port and
its outgoing relay pointed at an SMTP server inside the bench that notes when each reply
arrives. It then sends ``messages`` real messages over ``concurrency`` SMTP connections (each
connection sends its share one after another, as a mail server delivering a queue does):

- half start a conversation, half follow one up (``In-Reply-To`` the first, with the quoted
  earlier message and a signature to strip), from distinct senders, one in ten from a
  demo driver's address (identified); a third carry an HTML alternative, one in ten a photo
  (a PNG of about 20 kB); the text is the chat bench's realistic Swedish and English lines;
- **ingested**: the SMTP transaction ended in 250, which the server says only after the
  message, its raw bytes and its attachments are stored (database and disk);
- **answered**: the assistant's reply reached the relay (parsed, threaded, identified, run
  through the NLU and dialogue, stored in the outbox and sent).

Figures are wall clock at the client: per second (over the time from the first send to the
last 250, or to the last reply) and p50/p99 per message. The baseline is the same messages,
connections and client against an aiosmtpd server in its own process that accepts and
discards (the floor of SMTP on this machine and this client). Every message must be
accepted, stored and answered once, else the command fails; issue 7 sets no throughput
target for e-mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
from aiosmtpd.smtp import SMTP as SMTPServer

from chargedesk.bench import stats
from chargedesk.bench.chat import SCRIPTS
from chargedesk.bench.ocpp import _end_process, _free_port
from chargedesk.bench.serving import DemoServer
from chargedesk.types import utcnow

Progress = Callable[[str], None]
SUPPORT = "support@bench.chargedesk.test"
DEMO_DRIVERS = ("anna.lindqvist@example.se", "erik.johansson@example.se",
                "fleet@acme.example", "sara.berg@example.com")
SUBJECTS = ("Fråga om laddning", "Laddstation", "Question about charging", "Pris",
            "Hjälp", "Charger status", "")
ANSWER_WAIT_S = 180.0  # after the last 250, how long replies may take to come in


# ---------------------------------------------------------------- the messages


@dataclass(frozen=True)
class Outgoing:
    message_id: str
    sender: str
    data: bytes


def _png(rng: random.Random, side: int = 80) -> bytes:
    """A valid PNG of random pixels (it compresses little, like a photo)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    pixels = b"".join(b"\x00" + rng.randbytes(side * 3) for _ in range(side))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2,
                                                                0, 0, 0))
            + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b""))


def build_messages(count: int, *, seed: int = 1) -> list[Outgoing]:
    """``count`` messages: the first half start conversations, the second half follow them
    up in the same threads."""
    rng = random.Random(seed)
    firsts = (count + 1) // 2
    out: list[Outgoing] = []
    starts: list[tuple[str, str, str, str]] = []  # sender, name, subject, message id
    now = format_datetime(utcnow())
    for index in range(count):
        follow_up = index >= firsts
        k = index - firsts if follow_up else index
        script = SCRIPTS[k % len(SCRIPTS)]
        line = script[(k // len(SCRIPTS) + (5 if follow_up else 1)) % len(script)]
        if follow_up:
            sender, name, subject, parent = starts[k % len(starts)]
        else:
            sender = (DEMO_DRIVERS[(k // 10) % len(DEMO_DRIVERS)] if k % 10 == 0
                      else f"driver{k:05d}@bench.example")
            name, subject, parent = f"Förare {k}", SUBJECTS[k % len(SUBJECTS)], ""
        message_id = f"bench-{index}-{rng.getrandbits(32):08x}@bench.example"
        mail = EmailMessage()
        mail["From"] = f"{name} <{sender}>"
        mail["To"] = SUPPORT
        mail["Subject"] = f"SV: {subject}" if follow_up else subject
        mail["Date"] = now
        mail["Message-ID"] = f"<{message_id}>"
        text = f"{line}\n\n-- \n{name}\n"
        if follow_up:
            mail["In-Reply-To"] = f"<{parent}>"
            mail["References"] = f"<{parent}>"
            text = (f"{line}\n\nSkickat från min iPhone\n\nDen 4 mars 2026 kl. 10:12 skrev "
                    f"{name} <{sender}>:\n> Tidigare fråga\n> om laddning\n")
        mail.set_content(text)
        if index % 3 == 0:
            mail.add_alternative(f"<html><body><p>{line}</p><div class='gmail_quote'>"
                                 f"<blockquote>Tidigare</blockquote></div></body></html>",
                                 subtype="html")
        if index % 10 == 5:
            mail.add_attachment(_png(rng), maintype="image", subtype="png",
                                filename="station.png")
        if not follow_up:
            starts.append((sender, name, subject, message_id))
        out.append(Outgoing(message_id, sender, mail.as_bytes()))
    return out


# ---------------------------------------------------------------- SMTP client and relay


@dataclass
class Tally:
    started: dict[str, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    first: float | None = None
    last: float = 0.0

    def figures(self, attempted: int) -> dict[str, Any]:
        done = len(self.latencies_ms)
        span = self.last - (self.first or self.last)
        ordered = sorted(self.latencies_ms)
        return {
            "attempted": attempted,
            "completed": done,
            "errors": dict(self.errors),
            "per_s": round(done / span, 1) if span > 0 else None,
            "p50_ms": _round(stats.percentile(ordered, 50)),
            "p99_ms": _round(stats.percentile(ordered, 99)),
            "max_ms": _round(ordered[-1] if ordered else None),
            "span_s": round(span, 3),
        }


def _round(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


async def send_all(port: int, messages: list[Outgoing], concurrency: int) -> Tally:
    """Deliver every message over ``concurrency`` connections, timing each transaction."""
    tally = Tally()
    queue: asyncio.Queue[Outgoing] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)

    async def connection() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60,
                               local_hostname="bench.example", start_tls=False)
        try:
            while True:
                try:
                    message = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                start = time.perf_counter()
                tally.started[message.message_id] = start
                if tally.first is None:
                    tally.first = start
                try:
                    if not smtp.is_connected:
                        await smtp.connect()
                    await smtp.sendmail(message.sender, [SUPPORT], message.data)
                except aiosmtplib.SMTPResponseException as exc:
                    kind = f"smtp {exc.code}"
                    tally.errors[kind] = tally.errors.get(kind, 0) + 1
                    continue
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    kind = type(exc).__name__
                    tally.errors[kind] = tally.errors.get(kind, 0) + 1
                    with contextlib.suppress(Exception):
                        smtp.close()
                    continue
                done = time.perf_counter()
                tally.latencies_ms.append((done - start) * 1000)
                tally.last = max(tally.last, done)
        finally:
            if smtp.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await smtp.quit()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return tally


class Relay:
    """The service's outgoing relay: notes when the reply to each message arrives."""

    _IN_REPLY_TO = re.compile(rb"^In-Reply-To:\s*<([^>]+)>", re.IGNORECASE | re.MULTILINE)

    def __init__(self) -> None:
        self.replies: dict[str, float] = {}
        self.duplicates = 0
        self.unthreaded = 0
        self.arrived = asyncio.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.perf_counter()
        head = bytes(envelope.content).split(b"\r\n\r\n", 1)[0]
        match = self._IN_REPLY_TO.search(head)
        if match is None:
            self.unthreaded += 1
        else:
            key = match.group(1).decode("ascii", "replace")
            if key in self.replies:
                self.duplicates += 1
            else:
                self.replies[key] = now
        self.arrived.set()
        return "250 OK"


async def _relay(handler: Relay) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTPServer(handler, hostname="relay.bench", loop=loop,
                           data_size_limit=None), "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


SINK = """
import asyncio, sys
from aiosmtpd.smtp import SMTP

class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Sink(), hostname="sink.bench", loop=loop, data_size_limit=None),
        "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


# ---------------------------------------------------------------- the run


def run(*, messages: int, concurrency: int, database_url: str | None,
        progress: Progress | None = None) -> dict[str, Any]:
    """Send the messages to the service and to the sink; the figures, with ``failures``."""
    from chargedesk.logging import configure_logging

    configure_logging("WARNING")  # seeding the demo logs a lot; stdout is for the figures
    say = progress or (lambda _text: None)
    return asyncio.run(_run(messages, concurrency, database_url, say))


async def _run(count: int, concurrency: int, database_url: str | None,
               say: Progress) -> dict[str, Any]:
    figures: dict[str, Any] = {"messages": count, "concurrency": concurrency,
                               "cpus": os.cpu_count(), "load_before": _load()}
    say(f"building {count} messages")
    messages = build_messages(count)
    figures["bytes_mean"] = round(sum(len(m.data) for m in messages) / count)
    relay = Relay()
    relay_server, relay_port = await _relay(relay)
    with tempfile.TemporaryDirectory(prefix="chargedesk-bench-email-") as tmp:
        server = OwnMailServer(Path(tmp), database_url, relay_port)
        try:
            say(f"starting a server on {server.database_label}")
            await server.start(say)
            smtp_port = server.smtp_port
            figures["database"] = server.database_label
            await _warm_up(smtp_port, relay)
            say(f"e-mail: {count} messages over {concurrency} connections")
            sent = await send_all(smtp_port, messages, concurrency)
            figures["ingest"] = sent.figures(count)
            say(f"waiting for the answers ({len(relay.replies) - 1} so far)")
            await _wait_for_answers(relay, {m.message_id for m in messages}, sent)
            figures["answered"] = _answers(relay, sent, count)
            figures["stored"] = await asyncio.to_thread(_stored, server.url)
        finally:
            await server.stop()
            relay_server.close()
    say("baseline: an SMTP sink that only accepts, same messages and connections")
    figures["baseline"] = await _baseline(messages, concurrency)
    figures["load_after"] = _load()
    ingest, answered, base = figures["ingest"], figures["answered"], figures["baseline"]
    figures["ratio"] = {
        "ingest_per_s": _ratio(ingest["per_s"], base["per_s"]),
        "answered_per_s": _ratio(answered["per_s"], base["per_s"]),
        "ingest_p50": _ratio(ingest["p50_ms"], base["p50_ms"]),
        "ingest_p99": _ratio(ingest["p99_ms"], base["p99_ms"]),
    }
    figures["failures"] = _failures(figures)
    return figures


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def _warm_up(port: int, relay: Relay) -> None:
    """One message and its answer before measuring (the NLU model may still be loading)."""
    mail = EmailMessage()
    mail["From"] = "warm@bench.example"
    mail["To"] = SUPPORT
    mail["Subject"] = "Hej"
    mail["Message-ID"] = "<warm-up@bench.example>"
    mail.set_content("Hej!")
    await aiosmtplib.send(mail, hostname="127.0.0.1", port=port, timeout=60)
    deadline = time.monotonic() + 180
    while "warm-up@bench.example" not in relay.replies:
        if time.monotonic() > deadline:
            raise RuntimeError("no answer to the warm-up message")
        relay.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(relay.arrived.wait(), 1)


async def _wait_for_answers(relay: Relay, ids: set[str], sent: Tally) -> None:
    """Until every accepted message is answered, or nothing has come for a while."""
    expected = len(sent.latencies_ms)
    last_progress, seen = time.monotonic(), -1
    while True:
        answered = sum(1 for key in relay.replies if key in ids)
        if answered >= expected:
            return
        if answered != seen:
            seen, last_progress = answered, time.monotonic()
        elif time.monotonic() - last_progress > ANSWER_WAIT_S:
            return
        relay.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(relay.arrived.wait(), 1)


def _answers(relay: Relay, sent: Tally, count: int) -> dict[str, Any]:
    latencies = sorted((relay.replies[key] - start) * 1000
                       for key, start in sent.started.items() if key in relay.replies)
    times = [relay.replies[key] for key in sent.started if key in relay.replies]
    span = (max(times) - (sent.first or 0)) if times else 0
    return {
        "expected": count,
        "completed": len(latencies),
        "duplicates": relay.duplicates,
        "unthreaded": relay.unthreaded,
        "per_s": round(len(latencies) / span, 1) if span > 0 else None,
        "p50_ms": _round(stats.percentile(latencies, 50)),
        "p99_ms": _round(stats.percentile(latencies, 99)),
        "max_ms": _round(latencies[-1] if latencies else None),
        "span_s": round(span, 3),
    }


def _stored(url: str) -> dict[str, Any]:
    """What the service stored of the measured messages: rows by status, attachments."""
    from sqlalchemy import func
    from sqlmodel import Session, col, select

    from assistant.channels.email_models import EmailAttachment, InboundEmail
    from chargedesk.db import dispose, make_engine

    engine = make_engine(url)
    try:
        with Session(engine) as session:
            measured = col(InboundEmail.message_id).like("bench-%")
            by_status = dict(session.exec(
                select(InboundEmail.status, func.count()).where(measured)
                .group_by(InboundEmail.status)).all())
            attachments = session.exec(select(func.count()).select_from(EmailAttachment)
                                       .where(col(EmailAttachment.path).is_not(None))).one()
            # Threads the measured mail went to (the demo's own notifications start others).
            threads = session.exec(select(func.count(func.distinct(InboundEmail.thread_id)))
                                   .where(measured)).one()
            identified = session.exec(select(func.count()).select_from(InboundEmail)
                                      .where(measured, col(InboundEmail.verified))).one()
    finally:
        dispose(engine)
    return {"inbound": sum(by_status.values()),
            "by_status": {str(k): v for k, v in by_status.items()},
            "attachments_kept": attachments, "threads": threads,
            "identified": identified}


async def _baseline(messages: list[Outgoing], concurrency: int) -> dict[str, Any]:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SINK, str(port), stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError("the SMTP sink did not start")
        await send_all(port, messages[:min(20, len(messages))], 1)  # warm the connection path
        return (await send_all(port, messages, concurrency)).figures(len(messages))
    finally:
        await _end_process(proc, 5)


def _failures(figures: dict[str, Any]) -> list[str]:
    failures = []
    ingest, answered, stored = figures["ingest"], figures["answered"], figures["stored"]
    if ingest["completed"] < ingest["attempted"]:
        failures.append(f"{ingest['attempted'] - ingest['completed']} messages not accepted: "
                        f"{ingest['errors']}")
    if stored["inbound"] != ingest["completed"]:
        failures.append(f"{ingest['completed']} accepted but {stored['inbound']} stored")
    if answered["completed"] < ingest["completed"]:
        failures.append(f"{ingest['completed'] - answered['completed']} accepted messages "
                        f"not answered: {stored['by_status']}")
    if answered["duplicates"]:
        failures.append(f"{answered['duplicates']} messages answered twice")
    return failures


class OwnMailServer(DemoServer):
    """`chargedesk serve` with the inbound SMTP server on, relaying replies to the bench."""

    def __init__(self, directory: Path, database_url: str | None, relay_port: int) -> None:
        super().__init__(directory, database_url)
        self.relay_port = relay_port
        self.smtp_port = _free_port()

    def environment(self) -> dict[str, str]:
        return {
            "CHARGEDESK_SMTP_INBOUND_HOST": "127.0.0.1",
            "CHARGEDESK_SMTP_INBOUND_PORT": str(self.smtp_port),
            "CHARGEDESK_SUPPORT_ADDRESS": f"ChargeDesk <{SUPPORT}>",
            "CHARGEDESK_SMTP_HOST": "127.0.0.1",
            "CHARGEDESK_SMTP_PORT": str(self.relay_port),
            "CHARGEDESK_SMTP_STARTTLS": "false",
            # Many messages come from the four demo drivers' addresses: no rate limit here.
            "CHARGEDESK_EMAIL_REPLIES_PER_HOUR": "1000000",
        }

    async def ready(self, client: httpx.AsyncClient) -> bool:
        if not await super().ready(client):
            return False
        _, writer = await asyncio.open_connection("127.0.0.1", self.smtp_port)
        writer.close()
        return True


# ---------------------------------------------------------------- report


def summary(figures: dict[str, Any]) -> str:
    ingest, answered, base = figures["ingest"], figures["answered"], figures["baseline"]
    stored = figures["stored"]
    lines = [
        f"bench email: {figures['messages']} messages over {figures['concurrency']} SMTP "
        f"connections, mean {figures['bytes_mean']} bytes, {figures['database']}, "
        f"{figures['cpus']} CPUs, load {figures['load_before']} -> {figures['load_after']}",
        f"{'':22} {'per s':>8} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'done':>6}",
    ]
    for name, row in (("ingested (250)", ingest), ("answered (reply in)", answered),
                      ("sink baseline (250)", base)):
        lines.append(f"{name:22} {_num(row['per_s']):>8} {_num(row['p50_ms']):>9} "
                     f"{_num(row['p99_ms']):>9} {_num(row['max_ms']):>9} "
                     f"{row['completed']:>6}")
    ratio = figures["ratio"]
    lines.append(f"ingested / sink: x{ratio['ingest_per_s']} per s, p50 x{ratio['ingest_p50']}"
                 f"; answered / sink: x{ratio['answered_per_s']} per s")
    lines.append(f"stored: {stored['inbound']} ({stored['by_status']}), "
                 f"{stored['threads']} threads, {stored['identified']} from known drivers, "
                 f"{stored['attachments_kept']} attachments kept")
    lines.append("all accepted, stored and answered once" if not figures["failures"]
                 else "failed: " + "; ".join(figures["failures"]))
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
