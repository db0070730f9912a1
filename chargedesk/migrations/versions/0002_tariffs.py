"""tariffs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 16:13:28.130071
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import chargedesk.types

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('tariff_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tariff_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('valid_from', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tariff_id', 'version')
    )
    with op.batch_alter_table('tariff_version', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tariff_version_tariff_id'), ['tariff_id'], unique=False)

    op.create_table('tariff_assignment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tariff_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=True),
    sa.Column('connector_id', sa.Integer(), nullable=True),
    sa.Column('driver_group', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('valid_from', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['station_id'], ['station.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('tariff_assignment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tariff_assignment_station_id'), ['station_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_tariff_assignment_tariff_id'), ['tariff_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('tariff_assignment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tariff_assignment_tariff_id'))
        batch_op.drop_index(batch_op.f('ix_tariff_assignment_station_id'))

    op.drop_table('tariff_assignment')
    with op.batch_alter_table('tariff_version', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tariff_version_tariff_id'))

    op.drop_table('tariff_version')
