"""The OpenAPI document is generated from the routes and covers every one of them."""

from __future__ import annotations

import pytest

from mpi.api.openapi import METHODS, openapi_path


@pytest.fixture
def spec(client):
    resp = client.simulate_get("/openapi.json")
    assert resp.status_code == 200
    return resp.json


def _app_routes(app):
    """(template, method) for every responder Falcon actually routes."""
    found = set()

    def walk(nodes):
        for node in nodes:
            if node.resource is not None and node.uri_template:
                for method in METHODS:
                    if hasattr(node.resource, f"on_{method}"):
                        found.add((openapi_path(node.uri_template), method))
            walk(node.children)

    walk(app._router._roots)
    return found


def test_every_route_is_documented_and_nothing_else(client, spec):
    """Every API route; the steward's HTML pages (``/ui``) are for browsers, not clients of
    the API, and are fuzzed apart (tests/ui/test_fuzz.py)."""
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    pages = {(p, m) for p, m in _app_routes(client.app) if p == "/ui" or p.startswith("/ui/")}
    assert pages, "the steward's pages are routed"
    assert documented == _app_routes(client.app) - pages


def test_patient_schemas_come_from_the_models(spec):
    schemas = spec["components"]["schemas"]
    assert {"Patient", "PatientInput", "HumanName", "Identifier", "Problem"} <= set(schemas)
    gender = schemas["PatientInput"]["properties"]["gender"]
    assert "male" in str(gender)
    post = spec["paths"]["/api/v1/patients"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PatientInput"}
    assert set(post["responses"]) >= {"201", "400", "409", "413", "415", "422"}
    put = spec["paths"]["/api/v1/patients/{patient_id}"]["put"]
    assert {"428", "412"} <= set(put["responses"])
    assert any(p["name"] == "If-Match" and p["in"] == "header" for p in put["parameters"])


def test_every_reference_resolves(spec):
    refs = set()

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                refs.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    names = {f"#/components/schemas/{n}" for n in spec["components"]["schemas"]}
    assert refs and refs <= names


def test_swagger_ui_works_offline(client):
    page = client.simulate_get("/api/v1/docs")
    assert page.status_code == 200
    assert "swagger-ui-bundle.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from the internet
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        resp = client.simulate_get(f"/api/v1/docs/static/{asset}")
        assert resp.status_code == 200
        assert len(resp.content) > 1000
