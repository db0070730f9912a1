"""Fixtures shared by every test package: real databases and a real server on loopback."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, inspect, text
from sqlmodel import Session

from chargedesk.app import create_app
from chargedesk.auth import create_api_key
from chargedesk.db import make_engine, normalise_url, session_scope, upgrade
from chargedesk.models import Role
from chargedesk.settings import Settings

POSTGRES_URL = os.environ.get(
    "CHARGEDESK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(scope="session")
def _postgres_schema() -> Iterator[str]:
    """A schema of this test run's own in the PostgreSQL test database, migrated once.

    Its own schema keeps concurrent runs on one server (two checkouts, a benchmark) apart.
    """
    schema = f"chargedesk_test_{os.getpid()}"
    admin = create_engine(normalise_url(POSTGRES_URL))
    try:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # any failure to reach the server
        message = f"PostgreSQL unreachable at {POSTGRES_URL}: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    separator = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    upgrade(url)
    yield url
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A migrated, empty database: each test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'chargedesk.db'}"
        upgrade(url)
        return url
    url = request.getfixturevalue("_postgres_schema")
    engine = create_engine(normalise_url(url))
    tables = [t for t in inspect(engine).get_table_names() if t != "alembic_version"]
    quoted = ", ".join(f'"{table}"' for table in tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Any]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Any) -> Iterator[Session]:
    with session_scope(engine) as session:
        yield session


@dataclass
class LiveServer:
    base_url: str
    ws_url: str
    app: Any
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_server(settings: Settings) -> LiveServer:
    """Run the real app under uvicorn on a free loopback port, in a thread."""
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, ws="websockets-sansio",
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return LiveServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ocpp", app, server,
                      thread)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, heartbeat_interval=60, log_format="console",
                    log_level="WARNING", command_timeout=5, scheduler=False,
                    nlu_warm_up=False)


@pytest.fixture
def server(settings: Settings) -> Iterator[LiveServer]:
    live = start_server(settings)
    yield live
    live.stop()


def make_key(engine: Any, role: Role) -> str:
    with session_scope(engine) as session:
        return create_api_key(session, name=f"test-{role}", role=role)[1]


@pytest.fixture
def operator_key(engine: Any) -> str:
    return make_key(engine, Role.operator)


@pytest.fixture
def agent_key(engine: Any) -> str:
    return make_key(engine, Role.agent)


@pytest.fixture
def api(server: LiveServer, operator_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url,
                      headers={"Authorization": f"Bearer {operator_key}"}, timeout=30) as client:
        yield client
