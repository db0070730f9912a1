"""A driver's own charging: start, stop, unlock a stuck cable, see how it goes, plan it."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from rasa_sdk import Action, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher

from assistant.actions import context, queries, safety
from assistant.actions.common import (
    clock,
    failed,
    number,
    offset,
    refused,
    station_and_connector,
    station_slot,
    text_slot,
    verified_driver,
)
from chargedesk.errors import DomainError
from chargedesk.types import utcnow
from load_manager import support as plans
from station_api import service as stations
from station_api.models import IdTagStatus

Events = list[dict[str, Any]]


class ActionCableStuck(Action):
    """Unlock the connector where the driver's session is or just ended (slots
    ``station_id``, ``connector``; ``cable_stuck_form`` fills them)."""

    def name(self) -> str:
        return "action_cable_stuck"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        wanted = station_and_connector(dispatcher, tracker)
        if wanted is None:
            return []
        station_id, connector = wanted
        runtime = context.current()
        try:
            await context.db(safety.check_unlock, station_id=station_id,
                             connector_id=connector, id_tags=driver.id_tags)
            result = await safety.command(
                runtime.central, driver_id=driver.id, station_id=station_id,
                action="UnlockConnector", payload={"connectorId": connector},
                reason="driver reported a stuck cable to the assistant")
        except safety.Refused as refusal:
            return refused(dispatcher, refusal)
        if str(result.outcome) != "accepted":
            return failed(dispatcher, result, station_id)
        dispatcher.utter_message(response="utter_cable_unlocked", station_id=station_id,
                                 connector=connector)
        return []


class ActionStopCharging(Action):
    """Stop the driver's running session (the one at ``station_id`` when they have several)."""

    def name(self) -> str:
        return "action_stop_charging"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        running = await context.db(queries.transactions_of, id_tags=driver.id_tags,
                                   active=True)
        station_id = station_slot(tracker)
        if station_id is not None:
            running = [tx for tx in running if tx.station_id == station_id]
        if not running:
            dispatcher.utter_message(response="utter_no_running_session")
            return []
        if len(running) > 1:
            dispatcher.utter_message(response="utter_which_session",
                                     stations=", ".join(tx.station_id for tx in running))
            return []
        tx = running[0]
        try:
            await context.db(safety.check_stop, transaction_id=tx.id, id_tags=driver.id_tags)
            result = await safety.command(
                context.current().central, driver_id=driver.id, station_id=tx.station_id,
                action="RemoteStopTransaction", payload={"transactionId": tx.id},
                reason="driver asked the assistant to stop charging")
        except safety.Refused as refusal:
            return refused(dispatcher, refusal)
        if str(result.outcome) != "accepted":
            return failed(dispatcher, result, tx.station_id)
        dispatcher.utter_message(response="utter_charging_stopped", station_id=tx.station_id,
                                 connector=tx.connector_id)
        return []


def _start_check(session: Any, *, station_id: str, connector_id: int, id_tags: tuple[str, ...],
                 hooks: list[Any]) -> tuple[str | None, str, str]:
    """(the tag to start with, its authorization status, the connector's status)."""
    stations.get_station(session, station_id=station_id)
    live = {c.connector_id: c for c in stations.list_connectors(session,
                                                                station_ids=[station_id])}
    status = live[connector_id].status if connector_id in live else "Unknown"
    verdict = "Invalid"
    for tag in id_tags:
        verdict = stations.authorize(session, station_id=station_id, id_tag=tag,
                                     hooks=hooks).status
        if verdict == IdTagStatus.accepted:
            return tag, verdict, status
    return None, verdict, status


class ActionStartCharging(Action):
    """Start charging remotely at ``station_id`` ``connector`` with the driver's card, when
    the registry would accept it there and the car is plugged in (Preparing)."""

    def name(self) -> str:
        return "action_start_charging"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        wanted = station_and_connector(dispatcher, tracker)
        if wanted is None:
            return []
        station_id, connector = wanted
        runtime = context.current()
        try:
            tag, verdict, status = await context.db(
                _start_check, station_id=station_id, connector_id=connector,
                id_tags=driver.id_tags, hooks=list(runtime.central.authorization_hooks))
        except stations.NotFound:
            dispatcher.utter_message(response="utter_unknown_station", station_id=station_id)
            return []
        if tag is None:
            dispatcher.utter_message(response=f"utter_card_{verdict.lower()}")
            return []
        if status not in ("Preparing", "Available", "SuspendedEV", "Finishing"):
            dispatcher.utter_message(response="utter_connector_not_ready", connector=connector,
                                     status=status)
            return []
        try:
            result = await safety.command(
                runtime.central, driver_id=driver.id, station_id=station_id,
                action="RemoteStartTransaction",
                payload={"idTag": tag, "connectorId": connector},
                reason="driver asked the assistant to start charging")
        except safety.Refused as refusal:
            return refused(dispatcher, refusal)
        if str(result.outcome) != "accepted":
            return failed(dispatcher, result, station_id)
        dispatcher.utter_message(response="utter_charging_started", station_id=station_id,
                                 connector=connector)
        return []


def _status(session: Any, *, id_tags: tuple[str, ...], back: int) -> dict[str, Any] | None:
    txs = queries.transactions_of(session, id_tags=id_tags, limit=back + 1)
    if len(txs) <= back:
        return None
    tx = txs[back]
    register = queries.latest_sample(session, transaction_id=tx.id or 0,
                                     measurand="Energy.Active.Import.Register")
    power = queries.latest_sample(session, transaction_id=tx.id or 0,
                                  measurand="Power.Active.Import")
    if tx.meter_stop_wh is not None:
        energy_wh = Decimal(tx.meter_stop_wh - tx.meter_start_wh)
    elif register is not None and register.value is not None:
        energy_wh = register.value - tx.meter_start_wh
    else:
        energy_wh = Decimal(0)
    return {"tx": tx, "energy_kwh": max(energy_wh, Decimal(0)) / 1000,
            "power_kw": power.value / 1000 if power and power.value is not None else None}


class ActionChargingStatus(Action):
    """The driver's latest session (``offset`` sessions back): energy so far, power now and
    when it should finish (from its charge plan), or what it delivered once stopped."""

    def name(self) -> str:
        return "action_charging_status"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        runtime = context.current()
        found = await context.db(_status, id_tags=driver.id_tags, back=offset(tracker))
        if found is None:
            dispatcher.utter_message(response="utter_no_session")
            return []
        tx, lang, zone = found["tx"], driver.language, runtime.settings.time_zone
        energy = number(found["energy_kwh"], lang)
        if tx.stop_timestamp is not None:
            dispatcher.utter_message(response="utter_session_finished", station_id=tx.station_id,
                                     energy=energy, ended=clock(tx.stop_timestamp, zone))
            return []
        power = found["power_kw"]
        finish = None
        try:
            plan = await plans.show_plan(runtime.load, transaction_id=tx.id,
                                         id_tags=driver.id_tags)
            finish = plan.finish if plan.status == "active" else None
        except DomainError:
            pass
        dispatcher.utter_message(
            response="utter_charging_now" if finish is None else "utter_charging_now_planned",
            station_id=tx.station_id, connector=tx.connector_id, energy=energy,
            power=number(power, lang, 1) if power is not None else "-",
            finish=_local_finish(finish, zone))
        return []


def _local_finish(finish: str | None, zone: str) -> str | None:
    if not finish:
        return None
    try:
        return clock(datetime.fromisoformat(finish), zone)
    except ValueError:
        return finish


class ActionScheduleCharging(Action):
    """Give the load manager the driver's deadline (``time``, today or else tomorrow, local)
    and energy (``energy`` kWh) for their running session; explain the plan it makes."""

    def name(self) -> str:
        return "action_schedule_charging"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        runtime = context.current()
        deadline, energy = text_slot(tracker, "time"), tracker.get_slot("energy")
        if deadline is None or energy in (None, ""):
            dispatcher.utter_message(response="utter_ask_deadline_and_energy")
            return []
        running = await context.db(queries.transactions_of, id_tags=driver.id_tags,
                                   active=True)
        if not running:
            dispatcher.utter_message(response="utter_no_running_session")
            return []
        zone = ZoneInfo(runtime.settings.time_zone)
        try:
            hour, minute = (int(part) for part in deadline.split(":"))
            now = utcnow().astimezone(zone)
            departure = datetime.combine(now.date(), time(hour, minute), zone)
            if departure <= now:
                departure += timedelta(days=1)
            energy_wh = round(Decimal(str(energy)) * 1000)
        except (ValueError, ArithmeticError):
            dispatcher.utter_message(response="utter_ask_deadline_and_energy")
            return []
        try:
            plan = await plans.plan_charge(
                runtime.load, transaction_id=running[0].id, departure_at=departure,
                energy_wh=energy_wh, requested_by=driver.label, id_tags=driver.id_tags)
        except DomainError as exc:
            dispatcher.utter_message(response="utter_plan_refused", reason=str(exc))
            return []
        dispatcher.utter_message(response="utter_plan_made",
                                 explanation=plan.explanation.get(driver.language, ""))
        return [SlotSet("energy", None), SlotSet("time", None)]


ACTIONS = [ActionCableStuck, ActionStopCharging, ActionStartCharging, ActionChargingStatus,
           ActionScheduleCharging]
