"""contacts: one person across channels (addresses, proven or not; conversations)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 12:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import chargedesk.types

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('contact',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('driver_id', sa.Integer(), nullable=True),
    sa.Column('merged_into_id', sa.Integer(), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['driver_id'], ['driver.id'], name='fk_contact_driver_id_driver'),
    sa.ForeignKeyConstraint(['merged_into_id'], ['contact.id'],
                            name='fk_contact_merged_into_id_contact'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('driver_id', name='uq_contact_driver_id')
    )

    op.create_table('contact_address',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('contact_id', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
    sa.Column('proven', sa.Boolean(), nullable=False),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contact.id'],
                            name='fk_contact_address_contact_id_contact'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('kind', 'address', 'proven', name='uq_contact_address_kind_address')
    )
    with op.batch_alter_table('contact_address', schema=None) as batch_op:
        batch_op.create_index('ix_contact_address_contact_id', ['contact_id'], unique=False)

    op.create_table('contact_conversation',
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('sender', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('contact_id', sa.Integer(), nullable=False),
    sa.Column('driver_id', sa.Integer(), nullable=True),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
    sa.Column('proven', sa.Boolean(), nullable=False),
    sa.Column('linked_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contact.id'],
                            name='fk_contact_conversation_contact_id_contact'),
    sa.ForeignKeyConstraint(['driver_id'], ['driver.id'],
                            name='fk_contact_conversation_driver_id_driver'),
    sa.PrimaryKeyConstraint('channel', 'sender')
    )
    with op.batch_alter_table('contact_conversation', schema=None) as batch_op:
        batch_op.create_index('ix_contact_conversation_contact_id', ['contact_id'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('contact_conversation', schema=None) as batch_op:
        batch_op.drop_index('ix_contact_conversation_contact_id')
    op.drop_table('contact_conversation')
    with op.batch_alter_table('contact_address', schema=None) as batch_op:
        batch_op.drop_index('ix_contact_address_contact_id')
    op.drop_table('contact_address')
    op.drop_table('contact')
