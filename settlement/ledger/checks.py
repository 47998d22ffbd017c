"""Checks of the plain fields of ledger requests (ids, codes, integers), naming the field."""

from __future__ import annotations

from typing import Any

from settlement.errors import RequestError


def text_field(field: str, value: Any, required: bool = True) -> Any:
    """A code or id: a string of 1..128 characters (None allowed when not required)."""
    if value is None and not required:
        return None
    if value is None:
        raise RequestError(field, "required field is missing")
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise RequestError(field, "must be a string of 1..128 characters")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL; no code or id needs one
        raise RequestError(field, "must not contain NUL characters")
    return value


def int_field(field: str, value: Any, lo: int, hi: int, required: bool = True) -> Any:
    """An integer in ``lo..hi`` (JSON integers only: no bools, floats or strings)."""
    if value is None and not required:
        return None
    if type(value) is not int or not lo <= value <= hi:
        raise RequestError(field, f"must be an integer {lo}..{hi}")
    return value
