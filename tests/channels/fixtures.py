"""Stand-ins at the edges the channel tests cannot reach, shared as pytest fixtures: the NLU
model (trained once per run), Twilio's API on loopback (the official client is pointed at it)
and an SMTP relay on loopback that keeps what the server sends.

The conftests of the test packages that need them import the fixtures from here."""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from assistant.nlu.engine import load_or_train, set_engine
from chargedesk.bench.sms import TwilioStub

# The account the Twilio stand-in signs and checks with.
SID = "AC" + "5f0e1d2c3b4a" * 2 + "00112233"
TOKEN = "0b5c1f2e3d4a59687766554433221100"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Relay:
    """The outgoing SMTP relay: an aiosmtpd server keeping every envelope it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def messages(self) -> list[EmailMessage]:
        return [email.message_from_bytes(e.content, policy=email.policy.default)  # type: ignore[misc]
                for e in list(self.envelopes)]


@pytest.fixture(scope="session")
def nlu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    engine = load_or_train(Path(tmp_path_factory.getbasetemp()) / "nlu-models")
    set_engine(engine)
    yield engine
    set_engine(None)


@pytest.fixture
def twilio_api() -> Iterator[TwilioStub]:
    stub = TwilioStub(account_sid=SID, auth_token=TOKEN).start()
    yield stub
    stub.stop()


@pytest.fixture
def relay() -> Iterator[tuple[Relay, int]]:
    handler, port = Relay(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()
