"""The chat widget in headless Chromium on a phone-width screen, against the real server and
dialogue engine: open `/`, sign in with a code e-mailed to a loopback SMTP server, ask, get
an answer, and press a quick reply with the keyboard. With SMS on (texts to the stand-in for
api.twilio.com on loopback), a number that sent STOP: the widget says the code was e-mailed
when it was, and the server's reason when none was sent, in the widget's language."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from assistant.channels.twilio.sms import set_opt_out
from assistant.nlu.engine import NluEngine
from billing_api.models import Language
from chargedesk.bench.sms import TwilioStub
from chargedesk.db import make_engine, session_scope, upgrade
from chargedesk.settings import Settings
from tests.assistant.test_web_channel import ChatServer, start_chat_server
from tests.billing_api.factories import make_driver
from tests.billing_api.test_mailer import Inbox, free_port
from tests.channels.test_sms import twilio_settings

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Chromium is not installed (apt-get install chromium)")


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture
def live(tmp_path: Path, inbox: tuple[Inbox, int], nlu: NluEngine) -> Iterator[ChatServer]:
    url = f"sqlite:///{tmp_path / 'chargedesk.db'}"
    upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as session:
        make_driver(session, name="Anna Lindqvist", email="anna@example.se",
                    phone="+46701234567")
    engine.dispose()
    settings = Settings(database_url=url, data_dir=tmp_path, log_format="console",
                        log_level="WARNING", scheduler=False, nlu_warm_up=False,
                        smtp_host="127.0.0.1", smtp_port=inbox[1],
                        smtp_from="ChargeDesk <noreply@chargedesk.example>")
    server = start_chat_server(settings)
    yield server
    server.stop()


def wait_for_code(inbox: Inbox, timeout: float = 10, to: str | None = None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in inbox.messages():
            if to is not None and to not in str(message["To"]):
                continue
            body = message.get_body(preferencelist=("plain",)).get_content()
            match = re.search(r"\b(\d{6})\b", body)
            if match:
                return match.group(1)
        time.sleep(0.05)
    raise AssertionError("no code was e-mailed")


def test_sign_in_ask_and_press_a_quick_reply(live: ChatServer,
                                             inbox: tuple[Inbox, int]) -> None:
    expect = playwright_api.expect
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 360, "height": 740})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(live.base_url + "/")

            log = page.get_by_role("log")
            expect(log).to_have_attribute("aria-live", "polite")
            message_box = page.get_by_label("Skriv ditt meddelande")
            expect(message_box).to_be_focused()  # the demo opens the chat

            # Sign in: contact, then the code from the e-mail, by keyboard.
            page.get_by_role("button", name="Logga in").click()
            contact = page.get_by_label("E-post eller mobilnummer")
            expect(contact).to_be_focused()
            contact.fill("anna@example.se")
            contact.press("Enter")
            code_box = page.get_by_label("Kod", exact=True)
            expect(code_box).to_be_focused()
            expect(page.get_by_role("status")).to_contain_text("skickat en kod")
            code_box.fill(wait_for_code(inbox[0]))
            code_box.press("Enter")
            expect(log).to_contain_text("Du är inloggad.")
            expect(page.get_by_text("Inloggad", exact=True)).to_be_visible()
            expect(message_box).to_be_focused()

            # Ask; an answer comes.
            bots = page.locator(".cdw-bot")
            message_box.fill("Hej!")
            message_box.press("Enter")
            expect(bots).to_have_count(1, timeout=10_000)
            answer = bots.first.locator(".cdw-text").inner_text()
            assert answer.strip()
            page.wait_for_timeout(500)  # the same message pushed over the socket is not shown twice
            expect(bots).to_have_count(1)

            # Something the bot can't place: it offers quick replies.
            quick = page.get_by_role("group", name="Snabbsvar")
            for text in ("blorp fnord kvack", "zzzyx qwop"):
                if quick.count():
                    break
                message_box.fill(text)
                message_box.press("Enter")
                page.wait_for_timeout(300)
                page.wait_for_function("document.querySelectorAll('.cdw-bot').length >= 2")
            expect(quick.last).to_be_visible(timeout=10_000)
            chip = quick.last.get_by_role("button").first
            title = chip.inner_text()
            shown = bots.count()
            chip.focus()
            page.keyboard.press("Enter")

            expect(page.locator(".cdw-user").last).to_contain_text(title)
            expect(bots).not_to_have_count(shown, timeout=10_000)
            expect(message_box).to_be_focused()

            # Usable at 360 px: nothing sticks out sideways.
            assert page.evaluate("document.documentElement.scrollWidth") <= 360
            box = page.locator(".cdw-panel").bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360
            assert errors == []
        finally:
            browser.close()


# ---------------------------------------------------------------- a number that sent STOP

KARIN = "+46701112233"  # opted out; her account has an e-mail address
TOM = "+46704445566"  # opted out; no e-mail address on his account


@pytest.fixture
def sms_live(tmp_path: Path, inbox: tuple[Inbox, int], twilio_api: TwilioStub,
             nlu: NluEngine) -> Iterator[ChatServer]:
    url = f"sqlite:///{tmp_path / 'chargedesk.db'}"
    upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as session:
        make_driver(session, name="Karin Ek", email="karin.ek@example.se", phone=KARIN)
        make_driver(session, name="Tom Lee", email=None, phone=TOM, language=Language.en)
        for phone in (KARIN, TOM):  # as the SMS webhook stores a STOP
            set_opt_out(session, phone=phone, opted_out=True, keyword="STOP")
    engine.dispose()
    settings = twilio_settings(Settings(
        database_url=url, data_dir=tmp_path, log_format="console", log_level="WARNING",
        scheduler=False, nlu_warm_up=False, smtp_host="127.0.0.1", smtp_port=inbox[1],
        smtp_from="ChargeDesk <noreply@chargedesk.example>"), twilio_api)
    server = start_chat_server(settings)
    yield server
    server.stop()


def test_a_number_that_sent_stop_is_told_where_the_code_went_or_why_none_was_sent(
        sms_live: ChatServer, inbox: tuple[Inbox, int], twilio_api: TwilioStub) -> None:
    expect = playwright_api.expect
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 360, "height": 740})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(sms_live.base_url + "/")
            status = page.get_by_role("status")
            code_box = page.get_by_label("Kod", exact=True)

            # Karin gives her number: not texted (STOP), e-mailed to her account instead.
            page.get_by_role("button", name="Logga in").click()
            contact = page.get_by_label("E-post eller mobilnummer")
            contact.fill(KARIN)
            contact.press("Enter")
            expect(code_box).to_be_focused()
            expect(status).to_have_text(
                "Om numret hör till ett konto har vi mejlat en kod till kontots e-postadress "
                "(inte sms). Den gäller i 10 minuter.")
            code_box.fill(wait_for_code(inbox[0], to="karin.ek@example.se"))
            code_box.press("Enter")
            expect(page.get_by_role("log")).to_contain_text("Du är inloggad.")
            page.get_by_role("button", name="Logga ut").click()

            # Tom's number has no e-mail address behind it: no code, and the reason why
            # (not "could not reach the server"), in English...
            page.get_by_role("button", name="English").click()
            page.get_by_role("button", name="Sign in").click()
            contact = page.get_by_label("E-mail or mobile number")
            expect(contact).to_be_focused()
            contact.fill(TOM)
            contact.press("Enter")
            expect(status).to_have_text(
                "The number has opted out of texts from us (STOP), so we haven't sent a "
                "code. Reply START to one of our texts to get texts again, or sign in with "
                "your e-mail address.")
            expect(contact).to_be_focused()  # to give another number or an address
            expect(page.get_by_label("Code", exact=True)).to_be_hidden()

            # ... and in Swedish.
            page.get_by_role("button", name="Svenska").click()
            contact = page.get_by_label("E-post eller mobilnummer")
            contact.fill(TOM)
            contact.press("Enter")
            expect(status).to_have_text(
                "Numret har stängt av sms från oss (STOP), så vi har inte skickat någon kod. "
                "Svara START på ett av våra sms för att få sms igen, eller logga in med din "
                "e-postadress.")
            expect(code_box).to_be_hidden()

            assert twilio_api.sent(KARIN) == [] and twilio_api.sent(TOM) == []
            assert [str(m["To"]) for m in inbox[0].messages()] == ["karin.ek@example.se"]
            assert errors == []
        finally:
            browser.close()
