"""`chargedesk billing rate` prints the CDR of one session."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from typer.testing import CliRunner

from chargedesk.cli import app

TARIFF = {
    "country_code": "SE", "party_id": "CDK", "id": "STO-AC-1", "currency": "SEK",
    "elements": [
        {"price_components": [{"type": "FLAT", "price": 5.00, "vat": 25.0, "step_size": 1}]},
        {"price_components": [{"type": "ENERGY", "price": 3.20, "vat": 25.0, "step_size": 1}]},
        {"price_components": [{"type": "PARKING_TIME", "price": 60.00, "vat": 25.0,
                               "step_size": 60}]},
    ],
    "last_updated": "2026-11-01T00:00:00Z",
}
SESSION = {
    "time_zone": "Europe/Stockholm",
    "samples": [
        {"timestamp": "2026-11-24T17:00:00+01:00", "energy_wh": 1000, "status": "Charging"},
        {"timestamp": "2026-11-24T18:00:00+01:00", "energy_wh": 12000, "status": "SuspendedEV"},
        {"timestamp": "2026-11-24T18:30:00+01:00", "energy_wh": 12000, "status": "Finishing"},
        {"timestamp": "2026-11-24T18:45:00+01:00", "energy_wh": 12000, "status": "Finishing"},
    ],
}


def test_a_session_is_rated_from_the_files(tmp_path: Path) -> None:
    tariff, session = tmp_path / "t.json", tmp_path / "s.json"
    tariff.write_text(json.dumps(TARIFF))
    session.write_text(json.dumps(SESSION))

    result = CliRunner().invoke(app, ["billing", "rate", "--tariff", str(tariff),
                                      "--session", str(session)])

    assert result.exit_code == 0, result.output
    cdr = json.loads(result.stdout, parse_float=Decimal)
    # 5 kr start + 11 kWh x 3.20 kr + 45 min parking at 60 kr/h: 5 + 35.20 + 45 = 85.20 excl.
    assert cdr["total_energy"] == 11
    assert cdr["total_parking_time"] == Decimal("0.75")
    assert cdr["total_cost"] == {"excl_vat": Decimal("85.20"), "incl_vat": Decimal("106.50")}


def test_bad_input_is_refused_with_a_reason(tmp_path: Path) -> None:
    tariff, session = tmp_path / "t.json", tmp_path / "s.json"
    tariff.write_text(json.dumps(TARIFF))
    backwards = {**SESSION, "samples": list(reversed(SESSION["samples"]))}
    session.write_text(json.dumps(backwards))

    result = CliRunner().invoke(app, ["billing", "rate", "--tariff", str(tariff),
                                      "--session", str(session)])

    assert result.exit_code == 1
    assert "samples must be in time order" in result.output
