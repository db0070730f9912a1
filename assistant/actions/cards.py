"""A lost card: blocked at once in the registry and on the stations' local lists."""

from __future__ import annotations

from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.executor import CollectingDispatcher
from sqlmodel import Session, col, select

from assistant.actions import context, safety
from assistant.actions.common import handoff, verified_driver
from station_api import service as stations
from station_api.models import IdTag, IdTagStatus

Events = list[dict[str, Any]]


def block_cards(session: Session, *, id_tags: tuple[str, ...]) -> list[str]:
    """Block the driver's cards that still work; a fleet's parent tag (one with children)
    is left to the fleet's administrator. Returns the tags blocked."""
    parents = set(session.exec(select(IdTag.parent_id_tag).where(
        col(IdTag.parent_id_tag).in_(list(id_tags)))).all())
    blocked = []
    for tag in id_tags:
        row = session.get(IdTag, tag)
        if row is None or tag in parents or row.status != IdTagStatus.accepted:
            continue
        stations.update_id_tag(session, id_tag=tag, status=IdTagStatus.blocked)
        blocked.append(tag)
    return blocked


async def push_blocked(*, driver_id: int, tags: list[str]) -> tuple[int, int]:
    """Send the blocked tags to every connected station's local list (a differential update
    one version up), so a station offline later refuses them too. Returns (updated, tried)."""
    central = context.current().central
    entries = [{"idTag": tag, "idTagInfo": {"status": "Blocked"}} for tag in tags]
    updated, tried = 0, 0
    for station_id in sorted(central.connections):
        tried += 1
        reason = "driver reported their card lost to the assistant"
        version = await safety.command(central, driver_id=driver_id, station_id=station_id,
                                       action="GetLocalListVersion", payload={}, reason=reason)
        current = (version.response or {}).get("listVersion")
        if str(version.outcome) != "accepted" or current is None or current < 0:
            continue  # no local list on this station: nothing there can accept the card
        result = await safety.command(
            central, driver_id=driver_id, station_id=station_id, action="SendLocalList",
            payload={"listVersion": current + 1, "updateType": "Differential",
                     "localAuthorizationList": entries}, reason=reason)
        updated += str(result.outcome) == "accepted"
    return updated, tried


class ActionLostCard(Action):
    """Block the driver's cards at once (registry, then the connected stations' local
    lists) and offer a replacement through a person."""

    def name(self) -> str:
        return "action_lost_card"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        blocked = await context.db(block_cards, id_tags=driver.id_tags)
        if not blocked:
            dispatcher.utter_message(response="utter_no_card_to_block")
            return handoff("action_failed")
        updated, tried = await push_blocked(driver_id=driver.id, tags=blocked)
        dispatcher.utter_message(response="utter_card_now_blocked", cards=", ".join(blocked),
                                 stations=updated, tried=tried)
        return []


ACTIONS = [ActionLostCard]
