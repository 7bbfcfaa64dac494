"""The response profiles: what each cart operation answers, in dhtcart's shapes or the seed code's."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dhtcart import render
from dhtcart.cart import CartItem, Receipt
from dhtcart.http.models import CartItemResponse, CartResponse, EmptyResponse, ReceiptResponse, SeedLineResponse

__all__ = [
    "PROFILES",
    "Profile",
]


@dataclass(frozen=True)
class Profile:
    """What the cart operations answer: the shapes and the statuses of one API dialect.

    ``removed`` is the body of a delete (or an update to 0), ``None`` for
    ``204 No Content``; ``empty_checkout`` and ``empty_checkout_legacy`` are
    the bodies for checking out an empty cart (``DELETE /items/{c}``, ``POST
    /checkout/{c}``), ``None`` for ``404 cart_empty``. ``models`` are the
    response models the OpenAPI document names.
    """

    name: str
    cart: Callable[[str, list[CartItem]], object]
    line: Callable[[CartItem], object]
    receipt: Callable[[Receipt], object]
    receipt_legacy: Callable[[Receipt], object]
    removed: object | None
    empty_checkout: object | None
    empty_checkout_legacy: object | None
    models: Mapping[str, Any]


def _seed_cart(customer_id: str, items: list[CartItem]) -> object:
    return render.seed_cart(items)


def _nothing(receipt: Receipt) -> object:
    return {}


#: the response profiles, by the name ``--compat`` takes
PROFILES: Mapping[str, Profile] = {
    "default": Profile(
        "default",
        render.cart,
        render.line,
        render.receipt,
        render.receipt,
        removed=None,
        empty_checkout=None,
        empty_checkout_legacy=None,
        models={
            "cart": CartResponse,
            "line": CartItemResponse,
            "updated": CartItemResponse,  # newCount 0 is a 204
            "receipt": ReceiptResponse,
            "receipt_legacy": ReceiptResponse,
            "removed": None,
        },
    ),
    "seed": Profile(
        "seed",
        _seed_cart,
        render.seed_line,
        _nothing,
        render.seed_receipt,
        removed={},
        empty_checkout={},
        empty_checkout_legacy=[],
        models={
            "cart": list[SeedLineResponse],
            "line": SeedLineResponse,
            "updated": SeedLineResponse | EmptyResponse,  # newCount 0 removes the line: {}
            "receipt": EmptyResponse,
            "receipt_legacy": list[SeedLineResponse],
            "removed": EmptyResponse,
        },
    ),
}
