"""The route table: every route, in matching order, documented for the response profile."""

from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

from fastapi import FastAPI, Response

from dhtcart.http.binding import Operation
from dhtcart.http.handlers import (
    add_item,
    checkout,
    checkout_legacy,
    delete_item,
    docs_asset,
    healthz,
    list_items,
    openapi,
    readyz,
    redoc,
    swagger_ui,
    update_count,
)
from dhtcart.http.handlers import metrics as metrics_text
from dhtcart.http.lane import Lane
from dhtcart.http.models import (
    ADD_EXAMPLES,
    ETAG_HEADER,
    SEED_ADD_EXAMPLES,
    UPDATE_EXAMPLES,
    HealthResponse,
    ReadyResponse,
    error_responses,
)
from dhtcart.http.profiles import Profile

__all__ = [
    "add_routes",
    "tag_list",
]


def add_routes(app: FastAPI, profile: Profile, *, metrics: bool = True, lane: Lane | None = None) -> None:
    """Every route, in matching order: the cart (the seed's README paths, then the seed code's spellings),
    then the operations, then the document and its viewers. ``metrics``: whether ``/metrics`` counts
    (and is documented); without, it answers 404. ``lane``: where the cart routes and ``/healthz`` are
    also served, without FastAPI's stack (:mod:`dhtcart.http.lane`); FastAPI documents them all."""
    models = profile.models
    removed: dict[int | str, dict[str, Any]] = (
        {204: {"description": "Done (no body)", "headers": ETAG_HEADER}}
        if models["removed"] is None
        else {200: {"description": "Done", "headers": ETAG_HEADER, "model": models["removed"]}}
    )
    ok: dict[int | str, dict[str, Any]] = {200: {"description": "Success", "headers": ETAG_HEADER}}

    def op(
        path: str, method: str, endpoint: Callable[..., Awaitable[Response]], on_lane: bool = True, **kwargs: Any
    ) -> None:
        app.router.add_api_route(path, endpoint, methods=[method], route_class_override=Operation, **kwargs)
        if on_lane and lane is not None:
            lane.add(method, path, endpoint)

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
            responses={**ok, **error_responses(400, 404, 409, 412, 413, 415, 422, 503)},
            deprecated=legacy,
            tags=tag_list(*tags),
            openapi_extra=_body_examples(SEED_ADD_EXAMPLES if legacy else ADD_EXAMPLES),
        )
        update_responses: dict[int | str, dict[str, Any]] = {
            **ok,
            **error_responses(400, 404, 409, 412, 413, 415, 422, 503),
        }
        if models["removed"] is None:
            update_responses[204] = {"description": "newCount was 0: the line was removed", "headers": ETAG_HEADER}
        op(
            path,
            "PUT",
            update_count,
            operation_id=f"updateCount{suffix}",
            summary="Set an item's count (0 removes it)",
            response_model=models["updated"],
            responses=update_responses,
            deprecated=legacy,
            tags=tag_list(*tags),
            openapi_extra=_body_examples(UPDATE_EXAMPLES),
        )
        op(
            path,
            "DELETE",
            delete_item,
            operation_id=f"deleteItem{suffix}",
            summary="Delete an item from the cart",
            status_code=204 if models["removed"] is None else 200,
            response_class=Response,
            responses={**removed, **error_responses(404, 409, 412, 413, 422, 503)},
            deprecated=legacy,
            tags=tag_list(*tags),
        )
    op(
        "/items/{customerId}",
        "GET",
        list_items,
        operation_id="listItems",
        summary="List the cart's items (ETag: the cart's version; If-None-Match; HEAD too)",
        response_model=models["cart"],
        responses={
            **ok,
            304: {
                "description": "Not modified: If-None-Match names the cart's version (no body)",
                "headers": ETAG_HEADER,
            },
            **error_responses(413, 422, 503),
        },
        tags=tag_list("cart"),
    )
    op(
        "/items/{customerId}",
        "DELETE",
        checkout,
        operation_id="checkout",
        summary="Check out: empty the cart and return the receipt",
        response_model=models["receipt"],
        responses={**ok, **error_responses(404, 409, 412, 413, 422, 503)},
        tags=tag_list("cart"),
    )
    op(
        "/checkout/{customerId}",
        "POST",
        checkout_legacy,
        operation_id="checkoutLegacy",
        summary="Check out (the seed code's spelling)",
        response_model=models["receipt_legacy"],
        responses={**ok, **error_responses(404, 409, 412, 413, 422, 503)},
        deprecated=True,
        tags=tag_list("seed spellings"),
    )
    op(
        "/healthz",
        "GET",
        healthz,
        operation_id="healthz",
        summary="Liveness: no store access",
        response_model=HealthResponse,
        responses=error_responses(413, 503),
        tags=tag_list("ops"),
    )
    op(
        "/readyz",
        "GET",
        readyz,
        on_lane=False,  # rare, and it waits on the thread pool: FastAPI's
        operation_id="readyz",
        summary="Readiness: every shard answers",
        response_model=ReadyResponse,
        responses=error_responses(413, 503),
        tags=tag_list("ops"),
    )
    op(
        "/metrics",
        "GET",
        metrics_text,
        on_lane=False,
        operation_id="metrics",
        summary="Metrics in the Prometheus text format, every worker's summed",
        response_class=Response,
        responses={
            200: {
                "description": "The metrics (docs/http.md lists them)",
                "content": {"text/plain": {"schema": {"type": "string"}, "example": _METRICS_EXAMPLE}},
            },
            **error_responses(413),
        },
        include_in_schema=metrics,  # switched off, it answers 404 and is not documented
        tags=tag_list("ops"),
    )
    for path, endpoint in (
        ("/openapi.json", openapi),
        ("/docs", swagger_ui),
        ("/redoc", redoc),
        ("/docs/static/{name}", docs_asset),
    ):
        op(path, "GET", endpoint, on_lane=False, include_in_schema=False)


_METRICS_EXAMPLE = (
    "# HELP dhtcart_http_requests_total HTTP requests answered.\n"
    "# TYPE dhtcart_http_requests_total counter\n"
    'dhtcart_http_requests_total{method="GET",route="/items/{customerId}",status="200"} 1.0\n'
)


def _body_examples(examples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The request body's named examples (what Swagger UI offers to send), for ``openapi_extra``."""
    return {"requestBody": {"content": {"application/json": {"examples": examples}}}}


def tag_list(*names: str) -> list[str | Enum]:
    return list(names)
