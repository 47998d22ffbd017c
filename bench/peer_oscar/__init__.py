"""django-oscar's offer engine beside ours on the same baskets (issue 7).

``python -m bench.peer_oscar [--baskets N] [--json out.json]``: see
``README.md`` in this folder for what is equivalent and the figures.

- :mod:`.settings`: Django configured in-process, oscar migrated into a
  temporary SQLite file;
- :mod:`.workload`: the catalogue, the baskets, our engine's request, and
  an integer model of oscar's arithmetic for these offers;
- :mod:`.oscar_side`: oscar's catalogue, offers, voucher and baskets;
- :mod:`.compare`: timing, query counts, price agreement, the table.
"""
