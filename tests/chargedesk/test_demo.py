"""The demo network `chargedesk serve --demo` prepares: everything each part shows."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlmodel import select

from billing_api.models import ChargingSession, Invoice
from chargedesk import demo
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from load_manager.models import ConnectorWiring, SiteGrid, TagPriority, UsageSession


def test_prepare_seeds_every_part_once(engine: Any, settings: Settings) -> None:
    network = demo.load_demo()
    keys = [demo.prepare(engine, network, settings=settings, today=date(2026, 11, 24))
            for _ in range(2)]
    assert keys[0] != keys[1]  # a fresh key each start, the old one revoked
    with session_scope(engine) as session:
        grids = {g.site_id: g for g in session.exec(select(SiteGrid))}
        assert grids["STO-CITY"].phase_limit_a == 40
        assert grids["STO-CITY"].policy == "mpc"  # the online MPC of load_manager/mpc.py
        assert grids["STO-ODEN"].policy == "least_laxity"
        assert len(session.exec(select(ConnectorWiring)).all()) == 6
        assert session.get(TagPriority, "FLEET-ACME").priority == 10
        rated = session.exec(select(ChargingSession)).all()
        # Four drivers, four sessions a month, two months: seeded once.
        assert len(rated) == 4 * 4 * 2
        assert session.exec(select(Invoice)).first() is not None
        # The same history as visits, for analytics and the dashboard.
        visits = session.exec(select(UsageSession)).all()
        assert len(visits) == len(rated)
        assert sum(v.energy_wh for v in visits) == sum(r.energy_wh for r in rated)
