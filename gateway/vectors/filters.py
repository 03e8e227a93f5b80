"""Metadata filters: `{"field": value | [values] | {"gt"|"gte"|"lt"|"lte": number}}`, all conditions ANDed.

A field is a top-level key of a document's `metadata`; the conditions only ever reach `metadata.<field>`,
so a filter cannot touch the owner tag that every query carries (see service.py).
"""

from __future__ import annotations

import math
import re
from typing import Any

from qdrant_client import models

from ..errors import InvalidRequest

_FIELD = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_RANGE_KEYS = frozenset({"gt", "gte", "lt", "lte"})
MAX_CONDITIONS = 16
MAX_ANY_VALUES = 64
OWNER_FIELD = "_owner"


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid filter: {message}", param="filter", code="invalid_filter")


def _is_integer(value: object) -> bool:
    """A JSON integer Qdrant can hold (a signed 64-bit one)."""
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _is_number(value: object) -> bool:
    """A bound for a range: a 64-bit integer or a finite float (what a double can carry)."""
    return _is_integer(value) or (isinstance(value, float) and math.isfinite(value))


def _condition(field: str, value: Any) -> models.FieldCondition:
    key = f"metadata.{field}"
    if isinstance(value, int) and not isinstance(value, bool) and not _is_integer(value):
        raise _invalid(f"the integer for '{field}' does not fit in 64 bits.")
    if isinstance(value, str | bool) or _is_integer(value):
        if isinstance(value, str) and len(value) > 2048:
            raise _invalid(f"the value for '{field}' is longer than 2048 characters.")
        return models.FieldCondition(key=key, match=models.MatchValue(value=value))
    if isinstance(value, list):
        if not value or len(value) > MAX_ANY_VALUES:
            raise _invalid(f"the list for '{field}' must have 1 to {MAX_ANY_VALUES} values.")
        if all(isinstance(item, str) and len(item) <= 2048 for item in value) or all(
            _is_integer(item) for item in value
        ):
            return models.FieldCondition(key=key, match=models.MatchAny(any=value))
        raise _invalid(
            f"the list for '{field}' must hold only strings (up to 2048 characters) or only 64-bit integers."
        )
    if isinstance(value, dict):
        if not value or not set(value) <= _RANGE_KEYS or not all(_is_number(bound) for bound in value.values()):
            raise _invalid(f"a range for '{field}' takes finite numbers under 'gt', 'gte', 'lt' or 'lte' only.")
        bounds = {name: float(bound) for name, bound in value.items()}  # a 64-bit integer always fits a double
        return models.FieldCondition(key=key, range=models.Range(**bounds))
    raise _invalid(f"'{field}' must be a string, an integer, a boolean, a list of values, or a range.")


def metadata_conditions(spec: dict[str, object] | None) -> list[models.FieldCondition]:
    """The Qdrant conditions for a client's filter; raises a 400 (param 'filter') when it is malformed."""
    if not spec:
        return []
    if len(spec) > MAX_CONDITIONS:
        raise _invalid(f"at most {MAX_CONDITIONS} fields.")
    conditions = []
    for field, value in spec.items():
        if not _FIELD.match(field):
            raise _invalid("field names are 1-64 letters, digits, '_' or '-'.")
        conditions.append(_condition(field, value))
    return conditions


def owned(owner: str, *extra: models.Condition) -> models.Filter:
    """A filter that keeps only the points of `owner` (the collection's owner tag), plus `extra` conditions."""
    return models.Filter(must=[models.FieldCondition(key=OWNER_FIELD, match=models.MatchValue(value=owner)), *extra])
