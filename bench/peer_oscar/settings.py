"""Programmatic Django settings for django-oscar in a throwaway SQLite file.

No project scaffolding: :func:`configure` calls ``settings.configure(...)``
with oscar's own app list and defaults, a SQLite database in a directory the
caller owns, and nothing else a web request would need (no URLs are served,
no templates rendered).
"""

from __future__ import annotations

import time
from pathlib import Path

CURRENCY = "CNY"
# A throwaway database: no fsync, rollback journal in memory (durability is
# irrelevant here, and it keeps the disk out of oscar's figures, in oscar's
# favour). ``configure(..., durable=True)`` keeps SQLite's defaults instead.
SQLITE_PRAGMAS = "PRAGMA synchronous=OFF; PRAGMA journal_mode=MEMORY;"


def configure(directory: Path, durable: bool = False) -> float:
    """Configure Django for oscar with ``directory/oscar.sqlite3``, migrate it.

    Returns the seconds ``migrate`` took (every oscar and Django migration,
    run from scratch: nothing is cached across runs). Call once per process.
    ``durable``: SQLite's default journal and fsync instead of
    :data:`SQLITE_PRAGMAS`.
    """
    import django
    import oscar
    from django.conf import settings
    from oscar import defaults

    if settings.configured:
        raise RuntimeError("Django is already configured in this process; "
                           "run the oscar comparison in a process of its own")
    oscar_defaults = {name: getattr(defaults, name) for name in dir(defaults) if name.isupper()}
    settings.configure(
        DEBUG=False,
        SECRET_KEY="peer-oscar-bench-not-secret",
        USE_TZ=True,
        TIME_ZONE="Asia/Shanghai",
        SITE_ID=1,
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": str(directory / "oscar.sqlite3"),
                               "OPTIONS": {} if durable else {"init_command": SQLITE_PRAGMAS}}},
        INSTALLED_APPS=list(oscar.INSTALLED_APPS),
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        HAYSTACK_CONNECTIONS={"default": {
            "ENGINE": "haystack.backends.simple_backend.SimpleEngine"}},
        LOGGING_CONFIG=None,
        **{**oscar_defaults, "OSCAR_DEFAULT_CURRENCY": CURRENCY},
    )
    django.setup()
    from django.core.management import call_command

    started = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    return time.perf_counter() - started
