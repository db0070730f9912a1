"""e-mail channel: threads, Message-IDs, inbound and outbound messages, attachments

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 10:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import chargedesk.types

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('email_thread',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
    sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('driver_id', sa.Integer(), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['driver_id'], ['driver.id'], name='fk_email_thread_driver_id_driver'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token', name='uq_email_thread_token')
    )
    with op.batch_alter_table('email_thread', schema=None) as batch_op:
        batch_op.create_index('ix_email_thread_address', ['address'], unique=False)
        batch_op.create_index('ix_email_thread_driver_id', ['driver_id'], unique=False)

    op.create_table('email_thread_message',
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=250), nullable=False),
    sa.Column('thread_id', sa.Integer(), nullable=False),
    sa.Column('ours', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['thread_id'], ['email_thread.id'], name='fk_email_thread_message_thread_id_email_thread'),
    sa.PrimaryKeyConstraint('message_id')
    )
    with op.batch_alter_table('email_thread_message', schema=None) as batch_op:
        batch_op.create_index('ix_email_thread_message_thread_id', ['thread_id'], unique=False)

    op.create_table('email_inbound',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('thread_id', sa.Integer(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=250), nullable=True),
    sa.Column('in_reply_to', sqlmodel.sql.sqltypes.AutoString(length=250), nullable=True),
    sa.Column('reference_ids', sa.Text(), nullable=False),
    sa.Column('envelope_from', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
    sa.Column('recipients', sa.JSON(), nullable=False),
    sa.Column('from_address', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
    sa.Column('from_name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('raw_path', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('raw_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('raw_size', sa.Integer(), nullable=False),
    sa.Column('driver_id', sa.Integer(), nullable=True),
    sa.Column('verified', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('received_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('claimed_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('processed_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['driver_id'], ['driver.id'], name='fk_email_inbound_driver_id_driver'),
    sa.ForeignKeyConstraint(['thread_id'], ['email_thread.id'], name='fk_email_inbound_thread_id_email_thread'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('email_inbound', schema=None) as batch_op:
        batch_op.create_index('ix_email_inbound_thread_id', ['thread_id'], unique=False)
        batch_op.create_index('ix_email_inbound_driver_id', ['driver_id'], unique=False)
        batch_op.create_index('ix_email_inbound_message_id', ['message_id'], unique=False)
        batch_op.create_index('ix_email_inbound_status_claimed_at', ['status', 'claimed_at'], unique=False)

    op.create_table('email_attachment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('inbound_id', sa.Integer(), nullable=False),
    sa.Column('thread_id', sa.Integer(), nullable=False),
    sa.Column('filename', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('content_type', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('declared_type', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('path', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
    sa.Column('refused', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['inbound_id'], ['email_inbound.id'], name='fk_email_attachment_inbound_id_email_inbound'),
    sa.ForeignKeyConstraint(['thread_id'], ['email_thread.id'], name='fk_email_attachment_thread_id_email_thread'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('email_attachment', schema=None) as batch_op:
        batch_op.create_index('ix_email_attachment_inbound_id', ['inbound_id'], unique=False)
        batch_op.create_index('ix_email_attachment_thread_id', ['thread_id'], unique=False)
        batch_op.create_index('ix_email_attachment_sha256', ['sha256'], unique=False)

    op.create_table('email_outbound',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('thread_id', sa.Integer(), nullable=False),
    sa.Column('inbound_id', sa.Integer(), nullable=True),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=250), nullable=False),
    sa.Column('in_reply_to', sqlmodel.sql.sqltypes.AutoString(length=250), nullable=True),
    sa.Column('reference_ids', sa.Text(), nullable=False),
    sa.Column('to_address', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
    sa.Column('to_header', sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False),
    sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('language', sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('html', sa.Text(), nullable=False),
    sa.Column('buttons', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('claimed_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['inbound_id'], ['email_inbound.id'], name='fk_email_outbound_inbound_id_email_inbound'),
    sa.ForeignKeyConstraint(['thread_id'], ['email_thread.id'], name='fk_email_outbound_thread_id_email_thread'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id', name='uq_email_outbound_message_id')
    )
    with op.batch_alter_table('email_outbound', schema=None) as batch_op:
        batch_op.create_index('ix_email_outbound_thread_id', ['thread_id'], unique=False)
        batch_op.create_index('ix_email_outbound_status_next_attempt_at', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_email_outbound_to_address_created_at', ['to_address', 'created_at'], unique=False)


    # Senders are matched to drivers by lower(email), for every message: an index on that
    # expression (PostgreSQL and SQLite) rather than a scan of the driver table.
    op.create_index('ix_driver_lower_email', 'driver', [sa.text('lower(email)')], unique=False)


def downgrade() -> None:
    op.drop_index('ix_driver_lower_email', table_name='driver')
    op.drop_table('email_outbound')
    op.drop_table('email_attachment')
    op.drop_table('email_inbound')
    op.drop_table('email_thread_message')
    op.drop_table('email_thread')
