"""Instants as integer microseconds since the Unix epoch.

Both engines compare validity windows on these integers, so an instant is
parsed exactly once and never compared as a float.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Sentinels for an absent bound: "since ever" and "forever".
NEVER_BEFORE = -(2**63)
FOREVER = 2**63 - 1


def to_micros(dt: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact integer arithmetic)."""
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def parse_instant(value: object) -> int:
    """Parse an aware instant (ISO 8601 string with offset, or aware datetime).

    Raises ``ValueError`` with the problem (no field name) when the value is
    not an instant or has no timezone.
    """
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an ISO 8601 date-time with a UTC offset") from None
    else:
        raise ValueError("must be an ISO 8601 date-time string with a UTC offset")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("must have a timezone (UTC offset)")
    return to_micros(dt)


def format_instant(micros: int) -> str:
    """The ISO 8601 string (UTC) of an instant in epoch microseconds."""
    return (_EPOCH + timedelta(microseconds=micros)).isoformat()


def local_instant(value: object, zone: ZoneInfo) -> int:
    """Like :func:`parse_instant`, but naive datetimes and dates are read in ``zone``.

    Used for rulebook fields, which an operator writes in store time.
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an ISO 8601 date or date-time") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=zone)
        return to_micros(value)
    if isinstance(value, date):
        return to_micros(datetime(value.year, value.month, value.day, tzinfo=zone))
    raise ValueError("must be a date or date-time")


def local_weekday_minute(micros: int, zone: ZoneInfo) -> tuple[int, int]:
    """ISO weekday (Monday = 1) and minute of the day of an instant in ``zone``."""
    try:
        local = (_EPOCH + timedelta(microseconds=micros)).astimezone(zone)
    except (OverflowError, ValueError, OSError):
        raise ValueError("is out of the supported range of dates") from None
    return local.isoweekday(), local.hour * 60 + local.minute
