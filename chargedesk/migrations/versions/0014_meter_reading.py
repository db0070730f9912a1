"""meter_reading: the latest reading of each connector's car under its pilot (give-back after
a restart)

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-25 04:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import chargedesk.types

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('meter_reading',
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('connector_id', sa.Integer(), nullable=False),
    sa.Column('transaction_id', sa.Integer(), nullable=False),
    sa.Column('offered_a', sa.Float(), nullable=False),
    sa.Column('current_a', sa.Float(), nullable=True),
    sa.Column('power_w', sa.Float(), nullable=True),
    sa.Column('phase_power_w', sa.Float(), nullable=True),
    sa.Column('taken_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('station_id', 'connector_id')
    )


def downgrade() -> None:
    op.drop_table('meter_reading')
