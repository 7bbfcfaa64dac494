"""Binding a request to a handler, from the handler's own signature.

FastAPI's request handler (dependency solving, per-request exit stacks,
response-model serialisation) cost more than a cart operation; an
:class:`Operation` route reads path parameters and headers from the scope
and validates the body with the handler's model, producing the same errors
in dhtcart's shape, while FastAPI still documents the route from the
handler's signature.
"""

import inspect
import json
import typing
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Literal, NamedTuple

from fastapi import Request, Response, params
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.types import Receive, Scope, Send

from dhtcart.errors import DHTCartError, InvalidInput
from dhtcart.http.responses import (
    body_too_large,
    domain_error,
    error,
    field_error,
    invalid,
    malformed,
    pydantic_invalid,
)
from dhtcart.http.state import app_state

__all__ = [
    "Operation",
    "Param",
    "Refused",
    "is_json",
    "params_of",
    "parse_body",
    "read_body",
]


class Param(NamedTuple):
    name: str
    kind: Literal["request", "state", "path", "header", "body", "raw"]
    key: str
    model: type[BaseModel] | None


def params_of(endpoint: Callable[..., Any]) -> list[Param]:
    """How to fill each parameter of ``endpoint``, read once from its signature.

    ``Request``: the request; :data:`~dhtcart.http.state.State`: the app's
    state; a path or header parameter (``Annotated[str, Path(...)]``,
    ``Header(...)``); a pydantic model: the JSON body, validated; ``bytes``:
    the body as it came.
    """
    hints = typing.get_type_hints(endpoint, include_extras=True)
    out: list[Param] = []
    for name in inspect.signature(endpoint).parameters:
        hint = hints[name]
        if hint is Request:
            out.append(Param(name, "request", "", None))
            continue
        if hint is bytes:
            out.append(Param(name, "raw", "", None))
            continue
        metadata = getattr(hint, "__metadata__", ())
        for meta in metadata:
            if isinstance(meta, params.Depends) and meta.dependency is app_state:
                out.append(Param(name, "state", "", None))
                break
            if isinstance(meta, params.Path):
                out.append(Param(name, "path", meta.alias or name, None))
                break
            if isinstance(meta, params.Header):
                out.append(Param(name, "header", (meta.alias or name).lower(), None))
                break
        else:
            base = typing.get_args(hint)[0] if metadata else hint
            if not (isinstance(base, type) and issubclass(base, BaseModel)):
                raise InvalidInput(name, f"{endpoint.__name__}: no way to bind a parameter of type {hint!r}")
            out.append(Param(name, "body", "", base))
    return out


class Refused(Exception):
    """A request refused while binding it: the response says why."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def is_json(content_type: str) -> bool:
    main = content_type.partition(";")[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


_DECODER = json.JSONDecoder(parse_float=Decimal)  # one decoder: json.loads(..., parse_float=) makes one per call


async def read_body(receive: Receive, limit: int | None = None) -> bytes:
    """The whole request body, straight from the ASGI messages; refused (413) once it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refused(error(408, "request_timeout", "the client went away before sending its body"))
        body: bytes = message.get("body", b"")
        if limit is not None:
            received += len(body)
            if received > limit:
                raise Refused(body_too_large(limit))
        if not message.get("more_body", False):
            if not chunks:
                return body
            chunks.append(body)
            return b"".join(chunks)
        chunks.append(body)


def parse_body(raw: bytes, content_type: str, model: type[BaseModel]) -> BaseModel:
    """The JSON body, numbers with a fraction read as Decimals, validated by ``model``."""
    if not raw:
        raise Refused(invalid([field_error("body", "body", "missing", "a JSON object body is required")]))
    if not is_json(content_type):
        raise Refused(
            error(
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
        raise Refused(malformed(exc.msg, exc.pos)) from None
    except RecursionError:
        raise Refused(malformed("nested too deeply", 0)) from None
    except ValueError as exc:  # not UTF-8, an integer of more than 4300 digits
        raise Refused(malformed(str(exc), 0)) from None
    try:
        return model.model_validate(document)
    except PydanticValidationError as exc:
        raise Refused(pydantic_invalid(exc.errors(), "body")) from None


class Operation(APIRoute):
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
        self._params = params_of(endpoint)
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
                elif p.kind == "state":
                    kwargs[p.name] = scope["app"].state.dhtcart
                elif p.kind == "request":
                    kwargs[p.name] = Request(scope, receive, send)
                elif p.kind == "raw":
                    kwargs[p.name] = await read_body(receive)
                else:
                    assert p.model is not None
                    raw = await read_body(receive)
                    kwargs[p.name] = parse_body(raw, found.get("content-type", ""), p.model)
            response = await self._handler(**kwargs)
        except Refused as refused:
            response = refused.response
        except DHTCartError as exc:
            response = domain_error(exc)
        await response(scope, receive, send)
