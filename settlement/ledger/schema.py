"""The ledger's tables (SQLAlchemy Core). Alembic migrations create them; this
module is what the code reads and writes, and a test checks both agree.

Conventions: money in integer cents, points and uses in integers, instants
as integer microseconds since the Unix epoch (``*_us``, the engine's unit;
exact and identical on SQLite and PostgreSQL).

Double entry: every change is a ``journal_transactions`` row with signed
``journal_postings`` (per asset, a transaction's postings sum to zero).
A member account's ``balance`` caches the sum of its postings, updated in
the same transaction, and a CHECK keeps it at or above zero: the last line
of defence against an overdraft. System accounts (the other side of every
movement) keep ``balance`` NULL: their balance is the sum of their postings,
derived when needed, so no settlement ever waits on a shared hot row.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)

#: The owner of system accounts (the other side of every member movement).
SYSTEM = "$system"

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

# Surrogate keys: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")

members = Table(
    "members", metadata,
    Column("id", Text, primary_key=True),
    Column("phone", Text, unique=True),
    Column("tier", Text, nullable=False),
    Column("card_type", Text, nullable=False),
    Column("paid_from_us", BigInteger),
    Column("paid_until_us", BigInteger),
    Column("birthday", Text),
    Column("referrer_id", Text, ForeignKey("members.id")),
    Column("cumulative_spend_cents", BigInteger, nullable=False, server_default="0"),
    Column("points_debt", BigInteger, nullable=False, server_default="0"),
    Column("created_us", BigInteger, nullable=False),
    CheckConstraint("card_type IN ('free', 'paid', 'tiered', 'internal')", name="card_type"),
    CheckConstraint("cumulative_spend_cents >= 0", name="spend_not_negative"),
    CheckConstraint("points_debt >= 0", name="debt_not_negative"),
)

cards = Table(
    "cards", metadata,
    Column("card_no", Text, primary_key=True),
    Column("member_id", Text, ForeignKey("members.id"), nullable=False, index=True),
    Column("status", Text, nullable=False, server_default="active"),
    Column("replaced_by", Text),
    Column("issued_us", BigInteger, nullable=False),
    Column("status_us", BigInteger, nullable=False),
    CheckConstraint("status IN ('active', 'lost', 'replaced')", name="status"),
)

accounts = Table(
    "accounts", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("owner", Text, nullable=False),  # a member id, or SYSTEM
    Column("asset", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("ref", Text, nullable=False, server_default=""),
    Column("balance", BigInteger),  # members: cached sum of postings; system: NULL
    UniqueConstraint("owner", "kind", "ref"),
    CheckConstraint("asset IN ('points', 'cents', 'uses')", name="asset"),
    CheckConstraint(f"(owner = '{SYSTEM}' AND balance IS NULL) OR "
                    f"(owner <> '{SYSTEM}' AND balance IS NOT NULL AND balance >= 0)",
                    name="balance_rule"),
)

journal_transactions = Table(
    "journal_transactions", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", Text, nullable=False),
    Column("ref", Text, nullable=False),
    Column("store", Text),
    Column("created_us", BigInteger, nullable=False),
    Index(None, "kind", "ref"),
)

journal_postings = Table(
    "journal_postings", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # No foreign keys on these two (migration 0002: their per-row checks cost a third of
    # a settlement's server time); ``verify`` checks both references.
    Column("tx_id", Id, nullable=False, index=True),
    Column("account_id", Id, nullable=False, index=True),
    Column("asset", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    CheckConstraint("amount <> 0", name="amount_not_zero"),
)

points_lots = Table(
    "points_lots", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("member_id", Text, ForeignKey("members.id"), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("expires_us", BigInteger),
    Column("tx_id", Id, ForeignKey("journal_transactions.id"), nullable=False),
    Column("created_us", BigInteger, nullable=False),
    # A member's unspent lots in spend order (earliest expiry first): settle reads only the
    # first few, however many lots a long-standing member has (migration 0004).
    Index("ix_points_lots_unspent", "member_id", "expires_us", "id",
          postgresql_where=text("remaining > 0"), sqlite_where=text("remaining > 0")),
    Index(None, "expires_us"),  # the expiry job
    Index(None, "tx_id"),  # recharge reversal finds the bonus lot
    Index(None, "member_id", "created_us"),  # the watchdog's "large accrual" (0005)
    CheckConstraint("remaining >= 0 AND remaining <= points", name="remaining_in_range"),
)

coupons = Table(
    "coupons", metadata,
    Column("id", Text, primary_key=True),
    Column("member_id", Text, ForeignKey("members.id"), nullable=False),
    Column("template", Text, nullable=False),
    Column("valid_from_us", BigInteger),
    Column("valid_until_us", BigInteger),
    Column("state", Text, nullable=False, server_default="available"),
    Column("settlement_id", Text),
    Column("source", Text, nullable=False),
    Column("issued_us", BigInteger, nullable=False),
    Index(None, "member_id", "state"),
    Index(None, "settlement_id"),  # coupons coming back on a full refund
    Index(None, "source"),  # a recharge's bonus coupons
    CheckConstraint("state IN ('available', 'redeemed', 'void')", name="state"),
)

count_cards = Table(
    "count_cards", metadata,
    Column("id", Text, primary_key=True),
    Column("member_id", Text, ForeignKey("members.id"), nullable=False, index=True),
    Column("skus", Text, nullable=False),  # JSON array of SKU codes
    Column("valid_until_us", BigInteger),
    Column("issued_us", BigInteger, nullable=False),
)

settlements = Table(
    "settlements", metadata,
    Column("id", Text, primary_key=True),
    Column("store", Text, nullable=False),
    Column("terminal", Text),
    Column("member_id", Text, ForeignKey("members.id")),
    Column("at_us", BigInteger, nullable=False),
    Column("rulebook_version", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="settled"),
    Column("gross_cents", BigInteger, nullable=False),
    Column("count_card_cents", BigInteger, nullable=False),
    Column("item_discount_cents", BigInteger, nullable=False),
    Column("coupon_discount_cents", BigInteger, nullable=False),
    Column("points_offset_cents", BigInteger, nullable=False),
    Column("rounding_cents", BigInteger, nullable=False),
    Column("payable_cents", BigInteger, nullable=False),
    Column("stored_value_cents", BigInteger, nullable=False),
    Column("sv_bonus_cents", BigInteger, nullable=False),
    Column("due_cents", BigInteger, nullable=False),
    Column("points_redeemed", BigInteger, nullable=False),
    Column("points_earned", BigInteger, nullable=False),
    Column("receipt", Text, nullable=False),  # the engine's receipt, JSON
    Column("tx_id", Id, ForeignKey("journal_transactions.id"), nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Index(None, "member_id", "at_us"),
    Index(None, "member_id", "created_us"),  # spending since a recharge
    Index(None, "store", "at_us"),
    Index(None, "store", "terminal", "at_us"),  # the watchdog's per-terminal burst (0005)
    CheckConstraint("status IN ('settled', 'voided')", name="status"),
)

settlement_lines = Table(
    "settlement_lines", metadata,
    # No foreign key (migration 0002); ``verify`` checks that the settlement exists.
    Column("settlement_id", Text, nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("sku", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("unit_price_cents", BigInteger, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("count_card_id", Text),
    Column("gross_cents", BigInteger, nullable=False),
    Column("count_card_cents", BigInteger, nullable=False),
    Column("item_discount_cents", BigInteger, nullable=False),
    Column("item_discount_source", Text, nullable=False),
    Column("coupon_discount_cents", BigInteger, nullable=False),
    Column("points_offset_cents", BigInteger, nullable=False),
    Column("rounding_cents", BigInteger, nullable=False),
    Column("net_cents", BigInteger, nullable=False),
    # the settlement-level tender and points, allocated to the line
    Column("sv_principal_cents", BigInteger, nullable=False),
    Column("sv_bonus_cents", BigInteger, nullable=False),
    Column("points_redeemed", BigInteger, nullable=False),
    Column("points_earned", BigInteger, nullable=False),
    Column("refunded_quantity", Integer, nullable=False, server_default="0"),
    PrimaryKeyConstraint("settlement_id", "line_no"),
    CheckConstraint("refunded_quantity >= 0 AND refunded_quantity <= quantity",
                    name="refunded_in_range"),
)

refunds = Table(
    "refunds", metadata,
    Column("id", Text, primary_key=True),
    Column("settlement_id", Text, ForeignKey("settlements.id"), nullable=False, index=True),
    Column("store", Text, nullable=False),
    Column("net_cents", BigInteger, nullable=False),
    Column("stored_value_cents", BigInteger, nullable=False),
    Column("cash_cents", BigInteger, nullable=False),
    Column("points_returned", BigInteger, nullable=False),
    Column("points_taken_back", BigInteger, nullable=False),
    Column("tx_id", Id, ForeignKey("journal_transactions.id"), nullable=False),
    Column("created_us", BigInteger, nullable=False),
)

refund_lines = Table(
    "refund_lines", metadata,
    Column("refund_id", Text, ForeignKey("refunds.id"), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("net_cents", BigInteger, nullable=False),
    Column("coupon_discount_cents", BigInteger, nullable=False),
    Column("points_offset_cents", BigInteger, nullable=False),
    Column("sv_principal_cents", BigInteger, nullable=False),
    Column("sv_bonus_cents", BigInteger, nullable=False),
    Column("points_returned", BigInteger, nullable=False),
    Column("points_taken_back", BigInteger, nullable=False),
    PrimaryKeyConstraint("refund_id", "line_no"),
)

recharges = Table(
    "recharges", metadata,
    Column("id", Text, primary_key=True),
    Column("member_id", Text, ForeignKey("members.id"), nullable=False, index=True),
    Column("store", Text, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("bonus_cents", BigInteger, nullable=False),
    Column("bonus_points", BigInteger, nullable=False),
    Column("rule_min_cents", BigInteger),
    Column("status", Text, nullable=False, server_default="active"),
    Column("tx_id", Id, ForeignKey("journal_transactions.id"), nullable=False),
    Column("reversal_tx_id", Id, ForeignKey("journal_transactions.id")),
    Column("created_us", BigInteger, nullable=False),
    CheckConstraint("status IN ('active', 'reversed')", name="status"),
)

idempotency_keys = Table(
    "idempotency_keys", metadata,
    Column("store", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("operation", Text, nullable=False),
    Column("request_hash", Text, nullable=False),
    Column("response", Text, nullable=False),  # JSON of the stored response
    Column("created_us", BigInteger, nullable=False, index=True),
    PrimaryKeyConstraint("store", "key"),
)

terminals = Table(
    "terminals", metadata,
    Column("id", Text, primary_key=True),
    Column("store", Text, nullable=False),
    Column("role", Text, nullable=False),
    # SHA-256 of the token's secret part (a random 256-bit value: no salt or slow hash
    # needed); the token itself is shown once, at issue.
    Column("secret_sha256", Text, nullable=False),
    Column("name", Text),
    Column("created_us", BigInteger, nullable=False),
    Column("revoked_us", BigInteger),
    CheckConstraint("role IN ('pos', 'risk', 'admin')", name="role"),
)

# ---------------------------------------------------------------- the watchdog (0005)

alerts = Table(
    "alerts", metadata,
    Column("id", Text, primary_key=True),
    Column("rule", Text, nullable=False),
    Column("rule_version", Text, nullable=False),  # the rulebook's version when opened
    Column("severity", Text, nullable=False),
    Column("action", Text, nullable=False),
    # what the alert is about: "member:<id>", "terminal:<store>/<id>" or "store:<store>"
    Column("subject", Text, nullable=False),
    Column("member_id", Text),
    Column("card_no", Text),
    Column("store", Text, nullable=False),
    Column("terminal", Text),
    Column("settlement_id", Text),  # the first hit's settlement or refund (None: held)
    Column("evidence", Text, nullable=False),  # JSON: the numbers that crossed the threshold
    Column("state", Text, nullable=False, server_default="open"),
    Column("outcome", Text),
    Column("assignee", Text),
    Column("hits", Integer, nullable=False, server_default="1"),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("last_hit_us", BigInteger, nullable=False),
    # One alert open per (rule, subject); later hits attach to it.
    Index("uq_alerts_open", "rule", "subject", unique=True,
          postgresql_where=text("state <> 'resolved'"),
          sqlite_where=text("state <> 'resolved'")),
    Index(None, "state", "created_us"),
    Index(None, "member_id", "created_us"),
    Index(None, "store", "created_us"),
    CheckConstraint("state IN ('open', 'acknowledged', 'resolved')", name="state"),
    CheckConstraint("severity IN ('low', 'medium', 'high', 'critical')", name="severity"),
    CheckConstraint("outcome IS NULL OR outcome IN "
                    "('confirmed_fraud', 'false_positive', 'valuable')", name="outcome"),
)

alert_hits = Table(
    "alert_hits", metadata,
    Column("alert_id", Text, nullable=False),
    # the request that hit: "<store>/<idempotency key>" (a retry hits no second time)
    Column("ref", Text, nullable=False),
    Column("operation", Text, nullable=False),  # settle, refund, void, quote
    Column("operation_id", Text),  # the settlement or refund (None: held or a quote)
    Column("action", Text, nullable=False),  # alert (went through) or hold (refused)
    Column("rule_version", Text, nullable=False),
    Column("store", Text, nullable=False),
    Column("terminal", Text),
    Column("evidence", Text, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("alert_id", "ref"),
)

alert_events = Table(
    "alert_events", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("alert_id", Text, nullable=False, index=True),
    Column("actor", Text, nullable=False),  # "watchdog", or the risk terminal's id
    Column("action", Text, nullable=False),  # opened, hit, acknowledged, assigned, noted, resolved
    Column("detail", Text, nullable=False),  # JSON
    Column("created_us", BigInteger, nullable=False),
)

alert_outbox = Table(
    "alert_outbox", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("alert_id", Text, nullable=False),
    Column("payload", Text, nullable=False),  # JSON: the alert as opened
    Column("created_us", BigInteger, nullable=False),
    Column("delivered_us", BigInteger),  # set by the integrator that forwarded it
    Index("ix_alert_outbox_pending", "id", postgresql_where=text("delivered_us IS NULL"),
          sqlite_where=text("delivered_us IS NULL")),
)
