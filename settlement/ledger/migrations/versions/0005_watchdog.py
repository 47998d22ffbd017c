"""watchdog: alerts, their hits, the review audit trail, the notification outbox

Also two indexes the watchdog's look-back reads use: settlements per
terminal and time, points lots per member and creation time.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 19:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_index("ix_settlements_store_terminal_at_us", "settlements",
                    ["store", "terminal", "at_us"])
    op.create_index("ix_points_lots_member_id_created_us", "points_lots",
                    ["member_id", "created_us"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("rule_version", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("member_id", sa.Text(), nullable=True),
        sa.Column("card_no", sa.Text(), nullable=True),
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("terminal", sa.Text(), nullable=True),
        sa.Column("settlement_id", sa.Text(), nullable=True),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), server_default="open", nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("assignee", sa.Text(), nullable=True),
        sa.Column("hits", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("last_hit_us", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("state IN ('open', 'acknowledged', 'resolved')",
                           name=op.f("ck_alerts_state")),
        sa.CheckConstraint("severity IN ('low', 'medium', 'high', 'critical')",
                           name=op.f("ck_alerts_severity")),
        sa.CheckConstraint("outcome IS NULL OR outcome IN "
                           "('confirmed_fraud', 'false_positive', 'valuable')",
                           name=op.f("ck_alerts_outcome")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index("uq_alerts_open", "alerts", ["rule", "subject"], unique=True,
                    postgresql_where=sa.text("state <> 'resolved'"),
                    sqlite_where=sa.text("state <> 'resolved'"))
    for cols in (["state", "created_us"], ["member_id", "created_us"],
                 ["store", "created_us"]):
        op.create_index(f"ix_alerts_{'_'.join(cols)}", "alerts", cols)
    op.create_table(
        "alert_hits",
        sa.Column("alert_id", sa.Text(), nullable=False),
        sa.Column("ref", sa.Text(), nullable=False),
        sa.Column("operation", sa.Text(), nullable=False),
        sa.Column("operation_id", sa.Text(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("rule_version", sa.Text(), nullable=False),
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("terminal", sa.Text(), nullable=True),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("alert_id", "ref", name=op.f("pk_alert_hits")),
    )
    op.create_table(
        "alert_events",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("alert_id", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_events")),
    )
    op.create_index("ix_alert_events_alert_id", "alert_events", ["alert_id"])
    op.create_table(
        "alert_outbox",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("alert_id", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("delivered_us", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_outbox")),
    )
    op.create_index("ix_alert_outbox_pending", "alert_outbox", ["id"],
                    postgresql_where=sa.text("delivered_us IS NULL"),
                    sqlite_where=sa.text("delivered_us IS NULL"))


def downgrade() -> None:
    op.drop_table("alert_outbox")
    op.drop_table("alert_events")
    op.drop_table("alert_hits")
    op.drop_table("alerts")
    op.drop_index("ix_points_lots_member_id_created_us", table_name="points_lots")
    op.drop_index("ix_settlements_store_terminal_at_us", table_name="settlements")
