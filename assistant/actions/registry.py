"""Every action by name, which ones are confirmed first, and the action-server protocol.

:func:`execute` answers Rasa's action-server request (``next_action``, ``sender_id``,
``tracker``, ``domain``, ``version``) with ``{"events", "responses"}``, or with
``{"error", "action_name", "status"}`` for an action that does not exist (``status`` 404,
the HTTP status the server answers with), one that rejected the call (400) or a call
without the domain (449), as rasa_sdk's own server does. The dialogue engine calls it in-process;
``POST /webhook`` (:mod:`assistant.actions.server`) calls it for an external Rasa.
"""

from __future__ import annotations

from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.executor import ActionExecutor
from rasa_sdk.interfaces import (
    ActionExecutionRejection,
    ActionMissingDomainException,
    ActionNotFoundException,
)

from assistant.actions import billing, cards, charging, handoff, stations
from assistant.actions.common import int_slot, station_slot, text_slot

ACTIONS: dict[str, type[Action]] = {
    cls().name(): cls
    for module in (stations, charging, billing, cards, handoff)
    for cls in module.ACTIONS
}

# They change the physical world or money: the dialogue asks the driver before running them.
CONFIRM: frozenset[str] = frozenset({
    "action_cable_stuck", "action_stop_charging", "action_start_charging",
    "action_reset_station", "action_lost_card", "action_top_up", "action_dispute_charge",
    "action_change_payment_method", "action_schedule_charging",
})

# "Shall I …?" in the driver's language, filled from the tracker's slots.
_SUMMARIES: dict[str, dict[str, str]] = {
    "action_cable_stuck": {
        "sv": "låsa upp uttag {connector} på {station_id} så att du kan ta ut kabeln",
        "en": "unlock connector {connector} at {station_id} so you can take the cable out"},
    "action_stop_charging": {
        "sv": "avsluta din pågående laddning{at_station_sv}",
        "en": "stop your charging session{at_station_en}"},
    "action_start_charging": {
        "sv": "starta laddningen på uttag {connector} på {station_id} med ditt kort",
        "en": "start charging on connector {connector} at {station_id} with your card"},
    "action_reset_station": {
        "sv": "starta om laddstationen {station_id} (en mjuk omstart tar någon minut)",
        "en": "restart the station {station_id} (a soft restart takes a minute or so)"},
    "action_lost_card": {
        "sv": "spärra dina laddkort direkt, även i laddstationernas lokala listor",
        "en": "block your charging cards at once, also in the stations' local lists"},
    "action_top_up": {
        "sv": "fylla på ditt saldo med {amount} kr",
        "en": "top up your balance by SEK {amount}"},
    "action_dispute_charge": {
        "sv": "bestrida kostnaden för din senaste laddning och låta en handläggare avgöra",
        "en": "dispute the cost of your latest charging session for an agent to decide"},
    "action_change_payment_method": {
        "sv": "starta ett autogiromedgivande från ditt bankkonto",
        "en": "set up an Autogiro direct debit from your bank account"},
    "action_schedule_charging": {
        "sv": "planera laddningen så att du har {energy} kWh till kl. {time}",
        "en": "plan your charging to give you {energy} kWh by {time}"},
}


def summary(name: str, tracker: Tracker, language: str) -> str:
    """What the action will do, for the confirmation question, in "sv" or "en"."""
    language = language if language in ("sv", "en") else "sv"
    template = _SUMMARIES.get(name, {}).get(language)
    if template is None:
        return name
    station = station_slot(tracker)
    energy = tracker.get_slot("energy")
    values = {
        "station_id": station or "?", "connector": int_slot(tracker, "connector") or "?",
        "amount": text_slot(tracker, "amount") or "?", "time": text_slot(tracker, "time") or "?",
        "energy": f"{float(energy):g}" if energy not in (None, "") else "?",
        "at_station_sv": f" på {station}" if station else "",
        "at_station_en": f" at {station}" if station else "",
    }
    return template.format(**values)


def _executor() -> ActionExecutor:
    executor = ActionExecutor()
    for cls in ACTIONS.values():
        executor.register_action(cls)
    return executor


_EXECUTOR = _executor()


async def execute(payload: dict[str, Any]) -> dict[str, Any]:
    """Run ``payload["next_action"]`` as Rasa's action server would."""
    name = payload.get("next_action")
    try:
        result = await _EXECUTOR.run(payload)
    except ActionNotFoundException as exc:
        return {"error": exc.message, "action_name": exc.action_name, "status": 404}
    except ActionExecutionRejection as exc:
        return {"error": exc.message, "action_name": exc.action_name, "status": 400}
    except ActionMissingDomainException as exc:
        return {"error": exc.message, "action_name": exc.action_name, "status": 449}
    if result is None:
        return {"error": "no action named in next_action", "action_name": name, "status": 400}
    return result.model_dump()
