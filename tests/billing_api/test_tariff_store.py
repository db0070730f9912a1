"""Tariffs kept by version, assigned by scope and group, shown before charging."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from billing_api import service
from billing_api.money import dumps
from billing_api.pricing import price_sheet
from billing_api.tariffs import parse_tariff
from chargedesk.db import session_scope
from station_api import service as stations

STOCKHOLM = ZoneInfo("Europe/Stockholm")


def tariff(tariff_id: str = "STD", kwh: str = "3.20", **extra: Any) -> dict[str, Any]:
    return {
        "id": tariff_id, "currency": "SEK", "last_updated": "2026-11-01T00:00:00Z",
        "elements": [
            {"price_components": [{"type": "FLAT", "price": Decimal("5"), "vat": 25,
                                   "step_size": 1}]},
            {"price_components": [{"type": "ENERGY", "price": Decimal("1.95"), "vat": 25,
                                   "step_size": 1}],
             "restrictions": {"start_time": "22:00", "end_time": "06:00"}},
            {"price_components": [{"type": "ENERGY", "price": Decimal(kwh), "vat": 25,
                                   "step_size": 1}]},
            {"price_components": [{"type": "PARKING_TIME", "price": Decimal("60"), "vat": 25,
                                   "step_size": 60}],
             "restrictions": {"min_duration": 14400}},
        ],
        **extra,
    }


def store(session: Any, body: dict[str, Any], at: datetime | None = None) -> Any:
    return service.import_tariff(session, tariff=parse_tariff(dumps(body)),
                                 created_by="operator:test", valid_from=at)


@pytest.fixture
def network(engine: Any) -> None:
    with session_scope(engine) as session:
        for station_id in ("CP-1", "CP-2"):
            stations.register_station(session, station_id=station_id,
                                      password="a-station-password-1")


def test_a_new_import_is_a_new_version_and_prices_round_trip_exactly(engine) -> None:
    with session_scope(engine) as session:
        first = store(session, tariff(kwh="3.20"))
        second = store(session, tariff(kwh="0.1"))
    assert (first.version, second.version) == (1, 2)
    with session_scope(engine) as session:
        newest = service.load(service.tariff_version(session, tariff_id="STD"))
        oldest = service.load(service.tariff_version(session, tariff_id="STD", version=1))
        listed = service.list_tariffs(session)
    assert newest.elements[2].price_components[0].price == Decimal("0.1")
    assert oldest.elements[2].price_components[0].price == Decimal("3.20")
    assert [(t.tariff_id, t.version) for t in listed] == [("STD", 2)]


def test_a_session_is_priced_with_the_version_in_force_when_it_started(engine, network):
    january = datetime(2026, 1, 1, tzinfo=UTC)
    with session_scope(engine) as session:
        store(session, tariff(kwh="3.00"), at=january)
        store(session, tariff(kwh="4.00"), at=january + timedelta(days=31))
        service.assign_tariff(session, tariff_id="STD", created_by="t", valid_from=january)
    with session_scope(engine) as session:
        before = service.tariff_in_force(session, station_id="CP-1",
                                         at=january + timedelta(days=10))
        after = service.tariff_in_force(session, station_id="CP-1",
                                        at=january + timedelta(days=40))
    assert (before.version, after.version) == (1, 2)


def test_the_most_specific_assignment_wins_and_groups_override_within_a_scope(engine, network):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with session_scope(engine) as session:
        for name in ("NETWORK", "MEMBERS", "CP1", "CP1-C2", "CP1-MEMBERS"):
            store(session, tariff(name), at=start)
        assign = lambda **kw: service.assign_tariff(session, created_by="t",  # noqa: E731
                                                    valid_from=start, **kw)
        assign(tariff_id="NETWORK")
        assign(tariff_id="MEMBERS", driver_group="members")
        assign(tariff_id="CP1", station_id="CP-1")
        assign(tariff_id="CP1-C2", station_id="CP-1", connector_id=2)
        assign(tariff_id="CP1-MEMBERS", station_id="CP-1", driver_group="members")
    at = start + timedelta(days=1)

    def in_force(**kw: Any) -> str:
        with session_scope(engine) as session:
            return service.tariff_in_force(session, at=at, **kw).tariff_id

    assert in_force(station_id="CP-2") == "NETWORK"
    assert in_force(station_id="CP-2", driver_group="members") == "MEMBERS"
    assert in_force(station_id="CP-1", connector_id=1) == "CP1"
    assert in_force(station_id="CP-1", connector_id=1, driver_group="members") == "CP1-MEMBERS"
    assert in_force(station_id="CP-1", connector_id=2) == "CP1-C2"
    assert in_force(station_id="CP-1", connector_id=2, driver_group="members") == "CP1-C2"


def test_nothing_in_force_is_a_clear_not_found(engine, network) -> None:
    with session_scope(engine) as session, pytest.raises(service.NotFound, match="CP-1"):
        service.tariff_in_force(session, station_id="CP-1")


def test_the_price_sheet_shows_every_fee_with_vat_and_what_applies_now() -> None:
    sheet_day = price_sheet(parse_tariff(dumps(tariff())),
                            at=datetime(2026, 11, 24, 12, 0, tzinfo=UTC), time_zone=STOCKHOLM)
    night = price_sheet(parse_tariff(dumps(tariff())),
                        at=datetime(2026, 11, 24, 23, 30, tzinfo=UTC), time_zone=STOCKHOLM)
    flat, cheap, energy, parking = sheet_day["elements"]
    assert flat["components"][0]["price_incl_vat"] == Decimal("6.25")
    assert energy["components"][0] == {
        "type": "ENERGY", "unit": "kWh", "price_excl_vat": Decimal("3.20"),
        "price_incl_vat": Decimal("4.00"), "vat_percent": Decimal("25"), "step_size": 1}
    assert parking["components"][0]["per_minute_incl_vat"] == Decimal("1.25")
    assert parking["conditions"] == {"min_duration": 14400}
    # 12:00 UTC is 13:00 in Stockholm: the night price does not apply; 00:30 it does.
    assert (cheap["applies_now"], night["elements"][1]["applies_now"]) == (False, True)
    assert cheap["conditions"] == {"start_time": "22:00", "end_time": "06:00"}


def test_tariffs_over_rest(server, engine, network, operator_key, agent_key) -> None:
    body = dumps(tariff())
    ops = httpx.Client(base_url=server.base_url,
                       headers={"Authorization": f"Bearer {operator_key}"})
    agent = httpx.Client(base_url=server.base_url,
                         headers={"Authorization": f"Bearer {agent_key}"})
    assert agent.post("/api/v1/billing/tariffs", content=body).status_code == 403
    created = ops.post("/api/v1/billing/tariffs", content=body,
                       params={"valid_from": "2026-01-01T00:00:00Z"})
    assert created.status_code == 201 and created.json()["version"] == 1
    bad = ops.post("/api/v1/billing/tariffs", content='{"id": "X", "currency": "kronor"}')
    assert bad.status_code == 422 and "currency" in bad.json()["detail"]
    exported = json.loads(agent.get("/api/v1/billing/tariffs/STD").text, parse_float=Decimal)
    assert exported["elements"][2]["price_components"][0]["price"] == Decimal("3.20")
    assigned = ops.post("/api/v1/billing/tariffs/STD/assignments",
                        json={"station_id": "CP-1", "valid_from": "2026-01-01T00:00:00Z"})
    assert assigned.status_code == 201
    assert ops.post("/api/v1/billing/tariffs/NOPE/assignments", json={}).status_code == 404
    price = agent.get("/api/v1/billing/stations/CP-1/price").json()
    assert price["tariff_id"] == "STD" and price["currency"] == "SEK"
    assert [c["components"][0]["type"] for c in price["elements"]] == [
        "FLAT", "ENERGY", "ENERGY", "PARKING_TIME"]
    assert agent.get("/api/v1/billing/stations/CP-2/price").status_code == 404
    assert httpx.get(f"{server.base_url}/api/v1/billing/tariffs").status_code == 401
