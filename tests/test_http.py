"""The HTTP API in-process: the seed's scenario, every spelling, every error status and shape."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

with warnings.catch_warnings():  # starlette's TestClient nags about httpx versions
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from dhtcart import CartService, DHTServerStore
from dhtcart.errors import ShardUnavailable, StoreBusy, TooManyRetries
from dhtcart.http import DEFAULT_MAX_BODY_BYTES, app_from_env, create_app, dumps, runs_inline

JSON = {"content-type": "application/json"}


@pytest.fixture
def service() -> Iterator[CartService]:
    with CartService() as svc:
        yield svc


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """One app for the module (building one takes ~0.1 s); tests use their own customers."""
    with CartService() as svc, TestClient(create_app(svc)) as c:
        yield c


@pytest.fixture
def cid(request: pytest.FixtureRequest) -> str:
    """A customer id of this test's own."""
    return f"cust-{abs(hash(request.node.nodeid)):x}"


def body(r: Any) -> Any:
    """The response's JSON with numbers read exactly."""
    return json.loads(r.content, parse_float=Decimal)


def assert_error(r: Any, status: int, code: str) -> dict[str, Any]:
    """The one error shape: {"error": {"code", "message", "details"}}, JSON content type."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert set(doc) == {"error"}, doc
    err = doc["error"]
    assert set(err) == {"code", "message", "details"}, err
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    return err  # type: ignore[no-any-return]


# -- the seed's scenario --------------------------------------------------------------


def test_seed_scenario(client: TestClient) -> None:
    assert body(client.get("/items/alice")) == {"customerId": "alice", "items": []}
    r = client.post("/item/alice/036000291459", json={"offeredPrice": 50, "itemCount": 2})
    assert r.status_code == 200
    assert body(r) == {
        "itemId": "036000291459",
        "offeredPrice": Decimal("50.00"),
        "itemCount": 2,
        "specialSale": False,
        "saleExpiration": None,
        "expired": False,
    }
    assert client.post("/item/alice/sku-2", json={"offeredPrice": 10, "itemCount": 3}).status_code == 200
    r = client.put("/item/alice/036000291459", json={"newCount": 1})
    assert r.status_code == 200 and body(r)["itemCount"] == 1
    r = client.delete("/item/alice/036000291459")
    assert r.status_code == 204 and r.content == b""
    r = client.delete("/items/alice")
    assert r.status_code == 200
    receipt = body(r)
    assert receipt["total"] == Decimal("30.00")
    assert '"total":30.00' in r.text  # a JSON number with its exact decimal text
    assert receipt["lines"] == [
        {"itemId": "sku-2", "unitPrice": Decimal("10.00"), "itemCount": 3, "lineTotal": Decimal("30.00")}
    ]
    assert receipt["customerId"] == "alice" and receipt["checkedOutAt"].endswith("+00:00")
    assert body(client.get("/items/alice"))["items"] == []


def test_seed_code_spellings(client: TestClient) -> None:
    """/items/{c}/{i} for POST, PUT, DELETE; unitCount for itemCount; POST /checkout/{c}."""
    r = client.post("/items/bob/036000291459", json={"offeredPrice": 50, "unitCount": 2})
    assert r.status_code == 200 and body(r)["itemCount"] == 2
    assert client.post("/items/bob/sku-2", json={"offeredPrice": 10, "unitCount": 3}).status_code == 200
    assert body(client.put("/items/bob/036000291459", json={"newCount": 1}))["itemCount"] == 1
    assert client.delete("/items/bob/036000291459").status_code == 204
    r = client.post("/checkout/bob")
    assert r.status_code == 200 and body(r)["total"] == Decimal("30.00")
    assert body(client.get("/items/bob"))["items"] == []
    assert_error(client.post("/checkout/bob"), 404, "cart_empty")


def test_re_adding_sums_counts_on_one_line(client: TestClient) -> None:
    client.post("/item/carol/sku", json={"offeredPrice": 5, "itemCount": 2})
    r = client.post("/item/carol/sku", json={"offeredPrice": 4.5, "itemCount": 3})
    assert body(r)["itemCount"] == 5 and body(r)["offeredPrice"] == Decimal("4.50")  # the new offer's price
    items = body(client.get("/items/carol"))["items"]
    assert [(i["itemId"], i["itemCount"]) for i in items] == [("sku", 5)]


def test_upc_leading_zero_kept_and_order_of_adding(client: TestClient) -> None:
    for item in ("036000291459", "0001", "b", "a"):
        client.post(f"/item/dave/{item}", json={"offeredPrice": 1})
    assert [i["itemId"] for i in body(client.get("/items/dave"))["items"]] == [
        "036000291459",
        "0001",
        "b",
        "a",
    ]


def test_money_is_exact(client: TestClient) -> None:
    client.post("/item/erin/a", json={"offeredPrice": 0.1, "itemCount": 3})
    client.post("/item/erin/b", json={"offeredPrice": 0.2})
    r = client.delete("/items/erin")
    assert '"total":0.50' in r.text  # 3 x 0.10 + 0.20, no binary float on the way
    r = client.post("/item/erin/c", content=b'{"offeredPrice": 999999999.99}', headers=JSON)
    assert '"offeredPrice":999999999.99' in r.text
    # more than two decimal places is refused, even where a float would round it away
    err = assert_error(
        client.post("/item/erin/d", content=b'{"offeredPrice": 10.100000000000000001}', headers=JSON),
        422,
        "invalid_input",
    )
    assert err["details"]["errors"][0]["field"] == "offeredPrice"


def test_update_to_zero_removes_the_line(client: TestClient) -> None:
    client.post("/item/frank/a", json={"offeredPrice": 1})
    r = client.put("/item/frank/a", json={"newCount": 0})
    assert r.status_code == 204 and r.content == b""
    assert body(client.get("/items/frank"))["items"] == []


def test_ids_with_unicode_and_inner_spaces(client: TestClient) -> None:
    r = client.post("/item/caf%C3%A9%20au%20lait/item%20one", json={"offeredPrice": 1})
    assert r.status_code == 200 and body(r)["itemId"] == "item one"
    assert body(client.get("/items/caf%C3%A9%20au%20lait"))["customerId"] == "café au lait"


def test_expired_sale_is_409_naming_items_and_changes_nothing(client: TestClient) -> None:
    past = "2000-01-01T00:00:00Z"
    client.post("/item/gina/old", json={"offeredPrice": 1, "specialSale": True, "saleExpiration": past})
    client.post("/item/gina/fine", json={"offeredPrice": 2})
    client.post("/item/gina/later", json={"offeredPrice": 3, "specialSale": True, "saleExpiration": "2999-01-01"})
    items = {i["itemId"]: i for i in body(client.get("/items/gina"))["items"]}
    assert items["old"]["expired"] is True and items["old"]["saleExpiration"] == "2000-01-01T00:00:00+00:00"
    assert items["later"]["expired"] is False and items["fine"]["expired"] is False
    for r in (client.delete("/items/gina"), client.post("/checkout/gina")):
        err = assert_error(r, 409, "sale_expired")
        assert err["details"] == {"customerId": "gina", "itemIds": ["old"]}
        assert "old" in err["message"]
    assert len(body(client.get("/items/gina"))["items"]) == 3  # nothing changed
    client.delete("/item/gina/old")
    assert body(client.delete("/items/gina"))["total"] == Decimal("5.00")


# -- errors: status and shape ---------------------------------------------------------------


def test_not_found_errors(client: TestClient) -> None:
    err = assert_error(client.put("/item/hal/none", json={"newCount": 1}), 404, "item_not_found")
    assert err["details"] == {"customerId": "hal", "itemId": "none"}
    assert_error(client.delete("/item/hal/none"), 404, "item_not_found")
    assert_error(client.delete("/items/hal"), 404, "cart_empty")
    err = assert_error(client.get("/no/such/route"), 404, "not_found")
    assert "/docs" in err["message"]
    assert_error(client.post("/items/hal"), 405, "method_not_allowed")


def test_method_not_allowed_names_allowed_methods(client: TestClient) -> None:
    r = client.patch("/item/hal/x", json={})
    err = assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"] and "POST" in err["message"]


@pytest.mark.parametrize(
    "payload",
    [
        b"{bad json",
        b'{"offeredPrice": 1,}',
        b"",  # handled as a missing body (422), see below
        b"\xff\xfe\x00garbage",
        b"[" * 5000,
        b'{"offeredPrice": 1' + b"0" * 5000 + b"}",  # past Python's 4300-digit int limit
    ],
    ids=["truncated", "trailing-comma", "empty", "not-utf8", "deep-nesting", "huge-int"],
)
def test_malformed_json_is_400(client: TestClient, payload: bytes) -> None:
    r = client.post("/item/ivy/x", content=payload, headers=JSON)
    if payload == b"":
        err = assert_error(r, 422, "invalid_input")
        assert err["details"]["errors"][0]["message"] == "a JSON object body is required"
    else:
        err = assert_error(r, 400, "malformed_json")
        assert "JSON" in err["message"]
    assert body(client.get("/items/ivy"))["items"] == []


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_is_415(client: TestClient, ctype: str | None) -> None:
    headers = {"content-type": ctype} if ctype else {}
    r = client.post("/item/jo/x", content=b'{"offeredPrice": 1}', headers=headers)
    err = assert_error(r, 415, "unsupported_media_type")
    assert "application/json" in err["message"]
    assert_error(client.put("/item/jo/x", content=b'{"newCount": 1}', headers=headers), 415, "unsupported_media_type")


def test_json_subtypes_and_charset_are_json(client: TestClient) -> None:
    for ctype in ("application/json; charset=utf-8", "application/merge-patch+json"):
        r = client.post("/item/kim/x", content=b'{"offeredPrice": 1}', headers={"content-type": ctype})
        assert r.status_code == 200, r.text


def test_body_too_large_is_413(service: CartService) -> None:
    with TestClient(create_app(service, max_body_bytes=100)) as c:
        big = json.dumps({"offeredPrice": 1, "saleExpiration": "x" * 200}).encode()
        err = assert_error(c.post("/item/lee/x", content=big, headers=JSON), 413, "payload_too_large")
        assert err["details"] == {"limit": 100}

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"offeredPrice": 1, "saleExpiration": "'
            for _ in range(50):
                yield b"x" * 10
            yield b'"}'

        assert_error(c.post("/item/lee/x", content=chunks(), headers=JSON), 413, "payload_too_large")
        assert c.post("/item/lee/x", json={"offeredPrice": 1}).status_code == 200
    assert DEFAULT_MAX_BODY_BYTES == 64 * 1024


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"offeredPrice": 1, "bogus": 1}, "bogus"),
        ({"offeredPrice": 1, "itemCount": "2"}, "itemCount"),
        ({"offeredPrice": 1, "itemCount": 2.0}, "itemCount"),
        ({"offeredPrice": 1, "itemCount": True}, "itemCount"),
        ({"offeredPrice": 1, "itemCount": None}, "itemCount"),
        ({"offeredPrice": 1, "itemCount": 0}, "itemCount"),
        ({"offeredPrice": 1, "itemCount": -1}, "itemCount"),
        ({"offeredPrice": 1, "itemCount": 10**7}, "itemCount"),
        ({"offeredPrice": 1, "itemCount": 10**40}, "itemCount"),
        ({"offeredPrice": 1, "itemCount": 1, "unitCount": 1}, "unitCount"),
        ({"offeredPrice": 1, "unitCount": "1"}, "unitCount"),
        ({"offeredPrice": -1}, "offeredPrice"),
        ({"offeredPrice": -0.01}, "offeredPrice"),
        ({"offeredPrice": 1.005}, "offeredPrice"),
        ({"offeredPrice": "10"}, "offeredPrice"),
        ({"offeredPrice": True}, "offeredPrice"),
        ({"offeredPrice": None}, "offeredPrice"),
        ({"offeredPrice": 1e12}, "offeredPrice"),
        ({}, "offeredPrice"),
        ({"offeredPrice": 1, "specialSale": "yes"}, "specialSale"),
        ({"offeredPrice": 1, "saleExpiration": "next tuesday"}, "saleExpiration"),
        ({"offeredPrice": 1, "saleExpiration": 20300101}, "saleExpiration"),
        ({"offeredPrice": 1, "saleExpiration": "0001-01-01T00:00:00+05:00"}, "saleExpiration"),
        ({"offeredPrice": 1, "saleExpiration": "9999-12-31T23:59:59-05:00"}, "saleExpiration"),
        ([{"offeredPrice": 1}], "body"),
        ("offeredPrice", "body"),
    ],
)
def test_invalid_add_is_422_and_stores_nothing(client: TestClient, payload: Any, field: str) -> None:
    err = assert_error(client.post("/item/max/x", json=payload), 422, "invalid_input")
    fields = [e["field"] for e in err["details"]["errors"]]
    assert field in fields, err
    assert err["message"].startswith(fields[0])
    assert body(client.get("/items/max"))["items"] == []


@pytest.mark.parametrize(
    ("method", "path", "payload", "field", "where"),
    [
        ("POST", "/item/{c}/x", {"offeredPrice": 1, "itemCount": 0}, "itemCount", "body"),
        ("POST", "/items/{c}/x", {"offeredPrice": 1, "unitCount": 0}, "unitCount", "body"),  # as the client spelt it
        ("POST", "/item/{c}/x", {"offeredPrice": -1}, "offeredPrice", "body"),
        ("POST", "/item/{c}/x", {"offeredPrice": 1, "itemCount": 999_999}, "itemCount", "body"),  # the sum: 1,000,001
        ("POST", "/item/{c}/x", {"offeredPrice": 1, "saleExpiration": "soon"}, "saleExpiration", "body"),
        ("PUT", "/item/{c}/x", {"newCount": -1}, "newCount", "body"),
        ("GET", "/items/%20{c}", None, "customerId", "path"),
        ("DELETE", "/item/{c}/a%09b", None, "itemId", "path"),
    ],
)
def test_library_errors_name_the_json_fields(
    client: TestClient, cid: str, method: str, path: str, payload: Any, field: str, where: str
) -> None:
    """CartService names its Python parameters (item_count); the HTTP face answers with its own
    names (itemCount) and where they were."""
    client.post(f"/item/{cid}/x", json={"offeredPrice": 1, "itemCount": 2})
    r = client.request(method, path.format(c=cid), json=payload)
    err = assert_error(r, 422, "invalid_input")
    assert err["details"]["errors"][0]["field"] == field and err["details"]["errors"][0]["location"] == where
    assert err["message"].startswith(f"{field}: ")
    assert "_" not in field and not any(f"{name}:" in r.text for name in ("item_count", "offered_price", "_id"))
    assert body(client.get(f"/items/{cid}"))["items"][0]["itemCount"] == 2  # nothing changed


@pytest.mark.parametrize(
    "text", [b'{"offeredPrice": NaN}', b'{"offeredPrice": Infinity}', b'{"offeredPrice": -Infinity}']
)
def test_non_finite_price_is_422(client: TestClient, text: bytes) -> None:
    err = assert_error(client.post("/item/max/x", content=text, headers=JSON), 422, "invalid_input")
    assert err["details"]["errors"][0]["field"] == "offeredPrice"
    assert "finite" in err["message"]


@pytest.mark.parametrize(
    "payload",
    [{"newCount": "1"}, {"newCount": -1}, {"newCount": 1.5}, {}, {"newCount": 1, "x": 0}, {"count": 1}],
)
def test_invalid_update_is_422(client: TestClient, payload: dict[str, Any], cid: str) -> None:
    client.post(f"/item/{cid}/x", json={"offeredPrice": 1, "itemCount": 2})
    assert_error(client.put(f"/item/{cid}/x", json=payload), 422, "invalid_input")
    assert body(client.get(f"/items/{cid}"))["items"][0]["itemCount"] == 2


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/items/" + "c" * 129, "customerId"),
        ("/items/a%00b", "customerId"),
        ("/items/a%0Ab", "customerId"),
        ("/items/%20padded", "customerId"),
        ("/items/padded%20", "customerId"),
        ("/items/%E2%80%8Bzero-width", "customerId"),
    ],
)
def test_bad_ids_are_422(client: TestClient, path: str, field: str) -> None:
    err = assert_error(client.get(path), 422, "invalid_input")
    assert err["details"]["errors"][0] == {
        "field": field,
        "location": "path",
        "type": "invalid_input",
        "message": err["details"]["errors"][0]["message"],
    }


def test_bad_item_ids_on_every_method(client: TestClient) -> None:
    long_id = "i" * 129
    assert_error(client.post(f"/item/olga/{long_id}", json={"offeredPrice": 1}), 422, "invalid_input")
    assert_error(client.put(f"/item/olga/{long_id}", json={"newCount": 1}), 422, "invalid_input")
    assert_error(client.delete(f"/item/olga/{long_id}"), 422, "invalid_input")
    assert_error(client.delete("/items/" + "c" * 129), 422, "invalid_input")
    assert client.get("/items/" + "c" * 128).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [("post", "/item/pat/", "itemId"), ("delete", "/item/pat/", "itemId"), ("post", "/items/pat/", "itemId")],
)
def test_empty_ids_are_422(client: TestClient, method: str, path: str, field: str) -> None:
    kwargs: dict[str, Any] = {"json": {"offeredPrice": 1}} if method == "post" else {}
    err = assert_error(client.request(method.upper(), path, **kwargs), 422, "invalid_input")
    assert err["details"]["errors"][0]["field"] == field
    assert "empty" in err["message"]


def test_empty_customer_id_is_422(client: TestClient) -> None:
    err = assert_error(client.post("/item//x", json={"offeredPrice": 1}), 422, "invalid_input")
    assert err["details"]["errors"][0]["field"] == "customerId"


class _FailingStore(DHTServerStore):
    """A store whose every read and write raises ``exc``."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(shards=1)
        self.exc = exc

    def get(self, key: int) -> Any:
        raise self.exc

    def put(self, key: int, value: bytes, expected_version: int | None = None) -> int:
        raise self.exc

    def modify(self, key: int, change: Any, *, tries: int = 1) -> Any:
        raise self.exc


def _Failing(exc: Exception) -> CartService:
    """A service over a store that raises ``exc``: the HTTP layer's mapping, alone.

    (It used to override the service's methods; the HTTP face now calls the
    versioned operations, so the failure is injected one layer lower.)
    """
    return CartService(_FailingStore(exc))


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (
            ShardUnavailable("shard-1", "redis://10.0.0.7:6379/0", "connection refused"),
            503,
            "shard_unavailable",
        ),
        (StoreBusy("a rebalance is running"), 503, "store_busy"),
        (TooManyRetries("contention"), 409, "too_many_retries"),
    ],
)
def test_infrastructure_errors(exc: Exception, status: int, code: str) -> None:
    with TestClient(create_app(_Failing(exc))) as c:
        r = c.get("/items/quinn")
        assert_error(r, status, code)
        assert r.headers["retry-after"] == "1"
        assert "10.0.0.7" not in r.text  # internal addresses stay in the server's log
        assert_error(c.delete("/items/quinn"), status, code)


def test_closed_store_is_503(service: CartService) -> None:
    with TestClient(create_app(service)) as c:
        service.store.close()
        assert_error(c.get("/items/rita"), 503, "unavailable")


def test_unexpected_error_is_500_in_the_same_shape() -> None:
    with TestClient(create_app(_Failing(RuntimeError("bug"))), raise_server_exceptions=False) as c:
        err = assert_error(c.get("/items/sam"), 500, "internal_error")
        assert "bug" not in err["message"]


# -- the app: lifespan, OpenAPI, health, log ---------------------------------------------


def test_lifespan_opens_and_closes_the_lmdb_store(tmp_path: Path) -> None:
    data = tmp_path / "store"
    with TestClient(create_app(data_dir=data, shards=3)) as c:
        assert c.post("/item/tess/036000291459", json={"offeredPrice": 2.5, "itemCount": 4}).status_code == 200
    with DHTServerStore.open(data) as store:  # closed by the app: a rebalance may take it
        assert len(store.servers) == 3
        store.add_shard("shard-3")
    with TestClient(create_app(data_dir=data)) as c:
        items = body(c.get("/items/tess"))["items"]
        assert items[0]["itemCount"] == 4 and items[0]["offeredPrice"] == Decimal("2.50")


def test_lifespan_opens_any_location_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with TestClient(create_app(data_dir="memory://")) as c:  # in memory: no directory "memory:"
        assert c.post("/item/mem/x", json={"offeredPrice": 1}).status_code == 200
        assert body(c.get("/items/mem"))["items"][0]["itemId"] == "x"
    with TestClient(create_app(data_dir=f"lmdb://{tmp_path / 'kept'}", shards=2)) as c:
        assert c.post("/item/kept/x", json={"offeredPrice": 1}).status_code == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    with DHTServerStore.open(tmp_path / "kept") as store:
        assert len(store.shards) == 2 and len(store) == 1


def test_no_store_is_opened_before_startup(tmp_path: Path) -> None:
    app = create_app(data_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()
    c = TestClient(app)  # lifespan not run: the app answers 503, not a crash
    assert_error(c.get("/items/una"), 503, "unavailable")
    assert_error(c.get("/healthz"), 503, "unavailable")


def test_app_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DHTCART_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("DHTCART_SHARDS", "2")
    monkeypatch.setenv("DHTCART_MAX_BODY_BYTES", "50")
    with TestClient(app_from_env()) as c:
        assert_error(
            c.post("/item/vic/x", json={"offeredPrice": 1, "itemCount": 1, "specialSale": False}),
            413,
            "payload_too_large",
        )
    with DHTServerStore.open(tmp_path / "env") as store:
        assert len(store.servers) == 2
    monkeypatch.setenv("DHTCART_SHARDS", "many")
    with pytest.raises(ValueError, match="DHTCART_SHARDS"):
        app_from_env()


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_openapi_and_docs(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert ops >= {
        ("GET", "/items/{customerId}"),
        ("POST", "/item/{customerId}/{itemId}"),
        ("PUT", "/item/{customerId}/{itemId}"),
        ("DELETE", "/item/{customerId}/{itemId}"),
        ("DELETE", "/items/{customerId}"),
        ("POST", "/items/{customerId}/{itemId}"),
        ("PUT", "/items/{customerId}/{itemId}"),
        ("DELETE", "/items/{customerId}/{itemId}"),
        ("POST", "/checkout/{customerId}"),
        ("GET", "/healthz"),
    }
    text = json.dumps(doc)
    assert "HTTPValidationError" not in text  # FastAPI's own 422 shape is not ours
    add = doc["paths"]["/item/{customerId}/{itemId}"]["post"]
    for status in ("400", "404", "409", "413", "415", "422", "503"):
        assert add["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    schemas = doc["components"]["schemas"]
    assert schemas["AddItemRequest"]["additionalProperties"] is False
    assert schemas["ReceiptResponse"]["properties"]["total"]["type"] == "number"
    assert doc["paths"]["/checkout/{customerId}"]["post"]["deprecated"] is True
    scrape = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(scrape) == ["text/plain"] and scrape["text/plain"]["schema"] == {"type": "string"}
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    r = client.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()


def test_access_log_line(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dhtcart.access"):
        client.post("/item/wes/x", json={"offeredPrice": 1})
        client.get("/nope")
    lines = [r.getMessage() for r in caplog.records if r.name == "dhtcart.access"]
    assert len(lines) == 2
    assert '"POST /item/wes/x" 200 ' in lines[0] and lines[0].endswith("ms")
    assert '"GET /nope" 404 ' in lines[1]


def test_dumps_renders_exact_decimals() -> None:
    # non-ASCII text is written as UTF-8, not \u escapes (issue 10); control characters stay escaped
    assert dumps({"a": Decimal("1E+2"), "b": [Decimal("0.10"), 1, None, "\u00e9\n"]}) == (
        '{"a":100,"b":[0.10,1,null,"\u00e9\\n"]}'
    )
    assert dumps("\u00e9", ensure_ascii=True) == '"\\u00e9"'
    with pytest.raises(ValueError):
        dumps(Decimal("NaN"))


def test_thread_pool_mode_serves_the_same(service: CartService) -> None:
    """inline=False: every service call goes through the thread pool, same answers."""
    with TestClient(create_app(service, inline=False)) as c:
        assert c.post("/item/yan/a", json={"offeredPrice": 50, "itemCount": 2}).status_code == 200
        assert c.post("/item/yan/b", json={"offeredPrice": 10, "itemCount": 3}).status_code == 200
        assert c.put("/item/yan/a", json={"newCount": 1}).status_code == 200
        assert c.delete("/item/yan/a").status_code == 204
        assert body(c.delete("/items/yan"))["total"] == Decimal("30.00")
        assert_error(c.delete("/items/yan"), 404, "cart_empty")


def test_runs_inline_only_for_fast_local_shards(tmp_path: Path) -> None:
    with CartService() as memory:
        assert runs_inline(memory)
    with CartService.open(tmp_path / "process") as lmdb_process:
        assert runs_inline(lmdb_process)
    with CartService(DHTServerStore.open(tmp_path / "power", durability="power")) as lmdb_power:
        assert not runs_inline(lmdb_power)
        lmdb_power.store.close()
