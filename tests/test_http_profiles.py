"""The HTTP API in-process: the seed profile, ETag/If-Match, HEAD, UTF-8, health, readiness, metrics, docs.

(Over real HTTP against ``dhtcart serve``: ``test_http_serve.py``.)
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

with warnings.catch_warnings():  # starlette's TestClient nags about httpx versions
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from dhtcart import CartService, DHTServerStore, render
from dhtcart.errors import InvalidInput, ShardUnavailable
from dhtcart.http import PROFILES, AppState, SeedLineResponse, app_from_env, create_app, expected_version
from dhtcart.settings import Settings


def assert_error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message", "details"}
    assert doc["error"]["code"] == code, doc
    return doc["error"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def seed() -> Iterator[TestClient]:
    with CartService() as svc, TestClient(create_app(svc, compat="seed")) as c:
        yield c


@pytest.fixture(scope="module")
def api() -> Iterator[TestClient]:
    with CartService() as svc, TestClient(create_app(svc)) as c:
        yield c


# -- the seed profile ----------------------------------------------------------------------------


def test_seed_shapes(seed: TestClient) -> None:
    assert seed.get("/items/s1").json() == []
    line = seed.post("/items/s1/036000291459", json={"unitCount": 2, "offeredPrice": 50}).json()
    assert list(line) == ["itemId", "unitCount", "offeredPrice", "specialSale", "saleExpiration", "timestamp"]
    assert (line["itemId"], line["unitCount"], line["specialSale"], line["saleExpiration"]) == (
        "036000291459",
        2,
        False,
        None,
    )
    assert isinstance(line["timestamp"], float)
    sale = seed.post(
        "/item/s1/sale", json={"offeredPrice": 1.5, "specialSale": True, "saleExpiration": "2999-01-01T00:00:00Z"}
    ).json()
    assert sale["specialSale"] is True and sale["saleExpiration"] == "2999-01-01T00:00:00+00:00"
    assert [i["itemId"] for i in seed.get("/items/s1").json()] == ["036000291459", "sale"]
    updated = seed.put("/items/s1/036000291459", json={"newCount": 5})
    assert updated.status_code == 200 and updated.json()["unitCount"] == 5
    r = seed.put("/items/s1/036000291459", json={"newCount": 0})  # 0 removes: {} as for a delete
    assert (r.status_code, r.json()) == (200, {})
    r = seed.delete("/item/s1/sale")
    assert (r.status_code, r.json()) == (200, {})
    assert seed.get("/items/s1").json() == []


def test_seed_checkouts(seed: TestClient) -> None:
    seed.post("/items/s2/a", json={"unitCount": 2, "offeredPrice": 1.25})
    seed.post("/items/s2/b", json={"unitCount": 1, "offeredPrice": 3})
    lines = json.loads(seed.post("/checkout/s2").content, parse_float=Decimal)
    assert [(ln["itemId"], ln["unitCount"], ln["offeredPrice"]) for ln in lines] == [
        ("a", 2, Decimal("1.25")),
        ("b", 1, Decimal("3.00")),
    ]
    assert seed.post("/checkout/s2").json() == []  # nothing left: an empty array
    seed.post("/items/s2/c", json={"offeredPrice": 1})
    r = seed.delete("/items/s2")  # DELETE /items/<c>: checkout, answered {}
    assert (r.status_code, r.json()) == (200, {})
    assert seed.get("/items/s2").json() == []
    r = seed.delete("/items/never-seen")  # even of an empty cart
    assert (r.status_code, r.json()) == (200, {})


def test_seed_errors_stay_typed(seed: TestClient) -> None:
    assert_error(seed.post("/items/s3/x", json={"unitCount": -1, "offeredPrice": 1}), 422, "invalid_input")
    assert_error(seed.delete("/items/s3/x"), 404, "item_not_found")
    seed.post("/items/s3/old", json={"offeredPrice": 1, "specialSale": True, "saleExpiration": "2000-01-01"})
    assert_error(seed.post("/checkout/s3"), 409, "sale_expired")
    assert_error(seed.delete("/items/s3"), 409, "sale_expired")


def test_seed_profile_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DHTCART_COMPAT", "seed")
    monkeypatch.setenv("DHTCART_DATA", str(tmp_path / "d"))
    with TestClient(app_from_env()) as c:
        assert c.get("/items/env").json() == []
    monkeypatch.setenv("DHTCART_COMPAT", "flask")
    with pytest.raises(InvalidInput, match="DHTCART_COMPAT"):
        app_from_env()


def test_each_profile_documents_its_shapes() -> None:
    for name, profile in PROFILES.items():
        with CartService() as svc:
            doc = TestClient(create_app(svc, compat=name)).get("/openapi.json").json()
        listing = doc["paths"]["/items/{customerId}"]["get"]["responses"]["200"]["content"]["application/json"]
        if name == "seed":
            assert listing["schema"]["type"] == "array"
            assert "SeedLineResponse" in doc["components"]["schemas"]
        else:
            assert listing["schema"] == {"$ref": "#/components/schemas/CartResponse"}
        assert profile.name == name


def _examples(doc: dict[str, Any], holder: dict[str, Any]) -> list[Any]:
    """Every example a parameter, a media type or their (referenced) schema gives."""
    schema = holder.get("schema", {})
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rpartition("/")[2]]
    found = [e["value"] for e in holder.get("examples", {}).values()]
    found += [holder["example"]] if "example" in holder else []
    found += list(schema.get("examples", [])) + ([schema["example"]] if "example" in schema else [])
    return found


@pytest.mark.parametrize("compat", ["default", "seed"])
def test_every_example_of_the_document_succeeds(compat: str) -> None:
    """What the document shows a client (Swagger UI's "Try it out" sends its examples) is accepted:
    every example of every parameter and request body, each sent on its own, gets a 2xx."""
    with CartService() as svc, TestClient(create_app(svc, compat=compat)) as c:
        doc = c.get("/openapi.json").json()
        sent = 0
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                params = {p["name"]: p for p in operation.get("parameters", [])}
                values = {name: _examples(doc, p) for name, p in params.items()}
                for name, p in params.items():
                    assert values[name] or not p["required"], f"{method} {path}: {name} has no example"
                media = operation.get("requestBody", {}).get("content", {}).get("application/json")
                bodies = _examples(doc, media) if media is not None else [None]
                # a viewer makes a body up from the fields only when the document gives none
                assert bodies, f"{method} {path}: its body has no example"
                variants = [{name: v[0] for name, v in values.items() if v}]
                variants += [{**variants[0], name: v} for name, vs in values.items() for v in vs[1:]]
                for chosen in variants:
                    for body in bodies:
                        customer, item_id = chosen.get("customerId", "alice"), chosen.get("itemId", "036000291459")
                        svc.add_item(customer, item_id, "1.00")  # a cart holding the item, to change or check out
                        url = path.format(**{k: v for k, v in chosen.items() if params[k]["in"] == "path"})
                        headers = {k: v for k, v in chosen.items() if params[k]["in"] == "header"}
                        r = c.request(method.upper(), url, json=body, headers=headers)
                        assert 200 <= r.status_code < 300, (method, path, chosen, body, r.text)
                        sent += 1
        svc.checkout("alice")
    assert sent >= 14  # every operation, each body example of the adds and updates


def test_the_rendering_matches_the_documented_models() -> None:
    """One rendering per profile, and the response models document exactly its fields."""
    from dhtcart.http import CartItemResponse, ReceiptResponse

    with CartService() as svc:
        item = svc.add_item("m", "i", "1.50", item_count=2)
        assert set(render.line(item)) == set(CartItemResponse.model_fields)
        assert set(render.seed_line(item)) == set(SeedLineResponse.model_fields)
        assert render.line(item, money=str)["offeredPrice"] == "1.50"  # JSON-ready for json.dumps
        receipt = svc.checkout("m")
        assert set(render.receipt(receipt)) == set(ReceiptResponse.model_fields)
        assert render.seed_receipt(receipt) == [render.seed_line(item)]


# -- ETag and If-Match ------------------------------------------------------------------------------


def test_etag_on_get_and_writes(api: TestClient) -> None:
    assert api.get("/items/e1").headers["etag"] == '"0"'
    r = api.post("/item/e1/a", json={"offeredPrice": 1})
    tag = r.headers["etag"]
    assert tag == api.get("/items/e1").headers["etag"] == api.head("/items/e1").headers["etag"]
    r = api.put("/item/e1/a", json={"newCount": 3}, headers={"If-Match": tag})
    assert r.status_code == 200 and r.headers["etag"] != tag
    r = api.delete("/item/e1/a", headers={"If-Match": r.headers["etag"]})
    assert r.status_code == 204 and r.headers["etag"]


@pytest.mark.parametrize("compat", ["default", "seed"])
def test_if_none_match_answers_304_without_a_body(compat: str) -> None:
    """RFC 9110: a GET or HEAD whose If-None-Match matches the cart's ETag (weakly) gets 304, its ETag
    and no body; * matches any cart that exists."""
    with CartService() as svc, TestClient(create_app(svc, compat=compat)) as c:
        r = c.get("/items/n1", headers={"If-None-Match": '"0"'})  # no cart: its ETag is "0"
        assert (r.status_code, r.content, r.headers["etag"]) == (304, b"", '"0"')
        assert c.get("/items/n1", headers={"If-None-Match": "*"}).status_code == 200  # no cart exists
        c.post("/item/n1/a", json={"offeredPrice": 1})
        full = c.get("/items/n1")
        tag = full.headers["etag"]
        for header in (tag, "*", f'"999", {tag}', f"W/{tag}", f" {tag} "):
            for method in ("GET", "HEAD"):
                r = c.request(method, "/items/n1", headers={"If-None-Match": header})
                assert (r.status_code, r.content, r.headers["etag"]) == (304, b"", tag), (method, header)
                assert "content-length" not in r.headers and "content-type" not in r.headers
        for other in ('"0"', '"999"', "garbage", 'W/"x"'):  # another version: the cart, in full
            r = c.get("/items/n1", headers={"If-None-Match": other})
            assert (r.status_code, r.content, r.headers["etag"]) == (200, full.content, tag), other
        c.post("/item/n1/b", json={"offeredPrice": 2})
        r = c.get("/items/n1", headers={"If-None-Match": tag})  # the cart changed since
        assert r.status_code == 200 and r.headers["etag"] != tag and len(r.json()) >= 1
        c.delete("/items/n1")  # checked out: an empty cart still exists, at a newer version
        assert c.get("/items/n1", headers={"If-None-Match": "*"}).status_code == 304
        text = c.get("/metrics").text
        assert 'dhtcart_http_requests_total{method="GET",route="/items/{customerId}",status="304"}' in text


def test_stale_if_match_is_412_and_changes_nothing(api: TestClient) -> None:
    api.post("/item/e2/a", json={"offeredPrice": 1})
    current = api.get("/items/e2")
    for headers in ({"If-Match": '"1234"'}, {"If-Match": 'W/"1"'}, {"If-Match": "garbage"}):
        err = assert_error(
            api.post("/item/e2/b", json={"offeredPrice": 1}, headers=headers), 412, "precondition_failed"
        )
        assert err["details"]["etag"] == current.headers["etag"]
        assert "version" in err["message"]
    assert api.get("/items/e2").content == current.content
    assert api.post("/item/e2/b", json={"offeredPrice": 1}, headers={"If-Match": "*"}).status_code == 200


def test_validation_comes_before_the_precondition(api: TestClient) -> None:
    assert_error(api.post("/item/e3/a", json={"offeredPrice": -1}, headers={"If-Match": '"99"'}), 422, "invalid_input")


def test_expected_version_parsing() -> None:
    assert expected_version(None) is None and expected_version(" * ") is None
    assert expected_version('"7"') == 7
    assert expected_version('"7", "9"') == frozenset({7, 9})
    assert expected_version('W/"7"') == frozenset() and expected_version('"x"') == frozenset()
    assert expected_version('"' + "9" * 25 + '"') == frozenset()  # longer than any version


def test_versioned_service_api() -> None:
    with CartService() as svc:
        items, version = svc.versioned.list_items("v")
        assert (items, version) == ([], 0)
        line, v1 = svc.versioned.add_item("v", "a", "1.00", expected_version=0)
        assert v1 == 1 and line.item_count == 1
        assert svc.versioned.update_count("v", "a", 2, expected_version={1, 5}).version == 2
        with pytest.raises(Exception, match="at version 2, not 1"):
            svc.delete_item("v", "a", expected_version=1)
        receipt, v3 = svc.versioned.checkout("v", expected_version=2)
        assert receipt.total == Decimal("2.00") and v3 == 3
        assert svc.versioned.list_items("v").version == 3  # an emptied cart keeps its version


# -- HEAD, UTF-8, limits ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/items/h", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc"])
def test_head_like_get_without_body(api: TestClient, path: str) -> None:
    got, head = api.get(path), api.head(path)
    assert head.status_code == got.status_code == 200
    assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]


def test_head_is_not_allowed_where_get_is_not(api: TestClient) -> None:
    r = api.head("/item/h/x")
    assert r.status_code == 405 and "HEAD" not in r.headers["allow"]


def test_non_ascii_ids_are_utf8(api: TestClient) -> None:
    r = api.post("/item/caf%C3%A9/%E2%82%AC-1", json={"offeredPrice": 1})
    assert '"itemId":"€-1"' in r.content.decode("utf-8") and b"\\u" not in r.content
    assert '"customerId":"café"' in api.get("/items/caf%C3%A9").content.decode("utf-8")
    err = api.get("/items/%ED%A0%80")  # not UTF-8 in the path: refused, and the answer is valid JSON
    assert err.status_code == 422 and err.json()["error"]["code"] == "invalid_input"


# -- health, readiness, metrics, docs ----------------------------------------------------------------


def test_readyz_asks_every_shard(tmp_path: Path) -> None:
    with CartService.open(tmp_path / "s", shards=3) as svc, TestClient(create_app(svc)) as c:
        r = c.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {"status": "ready", "shards": {"shard-0": "ok", "shard-1": "ok", "shard-2": "ok"}}
        broken = svc.store.shards["shard-1"].backend
        broken.ownership = _down  # type: ignore[method-assign]
        err = assert_error(c.get("/readyz"), 503, "not_ready")
        assert err["details"]["shards"] == {"shard-0": "ok", "shard-1": "unavailable", "shard-2": "ok"}
        assert "10.0.0.9" not in json.dumps(err)  # the reason names an address: logged, not shown
        assert c.get("/healthz").status_code == 200  # liveness does not ask the store
        svc.store.health = _broken  # type: ignore[method-assign]  # the store itself fails: not ready, no 500
        assert assert_error(c.get("/readyz"), 503, "not_ready")["details"] is None


def _broken(timeout: float | None = None) -> Any:
    raise RuntimeError("the membership's file is unreadable")


def _down() -> Any:
    raise ShardUnavailable("shard-1", "redis://10.0.0.9:6379/0", "connection refused")


def test_healthz_touches_no_store() -> None:
    class NoStore(DHTServerStore):
        def get(self, key: int) -> Any:
            raise AssertionError("healthz read the store")

    with CartService(NoStore(shards=1)) as svc, TestClient(create_app(svc)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}


def test_metrics_in_process(api: TestClient) -> None:
    api.get("/items/mx")
    api.get("/no/such/route")
    api.patch("/items/mx")  # a wrong method is counted on its route
    text = api.get("/metrics").text
    assert 'dhtcart_http_requests_total{method="PATCH",route="/items/{customerId}",status="405"}' in text
    assert 'dhtcart_http_requests_total{method="GET",route="/items/{customerId}",status="200"}' in text
    assert 'route="unmatched",status="404"' in text
    assert 'dhtcart_store_operations_total{operation="list",shard="' in text
    assert "dhtcart_http_request_duration_seconds_bucket" in text
    assert api.get("/metrics").headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("inline", [True, False])
def test_store_operations_are_labelled_by_the_shard_reached_without_routing_again(inline: bool) -> None:
    """The label is the shard the operation itself reached (CartService.last_shard, read in the thread
    that made the call: the event loop, or a pool thread), never a second routing of the key."""
    customers = [f"label-{i}" for i in range(40)]
    with CartService(DHTServerStore(shards=4)) as svc, TestClient(create_app(svc, inline=inline)) as c:
        holder = {cid: svc.shard_of(cid) for cid in customers}
        assert len(set(holder.values())) == 4

        def no_second_routing(*args: Any) -> Any:
            raise AssertionError("the face routed a key again")

        svc.store.shard_for = no_second_routing  # type: ignore[method-assign]
        svc.store.server_for = no_second_routing  # type: ignore[method-assign]
        expected: Counter[tuple[str, str]] = Counter()
        for cid in customers:
            assert c.post(f"/item/{cid}/x", json={"offeredPrice": 1}).status_code == 200
            assert c.get(f"/items/{cid}").status_code == 200
            expected.update([("add", holder[cid]), ("list", holder[cid])])
        for cid in customers:  # refusals, each right after an operation on another shard
            other = next(o for o in customers if holder[o] != holder[cid])
            assert c.get(f"/items/{other}").status_code == 200
            assert c.delete(f"/item/{cid}/missing").status_code == 404  # the change refused it
            assert c.get(f"/items/{other}").status_code == 200
            stale = c.post(f"/item/{cid}/x", json={"offeredPrice": 1}, headers={"If-Match": '"99"'})
            assert stale.status_code == 412
            expected.update([("list", holder[other]), ("delete", holder[cid])])
            expected.update([("list", holder[other]), ("add", holder[cid])])
        text = c.get("/metrics").text
        svc.store.close()
    for (operation, shard), n in expected.items():
        line = f'dhtcart_store_operations_total{{operation="{operation}",shard="{shard}"}} {float(n)}'
        assert line in text, (line, text)
    assert 'shard="unknown"' not in text


def test_metrics_count_store_errors_by_shard() -> None:
    from dhtcart.errors import ShardUnavailable

    class Down(DHTServerStore):
        def get(self, key: int) -> Any:
            raise ShardUnavailable("shard-0", "redis://127.0.0.1:1/0", "refused")

    with CartService(Down(shards=1)) as svc, TestClient(create_app(svc)) as c:
        assert c.get("/items/z").status_code == 503
        text = c.get("/metrics").text
    assert 'dhtcart_store_errors_total{error="ShardUnavailable",shard="shard-0"} 1.0' in text


def test_metrics_can_be_switched_off() -> None:
    with CartService() as svc, TestClient(create_app(svc, metrics=False)) as c:
        assert_error(c.get("/metrics"), 404, "not_found")
        assert "/metrics" not in c.get("/openapi.json").json()["paths"]  # documented only when it counts
        assert c.get("/healthz").status_code == 200


def test_docs_pages_load_nothing_from_elsewhere(api: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = api.get(page).text
        assert "https://" not in html and "http://" not in html, page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        r = api.get(f"/docs/static/{asset}")
        assert r.status_code == 200 and len(r.content) > 1000, asset
    assert_error(api.get("/docs/static/../../etc/passwd"), 404, "not_found")
    assert_error(api.get("/docs/static/secret.txt"), 404, "not_found")


# -- configuration --------------------------------------------------------------------------------------


def test_create_app_reads_one_settings_object(tmp_path: Path) -> None:
    settings = Settings(data=str(tmp_path / "d"), shards=2, max_body_bytes=40, compat="seed", metrics=False)
    app = create_app(settings=settings)
    state: AppState = app.state.dhtcart
    assert state.settings == settings and state.data_dir == str(tmp_path / "d") and state.metrics is None
    with TestClient(app) as c:
        assert c.get("/items/x").json() == []
        assert_error(
            c.post("/item/x/y", json={"offeredPrice": 1, "itemCount": 1, "specialSale": False}),
            413,
            "payload_too_large",
        )
    with DHTServerStore.open(tmp_path / "d") as store:
        assert len(store.servers) == 2
    assert create_app(settings=settings, compat="default").state.dhtcart.profile.name == "default"  # keywords win
    assert create_app(settings=Settings(thread_pool=True)).state.dhtcart.inline is False
    with pytest.raises(InvalidInput):
        create_app(max_body_bytes=-1)
