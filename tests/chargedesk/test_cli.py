"""The operator CLI against a real database."""

from __future__ import annotations

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from chargedesk.cli import app
from chargedesk.db import session_scope
from chargedesk.models import ApiKey, Role
from chargedesk.security import hash_api_key
from chargedesk.settings import get_settings
from station_api.models import Station


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CHARGEDESK_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def test_apikey_create_prints_a_key_that_is_stored_hashed(cli, engine) -> None:
    result = cli.invoke(app, ["apikey", "create", "--role", "operator", "--name", "ops"])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[0]
    with session_scope(engine) as session:
        row = session.exec(select(ApiKey)).one()
    assert (row.role, row.name, row.key_hash) == (Role.operator, "ops", hash_api_key(key))
    assert cli.invoke(app, ["apikey", "create", "--role", "janitor"]).exit_code == 1
    assert cli.invoke(app, ["apikey", "revoke", str(row.id)]).exit_code == 0
    assert "revoked" in cli.invoke(app, ["apikey", "list"]).stdout


def test_station_add_and_list(cli, engine) -> None:
    added = cli.invoke(app, ["station", "add", "CP-7", "--password", "a-long-station-secret"])
    assert added.exit_code == 0, added.output
    again = cli.invoke(app, ["station", "add", "CP-7", "--insecure-no-password"])
    assert again.exit_code == 1 and "already exists" in again.output
    bare = cli.invoke(app, ["station", "add", "CP-8"])
    assert bare.exit_code == 1 and "--password" in bare.output
    listing = cli.invoke(app, ["station", "list"])
    assert "CP-7\taccepted\toffline" in listing.stdout
    with session_scope(engine) as session:
        assert session.get(Station, "CP-7").password_hash.startswith("scrypt$")


def test_station_command_goes_through_the_running_service(cli, server, operator_key) -> None:
    result = cli.invoke(app, ["station", "command", "CP-404", "Reset", "--json",
                              '{"type": "Soft"}', "--url", server.base_url,
                              "--api-key", operator_key])
    assert result.exit_code == 1
    assert "no station CP-404" in result.stdout


async def test_station_command_prints_the_outcome(cli, server, engine, operator_key) -> None:
    import asyncio
    import json

    from tests.station_api.ocpp_client import station
    from tests.station_api.test_central_system import register

    register(engine)
    async with station(server.ws_url, "CP-1") as cp:
        result = await asyncio.to_thread(
            cli.invoke, app, ["station", "command", "CP-1", "UnlockConnector", "--json",
                              '{"connectorId": 2}', "--url", server.base_url,
                              "--api-key", operator_key, "--reason", "driver called"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["response"] == {"status": "Unlocked"}
    assert cp.received == [("UnlockConnector", {"connector_id": 2})]


def test_station_passwords_follow_the_ocpp_length_rule(cli) -> None:
    short = cli.invoke(app, ["station", "add", "CP-8", "--password", "short"])
    assert short.exit_code == 1 and "16 to 40 characters" in short.output


def test_station_password_can_be_changed(cli, engine) -> None:
    from chargedesk.security import verify_password

    cli.invoke(app, ["station", "add", "CP-9", "--password", "the-first-password-1"])
    changed = cli.invoke(app, ["station", "password", "CP-9", "--password",
                               "the-second-password-2"])
    assert changed.exit_code == 0, changed.output
    with session_scope(engine) as session:
        stored = session.get(Station, "CP-9").password_hash
    assert verify_password("the-second-password-2", stored)
    assert not verify_password("the-first-password-1", stored)
    missing = cli.invoke(app, ["station", "password", "NOPE", "--password", "x" * 20])
    assert missing.exit_code == 1 and "no station NOPE" in missing.output


def test_the_demo_network_seeds_once_with_prices_at_every_station(engine) -> None:
    from billing_api import service as billing
    from chargedesk import demo

    network = demo.load_demo()
    for _ in range(2):
        with session_scope(engine) as session:
            demo.seed(session, network)
    with session_scope(engine) as session:
        for entry in network["stations"]:
            assert session.get(Station, entry["id"]) is not None
            in_force = billing.tariff_in_force(session, station_id=entry["id"])
            expected = "SE-FAST" if entry["id"] == "SE-GBG-HAMN-01" else "SE-STANDARD"
            assert (in_force.tariff_id, in_force.version) == (expected, 1)
