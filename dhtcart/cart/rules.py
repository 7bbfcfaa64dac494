"""The cart's rules for its arguments: ids, counts, prices, dates and expected versions, and their limits.

Each check returns the value as the cart keeps it, or raises
:class:`~dhtcart.errors.InvalidInput` whose ``field`` is the name of the
Python parameter that was wrong (``item_count``, ``offered_price``); the HTTP
face translates those names to its JSON fields:

>>> check_price("10.1")
Decimal('10.10')
>>> check_count(0, "item_count")
Traceback (most recent call last):
...
dhtcart.errors.InvalidInput: item_count: must be between 1 and 1000000, got 0
>>> check_id("036000291459", "item_id")      # ids are strings: leading zeros are kept
'036000291459'
"""

from __future__ import annotations

import math
import re
from collections.abc import Set
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from dhtcart.cart.values import ExpectedVersion
from dhtcart.checks import check_version
from dhtcart.errors import InvalidInput

__all__ = [
    "MAX_COUNT",
    "MAX_ID_LENGTH",
    "MAX_LINES",
    "MAX_PRICE",
    "check_count",
    "check_datetime",
    "check_expected_version",
    "check_flag",
    "check_id",
    "check_price",
]

MAX_ID_LENGTH = 128  #: characters in a customer or item id
MAX_COUNT = 1_000_000  #: units of one item in one cart
MAX_PRICE = Decimal("1000000000")  #: the largest unit price
MAX_LINES = 10_000  #: distinct items in one cart

_CENT = Decimal("0.01")
_ZERO = Decimal("0.00")
_PRICE_RE = re.compile(r"-?[0-9]+(\.[0-9]*)?|-?\.[0-9]+")
_UTC = timezone.utc


def check_id(value: object, field: str) -> str:
    """A customer or item id: a non-empty str of at most 128 printable characters.

    No ``/`` (an id is one path segment of the HTTP API), no U+FFFD, no
    surrounding white space. Ids are compared as given: no Unicode normalisation.
    """
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidInput(field, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(field, f"must be at most {MAX_ID_LENGTH} characters, got {len(value)}")
    if not value.isprintable():  # also false for surrogates and other unassigned/format code points
        raise InvalidInput(field, "must not contain control or unprintable characters")
    if "/" in value or "\ufffd" in value:
        # an id is one URL path segment of the HTTP API; U+FFFD is what undecodable bytes become
        raise InvalidInput(field, "must not contain '/' or U+FFFD (the mark of bytes that were not UTF-8)")
    if value != value.strip():
        raise InvalidInput(field, "must not start or end with white space")
    return value


def check_count(value: object, field: str, *, allow_zero: bool = False) -> int:
    """A whole number of units, 1..MAX_COUNT (0 too when ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(field, f"must be a whole number, not {type(value).__name__}")
    low = 0 if allow_zero else 1
    if not low <= value <= MAX_COUNT:
        raise InvalidInput(field, f"must be between {low} and {MAX_COUNT}, got {value}")
    return value


def check_flag(value: object, field: str) -> bool:
    """``True`` or ``False``, and nothing that merely reads as one (``1``, ``"true"``)."""
    if not isinstance(value, bool):
        raise InvalidInput(field, f"must be True or False, not {type(value).__name__}")
    return value


def check_price(value: object, field: str = "offered_price") -> Decimal:
    """A unit price: finite, 0 <= price <= MAX_PRICE, at most two decimal places.

    Accepts ``Decimal``, ``int``, ``str`` and ``float`` (read through its
    shortest repr, so ``10.1`` is ``Decimal("10.10")``, never float arithmetic).
    """
    if isinstance(value, bool):
        raise InvalidInput(field, "must be a number, not a bool")
    try:
        if isinstance(value, Decimal):
            if value.is_finite():
                return _price_of_decimal(value, field)
            price = value
        elif isinstance(value, int):
            price = Decimal(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidInput(field, "must be a finite number")
            price = Decimal(repr(value))
        elif isinstance(value, str):
            if len(value) > 40 or not _PRICE_RE.fullmatch(value):
                raise InvalidInput(field, f"is not a plain decimal number like 12.34: {value[:40]!r}")
            return _price_of_text(value, field)
        else:
            raise InvalidInput(field, f"must be a number, not {type(value).__name__}")
    except InvalidOperation:
        raise InvalidInput(field, f"is not a number: {value!r}") from None
    if not price.is_finite():
        raise InvalidInput(field, "must be a finite number")
    return _check_decimal_price(price, field)


@lru_cache(maxsize=4096)
def _price_of_text(text: str, field: str) -> Decimal:
    """Prices repeat: parse each distinct string once (the result is immutable)."""
    return check_price(Decimal(text), field)


@lru_cache(maxsize=4096)
def _price_of_decimal(value: Decimal, field: str) -> Decimal:
    """Prices repeat: check each distinct (finite) decimal once; equal decimals give the same price."""
    return _check_decimal_price(value, field)


def _check_decimal_price(price: Decimal, field: str) -> Decimal:
    if price < 0:
        raise InvalidInput(field, "must not be negative")
    if price > MAX_PRICE:
        raise InvalidInput(field, f"must be at most {MAX_PRICE}")
    if price != price.quantize(_CENT):
        raise InvalidInput(field, "must have at most two decimal places")
    return price.quantize(_CENT) if price else _ZERO  # no "-0.00"


def check_datetime(value: object, field: str = "sale_expiration") -> datetime:
    """A point in time: an aware ``datetime`` or an ISO 8601 string; naive means UTC. Returned in UTC."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 64:
            raise InvalidInput(field, "must be an ISO 8601 date-time")
        if text[-1] in "zZ":
            text = text[:-1] + "+00:00"
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidInput(field, f"is not an ISO 8601 date-time: {value!r}") from None
    else:
        raise InvalidInput(field, f"must be an ISO 8601 string or a datetime, not {type(value).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        when = when.replace(tzinfo=_UTC)
    try:
        return when.astimezone(_UTC)
    except OverflowError:
        raise InvalidInput(field, f"is out of range once converted to UTC: {value!r:.60}") from None


def check_expected_version(value: object) -> ExpectedVersion:
    """``expected_version``: ``None``, a version (an ``int >= 0``), or a set of versions (any may match).

    A bad one is :class:`~dhtcart.errors.InvalidValue`, as for the store's own
    ``expected_version`` (:func:`dhtcart.checks.check_version`).
    """
    if value is None:
        return None
    if isinstance(value, Set):
        for version in value:
            check_version(version)
        return value
    return check_version(value)
