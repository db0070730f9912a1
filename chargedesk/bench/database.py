"""The database a data-heavy bench runs on: by default a fresh PostgreSQL schema of its own on
the local server, migrated; or an empty database the caller names (SQLite allowed)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, create_engine, text

from chargedesk.db import make_engine, normalise_url, upgrade

Progress = Callable[[str], None]

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class BenchError(RuntimeError):
    """The bench could not run, or its results do not check out."""


@dataclass
class Database:
    url: str
    engine: Engine
    schema: str | None  # ours to drop; None for a database the caller gave

    @property
    def postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"


def open_database(url: str | None, schema: str, say: Progress, *,
                  must_be_empty: Sequence[str]) -> Database:
    """Migrate ``url`` (or a fresh ``schema`` on ``CHARGEDESK_BENCH_POSTGRES_URL``) and make
    sure none of ``must_be_empty`` holds a row: a bench never mixes with real data."""
    ours = None
    if url is None:
        base = os.environ.get("CHARGEDESK_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
        admin = create_engine(normalise_url(base))
        try:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        except Exception as exc:
            raise BenchError(f"PostgreSQL unreachable at {base}: {exc}") from exc
        finally:
            admin.dispose()
        separator = "&" if "?" in base else "?"
        url, ours = f"{base}{separator}options=-csearch_path%3D{schema}", schema
        say(f"fresh schema {schema} on {base.split('@')[-1]}")
    say("migrating")
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        existing = sum(conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one()
                       for table in must_be_empty)
    if existing:
        engine.dispose()
        raise BenchError("the database is not empty; the bench needs a fresh one")
    return Database(url, engine, ours)


def drop_own_schema(db: Database, say: Progress) -> bool:
    """Drop the schema the bench made; False when the database was the caller's."""
    if db.schema is None:
        return False
    admin = create_engine(normalise_url(db.url.split("?")[0]))
    try:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{db.schema}" CASCADE'))
    finally:
        admin.dispose()
    say(f"dropped schema {db.schema}")
    return True
