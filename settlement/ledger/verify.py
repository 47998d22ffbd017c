"""``settlement verify``: the journal's invariants over the whole database.

Checks, first violation reported: every posting's transaction and account
and every settlement line's settlement exist (these references have no
foreign keys, for throughput); every transaction sums to zero per asset;
every posting's asset is its account's; every member account's cached
balance equals the sum of its postings and is not negative; every member's
points lots add up to the points account; every settlement's lines add up
to its totals; every alert hit's alert exists and each alert's hit count is
its number of hits.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

CHECKS: list[tuple[str, str]] = [
    # References without foreign keys (migration 0002) come first: the checks below join them.
    ("a posting belongs to no transaction",
     "SELECT p.id, p.tx_id FROM journal_postings p LEFT JOIN journal_transactions t "
     "ON t.id = p.tx_id WHERE t.id IS NULL ORDER BY p.id LIMIT 1"),
    ("a posting's account does not exist",
     "SELECT p.id, p.account_id FROM journal_postings p LEFT JOIN accounts a "
     "ON a.id = p.account_id WHERE a.id IS NULL ORDER BY p.id LIMIT 1"),
    ("a settlement line belongs to no settlement",
     "SELECT l.settlement_id, l.line_no FROM settlement_lines l LEFT JOIN settlements s "
     "ON s.id = l.settlement_id WHERE s.id IS NULL ORDER BY l.settlement_id, l.line_no LIMIT 1"),
    ("a transaction does not sum to zero per asset",
     "SELECT tx_id, asset, SUM(amount) FROM journal_postings "
     "GROUP BY tx_id, asset HAVING SUM(amount) <> 0 ORDER BY tx_id LIMIT 1"),
    ("a posting's asset differs from its account's",
     "SELECT p.id, p.asset, a.asset FROM journal_postings p JOIN accounts a "
     "ON a.id = p.account_id WHERE p.asset <> a.asset ORDER BY p.id LIMIT 1"),
    ("a member account's balance differs from the sum of its postings",
     "SELECT a.id, a.owner, a.kind, a.balance, COALESCE(s.total, 0) FROM accounts a "
     "LEFT JOIN (SELECT account_id, SUM(amount) AS total FROM journal_postings "
     "GROUP BY account_id) s ON s.account_id = a.id "
     "WHERE a.balance IS NOT NULL AND a.balance <> COALESCE(s.total, 0) ORDER BY a.id LIMIT 1"),
    ("a member account is negative",
     "SELECT id, owner, kind, balance FROM accounts WHERE balance < 0 ORDER BY id LIMIT 1"),
    ("a member's points lots differ from the points account",
     "SELECT a.owner, a.balance, COALESCE(l.total, 0) FROM accounts a "
     "LEFT JOIN (SELECT member_id, SUM(remaining) AS total FROM points_lots "
     "GROUP BY member_id) l ON l.member_id = a.owner "
     "WHERE a.kind = 'points' AND a.balance <> COALESCE(l.total, 0) ORDER BY a.owner LIMIT 1"),
    ("a settlement's lines do not add up to its totals",
     "SELECT s.id FROM settlements s JOIN (SELECT settlement_id, SUM(gross_cents) AS g, "
     "SUM(net_cents) AS n, SUM(coupon_discount_cents) AS c, SUM(points_offset_cents) AS p, "
     "SUM(item_discount_cents) AS i, SUM(rounding_cents) AS r, SUM(count_card_cents) AS k, "
     "SUM(sv_principal_cents + sv_bonus_cents) AS v, SUM(sv_bonus_cents) AS b, "
     "SUM(points_earned) AS e, SUM(points_redeemed) AS pr "
     "FROM settlement_lines GROUP BY settlement_id) l ON l.settlement_id = s.id "
     "WHERE l.g <> s.gross_cents OR l.n <> s.payable_cents OR l.c <> s.coupon_discount_cents "
     "OR l.p <> s.points_offset_cents OR l.i <> s.item_discount_cents "
     "OR l.r <> s.rounding_cents OR l.k <> s.count_card_cents OR l.v <> s.stored_value_cents "
     "OR l.b <> s.sv_bonus_cents OR l.e <> s.points_earned OR l.pr <> s.points_redeemed "
     "ORDER BY s.id LIMIT 1"),
    # The watchdog's record (migration 0005): every hit under an alert, counted on it.
    ("an alert hit belongs to no alert",
     "SELECT h.alert_id, h.ref FROM alert_hits h LEFT JOIN alerts a ON a.id = h.alert_id "
     "WHERE a.id IS NULL ORDER BY h.alert_id, h.ref LIMIT 1"),
    ("an alert's hit count differs from its hits",
     "SELECT a.id, a.hits, COUNT(h.ref) FROM alerts a LEFT JOIN alert_hits h "
     "ON h.alert_id = a.id GROUP BY a.id, a.hits HAVING a.hits <> COUNT(h.ref) "
     "ORDER BY a.id LIMIT 1"),
]


def verify(conn: Connection) -> str | None:
    """The first violation as a sentence with the offending row, or None when all hold."""
    for what, sql in CHECKS:
        row = conn.execute(text(sql)).first()
        if row is not None:
            return f"{what}: {tuple(row)}"
    return None
