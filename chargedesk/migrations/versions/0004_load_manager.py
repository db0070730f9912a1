"""load manager

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 19:14:52.726168
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import chargedesk.types

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('allocation_state',
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('connector_id', sa.Integer(), nullable=False),
    sa.Column('transaction_id', sa.Integer(), nullable=True),
    sa.Column('limit_a', sa.Float(), nullable=False),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('verified', sa.Boolean(), nullable=True),
    sa.Column('decided_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('applied_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('station_id', 'connector_id')
    )
    op.create_table('charge_plan',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('transaction_id', sa.Integer(), nullable=False),
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('connector_id', sa.Integer(), nullable=False),
    sa.Column('departure_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('energy_wh', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('requested_by', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('schedule', sa.JSON(), nullable=True),
    sa.Column('expected_energy_wh', sa.Integer(), nullable=True),
    sa.Column('expected_cost_sek', sa.Numeric(precision=12, scale=2), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('planned_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('ended_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('charge_plan', schema=None) as batch_op:
        batch_op.create_index('ix_charge_plan_transaction_status', ['transaction_id', 'status'], unique=False)

    op.create_table('tag_priority',
    sa.Column('id_tag', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('note', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.PrimaryKeyConstraint('id_tag')
    )
    op.create_table('usage_session',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('connector_id', sa.Integer(), nullable=False),
    sa.Column('site_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=True),
    sa.Column('transaction_id', sa.Integer(), nullable=True),
    sa.Column('plugged_in_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('unplugged_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('charging_s', sa.Integer(), nullable=False),
    sa.Column('idle_s', sa.Integer(), nullable=False),
    sa.Column('energy_wh', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=20), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('transaction_id')
    )
    with op.batch_alter_table('usage_session', schema=None) as batch_op:
        batch_op.create_index('ix_usage_session_site_plugged', ['site_id', 'plugged_in_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_usage_session_station_id'), ['station_id'], unique=False)

    op.create_table('vehicle_observation',
    sa.Column('transaction_id', sa.Integer(), nullable=False),
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('connector_id', sa.Integer(), nullable=False),
    sa.Column('phases', sa.Integer(), nullable=True),
    sa.Column('max_current_a', sa.Float(), nullable=True),
    sa.Column('max_power_w', sa.Float(), nullable=True),
    sa.Column('delivered_wh', sa.Integer(), nullable=True),
    sa.Column('updated_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('transaction_id')
    )
    with op.batch_alter_table('vehicle_observation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vehicle_observation_station_id'), ['station_id'], unique=False)

    op.create_table('load_forecast',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('site_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('starts_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('l1_a', sa.Float(), nullable=False),
    sa.Column('l2_a', sa.Float(), nullable=False),
    sa.Column('l3_a', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['site_id'], ['site.id'], name='fk_load_forecast_site_id_site'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('site_id', 'starts_at')
    )
    with op.batch_alter_table('load_forecast', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_load_forecast_site_id'), ['site_id'], unique=False)

    op.create_table('site_grid',
    sa.Column('site_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('phase_limit_a', sa.Float(), nullable=True),
    sa.Column('power_limit_kw', sa.Float(), nullable=True),
    sa.Column('voltage_v', sa.Float(), nullable=False),
    sa.Column('policy', sa.String(length=20), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('updated_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['site_id'], ['site.id'], name='fk_site_grid_site_id_site'),
    sa.PrimaryKeyConstraint('site_id')
    )
    op.create_table('connector_wiring',
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('connector_id', sa.Integer(), nullable=False),
    sa.Column('phases', sa.Integer(), nullable=False),
    sa.Column('rotation', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('max_current_a', sa.Float(), nullable=False),
    sa.Column('min_current_a', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['station_id'], ['station.id'], name='fk_connector_wiring_station_id_station'),
    sa.PrimaryKeyConstraint('station_id', 'connector_id')
    )
    op.create_table('station_capability',
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('smart_charging', sa.Boolean(), nullable=False),
    sa.Column('max_stack_level', sa.Integer(), nullable=True),
    sa.Column('rate_units', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('max_periods', sa.Integer(), nullable=True),
    sa.Column('max_profiles', sa.Integer(), nullable=True),
    sa.Column('composite_schedule', sa.Boolean(), nullable=False),
    sa.Column('fail_safe', sa.Boolean(), nullable=False),
    sa.Column('fail_reason', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('read_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['station_id'], ['station.id'], name='fk_station_capability_station_id_station'),
    sa.PrimaryKeyConstraint('station_id')
    )


def downgrade() -> None:
    op.drop_table('station_capability')
    op.drop_table('connector_wiring')
    op.drop_table('site_grid')
    with op.batch_alter_table('load_forecast', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_load_forecast_site_id'))

    op.drop_table('load_forecast')
    with op.batch_alter_table('vehicle_observation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vehicle_observation_station_id'))

    op.drop_table('vehicle_observation')
    with op.batch_alter_table('usage_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_usage_session_station_id'))
        batch_op.drop_index('ix_usage_session_site_plugged')

    op.drop_table('usage_session')
    op.drop_table('tag_priority')
    with op.batch_alter_table('charge_plan', schema=None) as batch_op:
        batch_op.drop_index('ix_charge_plan_transaction_status')

    op.drop_table('charge_plan')
    op.drop_table('allocation_state')
