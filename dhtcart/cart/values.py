"""What the cart's operations return: a line, a receipt and its lines, and a result with its version.

Plain immutable values: they know nothing of the store, of the stored format
or of rendering (the faces render them with :mod:`dhtcart.render`).

>>> from decimal import Decimal
>>> item = CartItem("036000291459", Decimal("0.10"), 3, False, None, False)
>>> item.line_total
Decimal('0.30')
>>> line, version = Versioned(item, 7)
>>> version
7
"""

from __future__ import annotations

from collections.abc import Iterator, Set
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, NamedTuple, TypeVar

__all__ = ["CartItem", "ExpectedVersion", "Receipt", "ReceiptLine", "Versioned"]

T = TypeVar("T")

#: what ``expected_version`` may be: one version, any of several (an ``If-Match`` list), or ``None``
ExpectedVersion = int | Set[int] | None


class CartItem(NamedTuple):
    """One line of a cart, as listed (an immutable named tuple)."""

    item_id: str
    offered_price: Decimal
    item_count: int
    special_sale: bool
    sale_expiration: datetime | None
    expired: bool  #: a special-sale price whose expiration has passed
    #: when the item was last added (the offer the line carries), to the millisecond;
    #: ``None`` for lines stored before dhtcart recorded it
    added_at: datetime | None = None

    @property
    def line_total(self) -> Decimal:
        """``offered_price * item_count``, exactly."""
        return self.offered_price * self.item_count


@dataclass(frozen=True)
class ReceiptLine:
    """One line of a receipt."""

    item_id: str
    unit_price: Decimal
    item_count: int
    line_total: Decimal


@dataclass(frozen=True)
class Receipt:
    """What checkout returns: the lines, the exact total, and when."""

    customer_id: str
    lines: list[ReceiptLine]
    total: Decimal
    checked_out_at: datetime
    #: the cart's items as they were checked out, in the order added
    items: list[CartItem] = field(default_factory=list)


class Versioned(Generic[T]):
    """A result and the version of the cart it came from (or made): ``value, version = ...``.

    The version is the cart record's (0: no cart was ever stored). It grows
    with every change, so it names one state of the cart: pass it back as
    ``expected_version`` to change the cart only if nobody changed it since.
    """

    __slots__ = ("value", "version")

    def __init__(self, value: T, version: int) -> None:
        self.value = value
        self.version = version

    def __iter__(self) -> Iterator[Any]:
        yield self.value
        yield self.version

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Versioned) and (self.value, self.version) == (other.value, other.version)

    def __hash__(self) -> int:
        return hash((self.value, self.version))

    def __repr__(self) -> str:
        return f"Versioned(value={self.value!r}, version={self.version})"
