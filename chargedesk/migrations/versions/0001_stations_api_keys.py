"""stations, api keys

Revision ID: 0001
Revises: 
Create Date: 2026-11-24 14:52:39.002570
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import chargedesk.types

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_key',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('prefix', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('key_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_hash')
    )
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_key_prefix'), ['prefix'], unique=False)

    op.create_table('command_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=True),
    sa.Column('requested_by', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('outcome', sa.String(length=20), nullable=False),
    sa.Column('response', sa.JSON(), nullable=True),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
    sa.Column('requested_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('command_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_command_log_requested_at'), ['requested_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_command_log_station_id'), ['station_id'], unique=False)

    op.create_table('id_tag',
    sa.Column('id_tag', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('expiry_date', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('parent_id_tag', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('note', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id_tag')
    )
    op.create_table('station',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('registration', sa.String(length=20), nullable=False),
    sa.Column('password_hash', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('vendor', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('serial_number', sqlmodel.sql.sqltypes.AutoString(length=25), nullable=True),
    sa.Column('charge_box_serial_number', sqlmodel.sql.sqltypes.AutoString(length=25), nullable=True),
    sa.Column('firmware_version', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=True),
    sa.Column('iccid', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('imsi', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('meter_type', sqlmodel.sql.sqltypes.AutoString(length=25), nullable=True),
    sa.Column('meter_serial_number', sqlmodel.sql.sqltypes.AutoString(length=25), nullable=True),
    sa.Column('online', sa.Boolean(), nullable=False),
    sa.Column('last_boot_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_heartbeat_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_seen_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('diagnostics_status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('firmware_status', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('unknown_stop',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('transaction_id', sa.Integer(), nullable=False),
    sa.Column('id_tag', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('meter_stop_wh', sa.Integer(), nullable=False),
    sa.Column('timestamp', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=True),
    sa.Column('received_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('unknown_stop', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_unknown_stop_station_id'), ['station_id'], unique=False)

    op.create_table('connector',
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('connector_id', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('error_code', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('info', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=True),
    sa.Column('vendor_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('vendor_error_code', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=True),
    sa.Column('status_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['station_id'], ['station.id'], ),
    sa.PrimaryKeyConstraint('station_id', 'connector_id')
    )
    op.create_table('meter_sample',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('connector_id', sa.Integer(), nullable=False),
    sa.Column('transaction_id', sa.Integer(), nullable=True),
    sa.Column('timestamp', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('measurand', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
    sa.Column('phase', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('location', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('context', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('unit', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('value', sa.Numeric(precision=20, scale=6), nullable=True),
    sa.Column('raw_value', sqlmodel.sql.sqltypes.AutoString(length=2500), nullable=False),
    sa.Column('format', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.ForeignKeyConstraint(['station_id'], ['station.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('station_id', 'connector_id', 'timestamp', 'measurand', 'phase', 'location', 'context')
    )
    with op.batch_alter_table('meter_sample', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_meter_sample_timestamp'), ['timestamp'], unique=False)
        batch_op.create_index(batch_op.f('ix_meter_sample_transaction_id'), ['transaction_id'], unique=False)

    op.create_table('status_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('connector_id', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('error_code', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('info', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=True),
    sa.Column('vendor_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('vendor_error_code', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=True),
    sa.Column('timestamp', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('received_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['station_id'], ['station.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('station_id', 'connector_id', 'timestamp', 'status', 'error_code')
    )
    with op.batch_alter_table('status_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_status_event_station_id'), ['station_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_status_event_timestamp'), ['timestamp'], unique=False)

    op.create_table('transaction',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('connector_id', sa.Integer(), nullable=False),
    sa.Column('id_tag', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('id_tag_status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('reservation_id', sa.Integer(), nullable=True),
    sa.Column('meter_start_wh', sa.Integer(), nullable=False),
    sa.Column('start_timestamp', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('meter_stop_wh', sa.Integer(), nullable=True),
    sa.Column('stop_timestamp', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('stop_reason', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('stop_id_tag', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['station_id'], ['station.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('station_id', 'connector_id', 'id_tag', 'start_timestamp')
    )
    with op.batch_alter_table('transaction', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_transaction_id_tag'), ['id_tag'], unique=False)
        batch_op.create_index(batch_op.f('ix_transaction_station_id'), ['station_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('transaction', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_transaction_station_id'))
        batch_op.drop_index(batch_op.f('ix_transaction_id_tag'))

    op.drop_table('transaction')
    with op.batch_alter_table('status_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_status_event_timestamp'))
        batch_op.drop_index(batch_op.f('ix_status_event_station_id'))

    op.drop_table('status_event')
    with op.batch_alter_table('meter_sample', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_meter_sample_transaction_id'))
        batch_op.drop_index(batch_op.f('ix_meter_sample_timestamp'))

    op.drop_table('meter_sample')
    op.drop_table('connector')
    with op.batch_alter_table('unknown_stop', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_unknown_stop_station_id'))

    op.drop_table('unknown_stop')
    op.drop_table('station')
    op.drop_table('id_tag')
    with op.batch_alter_table('command_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_command_log_station_id'))
        batch_op.drop_index(batch_op.f('ix_command_log_requested_at'))

    op.drop_table('command_log')
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_key_prefix'))

    op.drop_table('api_key')
