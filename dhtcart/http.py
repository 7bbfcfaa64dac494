"""The HTTP API: the seed's cart endpoints over :class:`~dhtcart.cart.CartService`.

Build the app with :func:`create_app` (nothing is opened at import time)::

    from dhtcart import CartService
    from dhtcart.http import create_app

    app = create_app(CartService.open("./dhtcart-data"))   # your service, you close it
    app = create_app(data_dir="./dhtcart-data")            # opened and closed by the app's lifespan
    app = create_app()                                     # an in-memory cart service (tests, demos)

or let ``dhtcart serve`` run it under uvicorn (``dhtcart.http:app_from_env`` is
the factory the workers import; it reads ``DHTCART_DATA``, ``DHTCART_SHARDS``,
``DHTCART_MAX_BODY_BYTES`` and ``DHTCART_THREAD_POOL``).

This layer only parses, calls and renders: every cart rule (id, count, price
and date validation, sale expiry, summing re-added items) lives in
``CartService``. Store calls are blocking: on fast local shards (memory, LMDB
without per-commit fsync) they take tens of microseconds and run on the event
loop, cheaper than a hop to a thread; on anything slower (Redis, fsync per
commit) they run in the server's thread pool. See :func:`create_app`.

Money is rendered as JSON numbers whose text is the exact decimal, always with
two decimal places (``"total": 30.00``); parse it with ``parse_float=Decimal``
(Python) or a decimal library to keep it exact. On input, prices are JSON
numbers too and are read as decimals, never through binary floating point.

Every error, including the framework's own (unknown route, wrong method,
malformed JSON, validation), has one shape::

    {"error": {"code": "item_not_found", "message": "...", "details": {...}}}

See ``docs/http.md`` for the endpoints, the status table and the limits.
"""

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Literal

try:
    from fastapi import FastAPI, Path, Request, Response
    from fastapi.exceptions import RequestValidationError
    from fastapi.routing import APIRoute
    from pydantic import (
        BaseModel,
        BeforeValidator,
        ConfigDict,
        Field,
        StrictBool,
        StrictInt,
        StrictStr,
        WithJsonSchema,
    )
    from pydantic_core import PydanticCustomError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.routing import Match
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f'dhtcart.http needs the server extra ({exc.name} is missing): pip install "dhtcart[server]"'
    ) from exc

from dhtcart import __version__
from dhtcart.cart import MAX_COUNT, MAX_ID_LENGTH, MAX_PRICE, CartItem, CartService, Receipt, check_datetime
from dhtcart.errors import (
    CartEmpty,
    Conflict,
    DHTCartError,
    InvalidInput,
    ItemNotFound,
    NotFound,
    SaleExpired,
    ShardUnavailable,
    StoreBusy,
    StoreClosed,
    TooManyRetries,
    ValidationError,
    VersionConflict,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "AddItemRequest",
    "CartItemResponse",
    "CartResponse",
    "ErrorResponse",
    "ReceiptResponse",
    "UpdateCountRequest",
    "app_from_env",
    "create_app",
    "dumps",
    "runs_inline",
]

DEFAULT_MAX_BODY_BYTES = 64 * 1024  #: the default request body limit
DEFAULT_DATA_DIR = "./dhtcart-data"

access_logger = logging.getLogger("dhtcart.access")
logger = logging.getLogger("dhtcart.http")


# -- JSON rendering: exact decimals as JSON numbers ------------------------------

_encode_str = json.encoder.encode_basestring_ascii


def dumps(value: object) -> str:
    """JSON text for ``value``; a :class:`~decimal.Decimal` becomes a number with its exact digits.

    >>> dumps({"total": Decimal("30.00"), "ids": ["036000291459"], "ok": True, "n": None})
    '{"total":30.00,"ids":["036000291459"],"ok":true,"n":null}'
    """
    if isinstance(value, str):
        return _encode_str(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"cannot render {value!r} as a JSON number")
        return format(value, "f")  # positional notation: never an exponent
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_encode_str(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, float):
        return json.dumps(value, allow_nan=False)
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


def _json(status: int, content: object, headers: Mapping[str, str] | None = None) -> Response:
    return Response(dumps(content), status_code=status, headers=headers, media_type="application/json")


def _error(
    status: int,
    code: str,
    message: str,
    details: object = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return _json(status, {"error": {"code": code, "message": message, "details": details}}, headers)


# -- models: what the OpenAPI document says ----------------------------------------


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
    "examples": ["2030-01-01T00:00:00Z"],
}


def _title(name: str, _: object) -> str:
    return name


class _Model(BaseModel):
    model_config = ConfigDict(field_title_generator=_title)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, field_title_generator=_title)


class AddItemRequest(_Strict):
    """Body of ``POST /item/{customerId}/{itemId}``."""

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

    newCount: StrictInt = Field(
        description=f"The new count, 0 to {MAX_COUNT}; 0 removes the line.",
        json_schema_extra={"minimum": 0, "maximum": MAX_COUNT},
    )


class CartItemResponse(_Model):
    """One line of a cart."""

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
    """What checkout returns; the cart is empty afterwards."""

    customerId: str
    lines: list[ReceiptLineResponse]
    total: MoneyOut
    checkedOutAt: datetime


class ErrorBody(_Model):
    code: str = Field(description="Stable, machine-readable error code.", examples=["item_not_found"])
    message: str = Field(description="What went wrong, for humans.")
    details: Any = Field(description="Structured context (fields, item ids), or null.")


class ErrorResponse(_Model):
    """Every error response has this shape."""

    error: ErrorBody


class HealthResponse(_Model):
    status: Literal["ok"]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Malformed JSON or bad request",
        404: "No such item, empty cart, or unknown route",
        409: "Sale price expired (details name the items), or too much contention",
        413: "Request body too large",
        415: "Body is not application/json",
        422: "Invalid input: ids, counts, prices, dates, unknown or mistyped fields",
        503: "Store unavailable (shard down, busy, shutting down)",
    }
    return {s: {"model": ErrorResponse, "description": text[s]} for s in statuses}


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


# -- rendering domain objects -----------------------------------------------------------


def _item(it: CartItem) -> dict[str, Any]:
    return {
        "itemId": it.item_id,
        "offeredPrice": it.offered_price,
        "itemCount": it.item_count,
        "specialSale": it.special_sale,
        "saleExpiration": None if it.sale_expiration is None else it.sale_expiration.isoformat(),
        "expired": it.expired,
    }


def _receipt(r: Receipt) -> dict[str, Any]:
    return {
        "customerId": r.customer_id,
        "lines": [
            {
                "itemId": ln.item_id,
                "unitPrice": ln.unit_price,
                "itemCount": ln.item_count,
                "lineTotal": ln.line_total,
            }
            for ln in r.lines
        ],
        "total": r.total,
        "checkedOutAt": r.checked_out_at.isoformat(),
    }


def _domain_error(exc: DHTCartError) -> Response:
    """The status and body for a library error (most specific class first)."""
    retry = {"Retry-After": "1"}
    if isinstance(exc, InvalidInput):
        where = "path" if exc.field in ("customerId", "itemId") else "body"
        return _invalid([_field_error(exc.field, where, "invalid_input", exc.message)])
    if isinstance(exc, ValidationError):
        return _invalid([_field_error("body", "body", "invalid_input", str(exc))])
    if isinstance(exc, ItemNotFound):
        return _error(404, "item_not_found", str(exc), {"customerId": exc.customer_id, "itemId": exc.item_id})
    if isinstance(exc, CartEmpty):
        return _error(404, "cart_empty", str(exc), {"customerId": exc.customer_id})
    if isinstance(exc, NotFound):
        return _error(404, "not_found", str(exc))
    if isinstance(exc, SaleExpired):
        return _error(409, "sale_expired", str(exc), {"customerId": exc.customer_id, "itemIds": exc.item_ids})
    if isinstance(exc, TooManyRetries):
        return _error(409, "too_many_retries", str(exc), None, retry)
    if isinstance(exc, VersionConflict):
        return _error(409, "version_conflict", str(exc), None, retry)
    if isinstance(exc, Conflict):
        return _error(409, "conflict", str(exc))
    if isinstance(exc, ShardUnavailable):
        # the shard's address is logged, not shown to clients
        logger.warning("%s", exc)
        return _error(
            503,
            "shard_unavailable",
            f"shard {exc.shard!r} is unavailable; try again later",
            {"shard": exc.shard},
            retry,
        )
    if isinstance(exc, StoreBusy):
        return _error(503, "store_busy", str(exc), None, retry)
    if isinstance(exc, StoreClosed):
        return _error(503, "unavailable", "the server is shutting down; try again", None, retry)
    logger.error("unexpected dhtcart error", exc_info=exc)
    return _error(500, "internal_error", "internal server error")


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _field_error(field: str, location: str | None, kind: str, message: str) -> dict[str, Any]:
    return {"field": field, "location": location, "type": kind, "message": message}


def _invalid(errors: list[dict[str, Any]]) -> Response:
    """422 with ``details.errors``: one entry per bad field; the message names the first."""
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return _error(422, "invalid_input", f"{first['field']}: {first['message']}{more}", {"errors": errors})


def _field_of(loc: tuple[Any, ...]) -> str:
    names = (
        [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "path", "query", "header") else [str(p) for p in loc]
    )
    return ".".join(names) or "body"


# -- request parsing: exact decimals, every JSON failure a 400 -----------------------------


class _JSONRequest(Request):
    """Reads a JSON body with floats as Decimals; any undecodable body is a JSONDecodeError (400)."""

    async def json(self) -> Any:
        if not hasattr(self, "_dhtcart_json"):
            body = await self.body()
            try:
                self._dhtcart_json = json.loads(body, parse_float=Decimal)
            except json.JSONDecodeError:
                raise
            except RecursionError:
                raise json.JSONDecodeError("nested too deeply", "", 0) from None
            except ValueError as exc:  # not UTF-8, an integer of more than 4300 digits
                raise json.JSONDecodeError(str(exc), "", 0) from None
        return self._dhtcart_json


class _JSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(_JSONRequest(request.scope, request.receive))

        return route_handler


# -- the outermost layer: body limit and the access log ----------------------------------


class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class _Edge:
    """Pure ASGI middleware: refuse bodies over the limit, log one line per request.

    A ``Content-Length`` over the limit is answered 413 without reading the
    body; a chunked body is counted as it arrives and refused once it passes
    the limit, so no more than ``limit`` bytes are ever buffered.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        limit = self.limit

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = -1
            for name, value in scope["headers"]:
                if name == b"content-length":
                    length = int(value) if value.isdigit() else -1
                    break
            if length > limit:
                response = _error(
                    413,
                    "payload_too_large",
                    f"request body of {length} bytes exceeds the limit of {limit} bytes",
                    {"limit": limit},
                    {"Connection": "close"},
                )
                await response(scope, receive, send_status)
                return
            received = 0

            async def receive_limited() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise _BodyTooLarge(limit)
                return message

            await self.app(scope, receive_limited, send_status)
        finally:
            if access_logger.isEnabledFor(logging.INFO):
                client = scope.get("client")
                raw = scope.get("raw_path")
                path = raw.decode("latin-1") if raw else scope.get("path", "")
                access_logger.info(
                    '%s "%s %s" %d %.2fms',
                    f"{client[0]}:{client[1]}" if client else "-",
                    scope.get("method", "-"),
                    path,
                    status or 500,
                    (time.perf_counter() - start) * 1000,
                )


# -- the app -------------------------------------------------------------------------------


class _Runtime:
    service: CartService | None = None
    inline = False  #: call the service on the event loop instead of in the thread pool


def runs_inline(service: CartService) -> bool:
    """Whether every shard answers from this machine's memory or disk cache, without a flush.

    Such calls take tens of microseconds: less than handing them to a thread
    and back, so the app makes them on the event loop. Anything else (Redis,
    LMDB in ``"power"`` durability, third-party backends unless they declare
    :attr:`~dhtcart.backends.base.Backend.fast_local`) goes to the thread pool.
    """
    return service.store.fast_local


def create_app(
    service: CartService | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    shards: int = 5,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    inline: bool | None = None,
) -> FastAPI:
    """The cart API as a FastAPI app.

    ``service``: serve this :class:`CartService` (the caller opens and closes
    it). Otherwise the app's lifespan opens ``CartService.open(data_dir,
    shards=shards)`` at startup and closes it at shutdown, or, with no
    ``data_dir``, an in-memory ``CartService()`` (for tests and demos; nothing
    persists). ``max_body_bytes`` limits request bodies (413 beyond it).

    ``inline``: where the (blocking) service calls run. ``None`` (default)
    decides by :func:`runs_inline`: on the event loop when every shard is
    in memory or in LMDB without a per-commit fsync (a call then costs tens
    of microseconds, a third of a hop to the thread pool and back), in the
    thread pool otherwise (Redis, ``"power"`` durability, other backends).
    ``False`` forces the thread pool; ``True`` forces the event loop.
    """
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 0:
        raise ValueError(f"max_body_bytes must be an int >= 0, got {max_body_bytes!r}")
    runtime = _Runtime()
    runtime.service = service
    if service is not None:
        runtime.inline = runs_inline(service) if inline is None else inline

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if runtime.service is not None:
            yield
            return
        opened = (
            await run_in_threadpool(CartService.open, os.fspath(data_dir), shards=shards)
            if data_dir is not None
            else CartService()
        )
        runtime.service = opened
        runtime.inline = runs_inline(opened) if inline is None else inline
        try:
            yield
        finally:
            runtime.service = None  # new requests get 503 from here on
            await run_in_threadpool(opened.close)

    app = FastAPI(
        title="dhtcart",
        version=__version__,
        summary="A shopping cart over a consistent-hashing DHT.",
        description=(
            "The seed's cart endpoints over `dhtcart.CartService`. Money is a JSON number written with "
            "its exact decimal digits (two places); every error is "
            '`{"error": {"code", "message", "details"}}`. See docs/http.md.'
        ),
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.add_middleware(_Edge, max_body_bytes=max_body_bytes)

    def carts() -> CartService:
        svc = runtime.service
        if svc is None:
            raise StoreClosed("the cart service is not running")
        return svc

    # -- handlers ---------------------------------------------------------------------

    async def on_domain_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DHTCartError)
        return _domain_error(exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        for e in errors:
            if e.get("type") == "json_invalid":
                reason = (e.get("ctx") or {}).get("error", "invalid JSON")
                return _error(
                    400,
                    "malformed_json",
                    f"request body is not valid JSON: {reason}",
                    {"position": e["loc"][1] if len(e["loc"]) > 1 else None},
                )
        if isinstance(exc.body, (bytes, bytearray)) and exc.body:
            ctype = request.headers.get("content-type", "")
            return _error(
                415,
                "unsupported_media_type",
                f"the body must be JSON, sent with Content-Type: application/json (got {ctype!r})",
                {"contentType": ctype or None},
            )
        details = []
        for e in errors:
            loc = tuple(e.get("loc", ()))
            message = str(e.get("msg", "invalid"))
            if loc == ("body",) and e.get("type") == "missing":
                message = "a JSON object body is required"
            details.append(_field_error(_field_of(loc), str(loc[0]) if loc else None, str(e.get("type")), message))
        return _invalid(details or [_field_error("body", "body", "invalid_input", "invalid request")])

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        if status == 404:
            empty = _empty_segment(app, request.scope)
            if empty is not None:
                return _invalid([_field_error(empty, "path", "invalid_input", "must not be empty")])
            message = f"no endpoint {request.method} {request.url.path}; see /docs"
        else:
            message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = exc.headers
        if status == 405:
            # Starlette names only the first route's methods; a path has one route per method here
            allowed = ", ".join(_allowed_methods(app, request.scope))
            headers = {**(headers or {}), "Allow": allowed}
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        code = _HTTP_CODES.get(status, "client_error" if status < 500 else "server_error")
        details = {"limit": max_body_bytes} if status == 413 else None
        return _error(status, code, message, details, headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal_error", "internal server error")

    app.add_exception_handler(DHTCartError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)

    # -- endpoints ----------------------------------------------------------------------

    def list_items(customer_id: CustomerId) -> Response:
        items = carts().list_items(customer_id)
        return _json(200, {"customerId": customer_id, "items": [_item(it) for it in items]})

    def add_item(customer_id: CustomerId, item_id: ItemId, body: AddItemRequest) -> Response:
        expiration: datetime | None = None
        if body.saleExpiration is not None:
            try:
                expiration = check_datetime(body.saleExpiration)
            except OverflowError:  # check_datetime lets this escape for years 1 and 9999
                raise InvalidInput("saleExpiration", "is out of range") from None
        item = carts().add_item(
            customer_id,
            item_id,
            body.offeredPrice,
            item_count=body.count(),
            special_sale=body.specialSale,
            sale_expiration=expiration,
        )
        return _json(200, _item(item))

    def update_count(customer_id: CustomerId, item_id: ItemId, body: UpdateCountRequest) -> Response:
        item = carts().update_count(customer_id, item_id, body.newCount)
        return Response(status_code=204) if item is None else _json(200, _item(item))

    def delete_item(customer_id: CustomerId, item_id: ItemId) -> Response:
        carts().delete_item(customer_id, item_id)
        return Response(status_code=204)

    def checkout(customer_id: CustomerId) -> Response:
        return _json(200, _receipt(carts().checkout(customer_id)))

    async def healthz() -> Response:
        if runtime.service is None:
            return _error(503, "unavailable", "the cart service is not running", None, {"Retry-After": "1"})
        return _OK()

    def dispatch(fn: Callable[..., Response]) -> Callable[..., Coroutine[Any, Any, Response]]:
        """An async endpoint calling ``fn`` on the loop (fast local shards) or in the thread pool."""

        @functools.wraps(fn)
        async def endpoint(*args: Any, **kwargs: Any) -> Response:
            if runtime.inline:
                return fn(*args, **kwargs)
            return await run_in_threadpool(fn, *args, **kwargs)

        return endpoint

    # -- routes (the seed's README paths, then the seed code's spellings) ----------------

    route = app.router.add_api_route
    for legacy, prefix in ((False, "/item"), (True, "/items")):
        suffix = "Legacy" if legacy else ""
        tag = _tags("seed spellings" if legacy else "cart")
        route(
            f"{prefix}/{{customerId}}/{{itemId}}",
            dispatch(add_item),
            methods=["POST"],
            route_class_override=_JSONRoute,
            operation_id=f"addItem{suffix}",
            summary="Add an item (re-adding sums the counts)",
            response_model=CartItemResponse,
            responses=_errors(400, 404, 409, 413, 415, 422, 503),
            deprecated=legacy,
            tags=tag,
        )
        route(
            f"{prefix}/{{customerId}}/{{itemId}}",
            dispatch(update_count),
            methods=["PUT"],
            route_class_override=_JSONRoute,
            operation_id=f"updateCount{suffix}",
            summary="Set an item's count (0 removes it: 204)",
            response_model=CartItemResponse,
            responses={
                204: {"description": "newCount was 0: the line was removed"},
                **_errors(400, 404, 409, 413, 415, 422, 503),
            },
            deprecated=legacy,
            tags=tag,
        )
        route(
            f"{prefix}/{{customerId}}/{{itemId}}",
            dispatch(delete_item),
            methods=["DELETE"],
            status_code=204,
            operation_id=f"deleteItem{suffix}",
            summary="Delete an item from the cart",
            response_class=Response,
            responses=_errors(404, 409, 413, 422, 503),
            deprecated=legacy,
            tags=tag,
        )
    route(
        "/items/{customerId}",
        dispatch(list_items),
        methods=["GET"],
        operation_id="listItems",
        summary="List the cart's items",
        response_model=CartResponse,
        responses=_errors(413, 422, 503),
        tags=_tags("cart"),
    )
    route(
        "/items/{customerId}",
        dispatch(checkout),
        methods=["DELETE"],
        operation_id="checkout",
        summary="Check out: empty the cart and return the receipt",
        response_model=ReceiptResponse,
        responses=_errors(404, 409, 413, 422, 503),
        tags=_tags("cart"),
    )
    route(
        "/checkout/{customerId}",
        dispatch(checkout),
        methods=["POST"],
        operation_id="checkoutLegacy",
        summary="Check out (the seed code's spelling)",
        response_model=ReceiptResponse,
        responses=_errors(404, 409, 413, 422, 503),
        deprecated=True,
        tags=_tags("seed spellings"),
    )
    route(
        "/healthz",
        healthz,
        methods=["GET"],
        operation_id="healthz",
        summary="Liveness: no store access",
        response_model=HealthResponse,
        responses=_errors(413, 503),
        tags=_tags("ops"),
    )
    return app


def _tags(name: str) -> list[str | Enum]:
    return [name]


class _OK(Response):
    """The health answer, rendered once."""

    media_type = "application/json"

    def __init__(self) -> None:
        super().__init__(b'{"status":"ok"}')


def _empty_segment(app: FastAPI, scope: Scope) -> str | None:
    """The path parameter left empty when a request would match a route but for it (``/item/a/``)."""
    path: str = scope.get("path", "")
    parts = path.split("/")
    if len(parts) < 3 or all(parts[1:]):
        return None
    filled = "/".join(p if (i == 0 or p) else "\x00" for i, p in enumerate(parts))
    probe = {**scope, "path": filled, "root_path": ""}
    for r in app.router.routes:
        match, child = r.matches(probe)
        if match is Match.FULL:
            for name, value in child.get("path_params", {}).items():
                if value == "\x00":
                    return str(name)
    return None


def _allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route accepts on this path."""
    methods: set[str] = set()
    for r in app.router.routes:
        match, _ = r.matches(scope)
        if match is not Match.NONE:
            methods.update(getattr(r, "methods", None) or ())
    return sorted(methods)


def app_from_env() -> FastAPI:
    """The app for ``uvicorn --factory dhtcart.http:app_from_env`` (what ``dhtcart serve`` runs).

    Reads ``DHTCART_DATA`` (default ``./dhtcart-data``), ``DHTCART_SHARDS``
    (default 5, used when the store is created), ``DHTCART_MAX_BODY_BYTES``
    (default 65536) and ``DHTCART_THREAD_POOL`` (``1``: every store call in the
    thread pool, see :func:`create_app`). Each worker process calls this and
    opens the store itself.
    """
    return create_app(
        data_dir=os.environ.get("DHTCART_DATA") or DEFAULT_DATA_DIR,
        shards=_env_int("DHTCART_SHARDS", 5),
        max_body_bytes=_env_int("DHTCART_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        inline=False if os.environ.get("DHTCART_THREAD_POOL", "") not in ("", "0") else None,
    )


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None
