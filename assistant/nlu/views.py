"""``POST /model/parse``: Rasa's HTTP API for understanding one message."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from assistant.nlu.engine import NluEngine, get_engine
from assistant.nlu.lookups import cached_provider
from chargedesk.auth import StaffUser

router = APIRouter(tags=["assistant"])


class ParseRequest(BaseModel):
    text: str = Field(max_length=5000)
    message_id: str | None = None


def _engine_for(request: Request) -> NluEngine:
    """The process-wide engine, with station and site names from this service's database."""
    runtime = request.app.state.runtime
    engine = get_engine(runtime.settings.data_dir / "models")
    if engine.extractor.lookup_provider is None:
        engine.set_lookup_provider(cached_provider(runtime.engine))
    return engine


@router.post("/model/parse")
async def parse(body: ParseRequest, request: Request, principal: StaffUser) -> dict[str, Any]:
    """Intent, entities, intent ranking and language of ``text``, as Rasa answers it.

    Relative dates ("förra månaden") are read in the network's local time zone.
    """
    runtime = request.app.state.runtime
    # Loading (or, the first time after a data change, training) the model takes a moment:
    # keep it off the event loop, which also serves the OCPP WebSockets.
    engine = await run_in_threadpool(_engine_for, request)
    today = datetime.now(ZoneInfo(runtime.settings.time_zone)).date()
    return await run_in_threadpool(engine.parse, body.text, today=today,
                                   message_id=body.message_id)
