"""Accounts and balanced journal transactions.

A :class:`Transaction` collects moves (``asset``, from, to, amount) and
writes them as signed postings, so per asset a transaction sums to zero by
construction. Member balances change with one conditional ``UPDATE ...
WHERE balance + delta >= 0`` per account, in account-id order; a shortfall
raises :class:`InsufficientBalance` and the caller's database transaction
rolls back whole.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import Connection, insert, select, update

from .db import insert_or_nothing
from .errors import InsufficientBalance
from .schema import SYSTEM, accounts, journal_postings, journal_transactions

#: Member accounts, created at enrolment: kind -> asset.
MEMBER_KINDS = {"points": "points", "sv_principal": "cents", "sv_bonus": "cents"}

#: System accounts: the other side of every member movement. kind -> asset.
SYSTEM_KINDS = {
    "points_issued": "points",      # points earned, granted as bonus or for a referral
    "points_redeemed": "points",    # points that paid for goods
    "points_expired": "points",
    "points_clawed_back": "points",  # earned points taken back by a refund
    "sv_cash_in": "cents",          # principal paid in at a recharge
    "sv_bonus_granted": "cents",    # bonus stored value given at a recharge
    "sv_spent": "cents",            # stored value that paid for goods
    "uses_issued": "uses",
    "uses_spent": "uses",
}


@dataclass(frozen=True, slots=True)
class Account:
    """An account row."""

    id: int
    owner: str
    kind: str
    ref: str
    asset: str

    @property
    def is_system(self) -> bool:
        return self.owner == SYSTEM


def account(conn: Connection, owner: str, kind: str, ref: str = "") -> Account:
    """The account ``(owner, kind, ref)``, created on first use."""
    asset = SYSTEM_KINDS[kind] if owner == SYSTEM else MEMBER_KINDS.get(kind)
    if asset is None:
        asset = "uses" if kind == "count_card" else None
    if asset is None:
        raise ValueError(f"unknown account kind {kind!r}")
    where = (accounts.c.owner == owner, accounts.c.kind == kind, accounts.c.ref == ref)
    row = conn.execute(select(accounts.c.id).where(*where)).first()
    if row is None:
        # Two transactions may create the same account at once (a system account on two
        # members' first operations): ON CONFLICT waits for the other and then reads its row.
        conn.execute(insert_or_nothing(conn, accounts, owner=owner, kind=kind, ref=ref,
                                       asset=asset, balance=None if owner == SYSTEM else 0))
        row = conn.execute(select(accounts.c.id).where(*where)).one()
    return Account(row.id, owner, kind, ref, asset)


def system(conn: Connection, kind: str) -> Account:
    """A system account."""
    return account(conn, SYSTEM, kind)


@dataclass
class Transaction:
    """A journal transaction being built: moves between accounts, then :meth:`write`."""

    kind: str
    ref: str
    store: str | None
    created_us: int
    moves: list[tuple[str, Account, Account, int]] = field(default_factory=list)

    def move(self, src: Account, dst: Account, amount: int) -> None:
        """Move ``amount`` (> 0; 0 is skipped) of the accounts' asset from ``src`` to ``dst``."""
        if amount == 0:
            return
        if amount < 0:
            raise ValueError(f"negative move {amount}")
        if src.asset != dst.asset:
            raise ValueError(f"cannot move between {src.asset} and {dst.asset}")
        self.moves.append((src.asset, src, dst, amount))

    def postings(self) -> list[tuple[int, str, int]]:
        """The signed postings ``(account_id, asset, amount)``, two per move."""
        out = []
        for asset, src, dst, amount in self.moves:
            out.append((src.id, asset, -amount))
            out.append((dst.id, asset, amount))
        return out

    def deltas(self) -> list[tuple[Account, int]]:
        """The non-zero net change of each member account, in account-id order (the order
        every writer updates balances in: no deadlock between two writers)."""
        delta: dict[int, int] = defaultdict(int)
        members: dict[int, Account] = {}
        for _asset, src, dst, amount in self.moves:
            for acc, signed in ((src, -amount), (dst, amount)):
                if not acc.is_system:
                    delta[acc.id] += signed
                    members[acc.id] = acc
        return [(members[i], delta[i]) for i in sorted(delta) if delta[i]]

    def write(self, conn: Connection) -> int:
        """Write the transaction, its postings and the member balances; returns its id."""
        tx_id = conn.execute(insert(journal_transactions).values(
            kind=self.kind, ref=self.ref, store=self.store, created_us=self.created_us)
            .returning(journal_transactions.c.id)).scalar_one()
        postings = [{"tx_id": tx_id, "account_id": acc_id, "asset": asset, "amount": amount}
                    for acc_id, asset, amount in self.postings()]
        if postings:
            conn.execute(insert(journal_postings), postings)
        for acc, d in self.deltas():
            done = conn.execute(
                update(accounts)
                .where(accounts.c.id == acc.id, accounts.c.balance + d >= 0)
                .values(balance=accounts.c.balance + d)
            ).rowcount
            if done != 1:
                have = conn.execute(select(accounts.c.balance)
                                    .where(accounts.c.id == acc.id)).scalar_one()
                raise InsufficientBalance(acc.owner, acc.kind, acc.ref, -(have + d))
        return int(tx_id)


def balance(conn: Connection, owner: str, kind: str, ref: str = "") -> int:
    """A member account's balance (0 when it does not exist yet)."""
    value = conn.execute(select(accounts.c.balance).where(
        accounts.c.owner == owner, accounts.c.kind == kind, accounts.c.ref == ref)).scalar()
    return int(value or 0)
