"""Domain events published by the load manager; the assistant subscribes (to tell drivers)."""

from __future__ import annotations

from chargedesk.events import Event


class PlanChanged(Event):
    """A session's charging plan was made, replaced or cancelled (and the site re-planned:
    the plan's expected energy and cost are as good as they will be for now)."""

    topic = "load.plan_changed"
    plan_id: int
    transaction_id: int
    # The plan's status after the change: "active" (made or replacing an earlier one) or
    # "cancelled".
    status: str
