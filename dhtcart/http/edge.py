"""The edge: what every request goes through, on every route (body limit, ``HEAD``, metrics, access log)."""

import logging
import time

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dhtcart.http.responses import body_too_large, error
from dhtcart.http.state import AppState

__all__ = [
    "BodyTooLarge",
    "Edge",
    "content_length",
    "log_access",
]


access_logger = logging.getLogger("dhtcart.access")
logger = logging.getLogger("dhtcart.http")


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class Edge:
    """Pure ASGI middleware: body limit, ``HEAD``, metrics, the access log and the last word on bugs.

    A ``Content-Length`` over the limit is answered 413 without reading the
    body; a chunked body is counted as it arrives and refused once it passes
    the limit, so no more than ``limit`` bytes are ever buffered. ``HEAD`` is
    served as ``GET`` without the body (same status and headers), so it works
    on every ``GET`` route. An exception that no handler turned into a
    response (a bug) is answered ``500 internal_error`` here, in the error
    shape, and the connection stays open for the client's next request.
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
            length = content_length(scope)
            if length > limit:
                await body_too_large(limit, length)(scope, receive, send_status)
                return
            received = 0

            async def receive_limited() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise BodyTooLarge(limit)
                return message

            try:
                await self.app(scope, receive_limited, send_status)
            except Exception as exc:  # a bug: nothing below turned it into a response
                if status:  # the response has started: the connection cannot carry on
                    raise
                # answered here, the connection stays open (raised further, uvicorn would close it)
                logger.error("unhandled error on %s %s", method, scope.get("path", ""), exc_info=exc)
                await error(500, "internal_error", "internal server error")(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - start
            if self.metrics is not None:
                self.metrics.request(scope.get("dhtcart.route", "unmatched"), method, status or 500, elapsed)
            if access_logger.isEnabledFor(logging.INFO):
                log_access(scope, method, status or 500, elapsed)


def content_length(scope: Scope) -> int:
    """The request's ``Content-Length`` (the first one), or -1 when it has none (or not a number)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else -1
    return -1


def log_access(scope: Scope, method: str, status: int, seconds: float) -> None:
    """The request's line on the ``dhtcart.access`` logger: client, method, path, status, latency."""
    client = scope.get("client")
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope.get("path", "")
    access_logger.info(
        '%s "%s %s" %d %.2fms',
        f"{client[0]}:{client[1]}" if client else "-",
        method,
        path,
        status,
        seconds * 1000,
    )
