"""The web chat channel over a real server: chat tokens on every endpoint, sign-in with an
e-mailed code binding the driver to the conversation, and pushes over the WebSocket.

The dialogue engine is replaced by a recording stand-in here (these tests are about the
channel); the browser test drives the real one."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from sqlmodel import select
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

import assistant.service
from assistant.channels.web import issue_token, read_token
from assistant.events import BotUttered
from billing_api.models import EmailMessage
from chargedesk.app import create_app
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from tests.billing_api.factories import make_driver
from tests.conftest import LiveServer


class Engine:
    """Stands in for ``assistant.service.handle_message``: records each call, answers with
    a message and quick replies, and publishes it on the bus as the real engine does."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, runtime: Any, *, channel: str, sender: str, text: str,
                       identity: Any = None, metadata: dict[str, Any] | None = None
                       ) -> list[dict[str, Any]]:
        self.calls.append({"channel": channel, "sender": sender, "text": text,
                           "identity": identity, "metadata": metadata})
        message = {"recipient_id": sender, "text": f"you said {text}",
                   "buttons": [{"title": "Ja", "payload": "/affirm"}]}
        await runtime.bus.publish(BotUttered(channel=channel, sender=sender, message=message))
        return [message]


@pytest.fixture
def engine_stub(monkeypatch: pytest.MonkeyPatch) -> Engine:
    stub = Engine()
    monkeypatch.setattr(assistant.service, "handle_message", stub)
    return stub


class ChatServer(LiveServer):
    loop: asyncio.AbstractEventLoop


def start_chat_server(settings: Settings) -> ChatServer:
    """The real app under uvicorn with the web chat router, and the loop it runs on."""
    from assistant.channels.web import router

    app = create_app(settings)
    if not any(getattr(route, "path", None) == "/chat/session" for route in app.routes):
        app.include_router(router)  # until chargedesk.app includes it
    loops: list[asyncio.AbstractEventLoop] = []

    async def remember_loop(runtime: Any) -> None:
        loops.append(asyncio.get_running_loop())

    app.state.runtime.jobs.append(remember_loop)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None,
                            ws="websockets-sansio", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not (server.started and loops):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    live = ChatServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", app, server, thread)
    live.loop = loops[0]
    return live


@pytest.fixture
def server(settings: Settings) -> Iterator[ChatServer]:
    live = start_chat_server(settings)
    yield live
    live.stop()


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        yield http


def new_chat(client: httpx.Client) -> tuple[str, str]:
    response = client.post("/chat/session")
    assert response.status_code == 200
    body = response.json()
    assert body["sender"].startswith("web-") and body["driver_id"] is None
    return body["sender"], body["token"]


def say(client: httpx.Client, token: str | None, sender: str, text: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/webhooks/rest/webhook", json={"sender": sender, "message": text},
                       headers=headers)


def test_the_webhook_needs_a_chat_token(client: httpx.Client, engine_stub: Engine) -> None:
    sender, _ = new_chat(client)

    assert say(client, None, sender, "hej").status_code == 401
    assert say(client, "not-a-token", sender, "hej").status_code == 401
    forged, _ = issue_token(b"another secret", sender=sender)
    assert say(client, forged, sender, "hej").status_code == 401
    assert engine_stub.calls == []


def test_a_token_speaks_only_for_its_own_sender(
    client: httpx.Client, engine_stub: Engine
) -> None:
    _, token = new_chat(client)
    other, _ = new_chat(client)

    assert say(client, token, other, "visa mina fakturor").status_code == 403
    assert engine_stub.calls == []


def test_an_anonymous_message_reaches_the_engine_and_answers_as_rasa_does(
    client: httpx.Client, engine_stub: Engine
) -> None:
    sender, token = new_chat(client)

    response = client.post("/webhooks/rest/webhook", headers={"Authorization": f"Bearer {token}"},
                           json={"sender": sender, "message": "Vad kostar det att ladda?",
                                 "metadata": {"language": "sv"}})

    assert response.status_code == 200
    assert response.json() == [{"recipient_id": sender,
                                "text": "you said Vad kostar det att ladda?",
                                "buttons": [{"title": "Ja", "payload": "/affirm"}]}]
    [call] = engine_stub.calls
    assert (call["channel"], call["sender"], call["identity"]) == ("web", sender, None)
    assert call["metadata"] == {"language": "sv"}


def test_signing_in_with_the_emailed_code_binds_the_driver(
    server: LiveServer, client: httpx.Client, engine_stub: Engine
) -> None:
    engine = server.runtime.engine
    with session_scope(engine) as session:
        driver_id = make_driver(session, email="anna@example.se", phone="+46701234567").id
    sender, token = new_chat(client)
    auth = {"Authorization": f"Bearer {token}"}

    assert client.post("/chat/verify/start", json={"contact": "070-123 45 67"}).status_code == 401
    started = client.post("/chat/verify/start", json={"contact": "070-123 45 67"}, headers=auth)
    assert started.status_code == 200
    assert started.json() == {"status": "sent", "via": "email", "expires_in_s": 600}
    unknown = client.post("/chat/verify/start", json={"contact": "nobody@example.se"},
                          headers={"Authorization": f"Bearer {new_chat(client)[1]}"})
    assert unknown.json() == started.json()
    assert client.post("/chat/verify/start", json={"contact": "hello"},
                       headers=auth).status_code == 422

    with session_scope(engine) as session:
        [mail] = session.exec(select(EmailMessage)).all()
        match = re.search(r"\b(\d{6})\b", mail.body)
        assert match and mail.to_address == "anna@example.se"
        code = match.group(1)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    assert client.post("/chat/verify/check", json={"code": wrong}, headers=auth).status_code == 400

    checked = client.post("/chat/verify/check", json={"code": code}, headers=auth)

    assert checked.status_code == 200
    signed_in = checked.json()
    assert (signed_in["sender"], signed_in["driver_id"]) == (sender, driver_id)
    assert signed_in["token"] != token
    assert say(client, signed_in["token"], sender, "mitt saldo").status_code == 200
    assert say(client, token, sender, "anonymt igen").status_code == 200
    first, second = engine_stub.calls
    assert (first["identity"].driver_id, first["identity"].verified) == (driver_id, True)
    assert first["identity"].via == "web"
    assert second["identity"] is None  # the old token stays anonymous


def test_the_websocket_pushes_bot_messages_for_its_sender_only(
    server: ChatServer, client: httpx.Client, engine_stub: Engine
) -> None:
    sender, token = new_chat(client)
    other, other_token = new_chat(client)
    ws_base = server.base_url.replace("http", "ws", 1)

    with pytest.raises(InvalidStatus):
        connect(f"{ws_base}/chat/ws?token=forged.token", open_timeout=5).close()

    with connect(f"{ws_base}/chat/ws?token={token}", open_timeout=5) as mine, \
            connect(f"{ws_base}/chat/ws?token={other_token}", open_timeout=5) as theirs:
        assert say(client, token, sender, "var kan jag ladda").status_code == 200
        pushed = json.loads(mine.recv(timeout=5))
        assert pushed == {"recipient_id": sender, "text": "you said var kan jag ladda",
                          "buttons": [{"title": "Ja", "payload": "/affirm"}]}
        with pytest.raises(TimeoutError):
            theirs.recv(timeout=0.3)

        # A message the bot sends by itself later (a charging session ended) is pushed too.
        event = BotUttered(channel="web", sender=sender,
                           message={"recipient_id": sender, "text": "Laddningen är klar."})
        asyncio.run_coroutine_threadsafe(server.runtime.bus.publish(event),
                                         server.loop).result(5)
        assert json.loads(mine.recv(timeout=5))["text"] == "Laddningen är klar."
        assert other  # the other conversation heard nothing


def test_tokens_expire_and_are_tamper_proof() -> None:
    token, claims = issue_token(b"k" * 32, sender="web-a", driver_id=7)
    assert read_token(b"k" * 32, token) == claims
    body, _, mac = token.partition(".")
    forged_body = body[:-2] + ("AA" if body[-2:] != "AA" else "BB")
    assert read_token(b"k" * 32, f"{forged_body}.{mac}") is None
    expired, _ = issue_token(b"k" * 32, sender="web-a", ttl_s=-1)
    assert read_token(b"k" * 32, expired) is None


def test_new_chats_are_limited_per_client_address(client: httpx.Client) -> None:
    from assistant.channels import web

    # Until refused (the bucket refills slowly while a busy machine sends the burst).
    statuses: list[int] = []
    while 429 not in statuses and len(statuses) < 3 * web.SESSION_BURST:
        statuses.append(client.post("/chat/session").status_code)

    assert statuses[-1] == 429 and statuses.count(200) >= web.SESSION_BURST


def test_the_demo_page_embeds_the_widget(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert '<script src="/chat/widget.js" data-lang="sv"' in page.text
    script = client.get("/chat/widget.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert 'aria-live' in script.text
    assert client.get("/chat/widget.css").status_code == 200
