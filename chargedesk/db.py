"""Database engine and sessions. SQLite (WAL) by default, PostgreSQL through psycopg."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, event
from sqlmodel import Session, create_engine

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (SQLAlchemy defaults to psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets readers work while the OCPP handlers write.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


_executors: weakref.WeakKeyDictionary[Engine, ThreadPoolExecutor] = weakref.WeakKeyDictionary()


def _executor(engine: Engine) -> ThreadPoolExecutor:
    executor = _executors.get(engine)
    if executor is None:
        # SQLite has a single writer: more threads would only queue in its busy handler,
        # which sleeps and so turns contention into tail latency. PostgreSQL gets a few.
        workers = 1 if engine.dialect.name == "sqlite" else 8
        executor = _executors[engine] = ThreadPoolExecutor(workers, thread_name_prefix="db")
    return executor


async def run_in_session(engine: Engine, fn: Callable[..., T], /, **kwargs: Any) -> T:
    """Run a synchronous service function off the event loop, inside one transaction.

    The work goes to the engine's own small thread pool, so database work from the OCPP
    handlers never starves the threads that serve HTTP requests.
    """

    def work() -> T:
        with session_scope(engine) as session:
            return fn(session, **kwargs)

    return await asyncio.get_running_loop().run_in_executor(_executor(engine), work)


def dispose(engine: Engine) -> None:
    """Close the engine's connections and its worker threads."""
    executor = _executors.pop(engine, None)
    if executor is not None:
        executor.shutdown(wait=True)
    engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` with Alembic."""
    from alembic import command

    command.upgrade(_alembic_config(url), revision)


def _alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
