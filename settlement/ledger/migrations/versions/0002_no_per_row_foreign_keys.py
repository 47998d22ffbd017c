"""journal postings and settlement lines without per-row foreign keys

A settlement writes about ten lines and six postings. Each row's foreign key
check ran a lookup that also locked the parent row FOR KEY SHARE: the
shared system accounts became multixact hot spots, and the checks cost
about 0.65 ms of the server's 1.8 ms per settlement. These rows are written
only by the ledger, in the same statement as their parents; ``settlement
verify`` checks that every posting has its transaction and account and
every line its settlement (docs/ledger-notes.md).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 17:15:00
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DROPPED = [
    ("journal_postings", "fk_journal_postings_tx_id_journal_transactions",
     "journal_transactions", "tx_id"),
    ("journal_postings", "fk_journal_postings_account_id_accounts", "accounts", "account_id"),
    ("settlement_lines", "fk_settlement_lines_settlement_id_settlements", "settlements",
     "settlement_id"),
]


def upgrade() -> None:
    for table in ("journal_postings", "settlement_lines"):
        with op.batch_alter_table(table) as batch:
            for owner, name, _parent, _column in DROPPED:
                if owner == table:
                    batch.drop_constraint(name, type_="foreignkey")


def downgrade() -> None:
    for table in ("journal_postings", "settlement_lines"):
        with op.batch_alter_table(table) as batch:
            for owner, name, parent, column in DROPPED:
                if owner == table:
                    batch.create_foreign_key(name, parent, [column], ["id"])
