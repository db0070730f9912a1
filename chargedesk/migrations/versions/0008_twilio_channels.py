"""Twilio channels: SMS message log (idempotency and delivery queue), opt-outs, phone calls

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 09:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import chargedesk.types

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sms_message',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('direction', sa.String(length=10), nullable=False),
    sa.Column('message_sid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('phone', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('our_number', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('keyword', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True),
    sa.Column('twilio_answered', sa.Boolean(), nullable=False),
    sa.Column('reply_to_id', sa.Integer(), nullable=True),
    sa.Column('part', sa.Integer(), nullable=False),
    sa.Column('parts', sa.Integer(), nullable=False),
    sa.Column('encoding', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True),
    sa.Column('segments', sa.Integer(), nullable=True),
    sa.Column('options', sa.JSON(), nullable=True),
    sa.Column('media_urls', sa.JSON(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('error_message', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('escalation_id', sa.Integer(), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['escalation_id'], ['escalation.id'], ),
    sa.ForeignKeyConstraint(['reply_to_id'], ['sms_message.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_sid', name='uq_sms_message_message_sid')
    )
    with op.batch_alter_table('sms_message', schema=None) as batch_op:
        batch_op.create_index('ix_sms_message_phone_id', ['phone', 'id'], unique=False)
        batch_op.create_index('ix_sms_message_status_next_attempt_at', ['status', 'next_attempt_at'], unique=False)

    op.create_table('sms_opt_out',
    sa.Column('phone', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('opted_out', sa.Boolean(), nullable=False),
    sa.Column('keyword', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('changed_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('phone')
    )

    op.create_table('voice_call',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('call_sid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('caller', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('driver_id', sa.Integer(), nullable=True),
    sa.Column('caller_verified', sa.Boolean(), nullable=False),
    sa.Column('language', sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False),
    sa.Column('options', sa.JSON(), nullable=True),
    sa.Column('turns', sa.Integer(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('recording_sid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('recording_url', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('recording_duration_s', sa.Integer(), nullable=True),
    sa.Column('escalation_id', sa.Integer(), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['driver_id'], ['driver.id'], ),
    sa.ForeignKeyConstraint(['escalation_id'], ['escalation.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('call_sid', name='uq_voice_call_call_sid'),
    sa.UniqueConstraint('recording_sid', name='uq_voice_call_recording_sid')
    )


def downgrade() -> None:
    op.drop_table('voice_call')
    op.drop_table('sms_opt_out')
    with op.batch_alter_table('sms_message', schema=None) as batch_op:
        batch_op.drop_index('ix_sms_message_status_next_attempt_at')
        batch_op.drop_index('ix_sms_message_phone_id')

    op.drop_table('sms_message')
