"""Shared pydantic plumbing: strict models and error messages that name the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

Code = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Bp = Annotated[int, Field(ge=0, le=10_000)]


def bounded(lo: int, hi: int) -> Any:
    """An integer constrained to ``lo..hi`` (strict: no bools, floats or strings)."""
    return Annotated[int, Field(ge=lo, le=hi)]


class StrictModel(BaseModel):
    """Strict, closed, immutable: unknown fields and coerced types are errors."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _problem(err: dict[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a JSON object"
    if kind == "list_type":
        return "must be a JSON array"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"{err['msg'][0].lower()}{err['msg'][1:]}"
    msg = err["msg"]
    return msg[0].lower() + msg[1:]


def first_error(
    exc: ValidationError, label: Callable[[tuple[Any, ...]], str]
) -> tuple[str, str]:
    """The first violation of ``exc`` as ``(field path, problem)``.

    ``label`` turns a pydantic location tuple into the project's field path.
    """
    err: dict[str, Any] = dict(exc.errors(include_url=False)[0])
    loc = tuple(err["loc"])
    if err["type"] == "invalid_key":  # the location ends with the bad key itself
        return label(loc[:-1]), f"field names must be strings, got {loc[-1]!r}"
    return label(loc), _problem(err)


def dotted(loc: tuple[Any, ...]) -> str:
    """``("lines", 3, "quantity")`` -> ``"lines[3].quantity"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "request"
