"""The shopping cart: five operations over the DHT, safe under concurrency.

>>> carts = CartService()                       # in memory
>>> item = carts.add_item("alice", "036000291459", "50", item_count=2)
>>> item.item_id, item.offered_price, item.item_count
('036000291459', Decimal('50.00'), 2)
>>> _ = carts.add_item("alice", "sku-2", "10", item_count=3)
>>> _ = carts.update_count("alice", "036000291459", 1)
>>> carts.delete_item("alice", "036000291459")
>>> carts.checkout("alice").total
Decimal('30.00')
>>> carts.list_items("alice")
[]

A cart is one value under ``hash_key(customer_id)``. The value is a small
document with a format tag (:mod:`dhtcart.cart.codec`); it maps each customer
id to its lines, so two customers whose ids hash to the same 63-bit key share
the record but never see each other's items. Every change is read, modify,
compare-and-set, retried on :class:`~dhtcart.errors.VersionConflict`:
concurrent writers, threads or processes, never lose an update.

Rules:

* adding an item already in the cart adds to its count (one line per item)
  and takes the new offer's price and sale terms;
* ``update_count(..., 0)`` removes the line;
* a special-sale price holds until ``sale_expiration``; after it, the item is
  listed with ``expired=True`` and checkout raises
  :class:`~dhtcart.errors.SaleExpired` naming the items, changing nothing;
* checkout returns a :class:`Receipt` and empties the cart atomically.

Money is :class:`decimal.Decimal` with at most two decimal places; item ids
are strings (leading zeros kept); times are timezone-aware (naive times and
ISO strings without an offset are taken as UTC). Bad input raises
:class:`~dhtcart.errors.InvalidInput` whose ``field`` names the parameter
(``item_count``, ``offered_price``) and stores nothing.

The package, one module per part:

* :mod:`~dhtcart.cart.service`: :class:`CartService` and :class:`VersionedCarts`
  (the operations, written once; the retries);
* :mod:`~dhtcart.cart.values`: what the operations return (:class:`CartItem`,
  :class:`Receipt`, :class:`ReceiptLine`, :class:`Versioned`);
* :mod:`~dhtcart.cart.rules`: the checks of every argument, and the limits;
* :mod:`~dhtcart.cart.codec`: the stored format and the decoded-cart cache.

The cart knows nothing of rendering: the faces render its values with
:mod:`dhtcart.render`.
"""

from dhtcart.cart.rules import MAX_COUNT, MAX_ID_LENGTH, MAX_LINES, MAX_PRICE
from dhtcart.cart.service import CartService, VersionedCarts
from dhtcart.cart.values import CartItem, ExpectedVersion, Receipt, ReceiptLine, Versioned

__all__ = [
    "MAX_COUNT",
    "MAX_ID_LENGTH",
    "MAX_LINES",
    "MAX_PRICE",
    "CartItem",
    "CartService",
    "ExpectedVersion",
    "Receipt",
    "ReceiptLine",
    "Versioned",
    "VersionedCarts",
]
