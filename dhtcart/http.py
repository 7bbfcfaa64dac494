"""The HTTP API: the seed's cart endpoints over :class:`~dhtcart.cart.CartService`.

Build the app with :func:`create_app` (nothing is opened at import time)::

    from dhtcart import CartService
    from dhtcart.http import create_app

    app = create_app(CartService.open("./dhtcart-data"))   # your service, you close it
    app = create_app(data_dir="./dhtcart-data")            # opened and closed by the app's lifespan
    app = create_app()                                     # an in-memory cart service (tests, demos)
    app = create_app(compat="seed")                        # the seed code's response shapes

or let ``dhtcart serve`` run it under uvicorn (``dhtcart.http:app_from_env`` is
the factory the workers import; it reads the ``DHTCART_*`` variables through
:class:`~dhtcart.settings.Settings`).

How the module is laid out:

* **handlers** (``list_items``, ``add_item``, ...) are plain module-level
  ``async`` functions. Their signatures are what the OpenAPI document says;
  :class:`_Operation` binds a request to them (path parameters, ``If-Match``,
  a JSON body validated by its pydantic model) without FastAPI's dependency
  machinery, which cost more than the cart operation itself.
* **state** lives in ``app.state.dhtcart`` (:class:`AppState`): the settings,
  the service, the response profile, the metrics.
* **profiles** (:class:`Profile`): ``default`` answers dhtcart's documented
  shapes, ``seed`` the seed code's (:mod:`dhtcart.render` renders both).
* **the edge** (:class:`_Edge`): body limit, ``HEAD``, the access log and the
  request metrics, for every route.

This layer only parses, calls and renders: every cart rule lives in
``CartService``. Store calls are blocking: on shards that declare
:attr:`~dhtcart.backends.base.Backend.fast_local` (memory, LMDB without
per-commit fsync) they take tens of microseconds and run on the event loop,
cheaper than a hop to a thread; on anything slower (Redis, fsync per commit,
third-party backends) they run in the server's thread pool. The choice is
made per request, so a store whose shards change while the server runs is
served the right way.

Versions: ``GET /items/{c}`` carries the cart's version as a strong ``ETag``;
``PUT``, ``POST`` and ``DELETE`` accept ``If-Match`` (412 when the cart is at
another version; the write is one compare-and-set at that version) and
return the new ``ETag``.

Every error, including the framework's own (unknown route, wrong method,
malformed JSON, validation), has one shape::

    {"error": {"code": "item_not_found", "message": "...", "details": {...}}}

See ``docs/http.md`` for the endpoints, both profiles' shapes, the headers,
the metrics and the limits.
"""

import asyncio
import inspect
import json
import logging
import os
import re
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

try:
    import fastapi_offline
    from fastapi import FastAPI, Header, Path, Request, Response, params
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import FileResponse, HTMLResponse
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
    from pydantic import ValidationError as PydanticValidationError
    from pydantic_core import PydanticCustomError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.routing import Match
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f'dhtcart.http needs the server extra ({exc.name} is missing): pip install "dhtcart[server]"'
    ) from exc

from dhtcart import __version__, render
from dhtcart.cart import (
    MAX_COUNT,
    MAX_ID_LENGTH,
    MAX_PRICE,
    CartItem,
    CartService,
    ExpectedVersion,
    Receipt,
    Versioned,
    VersionedCarts,
)
from dhtcart.errors import (
    CartEmpty,
    Conflict,
    CorruptData,
    DHTCartError,
    InvalidInput,
    ItemNotFound,
    NotFound,
    PreconditionFailed,
    SaleExpired,
    ShardUnavailable,
    StoreBusy,
    StoreClosed,
    TooManyRetries,
    ValidationError,
    VersionConflict,
)
from dhtcart.metrics import Metrics
from dhtcart.render import dumps
from dhtcart.settings import Settings

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "PROFILES",
    "AddItemRequest",
    "AppState",
    "CartItemResponse",
    "CartResponse",
    "ErrorResponse",
    "Profile",
    "ReceiptResponse",
    "SeedLineResponse",
    "UpdateCountRequest",
    "app_from_env",
    "create_app",
    "dumps",
    "runs_inline",
]

DEFAULT_MAX_BODY_BYTES = Settings().max_body_bytes  #: the default request body limit
READY_TIMEOUT = 2.0  #: seconds /readyz waits for a shard to answer
FAST_LOCAL_REFRESH = 1.0  #: seconds between two looks at whether the shards are fast and local

access_logger = logging.getLogger("dhtcart.access")
logger = logging.getLogger("dhtcart.http")

T = TypeVar("T")


# -- responses ------------------------------------------------------------------------------


class _JSONResponse(Response):
    """A JSON body rendered by :func:`dhtcart.render.dumps_bytes`, its headers built directly."""

    media_type = "application/json"

    def __init__(self, status: int, content: object, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status
        self.background = None
        self.body = body = render.dumps_bytes(content)
        raw = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
        if headers:
            raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.raw_headers = raw


_json = _JSONResponse


def _error(
    status: int,
    code: str,
    message: str,
    details: object = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return _json(status, {"error": {"code": code, "message": message, "details": details}}, headers)


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


_ENTITY_TAG = re.compile(r'"([0-9]{1,19})"')


def expected_version(if_match: str | None) -> ExpectedVersion:
    """The versions an ``If-Match`` header allows: ``None`` (no header, or ``*``), one, or several.

    Tags are compared strongly (RFC 9110): a weak tag (``W/"3"``) or one that
    is not a dhtcart version never matches, so the write gets 412.

    >>> expected_version('"3"'), expected_version('*'), sorted(expected_version('"3", "5"'))
    (3, None, [3, 5])
    >>> expected_version('W/"3"')
    frozenset()
    """
    if if_match is None or if_match.strip() == "*":
        return None
    versions = {int(m.group(1)) for tag in if_match.split(",") if (m := _ENTITY_TAG.fullmatch(tag.strip()))}
    if len(versions) == 1:
        return versions.pop()
    return frozenset(versions)


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


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse, "description": _ERROR_TEXT[s]} for s in statuses}


_ETAG_HEADER = {"ETag": {"description": "The cart's version after the request (strong).", "schema": {"type": "string"}}}

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
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Change the cart only at this version: an ETag from a GET, e.g. "7". 412 otherwise.',
    ),
]


# -- profiles: what each operation answers ---------------------------------------------------


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


# -- state --------------------------------------------------------------------------------


@dataclass
class AppState:
    """What the handlers share, kept in ``app.state.dhtcart``.

    ``service`` is ``None`` before the lifespan starts and after it ends (the
    handlers answer 503 then). ``inline`` forces where service calls run
    (``None``: decided per request by :func:`runs_inline`).
    """

    settings: Settings
    profile: Profile
    service: CartService | None = None
    data_dir: str | None = None
    inline: bool | None = None
    metrics: Metrics | None = None
    openapi: bytes | None = field(default=None, repr=False)
    _fast_local: bool = field(default=False, repr=False)
    _fast_local_until: float = field(default=0.0, repr=False)

    def runs_inline(self, service: CartService) -> bool:
        """Where service calls run now: forced by ``inline``, else :func:`runs_inline`, asked once a second."""
        if self.inline is not None:
            return self.inline
        now = time.monotonic()
        if now >= self._fast_local_until:  # the shards may change while the server runs
            self._fast_local = runs_inline(service)
            self._fast_local_until = now + FAST_LOCAL_REFRESH
        return self._fast_local


def _state(request: Request) -> AppState:
    state: AppState = request.scope["app"].state.dhtcart
    return state


def runs_inline(service: CartService) -> bool:
    """Whether every shard answers from this machine's memory or disk cache, without a flush.

    Such calls take tens of microseconds: less than handing them to a thread
    and back, so the app makes them on the event loop. Anything else (Redis,
    LMDB in ``"power"`` durability, third-party backends unless they declare
    :attr:`~dhtcart.backends.base.Backend.fast_local`) goes to the thread pool.
    """
    return service.store.fast_local


_STORE_ERRORS = (ShardUnavailable, StoreBusy, StoreClosed, TooManyRetries, CorruptData)


async def _cart(request: Request, operation: str, customer_id: str, call: Callable[[VersionedCarts], T]) -> T:
    """Run one cart operation where it belongs (event loop or thread pool), counting it by shard."""
    state = _state(request)
    service = state.service
    if service is None:
        raise StoreClosed("the cart service is not running")
    metrics = state.metrics
    try:
        if state.runs_inline(service):
            result = call(service.versioned)
        else:
            result = await run_in_threadpool(call, service.versioned)
    except ValidationError:
        raise  # refused before the store was asked
    except _STORE_ERRORS as exc:
        if metrics is not None:
            shard = exc.shard if isinstance(exc, ShardUnavailable) else _shard(service, customer_id)
            metrics.store_operation(shard, operation)
            metrics.store_error(shard, type(exc).__name__)
        raise
    except DHTCartError:
        if metrics is not None:
            metrics.store_operation(_shard(service, customer_id), operation)
        raise
    if metrics is not None:
        metrics.store_operation(_shard(service, customer_id), operation)
    return result


def _shard(service: CartService, customer_id: str) -> str:
    try:
        return service.shard_of(customer_id)
    except DHTCartError:
        return "unknown"


# -- handlers: the cart ------------------------------------------------------------------------


async def list_items(request: Request, customer_id: CustomerId) -> Response:
    """``GET /items/{customerId}``: the cart, with its version as the ``ETag``."""
    items, version = await _cart(request, "list", customer_id, lambda carts: carts.list_items(customer_id))
    return _json(200, _state(request).profile.cart(customer_id, items), _etag(version))


async def add_item(
    request: Request, customer_id: CustomerId, item_id: ItemId, body: AddItemRequest, if_match: IfMatch = None
) -> Response:
    """``POST /item/{customerId}/{itemId}``: add units; the line after the add."""
    count = body.count()
    expected = expected_version(if_match)

    def add(carts: VersionedCarts) -> Versioned[CartItem]:
        return carts.add_item(
            customer_id,
            item_id,
            body.offeredPrice,
            count,
            body.specialSale,
            body.saleExpiration,
            expected_version=expected,
        )

    item, version = await _cart(request, "add", customer_id, add)
    return _json(200, _state(request).profile.line(item), _etag(version))


async def update_count(
    request: Request, customer_id: CustomerId, item_id: ItemId, body: UpdateCountRequest, if_match: IfMatch = None
) -> Response:
    """``PUT /item/{customerId}/{itemId}``: set the count; 0 removes the line."""
    expected = expected_version(if_match)
    item, version = await _cart(
        request,
        "update",
        customer_id,
        lambda carts: carts.update_count(customer_id, item_id, body.newCount, expected_version=expected),
    )
    profile = _state(request).profile
    if item is None:
        return _removed(profile, version)
    return _json(200, profile.line(item), _etag(version))


async def delete_item(request: Request, customer_id: CustomerId, item_id: ItemId, if_match: IfMatch = None) -> Response:
    """``DELETE /item/{customerId}/{itemId}``: delete the line."""
    expected = expected_version(if_match)
    _, version = await _cart(
        request, "delete", customer_id, lambda carts: carts.delete_item(customer_id, item_id, expected_version=expected)
    )
    return _removed(_state(request).profile, version)


def _removed(profile: Profile, version: int) -> Response:
    if profile.removed is None:
        return Response(status_code=204, headers=_etag(version))
    return _json(200, profile.removed, _etag(version))


async def checkout(request: Request, customer_id: CustomerId, if_match: IfMatch = None) -> Response:
    """``DELETE /items/{customerId}``: empty the cart atomically; the receipt."""
    return await _checkout(request, customer_id, if_match, legacy=False)


async def checkout_legacy(request: Request, customer_id: CustomerId, if_match: IfMatch = None) -> Response:
    """``POST /checkout/{customerId}``: checkout, the seed code's spelling."""
    return await _checkout(request, customer_id, if_match, legacy=True)


async def _checkout(request: Request, customer_id: str, if_match: str | None, *, legacy: bool) -> Response:
    profile = _state(request).profile
    expected = expected_version(if_match)
    empty = profile.empty_checkout_legacy if legacy else profile.empty_checkout
    try:
        receipt, version = await _cart(
            request, "checkout", customer_id, lambda carts: carts.checkout(customer_id, expected_version=expected)
        )
    except CartEmpty:
        if empty is None:
            raise
        _, version = await _cart(request, "list", customer_id, lambda carts: carts.list_items(customer_id))
        return _json(200, empty, _etag(version))
    return _json(200, (profile.receipt_legacy if legacy else profile.receipt)(receipt), _etag(version))


# -- handlers: operations --------------------------------------------------------------------


class _OK(Response):
    """The health answer, rendered once."""

    media_type = "application/json"

    def __init__(self) -> None:
        super().__init__(b'{"status":"ok"}')


async def healthz(request: Request) -> Response:
    """``GET /healthz``: liveness; touches no store."""
    if _state(request).service is None:
        return _error(503, "unavailable", "the cart service is not running", None, {"Retry-After": "1"})
    return _OK()


async def readyz(request: Request) -> Response:
    """``GET /readyz``: whether every shard answers (each asked at once, :data:`READY_TIMEOUT` s at most)."""
    service = _state(request).service
    if service is None:
        return _error(503, "unavailable", "the cart service is not running", None, {"Retry-After": "1"})
    shards = service.store.servers

    async def probe(name: str, count: Callable[[], int]) -> str:
        try:
            await asyncio.wait_for(run_in_threadpool(count), READY_TIMEOUT)
        except asyncio.TimeoutError:
            logger.warning("readyz: shard %r did not answer within %s s", name, READY_TIMEOUT)
            return "timeout"
        except Exception as exc:  # a probe: whatever the shard raised, it is not ready
            logger.warning("readyz: shard %r: %s", name, exc)
            return "unavailable"
        return "ok"

    states = await asyncio.gather(*(probe(name, server.count) for name, server in shards.items()))
    report = dict(zip(shards, states))
    if all(s == "ok" for s in states):
        return _json(200, {"status": "ready", "shards": report})
    down = sorted(name for name, s in report.items() if s != "ok")
    return _error(
        503, "not_ready", f"shards not answering: {', '.join(down)}", {"shards": report}, {"Retry-After": "1"}
    )


async def metrics(request: Request) -> Response:
    """``GET /metrics``: the Prometheus text format, every worker's values summed."""
    state = _state(request)
    if state.metrics is None:
        return _error(404, "not_found", "metrics are switched off (dhtcart serve --no-metrics)")
    body, content_type = await run_in_threadpool(state.metrics.render)
    return Response(body, media_type=content_type)


# -- handlers: the document and its viewers, served from the package (no CDN) -------------------

_ASSETS_DIR = FilePath(next(iter(fastapi_offline.__path__))) / "static"
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
AssetName = Annotated[str, Path(alias="name", description="A Swagger UI or ReDoc asset.")]


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``: the OpenAPI document (built once)."""
    state = _state(request)
    if state.openapi is None:
        state.openapi = json.dumps(request.scope["app"].openapi(), ensure_ascii=False).encode()
    return Response(state.openapi, media_type="application/json")


async def swagger_ui(request: Request) -> Response:
    """``GET /docs``: Swagger UI, its scripts and styles from this package."""
    root = request.scope.get("root_path", "")
    page: HTMLResponse = get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title="dhtcart - Swagger UI",
        swagger_js_url=f"{root}/docs/static/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/static/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/static/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from the internet
    )
    return page


async def redoc(request: Request) -> Response:
    """``GET /redoc``: ReDoc, from this package."""
    root = request.scope.get("root_path", "")
    page: HTMLResponse = get_redoc_html(
        openapi_url=f"{root}/openapi.json",
        title="dhtcart - ReDoc",
        redoc_js_url=f"{root}/docs/static/redoc.standalone.js",
        redoc_favicon_url=f"{root}/docs/static/favicon.png",
        with_google_fonts=False,
    )
    return page


async def docs_asset(request: Request, name: AssetName) -> Response:
    """``GET /docs/static/{name}``: one of the viewers' files."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        return _error(404, "not_found", f"no asset {name!r}")
    return FileResponse(_ASSETS_DIR / name, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})


# -- binding a request to a handler ------------------------------------------------------------


class _Param(NamedTuple):
    name: str
    kind: Literal["request", "path", "header", "body"]
    key: str
    model: type[BaseModel] | None


def _params_of(endpoint: Callable[..., Any]) -> list[_Param]:
    """How to fill each parameter of ``endpoint``, read once from its signature."""
    hints = typing.get_type_hints(endpoint, include_extras=True)
    out: list[_Param] = []
    for name in inspect.signature(endpoint).parameters:
        hint = hints[name]
        if hint is Request:
            out.append(_Param(name, "request", "", None))
            continue
        metadata = getattr(hint, "__metadata__", ())
        for meta in metadata:
            if isinstance(meta, params.Path):
                out.append(_Param(name, "path", meta.alias or name, None))
                break
            if isinstance(meta, params.Header):
                out.append(_Param(name, "header", (meta.alias or name).lower(), None))
                break
        else:
            base = typing.get_args(hint)[0] if metadata else hint
            if not (isinstance(base, type) and issubclass(base, BaseModel)):
                raise InvalidInput(name, f"{endpoint.__name__}: no way to bind a parameter of type {hint!r}")
            out.append(_Param(name, "body", "", base))
    return out


class _Refused(Exception):
    """A request refused while binding it: the response says why."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _is_json(content_type: str) -> bool:
    main = content_type.partition(";")[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


_DECODER = json.JSONDecoder(parse_float=Decimal)  # one decoder: json.loads(..., parse_float=) makes one per call


async def _read_body(receive: Receive) -> bytes:
    """The whole request body, straight from the ASGI messages."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Refused(_error(408, "request_timeout", "the client went away before sending its body"))
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if not chunks:
                return body
            chunks.append(body)
            return b"".join(chunks)
        chunks.append(body)


def _parse_body(raw: bytes, content_type: str, model: type[BaseModel]) -> BaseModel:
    """The JSON body, numbers with a fraction read as Decimals, validated by ``model``."""
    if not raw:
        raise _Refused(_invalid([_field_error("body", "body", "missing", "a JSON object body is required")]))
    if not _is_json(content_type):
        raise _Refused(
            _error(
                415,
                "unsupported_media_type",
                f"the body must be JSON, sent with Content-Type: application/json (got {content_type!r})",
                {"contentType": content_type or None},
            )
        )
    try:
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            text = ""
        # not UTF-8, or with a byte-order mark: let json find the encoding (or refuse it)
        document = _DECODER.decode(text) if text and text[0] != "\ufeff" else json.loads(raw, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise _Refused(_malformed(exc.msg, exc.pos)) from None
    except RecursionError:
        raise _Refused(_malformed("nested too deeply", 0)) from None
    except ValueError as exc:  # not UTF-8, an integer of more than 4300 digits
        raise _Refused(_malformed(str(exc), 0)) from None
    try:
        return model.model_validate(document)
    except PydanticValidationError as exc:
        raise _Refused(_pydantic_invalid(exc.errors(), "body")) from None


class _Operation(APIRoute):
    """An API route that FastAPI documents from the handler's signature, and that binds requests itself.

    FastAPI's request handler (dependency solving, per-request exit stacks,
    response-model serialisation) cost more than a cart operation; this one
    reads path parameters and headers from the scope and validates the body
    with the handler's model, producing the same errors in dhtcart's shape.
    It also names the route in the scope (``dhtcart.route``), for the metrics.
    """

    def __init__(self, path: str, endpoint: Callable[..., Awaitable[Response]], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self._handler = endpoint
        self._params = _params_of(endpoint)
        # the headers to look for: the handler's, and Content-Type when it takes a body
        self._headers = {p.key: p.name for p in self._params if p.kind == "header"}
        if any(p.kind == "body" for p in self._params):
            self._headers["content-type"] = ""
        self.app = self._serve

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["dhtcart.route"] = self.path  # for the metrics (405s are named in on_http_error)
        try:
            kwargs: dict[str, Any] = {}
            wanted = self._headers
            found: dict[str, str] = {}
            if wanted:
                for name, value in scope["headers"]:
                    key = name.decode("latin-1")
                    if key in wanted and key not in found:
                        found[key] = value.decode("latin-1")
            for p in self._params:
                if p.kind == "path":
                    kwargs[p.name] = scope["path_params"][p.key]
                elif p.kind == "header":
                    kwargs[p.name] = found.get(p.key)
                elif p.kind == "request":
                    kwargs[p.name] = Request(scope, receive, send)
                else:
                    assert p.model is not None
                    raw = await _read_body(receive)
                    kwargs[p.name] = _parse_body(raw, found.get("content-type", ""), p.model)
            response = await self._handler(**kwargs)
        except _Refused as refused:
            response = refused.response
        except DHTCartError as exc:
            response = _domain_error(exc)
        await response(scope, receive, send)


# -- errors -----------------------------------------------------------------------------------

_RETRY = {"Retry-After": "1"}


def _domain_error(exc: DHTCartError) -> Response:
    """The status and body for a library error (most specific class first)."""
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
    if isinstance(exc, PreconditionFailed):
        current = f'"{exc.actual}"'
        return _error(
            412, "precondition_failed", str(exc), {"customerId": exc.customer_id, "etag": current}, {"ETag": current}
        )
    if isinstance(exc, SaleExpired):
        return _error(409, "sale_expired", str(exc), {"customerId": exc.customer_id, "itemIds": exc.item_ids})
    if isinstance(exc, TooManyRetries):
        return _error(409, "too_many_retries", str(exc), None, _RETRY)
    if isinstance(exc, VersionConflict):
        return _error(409, "version_conflict", str(exc), None, _RETRY)
    if isinstance(exc, Conflict):
        return _error(409, "conflict", str(exc))
    if isinstance(exc, ShardUnavailable):
        # the shard's address is logged, not shown to clients
        logger.warning("%s", exc)
        message = f"shard {exc.shard!r} is unavailable; try again later"
        return _error(503, "shard_unavailable", message, {"shard": exc.shard}, _RETRY)
    if isinstance(exc, StoreBusy):
        return _error(503, "store_busy", str(exc), None, _RETRY)
    if isinstance(exc, StoreClosed):
        return _error(503, "unavailable", "the server is shutting down; try again", None, _RETRY)
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


def _malformed(reason: str, position: int | None) -> Response:
    return _error(400, "malformed_json", f"request body is not valid JSON: {reason}", {"position": position})


def _field_of(loc: tuple[Any, ...]) -> str:
    names = (
        [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "path", "query", "header") else [str(p) for p in loc]
    )
    return ".".join(names) or "body"


def _pydantic_invalid(errors: typing.Sequence[Mapping[str, Any]], location: str) -> Response:
    details = []
    for e in errors:
        loc = (location, *e.get("loc", ()))
        details.append(_field_error(_field_of(loc), location, str(e.get("type")), str(e.get("msg", "invalid"))))
    return _invalid(details or [_field_error(location, location, "invalid_input", "invalid request")])


async def on_domain_error(request: Request, exc: Exception) -> Response:
    """A library error that escaped a handler."""
    assert isinstance(exc, DHTCartError)
    return _domain_error(exc)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own validation (no dhtcart route uses it; kept so any error keeps the shape)."""
    assert isinstance(exc, RequestValidationError)
    return _pydantic_invalid([{**e, "loc": tuple(e.get("loc", ()))[1:]} for e in exc.errors()], "body")


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Unknown route, wrong method, body too large: in the error shape."""
    assert isinstance(exc, StarletteHTTPException)
    app = request.scope["app"]
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
        routes, methods = _routes_on(app, request.scope)
        if routes:
            request.scope["dhtcart.route"] = routes[0]  # the metrics' label
        allowed = ", ".join(methods)
        headers = {**(headers or {}), "Allow": allowed}
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
    code = _HTTP_CODES.get(status, "client_error" if status < 500 else "server_error")
    details = {"limit": _state(request).settings.max_body_bytes} if status == 413 else None
    return _error(status, code, message, details, headers)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: 500 in the error shape; the traceback goes to the log."""
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal_error", "internal server error")


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


def _routes_on(app: FastAPI, scope: Scope) -> tuple[list[str], list[str]]:
    """The route templates matching this path, and every method they accept (HEAD wherever GET is)."""
    methods: set[str] = set()
    paths: list[str] = []
    for r in app.router.routes:
        match, _ = r.matches(scope)
        if match is not Match.NONE:
            methods.update(getattr(r, "methods", None) or ())
            paths.append(str(getattr(r, "path", "")))
    if "GET" in methods:
        methods.add("HEAD")
    return paths, sorted(methods)


# -- the edge: every request, every route ------------------------------------------------------


class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class _Edge:
    """Pure ASGI middleware: body limit, ``HEAD``, metrics and the access log, for every request.

    A ``Content-Length`` over the limit is answered 413 without reading the
    body; a chunked body is counted as it arrives and refused once it passes
    the limit, so no more than ``limit`` bytes are ever buffered. ``HEAD`` is
    served as ``GET`` without the body (same status and headers), so it works
    on every ``GET`` route.
    """

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.limit = state.settings.max_body_bytes
        self.metrics = state.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        limit = self.limit
        method = scope["method"]
        head = method == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif head and message.get("body"):
                message = {**message, "body": b""}
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
            elapsed = time.perf_counter() - start
            if self.metrics is not None:
                self.metrics.request(scope.get("dhtcart.route", "unmatched"), method, status or 500, elapsed)
            if access_logger.isEnabledFor(logging.INFO):
                client = scope.get("client")
                raw = scope.get("raw_path")
                path = raw.decode("latin-1") if raw else scope.get("path", "")
                access_logger.info(
                    '%s "%s %s" %d %.2fms',
                    f"{client[0]}:{client[1]}" if client else "-",
                    method,
                    path,
                    status or 500,
                    elapsed * 1000,
                )


# -- the app -------------------------------------------------------------------------------


def _add_routes(app: FastAPI, profile: Profile) -> None:
    """Every route, in matching order: the cart (the seed's README paths, then the seed code's spellings),
    then the operations, then the document and its viewers."""
    models = profile.models
    removed: dict[int | str, dict[str, Any]] = (
        {204: {"description": "Done (no body)", "headers": _ETAG_HEADER}}
        if models["removed"] is None
        else {200: {"description": "Done", "headers": _ETAG_HEADER, "model": models["removed"]}}
    )
    ok: dict[int | str, dict[str, Any]] = {200: {"description": "Success", "headers": _ETAG_HEADER}}

    def op(path: str, method: str, endpoint: Callable[..., Awaitable[Response]], **kwargs: Any) -> None:
        app.router.add_api_route(path, endpoint, methods=[method], route_class_override=_Operation, **kwargs)

    for legacy, prefix in ((False, "/item"), (True, "/items")):
        suffix, tags = ("Legacy", ["seed spellings"]) if legacy else ("", ["cart"])
        path = f"{prefix}/{{customerId}}/{{itemId}}"
        op(
            path,
            "POST",
            add_item,
            operation_id=f"addItem{suffix}",
            summary="Add an item (re-adding sums the counts)",
            response_model=models["line"],
            responses={**ok, **_errors(400, 404, 409, 412, 413, 415, 422, 503)},
            deprecated=legacy,
            tags=_tags(*tags),
        )
        update_responses: dict[int | str, dict[str, Any]] = {**ok, **_errors(400, 404, 409, 412, 413, 415, 422, 503)}
        if models["removed"] is None:
            update_responses[204] = {"description": "newCount was 0: the line was removed", "headers": _ETAG_HEADER}
        op(
            path,
            "PUT",
            update_count,
            operation_id=f"updateCount{suffix}",
            summary="Set an item's count (0 removes it)",
            response_model=models["updated"],
            responses=update_responses,
            deprecated=legacy,
            tags=_tags(*tags),
        )
        op(
            path,
            "DELETE",
            delete_item,
            operation_id=f"deleteItem{suffix}",
            summary="Delete an item from the cart",
            status_code=204 if models["removed"] is None else 200,
            response_class=Response,
            responses={**removed, **_errors(404, 409, 412, 413, 422, 503)},
            deprecated=legacy,
            tags=_tags(*tags),
        )
    op(
        "/items/{customerId}",
        "GET",
        list_items,
        operation_id="listItems",
        summary="List the cart's items (ETag: the cart's version; HEAD too)",
        response_model=models["cart"],
        responses={**ok, **_errors(413, 422, 503)},
        tags=_tags("cart"),
    )
    op(
        "/items/{customerId}",
        "DELETE",
        checkout,
        operation_id="checkout",
        summary="Check out: empty the cart and return the receipt",
        response_model=models["receipt"],
        responses={**ok, **_errors(404, 409, 412, 413, 422, 503)},
        tags=_tags("cart"),
    )
    op(
        "/checkout/{customerId}",
        "POST",
        checkout_legacy,
        operation_id="checkoutLegacy",
        summary="Check out (the seed code's spelling)",
        response_model=models["receipt_legacy"],
        responses={**ok, **_errors(404, 409, 412, 413, 422, 503)},
        deprecated=True,
        tags=_tags("seed spellings"),
    )
    op(
        "/healthz",
        "GET",
        healthz,
        operation_id="healthz",
        summary="Liveness: no store access",
        response_model=HealthResponse,
        responses=_errors(413, 503),
        tags=_tags("ops"),
    )
    op(
        "/readyz",
        "GET",
        readyz,
        operation_id="readyz",
        summary="Readiness: every shard answers",
        response_model=ReadyResponse,
        responses=_errors(413, 503),
        tags=_tags("ops"),
    )
    for path, endpoint in (
        ("/metrics", metrics),
        ("/openapi.json", openapi),
        ("/docs", swagger_ui),
        ("/redoc", redoc),
        ("/docs/static/{name}", docs_asset),
    ):
        op(path, "GET", endpoint, include_in_schema=False)


def _tags(*names: str) -> list[str | Enum]:
    return list(names)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the service (unless the caller gave one), count the worker, and close what was opened."""
    state: AppState = app.state.dhtcart
    opened: CartService | None = None
    if state.service is None:
        if state.data_dir is not None:
            opened = await run_in_threadpool(CartService.open, state.data_dir, shards=state.settings.new_store_shards)
        else:
            opened = CartService()
        state.service = opened
    syncing: asyncio.Task[None] | None = None
    if state.metrics is not None:
        state.metrics.worker_started()
        if state.metrics.has_mirrors:
            syncing = asyncio.ensure_future(_sync_metrics(state.metrics))
    try:
        yield
    finally:
        if syncing is not None:
            syncing.cancel()
        if state.metrics is not None:
            state.metrics.workers.set(0)
        if opened is not None:
            state.service = None  # new requests get 503 from here on
            await run_in_threadpool(opened.close)


async def _sync_metrics(metrics: Metrics, every: float = 5.0) -> None:
    while True:
        await asyncio.sleep(every)
        await run_in_threadpool(metrics.sync)


def create_app(
    service: CartService | None = None,
    *,
    settings: Settings | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    shards: int | None = None,
    max_body_bytes: int | None = None,
    inline: bool | None = None,
    compat: str | None = None,
    metrics: bool | None = None,
) -> FastAPI:
    """The cart API as a FastAPI app.

    ``service``: serve this :class:`CartService` (the caller opens and closes
    it). Otherwise the app's lifespan opens ``CartService.open(data_dir,
    shards=shards)`` at startup and closes it at shutdown, or, with no
    ``data_dir``, an in-memory ``CartService()`` (for tests and demos; nothing
    persists).

    ``settings`` (:class:`~dhtcart.settings.Settings`) gives every option at
    once, its ``data`` directory included; the keywords override it:
    ``max_body_bytes`` limits request bodies (413 beyond it), ``compat``
    picks the response profile (``"default"`` or ``"seed"``, see
    :data:`PROFILES`), ``metrics=False`` turns ``/metrics`` off.

    ``inline``: where the (blocking) service calls run. ``None`` (default)
    decides per request by :func:`runs_inline`: on the event loop when every
    shard is fast and local, in the thread pool otherwise. ``False`` (or
    ``settings.thread_pool``) forces the thread pool; ``True`` the event loop.
    """
    given = {"shards": shards, "max_body_bytes": max_body_bytes, "compat": compat, "metrics": metrics}
    config = (settings or Settings()).replace(**{k: v for k, v in given.items() if v is not None})
    if data_dir is None and settings is not None and service is None:
        data_dir = config.data
    state = AppState(
        settings=config,
        profile=PROFILES[config.compat],
        service=service,
        data_dir=None if data_dir is None else os.fspath(data_dir),
        inline=False if inline is None and config.thread_pool else inline,
        metrics=Metrics() if config.metrics else None,
    )
    app = FastAPI(
        title="dhtcart",
        version=__version__,
        summary="A shopping cart over a consistent-hashing DHT.",
        description=(
            "The seed's cart endpoints over `dhtcart.CartService`. Money is a JSON number written with "
            "its exact decimal digits (two places); every error is "
            '`{"error": {"code", "message", "details"}}`. '
            f"Response shapes: the `{config.compat}` profile. See docs/http.md."
        ),
        lifespan=_lifespan,
        redirect_slashes=False,
        openapi_url=None,  # served by the `openapi` handler, docs by `swagger_ui` and `redoc`: no CDN
        docs_url=None,
        redoc_url=None,
    )
    app.state.dhtcart = state
    app.add_middleware(_Edge, state=state)
    app.add_exception_handler(DHTCartError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    _add_routes(app, state.profile)
    return app


def app_from_env() -> FastAPI:
    """The app for ``uvicorn --factory dhtcart.http:app_from_env`` (what ``dhtcart serve`` runs).

    Reads every ``DHTCART_*`` variable through :meth:`Settings.from_env
    <dhtcart.settings.Settings.from_env>` (a bad value raises
    :class:`~dhtcart.errors.InvalidInput` naming the variable). Each worker
    process calls this and opens the store in ``DHTCART_DATA`` itself.
    """
    return create_app(settings=Settings.from_env())
