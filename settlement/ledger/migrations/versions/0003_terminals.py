"""terminals: per-terminal API tokens (stored hashed), store and role

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 17:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "terminals",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("secret_sha256", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("revoked_us", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("role IN ('pos', 'risk', 'admin')", name=op.f("ck_terminals_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_terminals")),
    )


def downgrade() -> None:
    op.drop_table("terminals")
