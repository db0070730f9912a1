"""Composition root: builds the runtime (engine, bus, central system) and the FastAPI app."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine, text

from chargedesk.auth import OperatorUser
from chargedesk.db import dispose, make_engine
from chargedesk.errors import install_handlers
from chargedesk.events import InMemoryEventBus
from chargedesk.logging import configure_logging
from chargedesk.settings import Settings, get_settings
from load_manager.controller import LoadController
from station_api.central import CentralSystem

BackgroundJob = Callable[["Runtime"], Awaitable[None]]


@dataclass
class Runtime:
    """Everything one running service shares; reached in views via ``request.app.state``."""

    settings: Settings
    engine: Engine
    bus: InMemoryEventBus
    central: CentralSystem
    load: LoadController
    jobs: list[BackgroundJob] = field(default_factory=list)
    # channel name → how to deliver to one of its senders (assistant.channels.outbound)
    outbound_channels: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        from billing_api import subscribers
        from load_manager import controller, usage

        engine = make_engine(settings.resolved_database_url())
        bus = InMemoryEventBus()
        central = CentralSystem(settings=settings, engine=engine, bus=bus)
        subscribers.install(engine=engine, bus=bus, settings=settings, central=central)
        usage.install(engine=engine, bus=bus)
        load = controller.install(engine=engine, bus=bus, central=central, settings=settings)
        return cls(settings, engine, bus, central, load)


def create_app(
    settings: Settings | None = None, *, jobs: list[BackgroundJob] | None = None
) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    runtime = Runtime.build(settings)
    runtime.jobs.extend(jobs or [])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from billing_api.scheduled import build_scheduler

        tasks = [asyncio.create_task(runtime.central.run_liveness())]
        tasks += [asyncio.create_task(job(runtime)) for job in runtime.jobs]
        if settings.smtp_inbound_port:
            from assistant.channels.email import server as email_channel

            tasks.append(asyncio.create_task(email_channel.run(runtime)))
        if settings.nlu_warm_up:
            from assistant.nlu.engine import get_engine

            tasks.append(asyncio.create_task(
                asyncio.to_thread(get_engine, settings.data_dir / "models")))
        scheduler = build_scheduler(runtime.engine, settings) if settings.scheduler else None
        if scheduler is not None:
            scheduler.start()
        runtime.load.start()
        # What start-up allocated lives as long as the process: keep it out of the
        # collector's full passes, which otherwise grow with every import.
        gc.freeze()
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.shutdown(wait=False)
            await runtime.load.stop()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with suppress(asyncio.CancelledError):
                    await task
            await runtime.bus.join()
            dispose(runtime.engine)

    app = FastAPI(
        title="ChargeDesk",
        version="0.1.0",
        description="Support and operations for EV charging networks.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    from assistant.actions.context import configure as configure_actions

    configure_actions(runtime)
    install_handlers(app)

    from assistant.actions.server import router as actions_router
    from assistant.channels.web import router as web_chat_router
    from assistant.nlu.views import router as nlu_router
    from billing_api.accounts_views import router as accounts_router
    from billing_api.views import router as billing_router
    from load_manager.analytics_views import router as analytics_router
    from load_manager.dashboard import router as admin_router
    from load_manager.views import router as load_router
    from station_api.views import ocpp_router
    from station_api.views import router as stations_router

    # Routes are matched in order: the chat, the busiest by far, goes first.
    app.include_router(web_chat_router)
    app.include_router(stations_router)
    app.include_router(billing_router)
    app.include_router(accounts_router)
    app.include_router(load_router)
    app.include_router(analytics_router)
    app.include_router(admin_router)
    app.include_router(nlu_router)
    app.include_router(actions_router)
    from assistant.channels import outbound

    outbound.register(runtime, "web", outbound.push_to_web)
    app.include_router(ocpp_router)
    from assistant.channels.twilio import install as install_twilio

    install_twilio(app)  # SMS and voice webhooks, and the SMS worker
    from assistant.channels.email import install as install_email

    install_email(app)  # e-mail as an outbound channel (agents' replies, notifications)
    from support.desk import install as install_support

    install_support(app)  # tickets from escalations, /api/v1/support, the console at /agent
    from assistant.notifications import install as install_notifications

    install_notifications(app)  # events become messages to drivers; the sender job

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """Liveness and database reachability."""
        with runtime.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"])
    def metrics(_: OperatorUser) -> Response:
        """Prometheus text format; scrape with an operator key as bearer token."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
