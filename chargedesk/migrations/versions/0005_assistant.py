"""assistant

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 20:46:01.303557
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import chargedesk.types

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('conversation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('sender', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('language', sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False),
    sa.Column('driver_id', sa.Integer(), nullable=True),
    sa.Column('verified', sa.Boolean(), nullable=False),
    sa.Column('slots', sa.JSON(), nullable=False),
    sa.Column('state', sa.JSON(), nullable=False),
    sa.Column('active_loop', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('latest_intent', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('latest_action', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('session_number', sa.Integer(), nullable=False),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['driver_id'], ['driver.id'], name='fk_conversation_driver_id_driver'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('channel', 'sender')
    )
    with op.batch_alter_table('conversation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_conversation_driver_id'), ['driver_id'], unique=False)

    op.create_table('conversation_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('conversation_id', sa.Integer(), nullable=False),
    sa.Column('session_number', sa.Integer(), nullable=False),
    sa.Column('type', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('timestamp', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversation.id'], name='fk_conversation_event_conversation_id_conversation'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('conversation_event', schema=None) as batch_op:
        batch_op.create_index('ix_conversation_event_conversation_id_id', ['conversation_id', 'id'], unique=False)

    op.create_table('escalation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('conversation_id', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=20), nullable=False),
    sa.Column('intent', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('slots', sa.JSON(), nullable=False),
    sa.Column('transcript', sa.JSON(), nullable=False),
    sa.Column('driver_context', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversation.id'], name='fk_escalation_conversation_id_conversation'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('escalation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_escalation_conversation_id'), ['conversation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_escalation_status'), ['status'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('escalation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_escalation_status'))
        batch_op.drop_index(batch_op.f('ix_escalation_conversation_id'))

    op.drop_table('escalation')
    with op.batch_alter_table('conversation_event', schema=None) as batch_op:
        batch_op.drop_index('ix_conversation_event_conversation_id_id')

    op.drop_table('conversation_event')
    with op.batch_alter_table('conversation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_conversation_driver_id'))

    op.drop_table('conversation')
