"""Responses in dhtcart's shapes: JSON bodies, the one error shape, and the status of every error.

Every error, including the framework's own (unknown route, wrong method, body too
large), is ``{"error": {"code", "message", "details"}}``; :func:`domain_error`
maps each library error to its status and code (docs/http.md has the table).
"""

import logging
import typing
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from dhtcart import render
from dhtcart.errors import (
    CartEmpty,
    Conflict,
    DHTCartError,
    InvalidInput,
    ItemNotFound,
    NotFound,
    PreconditionFailed,
    SaleExpired,
    ShardFull,
    ShardUnavailable,
    StoreBusy,
    StoreClosed,
    StoreReadOnly,
    TooManyRetries,
    ValidationError,
    VersionConflict,
)
from dhtcart.http.models import FIELDS
from dhtcart.http.state import app_state

__all__ = [
    "HTTP_CODES",
    "RETRY",
    "RETRY_LATER",
    "JSONResponse",
    "body_too_large",
    "domain_error",
    "empty_segment",
    "error",
    "etag",
    "field_error",
    "field_of",
    "invalid",
    "json_response",
    "malformed",
    "on_domain_error",
    "on_http_error",
    "on_unexpected",
    "on_validation_error",
    "pydantic_invalid",
    "routes_on",
]

logger = logging.getLogger("dhtcart.http")


class JSONResponse(Response):
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


json_response = JSONResponse


def error(
    status: int,
    code: str,
    message: str,
    details: object = None,
    headers: Mapping[str, str] | None = None,
) -> Response:

    return json_response(status, {"error": {"code": code, "message": message, "details": details}}, headers)


def body_too_large(limit: int, length: int | None = None) -> Response:
    """413: a ``Content-Length`` over the limit (answered before reading, and the connection closed), or
    a body that passed it as it arrived."""
    if length is None:
        return error(413, "payload_too_large", f"request body exceeds the limit of {limit} bytes", {"limit": limit})
    return error(
        413,
        "payload_too_large",
        f"request body of {length} bytes exceeds the limit of {limit} bytes",
        {"limit": limit},
        {"Connection": "close"},
    )


def etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


# -- errors -----------------------------------------------------------------------------------

RETRY = {"Retry-After": "1"}  #: a transient refusal: try again in a second
RETRY_LATER = {"Retry-After": "5"}  #: a medium out of room or read-only: an operator must act first


def domain_error(exc: DHTCartError, fields: Mapping[str, tuple[str, str]] = FIELDS) -> Response:
    """The status and body for a library error (most specific class first).

    An :class:`~dhtcart.errors.InvalidInput` names a Python parameter
    (``item_count``); ``fields`` maps it to the request's own name and where
    it was (``("itemCount", "body")``).
    """
    if isinstance(exc, InvalidInput):
        name, where = fields.get(exc.field, (exc.field, "body"))
        return invalid([field_error(name, where, "invalid_input", exc.message)])
    if isinstance(exc, ValidationError):
        return invalid([field_error("body", "body", "invalid_input", str(exc))])
    if isinstance(exc, ItemNotFound):
        return error(404, "item_not_found", str(exc), {"customerId": exc.customer_id, "itemId": exc.item_id})
    if isinstance(exc, CartEmpty):
        return error(404, "cart_empty", str(exc), {"customerId": exc.customer_id})
    if isinstance(exc, NotFound):
        return error(404, "not_found", str(exc))
    if isinstance(exc, PreconditionFailed):
        current = f'"{exc.actual}"'
        return error(
            412, "precondition_failed", str(exc), {"customerId": exc.customer_id, "etag": current}, {"ETag": current}
        )
    if isinstance(exc, SaleExpired):
        return error(409, "sale_expired", str(exc), {"customerId": exc.customer_id, "itemIds": exc.item_ids})
    if isinstance(exc, TooManyRetries):
        return error(409, "too_many_retries", str(exc), None, RETRY)
    if isinstance(exc, VersionConflict):
        return error(409, "version_conflict", str(exc), None, RETRY)
    if isinstance(exc, Conflict):
        return error(409, "conflict", str(exc))
    # the store's side: the client did nothing wrong and may try again (the shard's address is
    # logged, not shown to clients)
    if isinstance(exc, ShardFull):
        logger.warning("%s", exc)
        message = f"shard {exc.shard!r} has no room left: nothing was written; reads still work; try again later"
        return error(503, "shard_full", message, {"shard": exc.shard}, RETRY_LATER)
    if isinstance(exc, ShardUnavailable):
        logger.warning("%s", exc)
        message = f"shard {exc.shard!r} is unavailable; try again later"
        return error(503, "shard_unavailable", message, {"shard": exc.shard}, RETRY)
    if isinstance(exc, StoreReadOnly):
        logger.warning("%s", exc)
        message = "the store can be read but not changed now: nothing was written; try again later"
        return error(503, "store_read_only", message, None, RETRY_LATER)
    if isinstance(exc, StoreBusy):
        return error(503, "store_busy", str(exc), None, RETRY)
    if isinstance(exc, StoreClosed):
        return error(503, "unavailable", "the server is shutting down; try again", None, RETRY)
    logger.error("unexpected dhtcart error", exc_info=exc)
    return error(500, "internal_error", "internal server error")


HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def field_error(field: str, location: str | None, kind: str, message: str) -> dict[str, Any]:
    return {"field": field, "location": location, "type": kind, "message": message}


def invalid(errors: list[dict[str, Any]]) -> Response:
    """422 with ``details.errors``: one entry per bad field; the message names the first."""
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return error(422, "invalid_input", f"{first['field']}: {first['message']}{more}", {"errors": errors})


def malformed(reason: str, position: int | None) -> Response:
    return error(400, "malformed_json", f"request body is not valid JSON: {reason}", {"position": position})


def field_of(loc: tuple[Any, ...]) -> str:
    names = (
        [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "path", "query", "header") else [str(p) for p in loc]
    )
    return ".".join(names) or "body"


def pydantic_invalid(errors: typing.Sequence[Mapping[str, Any]], location: str) -> Response:
    details = []
    for e in errors:
        loc = (location, *e.get("loc", ()))
        details.append(field_error(field_of(loc), location, str(e.get("type")), str(e.get("msg", "invalid"))))
    return invalid(details or [field_error(location, location, "invalid_input", "invalid request")])


async def on_domain_error(request: Request, exc: Exception) -> Response:
    """A library error that escaped a handler."""
    assert isinstance(exc, DHTCartError)
    return domain_error(exc)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own validation (no dhtcart route uses it; kept so any error keeps the shape)."""
    assert isinstance(exc, RequestValidationError)
    return pydantic_invalid([{**e, "loc": tuple(e.get("loc", ()))[1:]} for e in exc.errors()], "body")


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Unknown route, wrong method, body too large: in the error shape."""
    assert isinstance(exc, StarletteHTTPException)
    app = request.scope["app"]
    status = exc.status_code
    if status == 404:
        empty = empty_segment(app, request.scope)
        if empty is not None:
            return invalid([field_error(empty, "path", "invalid_input", "must not be empty")])
        message = f"no endpoint {request.method} {request.url.path}; see /docs"
    else:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = exc.headers
    if status == 405:
        # Starlette names only the first route's methods; a path has one route per method here
        routes, methods = routes_on(app, request.scope)
        if routes:
            request.scope["dhtcart.route"] = routes[0]  # the metrics' label
        allowed = ", ".join(methods)
        headers = {**(headers or {}), "Allow": allowed}
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
    code = HTTP_CODES.get(status, "client_error" if status < 500 else "server_error")
    details = {"limit": app_state(request).settings.max_body_bytes} if status == 413 else None
    return error(status, code, message, details, headers)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: 500 in the error shape; the traceback goes to the log."""
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error(500, "internal_error", "internal server error")


def empty_segment(app: FastAPI, scope: Scope) -> str | None:
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


def routes_on(app: FastAPI, scope: Scope) -> tuple[list[str], list[str]]:
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
