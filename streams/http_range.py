"""HTTP byte-range parsing for recordings (RFC 9110 §14 "Range Requests")."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")

# No file has 10**18 bytes, so a position with more significant digits than this is
# simply "past any end". Capping here keeps int() off strings over Python's
# 4300-digit conversion limit (a ValueError, and so a 500, for ``bytes=<5000 9s>-``).
_MAX_DIGITS = 18
_BEYOND = 10**_MAX_DIGITS


def _position(digits: str) -> int:
    """A byte position from its decimal digits; any over 18 digits counts as 10**18."""
    digits = digits.lstrip("0") or "0"
    return _BEYOND if len(digits) > _MAX_DIGITS else int(digits)


class RangeNotSatisfiable(ValueError):
    """The Range header asks for bytes outside the representation (answer 416)."""


def range_parse(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single-range ``Range`` header against a body of ``size`` bytes.

    Returns ``(start, end)`` with ``end`` inclusive, or None when the whole body is
    to be sent (no header, a unit other than bytes, several ranges, or a header
    that does not parse: RFC 9110 §14.2 lets a server ignore such a Range).

    Raises:
        RangeNotSatisfiable: a syntactically valid range with no byte inside the
            body (e.g. ``bytes=500-`` on a 100-byte file, or any range on an empty one).
    """
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        suffix = _position(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - suffix), size - 1
    start = _position(first)
    end = _position(last) if last else size - 1
    if last and end < start:
        return None  # invalid: ignore the header
    if start >= size:
        raise RangeNotSatisfiable(header)
    return start, min(end, size - 1)
