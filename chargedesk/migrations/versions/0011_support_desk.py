"""support desk: teams, agents and their sessions, tickets from escalations with their
conversations, escalations and timeline, SLA policies, canned responses, approvals, webhooks

Revision ID: 0011
Revises: 0009 (for now: 0010 is being written by another change; chain 0011 onto it when it
lands)
Create Date: 2026-12-02 10:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import chargedesk.types

revision: str = '0011'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('support_agent',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('email', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=True),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('password_hash', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('online', sa.Boolean(), nullable=False),
    sa.Column('last_seen_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('username')
    )
    op.create_table('support_team',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('categories', sa.JSON(), nullable=False),
    sa.Column('time_zone', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('business_hours', sa.JSON(), nullable=False),
    sa.Column('reassign_after_minutes', sa.Integer(), nullable=False),
    sa.Column('last_agent_id', sa.Integer(), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    op.create_table('support_webhook',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('url', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('secret', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('events', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('support_agent_session',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('agent_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['agent_id'], ['support_agent.id'],
                            name='fk_support_agent_session_agent_id_support_agent'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    with op.batch_alter_table('support_agent_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_support_agent_session_agent_id'), ['agent_id'], unique=False)

    op.create_table('support_canned_response',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('shortcut', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('language', sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False),
    sa.Column('title', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['support_team.id'],
                            name='fk_support_canned_response_team_id_support_team'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('shortcut', 'language')
    )
    op.create_table('support_sla_policy',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=True),
    sa.Column('priority', sa.String(length=20), nullable=True),
    sa.Column('first_response_minutes', sa.Integer(), nullable=False),
    sa.Column('next_response_minutes', sa.Integer(), nullable=False),
    sa.Column('resolution_minutes', sa.Integer(), nullable=False),
    sa.Column('warn_before_minutes', sa.Integer(), nullable=False),
    sa.Column('business_hours', sa.Boolean(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['support_team.id'],
                            name='fk_support_sla_policy_team_id_support_team'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('support_team_member',
    sa.Column('team_id', sa.Integer(), nullable=False),
    sa.Column('agent_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['agent_id'], ['support_agent.id'],
                            name='fk_support_team_member_agent_id_support_agent'),
    sa.ForeignKeyConstraint(['team_id'], ['support_team.id'],
                            name='fk_support_team_member_team_id_support_team'),
    sa.PrimaryKeyConstraint('team_id', 'agent_id')
    )
    op.create_table('support_webhook_delivery',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('webhook_id', sa.Integer(), nullable=False),
    sa.Column('event', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['webhook_id'], ['support_webhook.id'],
                            name='fk_support_webhook_delivery_webhook_id_support_webhook'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('support_webhook_delivery', schema=None) as batch_op:
        batch_op.create_index('ix_support_webhook_delivery_status_next', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_support_webhook_delivery_webhook_id'), ['webhook_id'], unique=False)

    op.create_table('support_ticket',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('conversation_id', sa.Integer(), nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('driver_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('priority', sa.String(length=20), nullable=False),
    sa.Column('category', sa.String(length=20), nullable=False),
    sa.Column('intent', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('language', sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=True),
    sa.Column('assignee_id', sa.Integer(), nullable=True),
    sa.Column('assigned_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('reassignments', sa.Integer(), nullable=False),
    sa.Column('sla_policy_id', sa.Integer(), nullable=True),
    sa.Column('first_response_due_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('next_response_due_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('resolution_due_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sla_state', sa.JSON(), nullable=False),
    sa.Column('escalated_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('supervisor_id', sa.Integer(), nullable=True),
    sa.Column('first_response_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_driver_message_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_agent_message_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('snoozed_until', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('resolved_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('resolved_by', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=True),
    sa.Column('merged_into_id', sa.Integer(), nullable=True),
    sa.Column('csat_state', sa.String(length=20), nullable=False),
    sa.Column('csat_asked_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('csat_score', sa.Integer(), nullable=True),
    sa.Column('csat_comment', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['assignee_id'], ['support_agent.id'],
                            name='fk_support_ticket_assignee_id_support_agent'),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversation.id'],
                            name='fk_support_ticket_conversation_id_conversation'),
    sa.ForeignKeyConstraint(['driver_id'], ['driver.id'],
                            name='fk_support_ticket_driver_id_driver'),
    sa.ForeignKeyConstraint(['merged_into_id'], ['support_ticket.id'],
                            name='fk_support_ticket_merged_into_id_support_ticket'),
    sa.ForeignKeyConstraint(['sla_policy_id'], ['support_sla_policy.id'],
                            name='fk_support_ticket_sla_policy_id_support_sla_policy'),
    sa.ForeignKeyConstraint(['supervisor_id'], ['support_agent.id'],
                            name='fk_support_ticket_supervisor_id_support_agent'),
    sa.ForeignKeyConstraint(['team_id'], ['support_team.id'],
                            name='fk_support_ticket_team_id_support_team'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('support_ticket', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_support_ticket_assignee_id'), ['assignee_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_support_ticket_conversation_id'), ['conversation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_support_ticket_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_support_ticket_driver_id'), ['driver_id'], unique=False)
        batch_op.create_index('ix_support_ticket_status_team_id', ['status', 'team_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_support_ticket_team_id'), ['team_id'], unique=False)

    op.create_table('support_approval',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('amount_ore', sa.BigInteger(), nullable=False),
    sa.Column('requested_by', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('decided_by', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=True),
    sa.Column('decided_at', chargedesk.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('result', sa.JSON(), nullable=False),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['support_ticket.id'],
                            name='fk_support_approval_ticket_id_support_ticket'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('support_approval', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_support_approval_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_support_approval_ticket_id'), ['ticket_id'], unique=False)

    op.create_table('support_ticket_conversation',
    sa.Column('conversation_id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('last_event_id', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversation.id'],
                            name='fk_support_ticket_conversation_conversation_id_conversation'),
    sa.ForeignKeyConstraint(['ticket_id'], ['support_ticket.id'],
                            name='fk_support_ticket_conversation_ticket_id_support_ticket'),
    sa.PrimaryKeyConstraint('conversation_id')
    )
    with op.batch_alter_table('support_ticket_conversation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_support_ticket_conversation_ticket_id'), ['ticket_id'], unique=False)

    op.create_table('support_ticket_escalation',
    sa.Column('escalation_id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['escalation_id'], ['escalation.id'],
                            name='fk_support_ticket_escalation_escalation_id_escalation'),
    sa.ForeignKeyConstraint(['ticket_id'], ['support_ticket.id'],
                            name='fk_support_ticket_escalation_ticket_id_support_ticket'),
    sa.PrimaryKeyConstraint('escalation_id')
    )
    with op.batch_alter_table('support_ticket_escalation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_support_ticket_escalation_ticket_id'), ['ticket_id'], unique=False)

    op.create_table('support_ticket_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('created_at', chargedesk.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['support_ticket.id'],
                            name='fk_support_ticket_event_ticket_id_support_ticket'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('support_ticket_event', schema=None) as batch_op:
        batch_op.create_index('ix_support_ticket_event_ticket_id_id', ['ticket_id', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('support_ticket_event', schema=None) as batch_op:
        batch_op.drop_index('ix_support_ticket_event_ticket_id_id')

    op.drop_table('support_ticket_event')
    with op.batch_alter_table('support_ticket_escalation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_support_ticket_escalation_ticket_id'))

    op.drop_table('support_ticket_escalation')
    with op.batch_alter_table('support_ticket_conversation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_support_ticket_conversation_ticket_id'))

    op.drop_table('support_ticket_conversation')
    with op.batch_alter_table('support_approval', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_support_approval_status'))
        batch_op.drop_index(batch_op.f('ix_support_approval_ticket_id'))

    op.drop_table('support_approval')
    with op.batch_alter_table('support_ticket', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_support_ticket_assignee_id'))
        batch_op.drop_index(batch_op.f('ix_support_ticket_conversation_id'))
        batch_op.drop_index(batch_op.f('ix_support_ticket_created_at'))
        batch_op.drop_index(batch_op.f('ix_support_ticket_driver_id'))
        batch_op.drop_index('ix_support_ticket_status_team_id')
        batch_op.drop_index(batch_op.f('ix_support_ticket_team_id'))

    op.drop_table('support_ticket')
    with op.batch_alter_table('support_webhook_delivery', schema=None) as batch_op:
        batch_op.drop_index('ix_support_webhook_delivery_status_next')
        batch_op.drop_index(batch_op.f('ix_support_webhook_delivery_webhook_id'))

    op.drop_table('support_webhook_delivery')
    op.drop_table('support_team_member')
    op.drop_table('support_sla_policy')
    op.drop_table('support_canned_response')
    with op.batch_alter_table('support_agent_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_support_agent_session_agent_id'))

    op.drop_table('support_agent_session')
    op.drop_table('support_webhook')
    op.drop_table('support_team')
    op.drop_table('support_agent')
