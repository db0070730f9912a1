"""Billing tables: tariff versions and their assignments."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from chargedesk.types import UTCDateTime, utcnow


class TariffVersion(SQLModel, table=True):
    """One version of an OCPI tariff, kept as the OCPI JSON it was imported as.

    Versions are never edited: a change is a new version, so a session can always be priced
    with the tariff that was in force when it started.
    """

    __tablename__ = "tariff_version"
    __table_args__ = (UniqueConstraint("tariff_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    tariff_id: str = Field(max_length=36, index=True)
    version: int
    currency: str = Field(max_length=3)
    # Text, not JSON: prices must round-trip as written (0.1 is no float).
    body: str = Field(sa_column=Column(Text, nullable=False))
    valid_from: datetime = Field(sa_type=UTCDateTime)
    created_by: str = Field(max_length=120)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class TariffAssignment(SQLModel, table=True):
    """Which tariff applies where, and to whom, from when.

    Scope: a connector (station and connector set), a station (connector empty) or the
    whole network (both empty). ``driver_group`` empty means everyone; a group's own
    assignment overrides the general one at the same scope.
    """

    __tablename__ = "tariff_assignment"

    id: int | None = Field(default=None, primary_key=True)
    tariff_id: str = Field(max_length=36, index=True)
    station_id: str | None = Field(default=None, foreign_key="station.id", max_length=48,
                                   index=True)
    connector_id: int | None = None
    driver_group: str | None = Field(default=None, max_length=40)
    valid_from: datetime = Field(sa_type=UTCDateTime)
    created_by: str = Field(max_length=120)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
