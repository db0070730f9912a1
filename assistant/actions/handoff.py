"""Handing the conversation to a person."""

from __future__ import annotations

from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.executor import CollectingDispatcher

from assistant.actions.common import HANDOFF_REASONS, handoff


class ActionHumanHandoff(Action):
    """Pause the bot for an agent; ``handoff_reason`` keeps a reason an earlier step set
    (dispute, damage, fallback...), else ``asked``."""

    def name(self) -> str:
        return "action_human_handoff"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> list[dict[str, Any]]:
        reason = tracker.get_slot("handoff_reason")
        dispatcher.utter_message(response="utter_handoff")
        return handoff(reason if reason in HANDOFF_REASONS else "asked")


ACTIONS = [ActionHumanHandoff]
