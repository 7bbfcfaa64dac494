"""The handlers: plain module-level ``async`` functions whose signatures are the OpenAPI document.

Each cart handler parses what :class:`~dhtcart.http.binding.Operation` bound,
calls :class:`~dhtcart.cart.CartService` through :func:`_cart` (on the event
loop or in the thread pool, counted by shard), and renders through the app's
profile. The operations handlers answer liveness, readiness and metrics; the
document's viewers load their assets from the package.
"""

import asyncio
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path as FilePath
from typing import Any, TypeVar

import fastapi_offline
from fastapi import Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.concurrency import run_in_threadpool

from dhtcart.cart import CartItem, CartService, ExpectedVersion, Versioned, VersionedCarts
from dhtcart.errors import (
    CartEmpty,
    CorruptData,
    DHTCartError,
    InvalidInput,
    ShardUnavailable,
    StoreBusy,
    StoreClosed,
    StoreReadOnly,
    TooManyRetries,
    ValidationError,
)
from dhtcart.http.models import (
    FIELDS,
    AddItemRequest,
    AssetName,
    CustomerId,
    IfMatch,
    IfNoneMatch,
    ItemId,
    UpdateCountRequest,
)
from dhtcart.http.profiles import Profile
from dhtcart.http.responses import RETRY, domain_error, error, etag, json_response
from dhtcart.http.state import AppState, State, app_state

__all__ = [
    "add_item",
    "checkout",
    "checkout_legacy",
    "delete_item",
    "docs_asset",
    "expected_version",
    "healthz",
    "list_items",
    "metrics",
    "none_match",
    "openapi",
    "readyz",
    "redoc",
    "swagger_ui",
    "update_count",
]

READY_TIMEOUT = 2.0  #: seconds /readyz waits for a shard to answer

logger = logging.getLogger("dhtcart.http")

T = TypeVar("T")

# -- versions ---------------------------------------------------------------------------------

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


def none_match(if_none_match: str, version: int) -> bool:
    """Whether an ``If-None-Match`` header holds for the cart at ``version`` (RFC 9110, 13.1.2).

    It fails (the answer is then 304 to a ``GET`` or ``HEAD``) when a tag it
    lists matches the cart's ``ETag`` by the weak comparison the RFC asks for
    (``W/"3"`` matches ``"3"``), or for ``*`` when the cart exists (a record
    was ever stored: version 1 or more).

    >>> none_match('"3"', 3), none_match('"2", W/"3"', 3), none_match('"2"', 3)
    (False, False, True)
    >>> none_match("*", 0), none_match("*", 4)
    (True, False)
    """
    if if_none_match.strip() == "*":
        return version == 0
    for tag in if_none_match.split(","):
        tag = tag.strip()
        m = _ENTITY_TAG.fullmatch(tag[2:] if tag.startswith("W/") else tag)
        if m and int(m.group(1)) == version:
            return False
    return True


# -- calling the service ------------------------------------------------------------------------

#: errors on the store's side, counted in ``dhtcart_store_errors_total``
STORE_ERRORS = (ShardUnavailable, StoreReadOnly, StoreBusy, StoreClosed, TooManyRetries, CorruptData)


async def _cart(state: AppState, operation: str, customer_id: str, call: Callable[[VersionedCarts], T]) -> T:
    """Run one cart operation where it belongs (event loop or thread pool), counting it by shard.

    The shard is the one the operation reached (:meth:`CartService.last_shard
    <dhtcart.cart.CartService.last_shard>`, read in the thread that made the
    call): the key is never routed a second time for a label.
    """
    service = state.service
    if service is None:
        raise StoreClosed("the cart service is not running")
    metrics = state.metrics
    if metrics is None:
        carts = service.versioned
        return call(carts) if state.runs_inline(service) else await run_in_threadpool(call, carts)

    def counted() -> T:
        try:
            result = call(service.versioned)
        except ValidationError:
            raise  # refused before the store was asked
        except DHTCartError as exc:
            shard = _shard_of_failure(service, customer_id, exc)
            metrics.store_operation(shard, operation)
            if isinstance(exc, STORE_ERRORS):
                metrics.store_error(shard, type(exc).__name__)
            raise
        metrics.store_operation(service.last_shard() or "unknown", operation)
        return result

    return counted() if state.runs_inline(service) else await run_in_threadpool(counted)


def _shard_of_failure(service: CartService, customer_id: str, exc: DHTCartError) -> str:
    """The shard a failed operation is counted on: the one that failed, else the one it read."""
    if isinstance(exc, ShardUnavailable):
        return exc.shard
    if isinstance(exc, (StoreBusy, StoreClosed, StoreReadOnly)):  # maybe before any shard was reached
        try:
            return service.shard_of(customer_id)
        except DHTCartError:
            return "unknown"
    return service.last_shard() or "unknown"  # the cart's shard refused it: not found, conflict, ...


# -- handlers: the cart ------------------------------------------------------------------------


async def list_items(state: State, customer_id: CustomerId, if_none_match: IfNoneMatch = None) -> Response:
    """``GET /items/{customerId}``: the cart, with its version as the ``ETag``; 304 without a body
    when ``If-None-Match`` names that version."""
    items, version = await _cart(state, "list", customer_id, lambda carts: carts.list_items(customer_id))
    if if_none_match is not None and not none_match(if_none_match, version):
        return Response(status_code=304, headers=etag(version))
    return json_response(200, state.profile.cart(customer_id, items), etag(version))


#: the fields of an add whose count was spelt as the seed did (``unitCount``)
_SEED_COUNT = {**FIELDS, "item_count": ("unitCount", "body")}


async def add_item(
    state: State, customer_id: CustomerId, item_id: ItemId, body: AddItemRequest, if_match: IfMatch = None
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

    try:
        item, version = await _cart(state, "add", customer_id, add)
    except InvalidInput as exc:
        if "unitCount" not in body.model_fields_set:
            raise
        return domain_error(exc, _SEED_COUNT)  # the client spelt the count as the seed did: name it so
    return json_response(200, state.profile.line(item), etag(version))


async def update_count(
    state: State, customer_id: CustomerId, item_id: ItemId, body: UpdateCountRequest, if_match: IfMatch = None
) -> Response:
    """``PUT /item/{customerId}/{itemId}``: set the count; 0 removes the line."""
    expected = expected_version(if_match)
    item, version = await _cart(
        state,
        "update",
        customer_id,
        lambda carts: carts.update_count(customer_id, item_id, body.newCount, expected_version=expected),
    )
    profile = state.profile
    if item is None:
        return _removed(profile, version)
    return json_response(200, profile.line(item), etag(version))


async def delete_item(state: State, customer_id: CustomerId, item_id: ItemId, if_match: IfMatch = None) -> Response:
    """``DELETE /item/{customerId}/{itemId}``: delete the line."""
    expected = expected_version(if_match)
    _, version = await _cart(
        state, "delete", customer_id, lambda carts: carts.delete_item(customer_id, item_id, expected_version=expected)
    )
    return _removed(state.profile, version)


def _removed(profile: Profile, version: int) -> Response:
    if profile.removed is None:
        return Response(status_code=204, headers=etag(version))
    return json_response(200, profile.removed, etag(version))


async def checkout(state: State, customer_id: CustomerId, if_match: IfMatch = None) -> Response:
    """``DELETE /items/{customerId}``: empty the cart atomically; the receipt."""
    return await _checkout(state, customer_id, if_match, legacy=False)


async def checkout_legacy(state: State, customer_id: CustomerId, if_match: IfMatch = None) -> Response:
    """``POST /checkout/{customerId}``: checkout, the seed code's spelling."""
    return await _checkout(state, customer_id, if_match, legacy=True)


async def _checkout(state: AppState, customer_id: str, if_match: str | None, *, legacy: bool) -> Response:
    profile = state.profile
    expected = expected_version(if_match)
    empty = profile.empty_checkout_legacy if legacy else profile.empty_checkout
    try:
        receipt, version = await _cart(
            state, "checkout", customer_id, lambda carts: carts.checkout(customer_id, expected_version=expected)
        )
    except CartEmpty:
        if empty is None:
            raise
        _, version = await _cart(state, "list", customer_id, lambda carts: carts.list_items(customer_id))
        return json_response(200, empty, etag(version))
    return json_response(200, (profile.receipt_legacy if legacy else profile.receipt)(receipt), etag(version))


# -- handlers: operations --------------------------------------------------------------------


class _OK(Response):
    """The health answer, rendered once."""

    media_type = "application/json"

    def __init__(self) -> None:
        super().__init__(b'{"status":"ok"}')


async def healthz(state: State) -> Response:
    """``GET /healthz``: liveness; touches no store."""
    if state.service is None:
        return error(503, "unavailable", "the cart service is not running", None, RETRY)
    return _OK()


async def readyz(state: State) -> Response:
    """``GET /readyz``: whether every shard answers (:meth:`CartService.health
    <dhtcart.cart.CartService.health>`, :data:`READY_TIMEOUT` s at most)."""
    service = state.service
    if service is None:
        return error(503, "unavailable", "the cart service is not running", None, RETRY)
    try:
        health = await asyncio.wait_for(run_in_threadpool(service.health, READY_TIMEOUT), READY_TIMEOUT)
    except asyncio.TimeoutError:
        logger.warning("readyz: the shards did not all answer within %s s", READY_TIMEOUT)
        return error(503, "not_ready", f"the shards did not all answer within {READY_TIMEOUT:g} s", None, RETRY)
    except Exception as exc:  # a probe: the store itself (closed, membership unreachable), or anything else
        logger.warning("readyz: the store did not answer: %s", exc, exc_info=not isinstance(exc, DHTCartError))
        return error(503, "not_ready", "the store is not available", None, RETRY)
    report = {name: "ok" if why is None else "unavailable" for name, why in health.items()}
    down = sorted(name for name, why in health.items() if why is not None)
    if not down:
        body: dict[str, Any] = {"status": "ready", "shards": report}
        try:
            replication = await run_in_threadpool(service.replication)
        except Exception as exc:  # advice only: readiness is the shards' answers
            logger.warning("readyz: the replication status could not be read: %s", exc)
        else:
            if replication["replicas"] != 1 or replication["down"]:
                body["replication"] = replication
        return json_response(200, body)
    for name in down:  # the reasons name addresses: logged, not shown
        logger.warning("readyz: shard %r: %s", name, health[name])
    return error(503, "not_ready", f"shards not answering: {', '.join(down)}", {"shards": report}, RETRY)


async def metrics(state: State) -> Response:
    """``GET /metrics``: the Prometheus text format, every worker's values summed."""
    if state.metrics is None:
        return error(404, "not_found", "metrics are switched off (dhtcart serve --no-metrics)")
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


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``: the OpenAPI document (built once)."""
    state = app_state(request)
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
        return error(404, "not_found", f"no asset {name!r}")
    return FileResponse(_ASSETS_DIR / name, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
