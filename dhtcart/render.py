"""How a cart line, a cart and a receipt look as JSON: one rendering of each, per profile.

The faces render the cart's values (:mod:`dhtcart.cart.values`) through these
functions, so a field is named and formatted in one place; the cart itself
knows nothing of rendering. Money stays a :class:`~decimal.Decimal` unless
``money`` converts it (``money=str`` gives JSON-ready strings for
``json.dumps``); :func:`dumps` writes a ``Decimal`` as a JSON number with its
exact digits.

Two profiles: dhtcart's documented API (:func:`line`, :func:`cart`,
:func:`receipt`) and the seed code's shapes (:func:`seed_line`,
:func:`seed_cart`, :func:`seed_receipt`), which the seed's own clients read.

>>> from decimal import Decimal
>>> dumps({"total": Decimal("30.00"), "customerId": "café", "ok": True, "n": None})
'{"total":30.00,"customerId":"café","ok":true,"n":null}'

No third-party imports: a library user renders without the server extra.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from dhtcart.errors import InvalidValue

if TYPE_CHECKING:
    from dhtcart.cart.values import CartItem, Receipt

__all__ = ["cart", "dumps", "dumps_bytes", "line", "receipt", "seed_cart", "seed_line", "seed_receipt"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def _same(value: Decimal) -> Any:
    return value


# -- dhtcart's API ------------------------------------------------------------------------


def line(item: CartItem, money: Callable[[Decimal], Any] = _same) -> dict[str, Any]:
    """A cart line: ``itemId, offeredPrice, itemCount, specialSale, saleExpiration, expired``."""
    exp = item.sale_expiration
    return {
        "itemId": item.item_id,
        "offeredPrice": money(item.offered_price),
        "itemCount": item.item_count,
        "specialSale": item.special_sale,
        "saleExpiration": None if exp is None else exp.isoformat(),
        "expired": item.expired,
    }


def cart(customer_id: str, items: list[CartItem]) -> dict[str, Any]:
    """A listing: ``{"customerId", "items": [line, ...]}``."""
    return {"customerId": customer_id, "items": [line(it) for it in items]}


def receipt(r: Receipt, money: Callable[[Decimal], Any] = _same) -> dict[str, Any]:
    """A receipt: ``customerId, lines [itemId, unitPrice, itemCount, lineTotal], total, checkedOutAt``."""
    return {
        "customerId": r.customer_id,
        "lines": [
            {
                "itemId": ln.item_id,
                "unitPrice": money(ln.unit_price),
                "itemCount": ln.item_count,
                "lineTotal": money(ln.line_total),
            }
            for ln in r.lines
        ],
        "total": money(r.total),
        "checkedOutAt": r.checked_out_at.isoformat(),
    }


# -- the seed code's shapes ---------------------------------------------------------------


def seed_line(item: CartItem) -> dict[str, Any]:
    """A line as the seed code answered it: ``itemId, unitCount, offeredPrice, specialSale,
    saleExpiration, timestamp`` (the time of the last add, epoch seconds to the millisecond)."""
    exp = item.sale_expiration
    added = item.added_at
    return {
        "itemId": item.item_id,
        "unitCount": item.item_count,
        "offeredPrice": item.offered_price,
        "specialSale": item.special_sale,
        "saleExpiration": None if exp is None else exp.isoformat(),
        "timestamp": None if added is None else Decimal((added - _EPOCH) // _MS).scaleb(-3),
    }


def seed_cart(items: list[CartItem]) -> list[dict[str, Any]]:
    """A listing as the seed code answered it: a plain array of lines (``[]`` for no cart)."""
    return [seed_line(it) for it in items]


def seed_receipt(r: Receipt) -> list[dict[str, Any]]:
    """A checkout as the seed code answered it: the array of the lines checked out."""
    return [seed_line(it) for it in r.items]


# -- JSON text ------------------------------------------------------------------------------

_utf8_str = json.encoder.encode_basestring  # C: escapes only '"', '\\' and control characters
_ascii_str = json.encoder.encode_basestring_ascii


def dumps(value: object, *, ensure_ascii: bool = False) -> str:
    """JSON text for ``value``; a :class:`~decimal.Decimal` becomes a number with its exact digits.

    Strings are written as UTF-8 text (``"café"``), or with ``\\u`` escapes
    when ``ensure_ascii``. Raises :class:`~dhtcart.errors.InvalidValue` for
    what JSON cannot hold (NaN, objects of other types).
    """
    return _dumps(value, _ascii_str if ensure_ascii else _utf8_str)


def dumps_bytes(value: object) -> bytes:
    """:func:`dumps` as UTF-8 bytes; a string that is not valid Unicode (a lone surrogate) is escaped."""
    text = _dumps(value, _utf8_str)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _dumps(value, _ascii_str).encode()


def _dumps(value: object, quote: Callable[[str], str]) -> str:
    kind = type(value)  # the exact types first: a lookup instead of a chain of isinstance()
    if kind is str:
        return quote(value)  # type: ignore[arg-type]
    if kind is dict:
        items = value.items()  # type: ignore[attr-defined]
        return "{" + ",".join([quote(str(k)) + ":" + _dumps(v, quote) for k, v in items]) + "}"
    if kind is Decimal:
        return _decimal(value)  # type: ignore[arg-type]
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if kind is list:
        return "[" + ",".join([_dumps(v, quote) for v in value]) + "]"  # type: ignore[attr-defined]
    return _dumps_other(value, quote)


def _decimal(value: Decimal) -> str:
    if not value.is_finite():
        raise InvalidValue(f"cannot render {value!r} as a JSON number")
    return format(value, "f")  # positional notation: never an exponent


def _dumps_other(value: object, quote: Callable[[str], str]) -> str:
    """Subclasses and the rarer types."""
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, Mapping):
        return "{" + ",".join([quote(str(k)) + ":" + _dumps(v, quote) for k, v in value.items()]) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join([_dumps(v, quote) for v in value]) + "]"
    if isinstance(value, float):
        try:
            return json.dumps(value, allow_nan=False)
        except ValueError:
            raise InvalidValue(f"cannot render {value!r} as a JSON number") from None
    raise InvalidValue(f"cannot render {type(value).__name__} as JSON")
