"""Forms whose validation is the dialogue's own (verifying who the driver is), and the type
checks every other form slot gets when no ``validate_<form>`` action exists.

Verification calls ``assistant.identity``: ``start_verification(session, contact=,
channel=, sender=)`` sends a one-time code, ``check_code(session, channel=, sender=, code=)``
returns the driver's id or None.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import TYPE_CHECKING, Any

import structlog

from chargedesk.db import run_in_session

if TYPE_CHECKING:
    from assistant.dialogue.engine import DialogueEngine, Turn

log = structlog.get_logger(__name__)

# Bad answers to one question before a form gives up.
MAX_ATTEMPTS = 3
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
CODE = re.compile(r"^\d{4,8}$")
TRUE_WORDS = {"true", "yes", "ja", "1"}
FALSE_WORDS = {"false", "no", "nej", "0"}


def identity() -> ModuleType | None:
    """The channel engineer's identity module (one-time codes), once it exists."""
    try:
        return importlib.import_module("assistant.identity")
    except ModuleNotFoundError as exc:
        if exc.name == "assistant.identity":
            return None
        raise


def type_check(spec: dict[str, Any], value: Any) -> Any:
    """``value`` as the slot's type, or None when it isn't one."""
    kind = spec.get("type", "any")
    if value is None:
        return None
    if kind == "float":
        if isinstance(value, bool):
            return None
        try:
            number = float(str(value).strip().replace(",", "."))
        except ValueError:
            return None
        return number if number >= 0 else None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None
    if kind == "categorical":
        for allowed in spec.get("values") or []:
            if str(allowed).lower() == str(value).strip().lower():
                return allowed
        return None
    if kind == "text":
        text = str(value).strip()
        return text or None
    return value


def normalise_contact(value: Any) -> str | None:
    """An e-mail address (lower case) or a phone number (E.164; Swedish 07… numbers)."""
    text = str(value or "").strip()
    if EMAIL.match(text):
        return text.lower()
    digits = re.sub(r"[\s\-()]", "", text)
    if re.fullmatch(r"\+\d{8,15}", digits):
        return digits
    if re.fullmatch(r"00\d{8,15}", digits):
        return "+" + digits[2:]
    if re.fullmatch(r"0\d{8,10}", digits):
        return "+46" + digits[1:]
    return None


class VerifyForm:
    """Ask for a phone number or e-mail address, send a code, check it."""

    name = "verify_form"

    def activate(self, turn: Turn) -> None:
        for slot in ("contact", "otp_code", "code_via"):
            if turn.slots.get(slot) is not None:
                turn.set_slot(slot, None)

    async def validate(self, engine: DialogueEngine, turn: Turn, slot: str, value: Any
                       ) -> dict[str, Any] | None:
        module = identity()
        if module is None:
            log.error("verification unavailable: no assistant.identity")
            engine.cancel_form(turn, "utter_verification_unavailable")
            return None
        conversation = turn.conversation
        if slot == "contact":
            contact = normalise_contact(value)
            if contact is None:
                engine.utter_if_exists(turn, "utter_invalid_contact")
                return None
            try:
                sent = await run_in_session(
                    engine.runtime.engine, module.start_verification, contact=contact,
                    channel=conversation.channel, sender=conversation.sender)
            except Exception:
                log.exception("could not start verification")
                engine.utter_if_exists(turn, "utter_invalid_contact")
                return None
            if sent is False:
                engine.utter_if_exists(turn, "utter_invalid_contact")
                return None
            if getattr(sent, "status", "sent") == "rate_limited":
                engine.cancel_form(turn, "utter_verification_rate_limited")
                return None
            if getattr(sent, "status", "sent") == "opted_out":  # no code: say so, ask again
                engine.utter_if_exists(turn, "utter_verification_opted_out", contact=contact)
                return None
            await _deliver(engine, module, sent)
            if getattr(sent, "opted_out", False):  # the number said STOP: mailed instead
                return {"contact": contact, "code_via": "email_opted_out"}
            return {"contact": contact}
        if slot == "otp_code":
            code = re.sub(r"\s", "", str(value or ""))
            if not CODE.match(code):
                engine.utter_if_exists(turn, "utter_invalid_otp_code")
                return None

            def check(session: Any) -> tuple[int, list[str]] | None:
                from assistant.dialogue.store import id_tags

                driver_id = module.check_code(session, channel=conversation.channel,
                                              sender=conversation.sender, code=code)
                if driver_id is None:
                    return None
                return driver_id, id_tags(session, driver_id=driver_id)

            found = await run_in_session(engine.runtime.engine, check)
            if found is None:
                engine.utter_if_exists(turn, "utter_invalid_otp_code")
                return None
            driver_id, tags = found
            return {"otp_code": "verified", "driver_id": driver_id, "verified": True,
                    "id_tags": tags}
        return {slot: value}


async def _deliver(engine: DialogueEngine, module: ModuleType, verification: Any) -> None:
    # The code's e-mail is queued in the verification's transaction; send it now that the
    # transaction is committed (the mail queue retries it later if this fails).
    deliver = getattr(module, "deliver_code", None)
    if deliver is None or getattr(verification, "message_id", None) is None:
        return
    try:
        await deliver(engine.runtime.engine, engine.runtime.settings, verification)
    except Exception:
        log.exception("one-time code not delivered now")


FORMS: dict[str, VerifyForm] = {VerifyForm.name: VerifyForm()}
