"""The lane: the cart routes and ``/healthz`` answered straight from the ASGI scope.

A request to a cart route used to cross FastAPI's whole stack before its
handler ran: five middlewares (each wrapping ``send``), the router trying
each route's regular expression in turn, the :class:`~dhtcart.http.edge.Edge`
with its per-request closures. Measured on the server (py-spy, 2026-12-06),
that stack cost more than the cart operation and its LMDB write together,
and a ``GET /healthz`` cost three times what uvicorn alone costs for a
request. :class:`CartApp` looks at the method and the path first: a request
the :class:`Lane` knows (the five cart endpoints in both spellings,
``/healthz``, with ``HEAD`` on the ``GET`` ones) is bound and answered here,
every other one (the document and its viewers, ``/readyz``, ``/metrics``, an
unknown path, a wrong method, an empty id segment) goes through FastAPI as
before.

The lane gives the same answers as the routes FastAPI serves: the same
handlers (:mod:`dhtcart.http.handlers`, called with the same arguments), the
same binding (path segments, ``If-Match``, the body parsed and validated by
:func:`~dhtcart.http.binding.parse_body`), the same body limit, ``HEAD``,
metrics, access log and 500 for a bug as the edge (sharing its code), and
every test of the HTTP face runs through it (Starlette's ``TestClient``
calls the app as uvicorn does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Response
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from dhtcart.errors import DHTCartError, InvalidInput
from dhtcart.http.binding import Refused, params_of, parse_body, read_body
from dhtcart.http.edge import access_logger, log_access, logger
from dhtcart.http.responses import body_too_large, domain_error, error
from dhtcart.http.state import AppState

__all__ = [
    "CartApp",
    "Lane",
    "LaneRoute",
]

Endpoint = Callable[..., Awaitable[Response]]


class LaneRoute:
    """One route of the lane: its path template (the metrics' label), its handler and how to bind it.

    The handler's parameters come in this order: the state, the path
    parameters (in the template's order), the body (a model, or ``bytes``),
    the headers.
    """

    __slots__ = ("endpoint", "headers", "model", "raw", "template")

    def __init__(self, template: str, endpoint: Endpoint) -> None:
        self.template = template
        self.endpoint = endpoint
        kinds = params_of(endpoint)
        segments = template.split("/")
        names = [s[1:-1] for s in segments[2:]]
        order = ["state", *(["path"] * len(names))]
        self.model: type[BaseModel] | None = None
        self.raw = False
        bodies = [p for p in kinds if p.kind in ("body", "raw")]
        if bodies:
            order.append(bodies[0].kind)
            self.model = bodies[0].model
            self.raw = bodies[0].kind == "raw"
        headers = [p for p in kinds if p.kind == "header"]
        order += ["header"] * len(headers)
        if (
            [p.kind for p in kinds] != order
            or [p.key for p in kinds if p.kind == "path"] != names
            or segments[0] != ""
            or "{" in segments[1]
            or not all(s.startswith("{") and s.endswith("}") for s in segments[2:])
        ):
            raise InvalidInput(
                "endpoint",
                f"{endpoint.__name__} cannot serve {template} on the lane: the template must be "
                "/literal/{param}..., the parameters state, the path's, the body, the headers",
            )
        #: the header names to look for, lower case as ASGI gives them; Content-Length always
        self.headers = (b"content-length", *(b"content-type",) * bool(bodies), *(p.key.encode() for p in headers))


class Lane:
    """The routes answered without FastAPI's stack, found by method, first segment and number of segments."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.limit = state.settings.max_body_bytes
        self.metrics = state.metrics
        self._routes: dict[tuple[str, str, int], LaneRoute] = {}

    def add(self, method: str, template: str, endpoint: Endpoint) -> LaneRoute:
        """Serve ``method template`` (``"/item/{customerId}/{itemId}"``) with ``endpoint``; a ``GET``
        answers ``HEAD`` too."""
        route = LaneRoute(template, endpoint)
        segments = template.split("/")
        methods = (method, "HEAD") if method == "GET" else (method,)
        for m in methods:
            key = (m, segments[1], len(segments))
            if key in self._routes:
                raise InvalidInput("template", f"{m} {template} is served on the lane already")
            self._routes[key] = route
        return route

    def match(self, scope: Scope) -> tuple[LaneRoute, list[str]] | None:
        """The route for this request and its path parameters, or ``None``: FastAPI's to answer.

        A path parameter is a whole segment of the (decoded) path, as in a
        Starlette route; an empty one is left to FastAPI, whose 404 handler
        names it (422).
        """
        parts = scope["path"].split("/")
        if len(parts) < 2 or parts[0]:
            return None
        route = self._routes.get((scope["method"], parts[1], len(parts)))
        if route is None:
            return None
        params = parts[2:]
        for p in params:
            if not p:
                return None
        return route, params

    async def serve(self, route: LaneRoute, params: list[str], scope: Scope, receive: Receive, send: Send) -> None:
        """Bind, call, answer; count and log as the edge does."""
        start = time.perf_counter()
        method = scope["method"]
        status = 0
        try:
            response = await self._respond(route, params, scope, receive)
            status = response.status_code
            if response.background is None and hasattr(response, "body"):
                await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
                await send({"type": "http.response.body", "body": b"" if method == "HEAD" else response.body})
            else:  # pragma: no cover - the lane's handlers answer plain responses
                await response(scope, receive, send)
        finally:
            elapsed = time.perf_counter() - start
            if self.metrics is not None:
                self.metrics.request(route.template, method, status or 500, elapsed)
            if access_logger.isEnabledFor(logging.INFO):
                log_access(scope, method, status or 500, elapsed)

    async def _respond(self, route: LaneRoute, params: list[str], scope: Scope, receive: Receive) -> Response:
        names = route.headers
        values: list[bytes | None] = [None] * len(names)
        for name, value in scope["headers"]:
            if name in names:
                i = names.index(name)
                if values[i] is None:
                    values[i] = value
        length = values[0]
        limit = self.limit
        if length is not None and length.isdigit() and int(length) > limit:
            return body_too_large(limit, int(length))
        args: list[Any] = [self.state, *params]
        try:
            if route.model is not None:
                content_type = values[1]
                raw = await read_body(receive, limit)
                args.append(
                    parse_body(raw, "" if content_type is None else content_type.decode("latin-1"), route.model)
                )
                first_header = 2
            elif route.raw:
                args.append(await read_body(receive, limit))
                first_header = 2
            else:
                first_header = 1
            for value in values[first_header:]:
                args.append(None if value is None else value.decode("latin-1"))
            return await route.endpoint(*args)
        except Refused as refused:
            return refused.response
        except DHTCartError as exc:
            return domain_error(exc)
        except Exception as exc:  # a bug: answered here, so the connection stays open (as the edge does)
            logger.error("unhandled error on %s %s", scope["method"], scope.get("path", ""), exc_info=exc)
            return error(500, "internal_error", "internal server error")


class CartApp(FastAPI):
    """The FastAPI app, with a :class:`Lane` in front: what the lane knows never reaches FastAPI's stack."""

    lane: Lane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lane
        if lane is not None and scope["type"] == "http" and not scope.get("root_path") and not self.root_path:
            found = lane.match(scope)
            if found is not None:
                scope["app"] = self
                await lane.serve(found[0], found[1], scope, receive, send)
                return
        await super().__call__(scope, receive, send)
