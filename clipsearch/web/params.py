"""Request values that arrive as loose JSON or form fields, checked the same way everywhere."""

from __future__ import annotations

from datetime import datetime

from ..errors import InputError


def whole(value, default: int, low: int, high: int) -> int:
    """A whole number within ``[low, high]``; ``default`` when absent or empty."""
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(f"not a whole number: {value!r}") from None
    if not low <= number <= high:
        raise InputError(f"{number} is not within {low}..{high}")
    return number


def number(value) -> float | None:
    """A number, or None when absent or empty."""
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"not a number: {value!r}") from None


def iso_date(value) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise InputError(f"not an ISO date: {value!r}") from None
