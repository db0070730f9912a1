"""`chargedesk bench sms`: signed Twilio SMS webhooks against a server, beside `/healthz`.

Every request is what Twilio would post for an incoming text: a form with a fresh
``MessageSid``, a sender, our number and a realistic question (Swedish and English), signed
with ``X-Twilio-Signature`` over the server's public URL exactly as Twilio signs it. ``C``
connections each post back to back until ``N`` requests are done (a closed loop): the
figures are requests per second (completed over the time from the first send to the last
answer) and p50/p99/max per request, wall clock at the client. The baseline is
``GET /healthz`` (one ``SELECT 1``) the same way, in the same run, against the same server,
measured first. Then the bench waits until the server has answered every text: the
replies go through the official Twilio client to :class:`TwilioStub`, a stand-in for
api.twilio.com on loopback, so nothing reaches the internet, and every sender is a number
in the range Sweden's regulator keeps for fiction (+46 70-174 06 05 to 99).

Without ``--url`` the bench starts its own server (``chargedesk serve``) on a fresh SQLite
file, or on ``--database-url``, migrated and seeded with the demo network, its Twilio API
pointed at the stub. With ``--url`` the running server must already send to the stub:
start it with ``CHARGEDESK_TWILIO_API_BASE_URL=http://127.0.0.1:<--stub-port>``, and give
the bench its auth token, account SID and public base URL (the same environment variables);
a first probe message must come back to the stub, or the bench stops before the load.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from chargedesk.bench import stats
from chargedesk.bench.keepalive import Connection
from chargedesk.bench.serving import DemoServer

P99_TARGET_MS = 100.0
PER_S_TARGET = 300.0
REQUEST_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 600.0
SMS_PATH = "/webhooks/twilio/sms"
OUR_NUMBER = "+46766860000"
# PTS keeps 070-174 06 05 to 070-174 06 99 for fiction: no phone answers them.
SENDERS = tuple(f"+4670174{n:04d}" for n in range(605, 700))
TEXTS = (
    "Hej! Vad kostar det att ladda på Odenplan?", "Är SE-STO-ODEN-01 ledig just nu?",
    "Var kan jag ladda i Göteborg?", "Vad kostar snabbladdning?", "Tack!",
    "Fungerar laddaren vid Uppsala resecentrum?", "Vad är priset per kWh på natten?",
    "Hi, how much does charging cost at Stockholm City garage?",
    "Is SE-STO-CITY-01 available?", "Where can I charge near Uppsala?", "Thanks, bye",
    "Finns det någon ledig laddare i Stockholm?", "What's the price for fast charging?",
)

Progress = Any
_LATER_PART = re.compile(r"\((?:[2-9]|\d{2,})/\d+\)$")


# ---------------------------------------------------------------- Twilio's API on loopback


@dataclass(frozen=True)
class StubRequest:
    """One request the stand-in received: what the Twilio client sent."""

    method: str
    path: str
    form: dict[str, str]
    auth: tuple[str, str] | None
    at: float


@dataclass
class _Failure:
    status: int
    code: int
    message: str


class TwilioStub:
    """api.twilio.com's Messages resource on a loopback port, for tests and benchmarks.

    ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` with HTTP basic auth (the
    account SID and auth token) is answered 201 with a message resource as Twilio answers
    it (a new ``SM…`` sid, ``status: queued``, the segments); a wrong account or password
    gets Twilio's 401 (code 20003), another path its 404 (20404). ``fail_next`` scripts
    Twilio's errors for one recipient (21610 unsubscribed, 500...). Every request is
    recorded, in order. It runs its own event loop in a thread, so synchronous tests and
    asynchronous benchmarks use it alike.
    """

    def __init__(self, *, account_sid: str, auth_token: str, port: int = 0) -> None:
        self.account_sid, self.auth_token, self.port = account_sid, auth_token, port
        self.requests: list[StubRequest] = []
        # Messages created whose body is not a later part of a split reply ("(2/3)").
        self.replies = 0
        self._failures: dict[str, deque[_Failure]] = {}
        self._lock = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def messages_path(self) -> str:
        return f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"

    def start(self) -> TwilioStub:
        started = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._connection, "127.0.0.1", self.port))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=serve, name="twilio-stub", daemon=True)
        self._thread.start()
        started.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            server.close()
            for writer in list(self._writers):  # the clients' keep-alive connections
                writer.close()
            for _ in range(10):
                if not self._writers:
                    break
                await asyncio.sleep(0.01)

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = self._server = None

    def fail_next(self, to: str, *, status: int, code: int, message: str = "",
                  times: int = 1) -> None:
        """Answer the next ``times`` messages to ``to`` with a Twilio error."""
        with self._lock:
            queue = self._failures.setdefault(to, deque())
            queue.extend(_Failure(status, code, message or f"error {code}") for _ in range(times))

    def sent(self, to: str | None = None) -> list[StubRequest]:
        """The messages created so far (optionally only those to ``to``)."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST"
                    and (to is None or r.form.get("To") == to)]

    def wait_until(self, predicate: Any, timeout: float) -> bool:
        """Block until ``predicate(self)`` holds (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 1.0))
            return True

    def wait_for(self, count: int, *, to: str | None = None, timeout: float = 30.0
                 ) -> list[StubRequest]:
        """Block until ``count`` messages (to ``to``) have been created; they, in order."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [r for r in self.requests if r.method == "POST"
                         and (to is None or r.form.get("To") == to)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(found)} of {count} messages reached the stub")
                self._lock.wait(left)

    # ------------------------------------------------------------ HTTP

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (raw := await reader.readuntil(b"\r\n")) != b"\r\n":
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                code, payload = self._answer(method, target, headers, body)
                data = json.dumps(payload).encode()
                writer.write(
                    f"HTTP/1.1 {code} {'Created' if code == 201 else 'Error'}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                    "Connection: keep-alive\r\n\r\n".encode() + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    def _answer(self, method: str, target: str, headers: dict[str, str], body: bytes
                ) -> tuple[int, dict[str, Any]]:
        form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        auth = _basic_auth(headers.get("authorization", ""))
        path = urlsplit(target).path
        with self._lock:
            self.requests.append(StubRequest(method, path, form, auth, time.monotonic()))
            failure = None
            queue = self._failures.get(form.get("To", ""))
            if method == "POST" and path == self.messages_path and queue:
                failure = queue.popleft()
            if method == "POST" and failure is None and auth == (
                    self.account_sid, self.auth_token) and path == self.messages_path \
                    and not _LATER_PART.search(form.get("Body", "")):
                self.replies += 1
            self._lock.notify_all()
        if auth != (self.account_sid, self.auth_token):
            return 401, _error(401, 20003, "Authenticate")
        if method != "POST" or path != self.messages_path:
            return 404, _error(404, 20404, f"The requested resource {path} was not found")
        if failure is not None:
            return failure.status, _error(failure.status, failure.code, failure.message)
        return 201, self._message(form)

    def _message(self, form: dict[str, str]) -> dict[str, Any]:
        from assistant.channels.twilio.segments import segments

        sid = "SM" + uuid.uuid4().hex
        now = formatdate(usegmt=True)
        return {
            "account_sid": self.account_sid, "api_version": "2010-04-01",
            "body": form.get("Body", ""), "date_created": now, "date_updated": now,
            "date_sent": None, "direction": "outbound-api", "error_code": None,
            "error_message": None, "from": form.get("From"), "messaging_service_sid": None,
            "num_media": "0", "num_segments": str(segments(form.get("Body", ""))[1]),
            "price": None, "price_unit": "USD", "sid": sid, "status": "queued",
            "subresource_uris": {"media": f"{self.messages_path[:-5]}/{sid}/Media.json"},
            "to": form.get("To"), "uri": f"{self.messages_path[:-5]}/{sid}.json",
        }


def _basic_auth(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value).decode().partition(":")
    except ValueError:
        return None
    return user, password


def _error(status: int, code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "status": status,
            "more_info": f"https://www.twilio.com/docs/errors/{code}"}


# ---------------------------------------------------------------- the load


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
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
            "attempted": attempted, "completed": done, "errors": dict(self.errors),
            "per_s": round(done / span, 1) if span > 0 else None,
            "p50_ms": rounded(stats.percentile(ordered, 50)),
            "p99_ms": rounded(stats.percentile(ordered, 99)),
            "max_ms": rounded(ordered[-1] if ordered else None),
            "span_s": round(span, 3),
        }


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    public_url: str  # the base Twilio calls, signed over
    account_sid: str
    auth_token: str


def signed_sms(target: Target, *, sender: str, text: str) -> tuple[bytes, bytes]:
    """An incoming-message webhook as Twilio posts it: the request head and body."""
    from assistant.channels.twilio.common import sign

    fields = {
        "ToCountry": "SE", "ToState": "", "SmsMessageSid": "", "NumMedia": "0",
        "ToCity": "", "FromZip": "", "SmsSid": "", "FromState": "", "SmsStatus": "received",
        "FromCity": "", "Body": text, "FromCountry": "SE", "To": OUR_NUMBER,
        "ToZip": "", "NumSegments": "1", "MessageSid": "", "AccountSid": target.account_sid,
        "From": sender, "ApiVersion": "2010-04-01",
    }
    sid = "SM" + uuid.uuid4().hex
    fields["SmsMessageSid"] = fields["SmsSid"] = fields["MessageSid"] = sid
    body = urlencode(fields).encode()
    signature = sign(target.auth_token, target.public_url + SMS_PATH, fields)
    head = (f"POST {SMS_PATH} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"X-Twilio-Signature: {signature}\r\nContent-Length: {len(body)}\r\n"
            "User-Agent: TwilioProxy/1.1\r\n\r\n").encode()
    return head, body


async def _load(target: Target, requests: list[tuple[bytes, bytes]], concurrency: int,
                expect: int) -> dict[str, Any]:
    tally = Tally()
    pending = iter(requests)

    async def worker() -> None:
        conn = Connection(target.host, target.port)
        try:
            for head, body in pending:
                sent = time.perf_counter()
                if tally.first_send is None or sent < tally.first_send:
                    tally.first_send = sent
                try:
                    code, _ = await asyncio.wait_for(conn.send(head + body),
                                                     REQUEST_TIMEOUT_S)
                except (OSError, ConnectionError, TimeoutError, ValueError) as exc:
                    tally.error(type(exc).__name__)
                    await conn.close()
                    continue
                if code != expect:
                    tally.error(f"http {code}")
                    continue
                done = time.perf_counter()
                tally.latencies_ms.append((done - sent) * 1000)
                tally.last_done = max(tally.last_done, done)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally.figures(len(requests))


def replies(stub: TwilioStub) -> int:
    """Replies the server sent (a reply split in parts counts once)."""
    return stub.replies


# ---------------------------------------------------------------- run


def run(*, requests: int, concurrency: int, url: str | None, database_url: str | None,
        stub_port: int, public_url: str | None, account_sid: str | None,
        auth_token: str | None, progress: Progress | None = None) -> dict[str, Any]:
    """Run the /healthz baseline and the SMS load; the figures, with ``failures``."""
    say = progress or (lambda _text: None)
    return asyncio.run(_run(requests, concurrency, url, database_url, stub_port, public_url,
                            account_sid, auth_token, say))


async def _run(requests: int, concurrency: int, url: str | None, database_url: str | None,
               stub_port: int, public_url: str | None, account_sid: str | None,
               auth_token: str | None, say: Any) -> dict[str, Any]:
    own = url is None
    account_sid = account_sid or ("AC" + secrets.token_hex(16))
    auth_token = auth_token or secrets.token_hex(16)
    stub = TwilioStub(account_sid=account_sid, auth_token=auth_token, port=stub_port).start()
    figures: dict[str, Any] = {
        "requests": requests, "concurrency": concurrency, "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "targets": {"p99_ms": P99_TARGET_MS, "per_s": PER_S_TARGET},
        "twilio_api": stub.url,
    }
    server: SmsServer | None = None
    with tempfile.TemporaryDirectory(prefix="chargedesk-bench-sms-") as tmp:
        try:
            if own:
                public_url = "https://sms-bench.chargedesk.invalid"
                server = SmsServer(Path(tmp), database_url, stub=stub, public_url=public_url)
                say(f"starting a server on {server.database_label}")
                url = await server.start(say)
                figures["database"] = server.database_label
            else:
                figures["database"] = "(running server)"
            assert url is not None
            parts = urlsplit(url)
            target = Target(parts.hostname or "127.0.0.1", parts.port or 80,
                            (public_url or url).rstrip("/"), account_sid, auth_token)
            figures["url"], figures["public_url"] = url, target.public_url
            say("probe: one signed text, waiting for its reply at the stub")
            await _probe(target, stub)
            say(f"baseline: GET /healthz x {requests}, {concurrency} connections")
            health = (f"GET /healthz HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
                      "Content-Length: 0\r\n\r\n").encode()
            cpu = server.cpu_seconds() if server is not None else None
            figures["healthz"] = await _load(target, [(health, b"")] * requests,
                                             concurrency, 200)
            cpu = _cpu_per_request(figures["healthz"], server, cpu)
            before = replies(stub)
            load = [signed_sms(target, sender=SENDERS[i % len(SENDERS)],
                               text=TEXTS[(i // len(SENDERS)) % len(TEXTS)])
                    for i in range(requests)]
            say(f"sms: {requests} signed webhooks, {concurrency} connections")
            started = time.monotonic()
            sms_start = cpu
            figures["sms"] = await _load(target, load, concurrency, 200)
            cpu = _cpu_per_request(figures["sms"], server, cpu)
            say("waiting for the server to answer every text")
            figures["replies"] = await _drain(stub, before + figures["sms"]["completed"],
                                              before, started)
            _cpu_per_request(figures["replies"], server, sms_start, done="answered")
        finally:
            if server is not None:
                await server.stop()
            stub.stop()
    sms, base = figures["sms"], figures["healthz"]
    figures["ratio"] = {key: round(sms[key] / base[key], 2) if sms[key] and base[key] else None
                        for key in ("p50_ms", "p99_ms", "per_s")}
    figures["failures"] = _failures(figures)
    return figures


def _cpu_per_request(row: dict[str, Any], server: SmsServer | None, before: float | None,
                     *, done: str = "completed") -> float | None:
    """Add the server's CPU milliseconds per request since ``before`` (user and system, all
    its threads): steadier than latency on a shared machine. The server's CPU time now."""
    if server is None or before is None:
        return None
    now = server.cpu_seconds()
    if now is None:
        return None
    row["server_cpu_ms_per"] = round((now - before) * 1000 / max(1, row[done]), 2)
    return now


async def _probe(target: Target, stub: TwilioStub) -> None:
    before = replies(stub)
    head, body = signed_sms(target, sender=SENDERS[0], text="Hej")
    conn = Connection(target.host, target.port)
    try:
        code, payload = await conn.send(head + body)
    finally:
        await conn.close()
    if code != 200:
        raise RuntimeError(f"the SMS webhook answered {code}: {payload[:200]!r} (are the auth "
                           "token and public base URL the server's?)")
    if not await asyncio.to_thread(stub.wait_until, lambda s: replies(s) > before, 120):
        raise RuntimeError(
            f"no reply reached the Twilio stand-in at {stub.url}: start the server with "
            f"CHARGEDESK_TWILIO_API_BASE_URL={stub.url} and the same account SID")


async def _drain(stub: TwilioStub, expected: int, before: int, started: float
                 ) -> dict[str, Any]:
    await asyncio.to_thread(stub.wait_until, lambda s: replies(s) >= expected,
                            DRAIN_TIMEOUT_S)
    answered = replies(stub) - before
    span = time.monotonic() - started
    return {"expected": expected - before, "answered": answered,
            "api_requests": len(stub.sent()), "seconds": round(span, 2),
            "per_s": round(answered / span, 1) if span > 0 else None}


def _failures(figures: dict[str, Any]) -> list[str]:
    sms, answered = figures["sms"], figures["replies"]
    failures = []
    if sms["errors"] or sms["completed"] < sms["attempted"]:
        failures.append(f"{sms['attempted'] - sms['completed']} webhooks failed: "
                        f"{sms['errors']}")
    if sms["p99_ms"] is None or sms["p99_ms"] >= P99_TARGET_MS:
        failures.append(f"p99 {sms['p99_ms']} ms, target under {P99_TARGET_MS:g} ms")
    if sms["per_s"] is None or sms["per_s"] < PER_S_TARGET:
        failures.append(f"{sms['per_s']} webhooks/s, target at least {PER_S_TARGET:g}")
    if answered["answered"] < answered["expected"]:
        failures.append(f"{answered['expected'] - answered['answered']} texts unanswered "
                        f"after {answered['seconds']} s")
    return failures


# ---------------------------------------------------------------- own server


class SmsServer(DemoServer):
    """`chargedesk serve` on a migrated database seeded with the demo network, sending its
    texts to the stub."""

    def __init__(self, directory: Path, database_url: str | None, *, stub: TwilioStub,
                 public_url: str) -> None:
        super().__init__(directory, database_url)
        self.stub, self.public_url = stub, public_url

    def environment(self) -> dict[str, str]:
        return {
            "CHARGEDESK_TWILIO_ACCOUNT_SID": self.stub.account_sid,
            "CHARGEDESK_TWILIO_AUTH_TOKEN": self.stub.auth_token,
            "CHARGEDESK_TWILIO_FROM_NUMBER": OUR_NUMBER,
            "CHARGEDESK_TWILIO_API_BASE_URL": self.stub.url,
            "CHARGEDESK_PUBLIC_BASE_URL": self.public_url,
        }


# ---------------------------------------------------------------- report


def summary(figures: dict[str, Any]) -> str:
    sms, base, answered = figures["sms"], figures["healthz"], figures["replies"]
    lines = [
        f"bench sms: {figures['requests']} signed webhooks, {figures['concurrency']} "
        f"connections, {figures['database']}, {figures['cpus']} CPUs, load average "
        f"{' '.join(str(x) for x in figures['load_average'])} at start",
        f"{'':10} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}"
        f" {'server CPU ms/req':>18}",
    ]
    for name, row in (("sms", sms), ("/healthz", base)):
        errors = sum(row["errors"].values())
        lines.append(f"{name:10} {_num(row['per_s']):>8} {_num(row['p50_ms']):>8} "
                     f"{_num(row['p99_ms']):>8} {_num(row['max_ms']):>8} {errors:>7}"
                     f" {_num(row.get('server_cpu_ms_per')):>18}")
    ratio = figures["ratio"]
    lines.append(f"sms / healthz: per s x{ratio['per_s']}, p50 x{ratio['p50_ms']}, "
                 f"p99 x{ratio['p99_ms']}")
    lines.append(f"replies: {answered['answered']} of {answered['expected']} texts answered "
                 f"through the Twilio stand-in ({answered['api_requests']} API requests) "
                 f"{answered['seconds']} s after the first webhook, "
                 f"{_num(answered['per_s'])} per s, server CPU "
                 f"{_num(answered.get('server_cpu_ms_per'))} ms per text from intake to reply")
    lines.append("targets met" if not figures["failures"]
                 else "missed: " + "; ".join(figures["failures"]))
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
