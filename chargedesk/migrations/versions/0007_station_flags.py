"""station flags drivers report, card blocks owed to stations' local lists

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 10:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import chargedesk.types

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('station_flag',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('connector_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('reports', sa.Integer(), nullable=False),
    sa.Column('reported_by', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('conversation_id', sa.Integer(), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_reported_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('resolved_by', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=True),
    sa.ForeignKeyConstraint(['station_id'], ['station.id'],
                            name='fk_station_flag_station_id_station'),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversation.id'],
                            name='fk_station_flag_conversation_id_conversation'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('station_flag', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_station_flag_station_id'), ['station_id'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_station_flag_status'), ['status'], unique=False)

    op.create_table('local_list_push',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('station_id', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('id_tag', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('requested_by', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
    sa.ForeignKeyConstraint(['station_id'], ['station.id'],
                            name='fk_local_list_push_station_id_station'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('local_list_push', schema=None) as batch_op:
        batch_op.create_index('ix_local_list_push_station_id_delivered_at',
                              ['station_id', 'delivered_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('local_list_push', schema=None) as batch_op:
        batch_op.drop_index('ix_local_list_push_station_id_delivered_at')

    op.drop_table('local_list_push')
    with op.batch_alter_table('station_flag', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_station_flag_status'))
        batch_op.drop_index(batch_op.f('ix_station_flag_station_id'))

    op.drop_table('station_flag')
