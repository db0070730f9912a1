"""Billing from the command line: a month's invoice run, bank files, a site."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlmodel import select

from billing_api.models import Invoice
from chargedesk.cli import app
from chargedesk.db import session_scope
from station_api.models import Station
from tests.billing_api.factories import make_driver, make_rated_session
from tests.billing_api.test_payments import autogiro_mandate
from tests.chargedesk.test_cli import cli  # noqa: F401  (fixture)


def test_billing_run_invoices_the_month_once(cli, engine) -> None:  # noqa: F811
    with session_scope(engine) as session:
        make_rated_session(session, driver=make_driver(session),
                           start=datetime(2026, 10, 7, 12, tzinfo=UTC))
    first = cli.invoke(app, ["billing", "run", "--period", "2026-10"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout.strip().splitlines()[-1])["invoices"] == 1
    again = cli.invoke(app, ["billing", "run", "--period", "2026-10"])
    assert json.loads(again.stdout.strip().splitlines()[-1])["invoices"] == 0
    with session_scope(engine) as session:
        assert len(session.exec(select(Invoice)).all()) == 1
    bad = cli.invoke(app, ["billing", "run", "--period", "2026-13"])
    assert bad.exit_code == 1 and "YYYY-MM" in bad.output


def test_billing_export_writes_the_mandate_file(cli, engine, tmp_path) -> None:  # noqa: F811
    with session_scope(engine) as session:
        autogiro_mandate(session, make_driver(session))
    out = tmp_path / "BFEP.txt"
    made = cli.invoke(app, ["billing", "export", "autogiro-mandates", "--out", str(out)])
    assert made.exit_code == 0, made.output
    lines = out.read_bytes().split(b"\r\n")
    assert lines[0].startswith(b"01") and lines[1].startswith(b"04")
    assert "nothing to send" in cli.invoke(app, ["billing", "export",
                                                 "autogiro-mandates"]).stdout


def test_a_station_is_put_on_a_new_site(cli, engine) -> None:  # noqa: F811
    assert cli.invoke(app, ["station", "site", "UPP", "--name", "Uppsala"]).exit_code == 0
    added = cli.invoke(app, ["station", "add", "UPP-1", "--password", "a-long-station-secret",
                             "--site", "UPP"])
    assert added.exit_code == 0, added.output
    with session_scope(engine) as session:
        assert session.get(Station, "UPP-1").site_id == "UPP"
    wrong = cli.invoke(app, ["station", "site", "X", "--name", "X", "--time-zone", "Mars/Base"])
    assert wrong.exit_code == 1 and "unknown time zone" in wrong.output
