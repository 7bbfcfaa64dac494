"""Two layers of the HTTP add request (``POST /item/{customerId}/{itemId}``), beside their alternatives.

Body parsing and validation (:func:`dhtcart.http.binding.parse_body`: the
stdlib decoder reading fractions as Decimals, then pydantic's
``AddItemRequest.model_validate``) against pydantic's own JSON parser,
orjson, and msgspec; JSON rendering of the add's response
(:func:`dhtcart.render.dumps_bytes`) against orjson and msgspec. Every
contender runs in the same process, interleaved round by round (so a noisy
neighbour slows all of them alike), and each figure is the median over
rounds of the mean time per call within a round. Each alternative is also
run on a set of probe bodies and responses, and its results compared with
the current path's: the table says whether they are the same, the lines
after it say where they differ.

    python benchmarks/http_layers.py            # full run (about 5 s)
    python benchmarks/http_layers.py --quick    # a few seconds, for a smoke test
    python benchmarks/http_layers.py --rounds 15

The timed body is the documented sale example (every field given) and the
timed response the line that add answers (``render.line``). An alternative
that is not installed (msgspec, orjson) is listed as unavailable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.core import Bench, measure  # the same interleaved rounds as core.py's
from dhtcart import CartService, render
from dhtcart.cart.rules import check_price
from dhtcart.errors import InvalidInput
from dhtcart.http.binding import Refused, parse_body
from dhtcart.http.models import ADD_EXAMPLES, AddItemRequest
from dhtcart.http.responses import field_error, invalid, malformed, pydantic_invalid
from dhtcart.render import dumps_bytes

try:
    import orjson
except ImportError:  # pragma: no cover - the cells say so
    orjson = None  # type: ignore[assignment]
try:
    import msgspec
except ImportError:  # pragma: no cover - the cells say so
    msgspec = None  # type: ignore[assignment]

#: ("ok", reprs of offeredPrice, itemCount, unitCount, specialSale, saleExpiration, the price itself)
#: or ("refused", status, code, ((field, type, message), ...))
Outcome = tuple[Any, ...]

JSON = "application/json"
CURRENT = "current"


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


# -- the probes ---------------------------------------------------------------------------------

TIMED_BODY = json.dumps(ADD_EXAMPLES["sale"]["value"]).encode()

#: (label, body): bodies a client may send, good and bad; each alternative's outcome is compared with the current one
PROBES: list[tuple[str, bytes]] = [
    ("50 x2", b'{"offeredPrice": 50, "itemCount": 2}'),
    ("sale 10.99", TIMED_BODY),
    ("19.99", b'{"offeredPrice": 19.99}'),
    ("1e-2", b'{"offeredPrice": 1e-2}'),
    ("30.00", b'{"offeredPrice": 30.00}'),
    ("123456789.123456789", b'{"offeredPrice": 123456789.123456789}'),
    ("19.990000000000000001", b'{"offeredPrice": 19.990000000000000001}'),
    ("1e400", b'{"offeredPrice": 1e400}'),
    ("NaN", b'{"offeredPrice": NaN}'),
    ("unitCount 3", b'{"offeredPrice": 0.1, "unitCount": 3}'),
    ("unitCount null", b'{"offeredPrice": 1, "unitCount": null}'),
    ("duplicate key", b'{"offeredPrice": 1, "offeredPrice": 2.50}'),
    ("itemCount 10**23", b'{"offeredPrice": 1, "itemCount": 100000000000000000000000}'),
    ("BOM", b'\xef\xbb\xbf{"offeredPrice": 1}'),
    ("UTF-16", '{"offeredPrice": 1}'.encode("utf-16")),
    ("itemCount 2.0", b'{"offeredPrice": 10, "itemCount": 2.0}'),
    ("itemCount true", b'{"offeredPrice": 10, "itemCount": true}'),
    ('price "10"', b'{"offeredPrice": "10"}'),
    ('price "NaN"', b'{"offeredPrice": "NaN"}'),
    ("price true", b'{"offeredPrice": true}'),
    ("price null", b'{"offeredPrice": null}'),
    ("specialSale 1", b'{"offeredPrice": 1, "specialSale": 1}'),
    ("saleExpiration 5", b'{"offeredPrice": 1, "saleExpiration": 5}'),
    ("no offeredPrice", b'{"itemCount": 1}'),
    ("unknown field", b'{"offeredPrice": 1, "x": 1}'),
    ("array", b"[1]"),
    ("truncated", b'{"offeredPrice": 1'),
    ("trailing data", b'{"offeredPrice": 1} x'),
    ("empty body", b""),
]


def _responses() -> tuple[object, list[tuple[str, object]], list[tuple[str, object]]]:
    """The timed response, realistic responses (must render alike) and edge values (not an add's answer)."""
    svc = CartService()
    sale = ADD_EXAMPLES["sale"]["value"]
    timed = render.line(
        svc.add_item("alice", "036000291459", Decimal("10.99"), 1, True, sale["saleExpiration"]),
    )
    plain = svc.add_item("alice", "036000291459", "30.00", 2)
    accented = svc.add_item("café", 'café-ü-€-😀 "q" \\', "10.99", 3, True, "2099-12-31T23:59:59+01:00")
    free = svc.add_item("bob", "free-sample", 0, 1)
    dear = svc.add_item("bob", "yacht", "1000000000", 1)
    refused = pydantic_invalid(
        [{"loc": ("itemCount",), "type": "int_type", "msg": "Input should be a valid integer"}], "body"
    )
    realistic: list[tuple[str, object]] = [
        ("sale line (timed)", timed),
        ("line 30.00 x2", render.line(plain)),
        ("line: non-ASCII id with quote and backslash", render.line(accented)),
        ("line 0.00", render.line(free)),
        ("line 1000000000.00", render.line(dear)),
        ("seed line (Decimal timestamp)", render.seed_line(accented)),
        ("422 error body", json.loads(refused.body)),
        ("400 error body (details.position)", json.loads(malformed("Expecting ',' delimiter", 18).body)),
    ]
    edges: list[tuple[str, object]] = [
        ('Decimal("1E+2")', {"n": Decimal("1E+2")}),
        ('Decimal("1E-7")', {"n": Decimal("1E-7")}),
        ("lone surrogate", {"s": "\ud800"}),
        ("control character", {"s": "a\x01\x7f\u2028b"}),
    ]
    return timed, realistic, edges


# -- parsing: the alternatives --------------------------------------------------------------------


def _show(value: object) -> str:
    return repr(value)


def _of_model(m: AddItemRequest) -> Outcome:
    unit = _show(m.unitCount) if "unitCount" in m.model_fields_set else "unset"
    return (
        "ok",
        _show(m.offeredPrice),
        _show(m.itemCount),
        unit,
        _show(m.specialSale),
        _show(m.saleExpiration),
        m.offeredPrice,
    )


def _of_refusal(refused: Refused) -> Outcome:
    err = json.loads(refused.response.body)["error"]
    errors: tuple[tuple[str, str, str], ...] = ()
    if err["code"] == "invalid_input":
        errors = tuple((e["field"], e["type"], e["message"]) for e in err["details"]["errors"])
    return ("refused", refused.response.status_code, err["code"], errors)


def _guard(raw: bytes) -> None:
    """What parse_body checks before decoding, kept by every alternative (an empty body)."""
    if not raw:
        raise Refused(invalid([field_error("body", "body", "missing", "a JSON object body is required")]))


def current_outcome(raw: bytes) -> Outcome:
    try:
        m = parse_body(raw, JSON, AddItemRequest)
    except Refused as r:
        return _of_refusal(r)
    assert isinstance(m, AddItemRequest)
    return _of_model(m)


def pydantic_json_outcome(raw: bytes) -> Outcome:
    """model_validate_json, its errors mapped as parse_body maps them (json_invalid: 400 malformed_json)."""
    try:
        _guard(raw)
        try:
            m = AddItemRequest.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors()
            if errors and errors[0]["type"] == "json_invalid":
                raise Refused(malformed(errors[0]["msg"], None)) from None
            raise Refused(pydantic_invalid(errors, "body")) from None
    except Refused as r:
        return _of_refusal(r)
    return _of_model(m)


def orjson_outcome(raw: bytes) -> Outcome:
    try:
        _guard(raw)
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Refused(malformed(exc.msg, exc.pos)) from None
        try:
            m = AddItemRequest.model_validate(document)
        except ValidationError as exc:
            raise Refused(pydantic_invalid(exc.errors(), "body")) from None
    except Refused as r:
        return _of_refusal(r)
    return _of_model(m)


_AT = re.compile(r"(?:at `\$\.([^`\[]+)`|field `([^`]+)`)")


def _msgspec_types() -> tuple[type, type, Any]:
    """Two Structs for the body: price typed Decimal; price Any with float_hook=Decimal, refusing non-numbers."""
    UNSET = msgspec.UNSET

    class AddBody(msgspec.Struct, forbid_unknown_fields=True):
        offeredPrice: Decimal
        itemCount: int = 1
        unitCount: int | msgspec.UnsetType | None = UNSET
        specialSale: bool = False
        saleExpiration: str | None = None

    class AddBodyNumber(msgspec.Struct, forbid_unknown_fields=True):
        offeredPrice: Any
        itemCount: int = 1
        unitCount: int | msgspec.UnsetType | None = UNSET
        specialSale: bool = False
        saleExpiration: str | None = None

        def __post_init__(self) -> None:
            kind = type(self.offeredPrice)
            if kind is not int and kind is not Decimal:
                raise ValueError("Input should be a JSON number, like 10.50 - at `$.offeredPrice`")

    return AddBody, AddBodyNumber, msgspec.json.Decoder(AddBodyNumber, float_hook=Decimal)


def _msgspec_outcome(decode: Callable[[bytes], Any]) -> Callable[[bytes], Outcome]:
    def outcome(raw: bytes) -> Outcome:
        try:
            _guard(raw)
            try:
                s = decode(raw)
            except msgspec.ValidationError as exc:
                found = _AT.search(str(exc))
                field = next((g for g in found.groups() if g), "body") if found else "body"
                raise Refused(invalid([field_error(field, "body", "msgspec", str(exc))])) from None
            except msgspec.DecodeError as exc:
                raise Refused(malformed(str(exc), None)) from None
        except Refused as r:
            return _of_refusal(r)
        unit = "unset" if s.unitCount is msgspec.UNSET else _show(s.unitCount)
        return (
            "ok",
            _show(s.offeredPrice),
            _show(s.itemCount),
            unit,
            _show(s.specialSale),
            _show(s.saleExpiration),
            s.offeredPrice,
        )

    return outcome


# -- comparing -------------------------------------------------------------------------------------

_FIELDS = ("offeredPrice", "itemCount", "unitCount", "specialSale", "saleExpiration")


def _cart_price(value: object) -> str:
    """What the cart makes of a parsed price: the price it stores, or why it refuses it."""
    try:
        return f"cart stores {check_price(value)}"
    except InvalidInput as exc:
        return f"cart refuses: {exc.message}"


def _describe(o: Outcome) -> str:
    if o[0] == "ok":
        return "accepted " + ", ".join(f"{k}={v}" for k, v in zip(_FIELDS, o[1:6]) if v not in ("unset", "None"))
    status, code, errors = o[1:]
    if not errors:
        return f"{status} {code}"
    return f"{status} " + "; ".join(f"{f}/{t} {m!r}" for f, t, m in errors)


def _difference(cur: Outcome, alt: Outcome) -> tuple[str, str] | None:
    """(kind, text) of how ``alt`` differs from ``cur``, or None when it is the same."""
    if cur[:6] == alt[:6]:
        return None
    if cur[0] == "ok" and alt[0] == "ok":
        parts = [f"{k}: {c} -> {a}" for k, c, a in zip(_FIELDS, cur[1:6], alt[1:6]) if c != a]
        kind = "value"
        if cur[1] != alt[1]:
            stored = _cart_price(cur[6]), _cart_price(alt[6])
            parts.append(f"({stored[0]} / {stored[1]})")
            kind = "cart outcome" if stored[0] != stored[1] else "same cart price, other type"
        return kind, "; ".join(parts)
    if cur[0] != alt[0]:
        return "accept/refuse", f"{_describe(cur)} -> {_describe(alt)}"
    if cur[1:3] != alt[1:3] or [e[0] for e in cur[3]] != [e[0] for e in alt[3]]:
        return "status/field", f"{_describe(cur)} -> {_describe(alt)}"
    return "wording", f"{_describe(cur)} -> {_describe(alt)}"


def _verdict(diffs: list[tuple[str, str, str]], total: int) -> str:
    if not diffs:
        return f"yes ({total} probes)"
    kinds: dict[str, list[str]] = {}
    for label, kind, _ in diffs:
        kinds.setdefault(kind, []).append(label)
    shown = [
        f"{kind} {len(labels)}" + ("" if kind in _COUNTED else f" ({', '.join(labels)})")
        for kind, labels in sorted(kinds.items(), key=lambda kv: _KINDS.index(kv[0]))
    ]
    return f"no: {len(diffs)} of {total} differ: " + "; ".join(shown)


#: kinds of difference, worst first; the table counts the last ones, and lists the others' probes
_KINDS = ["cart outcome", "accept/refuse", "status/field", "value", "wording", "same cart price, other type"]
_COUNTED = {"wording", "same cart price, other type"}


# -- rendering: the alternatives -------------------------------------------------------------------


def _orjson_renderers() -> dict[str, Callable[[object], bytes]]:
    dumps = orjson.dumps

    def as_str(o: object) -> object:
        if type(o) is Decimal:
            return format(o, "f")
        raise TypeError

    def as_float(o: object) -> object:
        if type(o) is Decimal:
            return float(o)
        raise TypeError

    out: dict[str, Callable[[object], bytes]] = {
        "orjson.dumps, default: Decimal -> str": lambda v: dumps(v, default=as_str),
        "orjson.dumps, default: Decimal -> float": lambda v: dumps(v, default=as_float),
    }
    fragment = getattr(orjson, "Fragment", None)  # orjson >= 3.9
    if fragment is not None:

        def as_fragment(o: object) -> object:
            if type(o) is Decimal and o.is_finite():
                return fragment(format(o, "f"))
            raise TypeError

        out["orjson.dumps, default: Decimal -> Fragment (3.9+)"] = lambda v: dumps(v, default=as_fragment)
    return out


def _render_same(fn: Callable[[object], bytes], cases: list[tuple[str, object]]) -> list[tuple[str, str]]:
    """(label, why) for every case ``fn`` renders otherwise than dumps_bytes."""
    out = []
    for label, value in cases:
        want = dumps_bytes(value)
        try:
            got = fn(value)
        except Exception as exc:
            out.append((label, f"raises {type(exc).__name__}: {exc}"))
            continue
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            lo = max(0, at - 20)
            out.append((label, f"...{got[lo : at + 20]!r}... (current ...{want[lo : at + 20]!r}...)"))
    return out


# -- the run -----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few rounds, small n (smoke test)")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    scale = 0.1 if args.quick else 1.0

    raw = TIMED_BODY
    timed_response, realistic, edges = _responses()
    decoder = json.JSONDecoder(parse_float=Decimal)  # as parse_body's
    document = decoder.decode(raw.decode())
    model = AddItemRequest

    # parse: (label, bench, outcome or None for a part of the alternative above it)
    parse: list[tuple[str, Bench | None, Callable[[bytes], Outcome] | None, str]] = []

    def cur(n: int) -> None:
        for _ in range(n):
            parse_body(raw, JSON, model)

    def cur_decode(n: int) -> None:
        for _ in range(n):
            decoder.decode(raw.decode())

    def cur_validate(n: int) -> None:
        for _ in range(n):
            model.model_validate(document)

    def pyd_json(n: int) -> None:
        for _ in range(n):
            model.model_validate_json(raw)

    parse.append(("parse_body: json (parse_float=Decimal) + model_validate", cur, current_outcome, CURRENT))
    parse.append(("  part: json.JSONDecoder(parse_float=Decimal).decode", cur_decode, None, "part"))
    parse.append(("  part: AddItemRequest.model_validate(dict)", cur_validate, None, "part"))
    parse.append(("AddItemRequest.model_validate_json(raw)", pyd_json, pydantic_json_outcome, ""))
    if orjson is not None:
        loads = orjson.loads

        def orj(n: int) -> None:
            for _ in range(n):
                model.model_validate(loads(raw))

        def orj_decode(n: int) -> None:
            for _ in range(n):
                loads(raw)

        parse.append(("orjson.loads + model_validate", orj, orjson_outcome, ""))
        parse.append(("  part: orjson.loads", orj_decode, None, "part"))
    else:
        parse.append(("orjson.loads + model_validate", None, None, "unavailable (orjson not installed)"))
    if msgspec is not None:
        AddBody, _, number_decoder = _msgspec_types()
        typed_decoder = msgspec.json.Decoder(AddBody)
        typed, number = typed_decoder.decode, number_decoder.decode

        def ms_typed(n: int) -> None:
            for _ in range(n):
                typed(raw)

        def ms_number(n: int) -> None:
            for _ in range(n):
                number(raw)

        parse.append(("msgspec.json.decode -> Struct (price: Decimal)", ms_typed, _msgspec_outcome(typed), ""))
        parse.append(
            (
                "msgspec -> Struct (price: Any, float_hook=Decimal, __post_init__ number check)",
                ms_number,
                _msgspec_outcome(number),
                "",
            )
        )
    else:
        parse.append(("msgspec.json.decode -> Struct", None, None, "unavailable (msgspec not installed)"))

    # render: (label, bench, renderer or None)
    render_rows: list[tuple[str, Bench | None, Callable[[object], bytes] | None, str]] = []

    def ren(fn: Callable[[object], bytes]) -> Bench:
        def bench(n: int) -> None:
            for _ in range(n):
                fn(timed_response)

        return bench

    render_rows.append(("dumps_bytes (own renderer)", ren(dumps_bytes), dumps_bytes, CURRENT))
    if orjson is not None:
        for label, fn in _orjson_renderers().items():
            render_rows.append((label, ren(fn), fn, ""))
    else:
        render_rows.append(("orjson.dumps", None, None, "unavailable (orjson not installed)"))
    if msgspec is not None:
        encode = msgspec.json.Encoder(decimal_format="number").encode
        render_rows.append(('msgspec Encoder(decimal_format="number")', ren(encode), encode, ""))
    else:
        render_rows.append(("msgspec Encoder", None, None, "unavailable (msgspec not installed)"))

    # the timings, each layer's contenders interleaved
    medians: dict[str, float] = {}
    for rows, n in ((parse, 30000), (render_rows, 60000)):
        benches = {label: bench for label, bench, _, _ in rows if bench is not None}
        for label, s in measure(benches, max(10, int(n * scale)), rounds).items():
            medians[label] = statistics.median(s) * 1e6

    # the results, against the current path's
    current = {label: current_outcome(body) for label, body in PROBES}
    details: list[str] = []
    table: list[tuple[str, str, str, str, str]] = []
    base = medians[parse[0][0]]
    for label, bench, outcome, note in parse:
        if bench is None:
            table.append(("parse", label, "—", "—", note))
            continue
        if outcome is None:
            same = "— (part of the line above)"
        elif note == CURRENT:
            same = "(current)"
        else:
            diffs = []
            for probe, body in PROBES:
                d = _difference(current[probe], outcome(body))
                if d is not None:
                    diffs.append((probe, *d))
                    details.append(f"- parse, {label}: `{probe}` ({d[0]}): {d[1]}")
            same = _verdict(diffs, len(PROBES))
        table.append(("parse", label, f"{medians[label]:.2f}", f"{medians[label] / base:.2f}", same))
    base = medians[render_rows[0][0]]
    for label, bench, fn, note in render_rows:
        if bench is None or fn is None:
            table.append(("render", label, "—", "—", note))
            continue
        if note == CURRENT:
            same = "(current)"
        else:
            differ = _render_same(fn, realistic)
            if differ:
                same = f"no: {len(differ)} of {len(realistic)} differ ({', '.join(lb for lb, _ in differ)})"
            else:
                same = f"yes, byte for byte ({len(realistic)} responses)"
            details += [f"- render, {label}: `{lb}`: {why}" for lb, why in differ]
            details += [f"- render, {label}: edge `{lb}`: {why}" for lb, why in _render_same(fn, edges)]
        table.append(("render", label, f"{medians[label]:.2f}", f"{medians[label] / base:.2f}", same))

    # what the bare calls do with an empty body (every alternative above keeps parse_body's check for it)
    bare: list[str] = []
    for name, call in (
        ("model_validate_json", lambda: model.model_validate_json(b"")),
        ("orjson.loads", lambda: orjson.loads(b"") if orjson else None),
        ("msgspec", lambda: msgspec.json.decode(b"") if msgspec else None),
    ):
        try:
            call()
        except ValidationError as exc:
            bare.append(f"{name}: ValidationError {exc.errors()[0]['type']} {exc.errors()[0]['msg']!r}")
        except Exception as exc:
            bare.append(f"{name}: {type(exc).__name__} {exc}")

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    command = " ".join(["python benchmarks/http_layers.py", *sys.argv[1:]])
    lines = [
        f"Run {stamp}, `{command}`, load average {load}, Python {platform.python_version()} ({platform.machine()}),"
        f" pydantic {_version('pydantic')} (core {_version('pydantic-core')}), orjson {_version('orjson')},"
        f" msgspec {_version('msgspec')}, {rounds} rounds",
        "",
        f"Timed: the body `{TIMED_BODY.decode()}`; the response `{dumps_bytes(timed_response).decode()}`.",
        "",
        "| layer | alternative | median µs/call | ratio to current | same result as current? |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in table]
    lines += [
        "",
        "Where the results differ (parse: every alternative keeps parse_body's empty-body check, and maps its"
        " parser's syntax errors to 400 malformed_json; syntax errors are compared by status and code only):",
        "",
        *details,
        "",
        "Bare calls on an empty body: " + "; ".join(bare),
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
