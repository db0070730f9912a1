"""notifications: drivers' preferences, the outbox (deduplicated per driver, kind and
subject), and the cursors of the billing scan

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 09:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import chargedesk.types

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('notification_preference',
    sa.Column('driver_id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=10), nullable=False),
    sa.Column('language', sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False),
    sa.Column('quiet_start', sa.Time(), nullable=True),
    sa.Column('quiet_end', sa.Time(), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('muted', sa.JSON(), nullable=False),
    sa.Column('updated_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['driver_id'], ['driver.id'], ),
    sa.PrimaryKeyConstraint('driver_id')
    )

    op.create_table('notification_outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('driver_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('next_attempt_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=True),
    sa.Column('language', sqlmodel.sql.sqltypes.AutoString(length=2), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('note', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['driver_id'], ['driver.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('driver_id', 'kind', 'subject', name='uq_notification_outbox_dedupe')
    )
    with op.batch_alter_table('notification_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_notification_outbox_status_next_attempt_at',
                              ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_notification_outbox_driver_id_id', ['driver_id', 'id'],
                              unique=False)

    op.create_table('notification_cursor',
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('last_id', sa.Integer(), nullable=False),
    sa.Column('updated_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('source')
    )


def downgrade() -> None:
    op.drop_table('notification_cursor')
    with op.batch_alter_table('notification_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_notification_outbox_driver_id_id')
        batch_op.drop_index('ix_notification_outbox_status_next_attempt_at')
    op.drop_table('notification_outbox')
    op.drop_table('notification_preference')
