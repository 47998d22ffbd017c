"""The member ledger: accounts, double-entry journal, settlements (issue 3, in progress).

This package owns the database; the pricing engine (``settlement.pricing``,
``settlement._fast``) never imports it.
"""
