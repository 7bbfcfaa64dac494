"""What the OpenAPI document says: the request and response models, the path and header parameters.

The models document the shapes; :mod:`dhtcart.render` renders them (a test
checks that the two name the same fields). Requests are validated by these
models (strict types, no unknown fields); every cart rule is checked again by
:class:`~dhtcart.cart.CartService`.
"""

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import Header, Path
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr, WithJsonSchema
from pydantic_core import PydanticCustomError

from dhtcart.cart import MAX_COUNT, MAX_ID_LENGTH, MAX_PRICE
from dhtcart.errors import InvalidInput

__all__ = [
    "ADD_EXAMPLES",
    "ETAG_HEADER",
    "FIELDS",
    "SEED_ADD_EXAMPLES",
    "UPDATE_EXAMPLES",
    "AddItemRequest",
    "AssetName",
    "CartItemResponse",
    "CartResponse",
    "CustomerId",
    "EmptyResponse",
    "ErrorBody",
    "ErrorResponse",
    "HealthResponse",
    "IfMatch",
    "IfNoneMatch",
    "ItemId",
    "MoneyOut",
    "PriceIn",
    "ReadyResponse",
    "ReceiptLineResponse",
    "ReceiptResponse",
    "SeedLineResponse",
    "UpdateCountRequest",
    "error_responses",
]


#: each CartService parameter's name in a request, and where it is there: for the errors
#: (the library names its own parameters, ``item_count``; a client reads ``itemCount``)
FIELDS: Mapping[str, tuple[str, str]] = {
    "customer_id": ("customerId", "path"),
    "item_id": ("itemId", "path"),
    "offered_price": ("offeredPrice", "body"),
    "item_count": ("itemCount", "body"),
    "special_sale": ("specialSale", "body"),
    "sale_expiration": ("saleExpiration", "body"),
    "new_count": ("newCount", "body"),
    "expected_version": ("If-Match", "header"),
}


def _json_number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise PydanticCustomError("number_type", "Input should be a JSON number, like 10.50")
    return value


#: a price on input: a JSON number (read as a Decimal); CartService checks its range and cents
PriceIn = Annotated[
    Any,
    BeforeValidator(_json_number),
    WithJsonSchema(
        {
            "type": "number",
            "minimum": 0,
            "maximum": int(MAX_PRICE),
            "description": "Unit price: a JSON number, 0 to 1e9, at most two decimal places (read exactly).",
            "examples": [50, 10.99],
        }
    ),
]

#: money on output: a JSON number whose text is the exact decimal, two places
MoneyOut = Annotated[
    Decimal,
    WithJsonSchema(
        {
            "type": "number",
            "description": "Exact decimal amount, always written with two decimal places (e.g. 30.00).",
            "examples": [30.00],
        }
    ),
]

# documented for clients and fuzzers; CartService enforces them
_COUNT_RANGE: dict[str, Any] = {"minimum": 1, "maximum": MAX_COUNT}

_DATE_TIME_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}],
    "description": "ISO 8601 date-time; without an offset it is taken as UTC.",
    "examples": ["2099-12-31T23:59:59Z"],
}


def _title(name: str, _: object) -> str:
    return name


class _Model(BaseModel):
    model_config = ConfigDict(field_title_generator=_title)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, field_title_generator=_title)


#: whole request bodies, documented so that no viewer makes one up from the fields (Swagger UI
#: would send every field, itemCount and its synonym unitCount together, which is refused);
#: a test sends each of them and expects success
ADD_EXAMPLES: dict[str, dict[str, Any]] = {
    "add": {"summary": "Two units", "value": {"offeredPrice": 50, "itemCount": 2}},
    "sale": {
        "summary": "A sale price, until a date",
        "value": {"offeredPrice": 10.99, "itemCount": 1, "specialSale": True, "saleExpiration": "2099-12-31T23:59:59Z"},
    },
}
SEED_ADD_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed": {"summary": "The seed's spelling: unitCount", "value": {"offeredPrice": 50, "unitCount": 2}},
    **ADD_EXAMPLES,
}
UPDATE_EXAMPLES: dict[str, dict[str, Any]] = {
    "set": {"summary": "Three units", "value": {"newCount": 3}},
    "remove": {"summary": "0 removes the line", "value": {"newCount": 0}},
}


class AddItemRequest(_Strict):
    """Body of ``POST /item/{customerId}/{itemId}``."""

    model_config = ConfigDict(json_schema_extra={"examples": [ADD_EXAMPLES["add"]["value"]]})

    offeredPrice: PriceIn
    itemCount: StrictInt = Field(
        1,
        description=f"Units to add, 1 to {MAX_COUNT}; added to the line if the item is already there.",
        json_schema_extra=_COUNT_RANGE,
    )
    unitCount: Annotated[StrictInt | None, WithJsonSchema({"type": "integer", **_COUNT_RANGE})] = Field(
        None,
        description="The seed's spelling of itemCount (give one, not both).",
        json_schema_extra={"deprecated": True},
    )
    specialSale: StrictBool = Field(False, description="Whether offeredPrice is a sale price.")
    saleExpiration: Annotated[StrictStr | None, WithJsonSchema(_DATE_TIME_SCHEMA)] = Field(
        None, description="When the sale price ends (with specialSale)."
    )

    def count(self) -> int:
        """``itemCount``, or the seed's ``unitCount``; giving both is an error."""
        given = self.model_fields_set
        if "unitCount" in given:
            if "itemCount" in given:
                raise InvalidInput("unitCount", "give itemCount or its synonym unitCount, not both")
            if self.unitCount is None:
                raise InvalidInput("unitCount", "must be a whole number, not null")
            return self.unitCount
        return self.itemCount


class UpdateCountRequest(_Strict):
    """Body of ``PUT /item/{customerId}/{itemId}``."""

    model_config = ConfigDict(json_schema_extra={"examples": [UPDATE_EXAMPLES["set"]["value"]]})

    newCount: StrictInt = Field(
        description=f"The new count, 0 to {MAX_COUNT}; 0 removes the line.",
        json_schema_extra={"minimum": 0, "maximum": MAX_COUNT},
    )


class CartItemResponse(_Model):
    """One line of a cart (:func:`dhtcart.render.line`)."""

    itemId: str
    offeredPrice: MoneyOut
    itemCount: int
    specialSale: bool
    saleExpiration: datetime | None
    expired: bool = Field(description="A sale price whose expiration has passed: checkout refuses it.")


class CartResponse(_Model):
    """A customer's cart, lines in the order they were added (empty for an unknown customer)."""

    customerId: str
    items: list[CartItemResponse]


class ReceiptLineResponse(_Model):
    itemId: str
    unitPrice: MoneyOut
    itemCount: int
    lineTotal: MoneyOut


class ReceiptResponse(_Model):
    """What checkout returns; the cart is empty afterwards (:func:`dhtcart.render.receipt`)."""

    customerId: str
    lines: list[ReceiptLineResponse]
    total: MoneyOut
    checkedOutAt: datetime


class SeedLineResponse(_Model):
    """One line in the seed code's shape (``--compat seed``; :func:`dhtcart.render.seed_line`)."""

    itemId: str
    unitCount: int
    offeredPrice: MoneyOut
    specialSale: bool
    saleExpiration: datetime | None
    timestamp: float | None = Field(description="When the item was last added, epoch seconds (milliseconds).")


class EmptyResponse(BaseModel):
    """``{}``: what the seed code answered for a delete or a checkout (``--compat seed``)."""

    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Model):
    code: str = Field(description="Stable, machine-readable error code.", examples=["item_not_found"])
    message: str = Field(description="What went wrong, for humans.")
    details: Any = Field(description="Structured context (fields, item ids), or null.")


class ErrorResponse(_Model):
    """Every error response has this shape."""

    error: ErrorBody


class HealthResponse(_Model):
    status: Literal["ok"]


class ReadyResponse(_Model):
    status: Literal["ready"]
    shards: dict[str, Literal["ok"]] = Field(description="Every shard, and that it answered.")


_ERROR_TEXT = {
    400: "Malformed JSON or bad request",
    404: "No such item, empty cart, or unknown route",
    409: "Sale price expired (details name the items), or too much contention",
    412: "If-Match names another version of the cart than the current one; nothing changed",
    413: "Request body too large",
    415: "Body is not application/json",
    422: "Invalid input: ids, counts, prices, dates, unknown or mistyped fields",
    503: "Store unavailable (shard down, busy, shutting down), or a shard not ready",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse, "description": _ERROR_TEXT[s]} for s in statuses}


ETAG_HEADER = {"ETag": {"description": "The cart's version after the request (strong).", "schema": {"type": "string"}}}

CustomerId = Annotated[
    str,
    Path(
        alias="customerId",
        description=f"1 to {MAX_ID_LENGTH} printable characters, no surrounding white space, no '/'.",
        examples=["alice"],
    ),
]
ItemId = Annotated[
    str,
    Path(
        alias="itemId",
        description=f"1 to {MAX_ID_LENGTH} printable characters (UPC leading zeros are kept), no '/'.",
        examples=["036000291459"],
    ),
]
AssetName = Annotated[str, Path(alias="name", description="A Swagger UI or ReDoc asset.")]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Change the cart only at this version: an ETag from a GET, e.g. "7". 412 otherwise.',
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        description=(
            'The ETag of a cart already held, e.g. "7" (or * for any existing cart): '
            "304 Not Modified, without a body, when the cart is still at it."
        ),
    ),
]
