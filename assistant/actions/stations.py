"""Stations as a driver sees them: are they working, where are they, why won't mine start,
and reporting a broken one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.events import FollowupAction, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from sqlmodel import Session

from assistant.actions import context, flags, places, reference, safety
from assistant.actions.common import (
    failed,
    handoff,
    int_slot,
    language,
    money,
    number,
    refused,
    station_slot,
    text_slot,
    verified_driver,
)
from assistant.actions.words import CONNECTOR, connector_status
from billing_api import support as billing
from billing_api.models import PaymentMethod
from station_api import service as stations
from station_api.models import IdTag, IdTagStatus

Events = list[dict[str, Any]]


def _connectors(session: Session, *, station_id: str) -> list[tuple[int, str, str]]:
    stations.get_station(session, station_id=station_id)
    return [(c.connector_id, c.status, c.error_code)
            for c in stations.list_connectors(session, station_ids=[station_id])]


def _site_stations(session: Session, *, site_id: str) -> list[str]:
    return [s.id for s in stations.list_stations(session) if s.site_id == site_id]


class ActionStationStatus(Action):
    """Whether ``station_id`` (or each station of ``site``) is online, and each connector's
    state and error code."""

    def name(self) -> str:
        return "action_station_status"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        lang, central = language(tracker), context.current().central
        station_id, site_id = station_slot(tracker), text_slot(tracker, "site")
        kept = reference.of(context.current())
        if station_id is not None:
            ids = [station_id]
        elif site_id is not None:
            ids = await kept.sites.get_or_load(
                ("stations", site_id), lambda: context.db(_site_stations, site_id=site_id))
        else:
            dispatcher.utter_message(response="utter_ask_station_id")
            return []
        if not ids:
            dispatcher.utter_message(response="utter_unknown_station", station_id=site_id)
            return []
        for sid in ids:
            try:
                connectors = await kept.connectors.get_or_load(
                    sid, lambda sid=sid: context.db(_connectors, station_id=sid))
            except stations.NotFound:
                dispatcher.utter_message(response="utter_unknown_station", station_id=sid)
                continue
            lines = "\n".join(
                f"{CONNECTOR[lang]} {cid}: {connector_status(status, lang)}"
                + (f" ({error})" if error != "NoError" else "")
                for cid, status, error in connectors if cid != 0)
            dispatcher.utter_message(
                response="utter_station_online" if central.is_online(sid)
                else "utter_station_offline", station_id=sid, connectors=lines or "-")
        return []


@dataclass(frozen=True)
class Diagnosis:
    """What stands between the driver and charging, in the order it is checked."""

    finding: str
    station_id: str
    connector: int | None = None
    error_code: str | None = None
    available: Any = None


def diagnose(
    session: Session, *, station_id: str, connector: int | None, online: bool,
    id_tags: tuple[str, ...], hooks: list[Any], driver_id: int, settings: Any,
) -> Diagnosis:
    """Station online; the connector's status and error code; the driver's authorization
    (the registry's and every refusal hook's verdict, as the station would get it); their
    prepaid balance when that is what refuses them."""
    live = {cid: (status, error) for cid, status, error in _connectors(session,
                                                                      station_id=station_id)}
    if not online:
        return Diagnosis("offline", station_id)
    if live.get(0, ("", ""))[0] == "Faulted":
        return Diagnosis("faulted", station_id, 0, live[0][1])
    if connector is None:
        plugged = [cid for cid, (status, _) in live.items() if cid and status == "Preparing"]
        broken = [cid for cid, (status, _) in live.items() if cid and status == "Faulted"]
        points = [cid for cid in live if cid]
        connector = next(iter(plugged or broken or (points if len(points) == 1 else [])),
                         None)
        if connector is None:
            return Diagnosis("which_connector", station_id)
    status, error = live.get(connector, ("Unknown", "NoError"))
    if status == "Faulted":
        return Diagnosis("faulted", station_id, connector, error)
    if status in ("Unavailable", "Unknown"):
        return Diagnosis("unavailable", station_id, connector)
    running = stations.active_transaction(session, station_id=station_id, connector_id=connector)
    if running is not None:
        mine = safety.owns(session, transaction=running, id_tags=id_tags)
        return Diagnosis("charging" if mine else "busy", station_id, connector)
    verdict, registry = "Invalid", "Invalid"
    for tag in id_tags:
        row = session.get(IdTag, tag)
        registry = row.status if row else "Invalid"
        verdict = stations.authorize(session, station_id=station_id, id_tag=tag,
                                     hooks=hooks).status
        if verdict == IdTagStatus.accepted:
            break
    if verdict != IdTagStatus.accepted:
        driver = billing.get_driver(session, driver_id=driver_id)
        if registry == IdTagStatus.accepted and driver.payment_method == PaymentMethod.prepaid:
            balance = billing.balance(session, driver_id=driver_id, settings=settings)
            return Diagnosis("low_balance", station_id, connector, available=balance.available)
        return Diagnosis(f"card_{str(verdict).lower()}", station_id, connector)
    if status == "Preparing":
        return Diagnosis("ready", station_id, connector)
    return Diagnosis("not_plugged", station_id, connector)


class ActionChargingWontStart(Action):
    """Find out why charging won't start at ``station_id`` (``connector`` optional) and go
    on: a remote start (``action_start_charging``) or a soft reset
    (``action_reset_station``) as the follow-up, both confirmed first; else a person."""

    def name(self) -> str:
        return "action_charging_wont_start"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        station_id = station_slot(tracker)
        if station_id is None:
            dispatcher.utter_message(response="utter_ask_station_id")
            return []
        runtime = context.current()
        try:
            found = await context.db(
                diagnose, station_id=station_id, connector=int_slot(tracker, "connector"),
                online=runtime.central.is_online(station_id), id_tags=driver.id_tags,
                hooks=list(runtime.central.authorization_hooks), driver_id=driver.id,
                settings=runtime.settings)
        except stations.NotFound:
            dispatcher.utter_message(response="utter_unknown_station", station_id=station_id)
            return []
        available = (money(found.available, driver.language)
                     if found.available is not None else None)
        dispatcher.utter_message(response=f"utter_diagnosis_{found.finding}",
                                 station_id=station_id, connector=found.connector,
                                 error_code=found.error_code, available=available)
        events: Events = []
        if found.connector is not None:
            events.append(SlotSet("connector", float(found.connector)))
        if found.finding == "ready":
            return [*events, FollowupAction("action_start_charging")]
        if found.finding == "faulted":
            return [*events, FollowupAction("action_reset_station")]
        if found.finding in ("offline", "unavailable"):
            return [*events, *handoff("action_failed")]
        return events


class ActionResetStation(Action):
    """Soft-reset ``station_id`` for the driver (after ``action_charging_wont_start`` found
    it faulted): never while another driver's session runs there, never hard."""

    def name(self) -> str:
        return "action_reset_station"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        station_id = station_slot(tracker)
        if station_id is None:
            dispatcher.utter_message(response="utter_ask_station_id")
            return []
        try:
            await context.db(safety.check_reset, station_id=station_id, reset_type="Soft",
                             id_tags=driver.id_tags)
            result = await safety.command(
                context.current().central, driver_id=driver.id, station_id=station_id,
                action="Reset", payload={"type": "Soft"},
                reason="charging would not start; the assistant's diagnosis found a fault")
        except safety.Refused as refusal:
            return refused(dispatcher, refusal)
        if str(result.outcome) != "accepted":
            return failed(dispatcher, result, station_id)
        dispatcher.utter_message(response="utter_station_restarting", station_id=station_id)
        return []


def _sites(session: Session) -> list[dict[str, Any]]:
    listed = stations.list_stations(session)
    connectors = stations.list_connectors(session, station_ids=[s.id for s in listed])
    free: dict[str, list[int]] = {}
    for s in listed:
        if s.site_id is not None:
            free.setdefault(s.site_id, [0, 0])
    site_of = {s.id: s.site_id for s in listed}
    for c in connectors:
        counts = free.get(site_of.get(c.station_id) or "")
        if counts is not None and c.connector_id != 0:
            counts[0] += c.status == "Available"
            counts[1] += 1
    return [{"id": site.id, "name": site.name, "address": site.address or "",
             "free": free.get(site.id, [0, 0])[0], "total": free.get(site.id, [0, 0])[1]}
            for site in stations.list_sites(session)]


class ActionFindCharger(Action):
    """The sites nearest the place the driver names (a Swedish city or area, or a site's
    name; or the ``site`` slot), with address, distance and free connectors."""

    def name(self) -> str:
        return "action_find_charger"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        lang = language(tracker)
        sites = await reference.of(context.current()).sites.get_or_load(
            "all", lambda: context.db(_sites))
        known = places.gazetteer()
        site_id = text_slot(tracker, "site")
        origin: tuple[str, tuple[float, float]] | None = None
        if site_id is not None and site_id in known.sites:
            name = next((s["name"] for s in sites if s["id"] == site_id), site_id)
            origin = (name, known.sites[site_id])
        else:
            origin = known.find_place(str(tracker.latest_message.get("text") or ""),
                                      [(s["name"], s["id"]) for s in sites])
        if origin is None:
            dispatcher.utter_message(response="utter_ask_where")
            return []
        place, at = origin
        ranked = sorted(((places.distance_km(at, known.sites[s["id"]]), s)
                         for s in sites if s["id"] in known.sites), key=lambda pair: pair[0])
        nearby = [(km, s) for km, s in ranked[:3]]
        if not nearby:
            dispatcher.utter_message(response="utter_no_chargers_known")
            return []
        template = {"sv": "{name}, {address}: {km} km, {free} av {total} uttag lediga",
                    "en": "{name}, {address}: {km} km, {free} of {total} connectors free"}[lang]
        lines = "\n".join(template.format(km=number(km, lang, 1), **s) for km, s in nearby)
        dispatcher.utter_message(response="utter_chargers_near", place=place, sites=lines)
        return [SlotSet("site", nearby[0][1]["id"])]


def reported_words(tracker: Tracker) -> str | None:
    """What the driver wrote when they reported the problem: the latest message NLU took
    for ``report_station_problem`` (a form may have asked for the station since)."""
    for event in reversed(tracker.events or []):
        if event.get("event") != "user":
            continue
        intent = ((event.get("parse_data") or {}).get("intent") or {}).get("name")
        text = str(event.get("text") or "").strip()
        if intent == "report_station_problem" and text and not text.startswith("/"):
            return text
    text = str(tracker.latest_message.get("text") or "").strip()
    return text if text and not text.startswith("/") else None


class ActionReportStationProblem(Action):
    """A driver reports a broken or damaged ``station_id`` (``connector`` if they said):
    the station is flagged for operators (:mod:`assistant.actions.flags`) and a person
    takes the conversation over as a ticket (an escalation, reason ``damage``)."""

    def name(self) -> str:
        return "action_report_station_problem"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        station_id = station_slot(tracker)
        if station_id is None:
            dispatcher.utter_message(response="utter_ask_station_id")
            return []
        driver_id = int_slot(tracker, "driver_id") if tracker.get_slot("verified") else None
        try:
            await context.db(
                flags.flag_station, station_id=station_id,
                connector_id=int_slot(tracker, "connector"),
                description=reported_words(tracker),
                reported_by=safety.requested_by(driver_id) if driver_id else "anonymous",
                channel=tracker.get_latest_input_channel(), sender=tracker.sender_id)
        except stations.NotFound:
            dispatcher.utter_message(response="utter_unknown_station", station_id=station_id)
            return []
        dispatcher.utter_message(response="utter_problem_reported", station_id=station_id)
        return handoff("damage")


ACTIONS = [ActionStationStatus, ActionChargingWontStart, ActionResetStation, ActionFindCharger,
           ActionReportStationProblem]
