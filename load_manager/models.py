"""Load-management tables: grid limits, wiring, what stations and cars can do, plans, usage.

Physical quantities (amperes, watts) are floats: they come from meters and pilot signals with
their own tolerances. Money shown to drivers (a plan's expected cost) is Decimal.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, Numeric, UniqueConstraint
from sqlmodel import Field, SQLModel

from chargedesk.types import EnumText, UTCDateTime, utcnow


class SitePolicy(StrEnum):
    """How a site's capacity is shared: one of the allocator's rules
    (:class:`load_manager.allocation.Policy`), or ``mpc``, the online MPC the realistic
    scheduling bench measures (:mod:`load_manager.mpc`)."""

    equal_share = "equal_share"
    priority = "priority"
    least_laxity = "least_laxity"
    mpc = "mpc"


class SiteGrid(SQLModel, table=True):
    """A site's grid connection: what all its stations together may draw."""

    __tablename__ = "site_grid"

    site_id: str = Field(foreign_key="site.id", primary_key=True, max_length=48)
    # Per phase (L1, L2, L3) at the connection point; null when only a kW limit is known.
    phase_limit_a: float | None = None
    # Aggregate limit in kW; either this or the phase limit (or both) must be set.
    power_limit_kw: float | None = None
    voltage_v: float = 230.0
    policy: SitePolicy = Field(default=SitePolicy.equal_share, sa_type=EnumText(SitePolicy))
    # False: the site is monitored but no profiles are sent.
    enabled: bool = True
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class LoadForecast(SQLModel, table=True):
    """Other load on the site's connection (a building, a heat pump), per phase from a time."""

    __tablename__ = "load_forecast"
    __table_args__ = (UniqueConstraint("site_id", "starts_at"),)

    id: int | None = Field(default=None, primary_key=True)
    site_id: str = Field(foreign_key="site.id", max_length=48, index=True)
    # Holds from this instant until the next row of the site.
    starts_at: datetime = Field(sa_type=UTCDateTime)
    l1_a: float = 0.0
    l2_a: float = 0.0
    l3_a: float = 0.0


class ConnectorWiring(SQLModel, table=True):
    """How a connector is wired to the site's phases, and its current limits.

    ``phases`` counts the conductors the connector uses (1 or 3); ``rotation`` is OCPP's
    ConnectorPhaseRotation letters (R, S, T are the site's L1, L2, L3): the first letter is the
    site phase on the connector's L1. A single-phase connector with rotation "TRS" draws on L3.
    """

    __tablename__ = "connector_wiring"

    station_id: str = Field(foreign_key="station.id", primary_key=True, max_length=48)
    connector_id: int = Field(primary_key=True)
    phases: int = 3
    rotation: str = Field(default="RST", max_length=3)
    max_current_a: float = 16.0
    # Below this a car can't charge (IEC 61851: 6 A); allocations are 0 or at least this.
    min_current_a: float = 6.0


class StationCapability(SQLModel, table=True):
    """What a station said it supports for smart charging (GetConfiguration), and its state.

    A station that rejects profiles, doesn't answer or is offline is counted at its maximum
    (``fail_safe``) until it accepts a profile again.
    """

    __tablename__ = "station_capability"

    station_id: str = Field(foreign_key="station.id", primary_key=True, max_length=48)
    smart_charging: bool = True
    max_stack_level: int | None = None
    # "Current", "Power" or "Current,Power" as the station reported it.
    rate_units: str | None = Field(default=None, max_length=20)
    max_periods: int | None = None
    max_profiles: int | None = None
    composite_schedule: bool = True
    fail_safe: bool = False
    fail_reason: str | None = Field(default=None, max_length=200)
    read_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class VehicleObservation(SQLModel, table=True):
    """What the car on a transaction has actually drawn, from its meter values."""

    __tablename__ = "vehicle_observation"

    transaction_id: int = Field(primary_key=True)
    station_id: str = Field(max_length=48, index=True)
    connector_id: int
    # Phases seen carrying current (1 to 3), None until a per-phase current sample arrives.
    phases: int | None = None
    max_current_a: float | None = None
    max_power_w: float | None = None
    # Energy delivered so far (register now minus at start), for a plan's remaining need.
    delivered_wh: int | None = None
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class TagPriority(SQLModel, table=True):
    """Priority of an id tag (or every child of a parent tag) under the priority policy."""

    __tablename__ = "tag_priority"

    id_tag: str = Field(primary_key=True, max_length=20)
    priority: int = 0
    note: str | None = Field(default=None, max_length=200)


class AllocationState(SQLModel, table=True):
    """The limit last decided for a connector, and what the station did with it."""

    __tablename__ = "allocation_state"

    station_id: str = Field(primary_key=True, max_length=48)
    connector_id: int = Field(primary_key=True)
    transaction_id: int | None = None
    limit_a: float
    # accepted, rejected, offline, timeout, error, pending
    outcome: str = Field(max_length=20)
    verified: bool | None = None
    decided_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    applied_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class MeterReading(SQLModel, table=True):
    """The latest reading of a connector's car under the pilot its station had accepted: the
    give-back's memory across a restart (:mod:`load_manager.meters`). One row per connector,
    written only when the pilot or what the car draws changes."""

    __tablename__ = "meter_reading"

    station_id: str = Field(primary_key=True, max_length=48)
    connector_id: int = Field(primary_key=True)
    transaction_id: int
    # The pilot (A per phase) the reading was taken under.
    offered_a: float
    # The reading (meters.Reading): the busiest phase's current, or power.
    current_a: float | None = None
    power_w: float | None = None
    phase_power_w: float | None = None
    taken_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PlanStatus(StrEnum):
    active = "active"
    cancelled = "cancelled"
    finished = "finished"


class ChargePlan(SQLModel, table=True):
    """A driver's or operator's wish for one session: this much energy by that time."""

    __tablename__ = "charge_plan"
    __table_args__ = (Index("ix_charge_plan_transaction_status", "transaction_id", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    transaction_id: int
    station_id: str = Field(max_length=48)
    connector_id: int
    departure_at: datetime = Field(sa_type=UTCDateTime)
    energy_wh: int
    status: PlanStatus = Field(default=PlanStatus.active, sa_type=EnumText(PlanStatus))
    requested_by: str = Field(max_length=120)
    # The latest solution: slot start times and kW, for display and the profile pushed.
    schedule: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    expected_energy_wh: int | None = None
    expected_cost_sek: Decimal | None = Field(default=None, sa_column=Column(Numeric(12, 2)))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    planned_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class UsageOutcome(StrEnum):
    open = "open"
    completed = "completed"
    # Plugged in and never charged: refused card, a car or station that wouldn't start.
    failed_start = "failed_start"
    # The connector faulted during the session.
    faulted = "faulted"


class UsageSession(SQLModel, table=True):
    """One visit to a connector, from plug-in to unplug: what analytics count.

    Kept by the load manager from station events, so analytics read one row per visit
    instead of replaying status and meter history.
    """

    __tablename__ = "usage_session"
    __table_args__ = (Index("ix_usage_session_site_plugged", "site_id", "plugged_in_at"),)

    id: int | None = Field(default=None, primary_key=True)
    station_id: str = Field(max_length=48, index=True)
    connector_id: int
    site_id: str | None = Field(default=None, max_length=48)
    transaction_id: int | None = Field(default=None, unique=True)
    plugged_in_at: datetime = Field(sa_type=UTCDateTime)
    unplugged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Seconds the car actually drew power, and seconds it sat suspended by the car (full).
    charging_s: int = 0
    idle_s: int = 0
    energy_wh: int = 0
    outcome: UsageOutcome = Field(default=UsageOutcome.open, sa_type=EnumText(UsageOutcome))
