"""``POST /webhook``: Rasa's action-server protocol over our actions, for an external Rasa;
the actions' operator endpoints (:mod:`assistant.actions.views`) are served beside it.

The caller acts with the identity the tracker's slots carry (``driver_id``, ``verified``),
so it must be trusted like staff: a bearer API key of an operator or agent.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse

from assistant.actions import registry, views
from chargedesk.auth import StaffUser

router = APIRouter(tags=["assistant"])
# The actions' operator endpoints ride on this router, which the app already includes.
router.include_router(views.router)


@router.post("/webhook")
async def webhook(_: StaffUser, payload: dict[str, Any] = Body(...)) -> JSONResponse:  # noqa: B008
    """Run ``next_action`` on the tracker sent: ``{"events", "responses"}``, or Rasa's
    ``{"error", "action_name"}`` with 404 for an unknown action."""
    result = await registry.execute(payload)
    if "error" in result:
        status = int(result.pop("status", 400))
        return JSONResponse(result, status_code=status)
    return JSONResponse(result)
