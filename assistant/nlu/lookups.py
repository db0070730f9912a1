"""Station and site names from the database, for the entity extractor's look-ups.

The engine never imports the database: the service hands it a provider, a function returning
``{entity: {surface text: value}}``; this module builds one from a SQLModel session.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlmodel import Session, select

from assistant.nlu.entities import LookupProvider, Lookups


def lookups_from_session(session: Session) -> dict[str, dict[str, str]]:
    """Site names map to the site's id, station ids to themselves (any spelling of case)."""
    from station_api.models import Site, Station

    sites = {site.name: site.id for site in session.exec(select(Site))}
    stations = {station.id: station.id for station in session.exec(select(Station))}
    return {"site": sites, "station_id": stations}


def cached_provider(engine: Engine, *, ttl_seconds: float = 60.0,
                    clock: Callable[[], float] = time.monotonic) -> LookupProvider:
    """A provider reading the database at most once per ``ttl_seconds``: a site added by an
    operator is known a minute later, and parsing never waits on a query in between."""
    state: dict[str, object] = {"at": float("-inf"), "value": {}}
    lock = threading.Lock()

    def provide() -> Lookups:
        if clock() - float(state["at"]) > ttl_seconds:  # type: ignore[arg-type]
            with lock:
                if clock() - float(state["at"]) > ttl_seconds:  # type: ignore[arg-type]
                    with Session(engine) as session:
                        state["value"] = lookups_from_session(session)
                    state["at"] = clock()
        return state["value"]  # type: ignore[return-value]

    return provide
