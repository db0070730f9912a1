"""The web chat channel: Rasa's REST channel, sign-in with a one-time code, a WebSocket for
pushes, the embeddable widget and the demo page.

Every chat endpoint authenticates with a *chat token*: ``POST /chat/session`` hands out a
random sender id and a token for it (anonymous, limited per client address); the token is
HMAC-SHA256 over ``{sender, driver, expiry}`` with ``CHARGEDESK_CHAT_SECRET`` (a random
secret per process when unset, never a fixed default). Signing in (``/chat/verify/start`` and
``/chat/verify/check``) re-issues the token with the driver in it, and the REST webhook hands
that identity to the dialogue engine. Tokens are stateless, so a conversation costs the
server nothing until it says something.

- ``POST /webhooks/rest/webhook`` ``{"sender", "message", "metadata"?}`` with
  ``Authorization: Bearer <token>`` → ``[{"recipient_id", "text", "buttons"?}, ...]``;
- ``GET /chat/ws?token=…`` pushes every ``BotUttered`` for that sender as JSON;
- ``GET /chat/widget.js``, ``/chat/widget.css``; ``GET /`` the demo page.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import (
    APIRouter,
    Depends,
    HTTPException,
    Request,
    Response,
    WebSocket,
    WebSocketDisconnect,
    status,
)
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field

from assistant import identity
from assistant.events import BotUttered
from chargedesk.db import run_in_session

log = structlog.get_logger(__name__)

CHANNEL = "web"
TOKEN_TTL_S = 12 * 3600
HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
# New chat sessions per client address: a burst (a page of tabs, a benchmark's conversations
# from one host), then a steady rate. Tokens are stateless; this bounds what one client makes.
SESSION_BURST = 300
SESSION_RATE_PER_S = 5.0
# Code requests per client address, on top of the per-contact and per-sender limits.
VERIFY_BURST = 10
VERIFY_RATE_PER_S = 1 / 60

router = APIRouter(tags=["web chat"])

_process_secret = secrets.token_bytes(32)


# ---------------------------------------------------------------- tokens


@dataclass(frozen=True)
class ChatToken:
    sender: str
    driver_id: int | None
    expires_at: int


def _secret(request: Request | WebSocket) -> bytes:
    configured = request.app.state.runtime.settings.chat_secret
    return configured.encode() if configured else _process_secret


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(secret: bytes, *, sender: str, driver_id: int | None = None,
                ttl_s: int = TOKEN_TTL_S) -> tuple[str, ChatToken]:
    claims = ChatToken(sender=sender, driver_id=driver_id, expires_at=int(time.time()) + ttl_s)
    body = _b64(json.dumps({"s": claims.sender, "d": claims.driver_id, "e": claims.expires_at},
                           separators=(",", ":")).encode())
    mac = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    return f"{body}.{mac}", claims


def read_token(secret: bytes, token: str) -> ChatToken | None:
    """The claims of a token this server signed and that has not expired, else None."""
    body, _, mac = token.partition(".")
    if not body or not mac:
        return None
    expected = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected.encode(), mac.encode()):
        return None
    try:
        data = json.loads(_unb64(body))
        claims = ChatToken(sender=str(data["s"]), driver_id=data["d"], expires_at=int(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    if claims.expires_at < time.time():
        return None
    return claims


async def _bearer(request: Request) -> ChatToken:
    # async: a plain def dependency would cost every chat request a hop to a worker thread
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    claims = read_token(_secret(request), value.strip()) if scheme.lower() == "bearer" else None
    if claims is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid chat token is required",
                            headers={"WWW-Authenticate": "Bearer"})
    return claims


Chat = Annotated[ChatToken, Depends(_bearer)]


# ---------------------------------------------------------------- limits


class RateLimiter:
    """Token buckets per key, in this process (a second line behind the database limits)."""

    def __init__(self, burst: float, rate_per_s: float, max_keys: int = 100_000) -> None:
        self.burst, self.rate, self.max_keys = burst, rate_per_s, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._buckets.clear()  # a flood of addresses: start over rather than grow
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        return True


def _limiter(request: Request, name: str, burst: float, rate: float) -> RateLimiter:
    limiters = request.app.state.__dict__.setdefault("_chat_limiters", {})
    if name not in limiters:
        limiters[name] = RateLimiter(burst, rate)
    return limiters[name]  # type: ignore[no-any-return]


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# ---------------------------------------------------------------- pushes


class Pushes:
    """Open chat sockets by sender; the bus's ``BotUttered`` events of the web channel go to
    each socket's queue, in the order they were published, and its writer sends them."""

    MAX_QUEUED = 100

    def __init__(self) -> None:
        self.queues: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)

    def on_bot_uttered(self, event: BotUttered) -> None:
        if event.channel != CHANNEL:
            return
        for queue in self.queues.get(event.sender, ()):
            if queue.qsize() < self.MAX_QUEUED:  # a client that reads nothing loses pushes
                queue.put_nowait(event.message)


def _pushes(app: Any) -> Pushes:
    pushes: Pushes | None = getattr(app.state, "chat_pushes", None)
    if pushes is None:
        pushes = app.state.chat_pushes = Pushes()
        app.state.runtime.bus.subscribe(BotUttered, pushes.on_bot_uttered)
    return pushes


# ---------------------------------------------------------------- endpoints


class SessionOut(BaseModel):
    sender: str
    token: str
    expires_at: int
    driver_id: int | None = None
    # Bot messages to show at once (signing in: an agent already has the driver's case).
    messages: list[dict[str, Any]] = []


@router.post("/chat/session", response_model=SessionOut)
async def new_session(request: Request) -> SessionOut:
    """A new anonymous conversation: a random sender id and its token."""
    if not _limiter(request, "session", SESSION_BURST, SESSION_RATE_PER_S).allow(
            _client(request)):
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many new chats",
                            headers={"Retry-After": "10"})
    _pushes(request.app)
    sender = "web-" + secrets.token_urlsafe(16)
    token, claims = issue_token(_secret(request), sender=sender)
    return SessionOut(sender=sender, token=token, expires_at=claims.expires_at)


class RestMessage(BaseModel):
    sender: str = Field(min_length=1, max_length=200)
    message: str = Field(max_length=5000)
    metadata: dict[str, Any] | None = None


@router.post("/webhooks/rest/webhook")
async def rest_webhook(body: RestMessage, request: Request, chat: Chat) -> list[dict[str, Any]]:
    """Rasa's REST channel: one message in, the bot's answers out."""
    if not hmac.compare_digest(body.sender.encode(), chat.sender.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the token belongs to another sender")
    if body.metadata is not None and len(json.dumps(body.metadata)) > 2000:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "metadata too large")
    from assistant import contacts
    from assistant.service import Identity, handle_message

    runtime = request.app.state.runtime
    who, joined = None, None
    if chat.driver_id is not None:
        who = Identity(driver_id=chat.driver_id, verified=True, via=CHANNEL)
        # Signed in: the driver's. Joined before the assistant answers, so a driver
        # people already have (a ticket from another channel) is told so, not answered.
        joined = await contacts.join(runtime, channel=CHANNEL, sender=chat.sender,
                                     address=chat.sender, driver_id=chat.driver_id,
                                     proven=True)
    messages = await handle_message(runtime, channel=CHANNEL, sender=chat.sender,
                                    text=body.message, identity=who, metadata=body.metadata)
    # A code typed in this message proved the driver: the chat is theirs as if signed in
    # (their contact, their ticket from another channel). Or people already had it.
    told = await contacts.after_turn(runtime, channel=CHANNEL, sender=chat.sender,
                                     joined=joined, messages=messages)
    for message in told:  # to other open tabs of this chat
        await runtime.bus.publish(BotUttered(channel=CHANNEL, sender=chat.sender,
                                             message=message))
    return messages + told


class VerifyStart(BaseModel):
    contact: str = Field(min_length=3, max_length=254)


class VerifyStartOut(BaseModel):
    status: str
    via: str
    expires_in_s: int


@router.post("/chat/verify/start", response_model=VerifyStartOut)
async def verify_start(body: VerifyStart, request: Request, chat: Chat) -> Any:
    """E-mail a sign-in code to the account with this e-mail address or phone number.

    The answer is the same whether or not there is such an account; for a number that sent
    STOP it is 409 (nothing texted), or ``via: email`` when the code went to the account's
    e-mail address instead."""
    if not _limiter(request, "verify", VERIFY_BURST, VERIFY_RATE_PER_S).allow(_client(request)):
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many code requests",
                            headers={"Retry-After": "60"})
    runtime = request.app.state.runtime
    try:
        result = await run_in_session(runtime.engine, identity.start_verification,
                                      contact=body.contact, channel=CHANNEL, sender=chat.sender)
    except identity.InvalidContact as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if result.status == "rate_limited":
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many codes; wait a while",
                            headers={"Retry-After": str(result.retry_after_s)})
    if result.status == "opted_out":  # nothing sent, and not said to be
        raise HTTPException(status.HTTP_409_CONFLICT,
                            "the number has opted out of texts (STOP): reply START to one of "
                            "our texts to opt back in, or sign in with an e-mail address")
    # Sent after answering, so the answer takes as long for a known contact as for another.
    _deliver_later(request.app, runtime, result)
    return VerifyStartOut(status="sent", via=result.via,
                          expires_in_s=int(identity.CODE_TTL.total_seconds()))


def _deliver_later(app: Any, runtime: Any, result: identity.Verification) -> None:
    if result.message_id is None:
        return
    tasks: set[asyncio.Task[bool]] = app.state.__dict__.setdefault("_chat_mail_tasks", set())
    task = asyncio.create_task(identity.deliver_code(runtime.engine, runtime.settings, result))
    tasks.add(task)
    task.add_done_callback(tasks.discard)


class VerifyCheck(BaseModel):
    code: str = Field(min_length=1, max_length=20)


@router.post("/chat/verify/check", response_model=SessionOut)
async def verify_check(body: VerifyCheck, request: Request, chat: Chat) -> SessionOut:
    """Sign in with the code: a new token for the same sender, carrying the driver."""
    runtime = request.app.state.runtime
    driver_id = await run_in_session(runtime.engine, identity.check_code, channel=CHANNEL,
                                     sender=chat.sender, code=body.code)
    if driver_id is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "wrong or expired code")
    token, claims = issue_token(_secret(request), sender=chat.sender, driver_id=driver_id)
    log.info("web chat signed in", driver_id=driver_id)
    # A signed-in session is the driver's: its conversation joins their one contact, and
    # a ticket they hold on another channel follows them here before they write anything.
    from assistant import contacts

    joined = await contacts.join(runtime, channel=CHANNEL, sender=chat.sender,
                                 address=chat.sender, driver_id=driver_id, proven=True)
    told = await contacts.acknowledge(runtime, channel=CHANNEL, sender=chat.sender,
                                      joined=joined)
    for message in told:  # to other open tabs of this chat
        await runtime.bus.publish(BotUttered(channel=CHANNEL, sender=chat.sender,
                                             message=message))
    return SessionOut(sender=chat.sender, token=token, expires_at=claims.expires_at,
                      driver_id=driver_id, messages=told)


@router.websocket("/chat/ws")
async def chat_socket(websocket: WebSocket, token: str = "") -> None:
    """Pushes: every bot message for the token's sender, as Rasa's message JSON."""
    claims = read_token(_secret(websocket), token)
    if claims is None:
        await websocket.close(code=4401)  # before accept: the handshake gets HTTP 403
        return
    pushes = _pushes(websocket.app)
    await websocket.accept()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    pushes.queues[claims.sender].add(queue)

    async def write() -> None:
        while True:
            await websocket.send_json(await queue.get())

    writer = asyncio.create_task(write())
    try:
        while True:  # the client says nothing; this notices when it leaves
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
        queues = pushes.queues.get(claims.sender)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                pushes.queues.pop(claims.sender, None)


# ---------------------------------------------------------------- widget and demo page

_CACHE = {"Cache-Control": "public, max-age=300"}


@router.get("/chat/widget.js", include_in_schema=False)
async def widget_js() -> FileResponse:
    return FileResponse(STATIC / "widget.js", media_type="text/javascript", headers=_CACHE)


@router.get("/chat/widget.css", include_in_schema=False)
async def widget_css() -> FileResponse:
    return FileResponse(STATIC / "widget.css", media_type="text/css", headers=_CACHE)


@router.get("/", include_in_schema=False)
async def demo_page() -> Response:
    return HTMLResponse((TEMPLATES / "index.html").read_text(encoding="utf-8"))


__all__ = ["ChatToken", "RateLimiter", "issue_token", "read_token", "router"]
