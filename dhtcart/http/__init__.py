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

The package, one module per part:

* :mod:`~dhtcart.http.handlers`: the handlers (``list_items``, ``add_item``,
  ..., ``healthz``, ``readyz``, ``metrics``), plain module-level ``async``
  functions whose signatures are what the OpenAPI document says;
* :mod:`~dhtcart.http.binding`: :class:`~dhtcart.http.binding.Operation`, the
  route class that binds a request to a handler (path parameters,
  ``If-Match``, a JSON body validated by its pydantic model) without FastAPI's
  dependency machinery, which cost more than the cart operation itself;
* :mod:`~dhtcart.http.models`: the request and response models, the parameters;
* :mod:`~dhtcart.http.profiles`: :class:`Profile`, what each operation answers
  (``default``: dhtcart's documented shapes; ``seed``: the seed code's,
  rendered by :mod:`dhtcart.render`);
* :mod:`~dhtcart.http.state`: :class:`AppState`, kept in ``app.state.dhtcart``
  (the settings, the service, the profile, the metrics);
* :mod:`~dhtcart.http.responses`: the JSON responses, the one error shape and
  the status of every error;
* :mod:`~dhtcart.http.edge`: what every request goes through (body limit,
  ``HEAD``, the access log, the request metrics);
* :mod:`~dhtcart.http.lane`: :class:`~dhtcart.http.lane.CartApp`, the app,
  whose lane answers the cart routes and ``/healthz`` without FastAPI's
  middleware stack and router (the same handlers, binding and edge);
* :mod:`~dhtcart.http.routes`: the route table; and here, :func:`create_app`.

This layer only parses, calls and renders: every cart rule lives in
``CartService``. Store calls are blocking: on shards that declare
:attr:`~dhtcart.backends.base.Backend.fast_local` (memory, LMDB without
per-commit fsync) they take tens of microseconds and run on the event loop,
cheaper than a hop to a thread; on anything slower (Redis, fsync per commit,
third-party backends) they run in the server's thread pool. The choice is
made per request, so a store whose shards change while the server runs is
served the right way.

Versions: ``GET /items/{c}`` carries the cart's version as a strong ``ETag``
and honours ``If-None-Match`` (304, no body, when it names that version);
``PUT``, ``POST`` and ``DELETE`` accept ``If-Match`` (412 when the cart is at
another version; the write is one compare-and-set at that version) and
return the new ``ETag``.

The app talks to the cart service only: ``/readyz`` asks
:meth:`CartService.health <dhtcart.cart.CartService.health>`, the choice of
event loop or thread pool reads ``CartService.fast_local``, and the metrics
label each operation with the shard it reached
(:meth:`CartService.last_shard <dhtcart.cart.CartService.last_shard>`).
Library errors name Python parameters (``item_count``); the responses name
the request's own fields (``itemCount``). The store's side (an unreachable or
full shard, a read-only store) is 503 with ``Retry-After``, never 500.

Every error, including the framework's own (unknown route, wrong method,
malformed JSON, validation), has one shape::

    {"error": {"code": "item_not_found", "message": "...", "details": {...}}}

See ``docs/http.md`` for the endpoints, both profiles' shapes, the headers,
the metrics and the limits.
"""

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

try:
    import fastapi_offline  # noqa: F401  (the docs' assets: checked here, used by the handlers)
    import prometheus_client  # noqa: F401
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f'dhtcart.http needs the server extra ({exc.name} is missing): pip install "dhtcart[server]"'
    ) from exc

from dhtcart._version import __version__
from dhtcart.cart import CartService
from dhtcart.errors import DHTCartError
from dhtcart.http.edge import Edge
from dhtcart.http.handlers import expected_version
from dhtcart.http.lane import CartApp, Lane
from dhtcart.http.models import (
    AddItemRequest,
    CartItemResponse,
    CartResponse,
    ErrorResponse,
    ReceiptResponse,
    SeedLineResponse,
    UpdateCountRequest,
)
from dhtcart.http.profiles import PROFILES, Profile
from dhtcart.http.responses import on_domain_error, on_http_error, on_unexpected, on_validation_error
from dhtcart.http.routes import add_routes
from dhtcart.http.state import AppState, runs_inline
from dhtcart.metrics import Metrics
from dhtcart.render import dumps
from dhtcart.settings import Settings

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "PROFILES",
    "AddItemRequest",
    "AppState",
    "CartApp",
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
    "expected_version",
    "runs_inline",
]

DEFAULT_MAX_BODY_BYTES = Settings().max_body_bytes  #: the default request body limit


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
        state.metrics.watch_store(state.service.store)
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
) -> CartApp:
    """The cart API as a FastAPI app (a :class:`~dhtcart.http.lane.CartApp`).

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
    app = CartApp(
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
    app.add_middleware(Edge, state=state)
    app.add_exception_handler(DHTCartError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.lane = Lane(state)
    add_routes(app, state.profile, metrics=state.metrics is not None, lane=app.lane)
    return app


def app_from_env() -> CartApp:
    """The app for ``uvicorn --factory dhtcart.http:app_from_env`` (what ``dhtcart serve`` runs).

    Reads every ``DHTCART_*`` variable through :meth:`Settings.from_env
    <dhtcart.settings.Settings.from_env>` (a bad value raises
    :class:`~dhtcart.errors.InvalidInput` naming the variable). Each worker
    process calls this and opens the store in ``DHTCART_DATA`` itself.
    """
    return create_app(settings=Settings.from_env())
