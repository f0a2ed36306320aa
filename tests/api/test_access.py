"""Access control through the API: who may call what, on both backends."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import falcon.testing
import pytest

from mpi.api.access import PUBLIC, declared_scope
from mpi.api.app import create_app
from mpi.api.openapi import responders
from mpi.api.routes import build_routes
from mpi.domain.access import ADMIN, AUDIT, FEED, METRICS, STEWARD
from mpi.storage.db import close_database, connection, database_for
from mpi.storage.models import AuditEventRow, PatientRow
from mpi.wiring import build
from tests.auth.test_oauth import AUDIENCE, ISSUER, Idp
from tests.helpers import patient

API = "/api/v1"
P = "00000000-0000-4000-8000-00000000abcd"
#: Every route and method, and the scope it must need (the table DEPLOY.md shows).
ROUTES = [
    ("POST", f"{API}/patients", "system/Patient.c"),
    ("GET", f"{API}/patients", "system/Patient.s"),
    ("GET", f"{API}/patients/search?q=smith", "system/Patient.s"),
    ("GET", f"{API}/patients/{P}", "system/Patient.r"),
    ("PUT", f"{API}/patients/{P}", "system/Patient.u"),
    ("DELETE", f"{API}/patients/{P}", "system/Patient.d"),
    ("POST", f"{API}/patients/match", "system/Patient.s"),
    ("GET", f"{API}/patients/{P}/person", "system/Person.r"),
    ("GET", f"{API}/persons/{P}", "system/Person.r"),
    ("GET", f"{API}/persons/{P}/history", "system/Person.r"),
    ("GET", f"{API}/patients/{P}/audit", AUDIT),
    ("GET", f"{API}/audit/recent", AUDIT),
    ("GET", f"{API}/audit/user?user_id=x", AUDIT),
    ("GET", f"{API}/events", FEED),
    ("GET", "/metrics", METRICS),
    ("POST", f"{API}/persons/{P}/links", STEWARD),
    ("DELETE", f"{API}/persons/{P}/links/{P}", STEWARD),
    ("POST", f"{API}/persons/merge", STEWARD),
    ("POST", f"{API}/merges/{P}/undo", STEWARD),
    ("GET", f"{API}/reviews", STEWARD),
    ("GET", f"{API}/reviews/{P}", STEWARD),
    ("POST", f"{API}/reviews/{P}/resolve", STEWARD),
    ("GET", "/fhir/Patient?family=smith", "system/Patient.s"),
    ("POST", "/fhir/Patient", "system/Patient.c"),
    ("PUT", "/fhir/Patient?identifier=x", "system/Patient.u"),
    ("DELETE", "/fhir/Patient?identifier=x", "system/Patient.d"),
    ("POST", "/fhir/Patient/_search", "system/Patient.s"),
    ("POST", "/fhir/Patient/$match", "system/Patient.s"),
    ("GET", "/fhir/Patient/$ihe-pix?sourceIdentifier=a|b", "system/Patient.r"),
    ("POST", "/fhir/Patient/$ihe-pix", "system/Patient.r"),
    ("GET", f"/fhir/Patient/{P}", "system/Patient.r"),
    ("PUT", f"/fhir/Patient/{P}", "system/Patient.u"),
    ("DELETE", f"/fhir/Patient/{P}", "system/Patient.d"),
    ("GET", f"{API}/domains", ADMIN),
    ("POST", f"{API}/domains", ADMIN),
    ("DELETE", f"{API}/domains/{P}", ADMIN),
    ("GET", f"/fhir/Patient/{P}/_history", "system/Patient.r"),
    ("GET", f"/fhir/Person/{P}", "system/Person.r"),
    ("GET", f"/fhir/Patient/{P}/_history/1", "system/Patient.r"),
]
#: IHE IUA scopes: the routes of the transaction each authorizes in full (PDQm ITI-78 search
#: and read, ITI-119 $match; PIXm ITI-83 $ihe-pix, ITI-104 conditional update and delete).
TRANSACTIONS = {
    "ITI-78": {("GET", "/fhir/Patient?family=smith"), ("POST", "/fhir/Patient/_search"),
               ("GET", f"/fhir/Patient/{P}")},
    "ITI-119": {("POST", "/fhir/Patient/$match")},
    "ITI-83": {("GET", "/fhir/Patient/$ihe-pix?sourceIdentifier=a|b"),
               ("POST", "/fhir/Patient/$ihe-pix")},
    "ITI-104": {("PUT", "/fhir/Patient?identifier=x"), ("DELETE", "/fhir/Patient?identifier=x")},
}
OPEN = [f"{API}/health", f"{API}/health/ready", "/openapi.json", f"{API}/openapi.json",
        f"{API}/docs", "/fhir/metadata"]


def _call(client, method: str, path: str, headers: dict[str, str]):
    body = patient() if method in ("POST", "PUT") else None
    return client.simulate_request(method, path, json=body,
                                   headers={"If-Match": "*", **headers})


def test_every_responder_declares_a_scope_or_is_public(services):
    declared = {}
    for template, resource in build_routes(services):
        for method in responders(resource):
            declared[(method, template)] = declared_scope(getattr(resource, f"on_{method}"))
    assert None not in declared.values()
    public = {template for (_, template), scope in declared.items() if scope == PUBLIC}
    assert public == {path.split("?")[0] for path in OPEN}
    assert len([s for s in declared.values() if s != PUBLIC]) == len(ROUTES)


def test_the_api_document_says_which_scope_each_operation_needs(client):
    doc = client.simulate_get("/openapi.json").json
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    ops = {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert ops[("POST", f"{API}/patients")]["security"] == [{"bearer": ["system/Patient.c"]}]
    assert ops[("GET", f"{API}/events")]["security"] == [{"bearer": [FEED]}]
    assert ops[("GET", f"{API}/health")]["security"] == []
    assert "401" in ops[("GET", f"{API}/events")]["responses"]
    assert "403" in ops[("GET", f"{API}/events")]["responses"]
    assert "401" not in ops[("GET", f"{API}/health")]["responses"]


@pytest.mark.parametrize("path", OPEN)
def test_health_readiness_and_documentation_stay_open(secured, path):
    assert secured.client.simulate_get(path).status_code == 200


@pytest.mark.parametrize(("method", "path", "need"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_no_token_is_a_401_with_a_bearer_challenge(secured, method, path, need):
    resp = _call(secured.client, method, path, {})
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == 'Bearer realm="mpi"'
    fhir = path.startswith("/fhir/")
    assert resp.headers["content-type"] == (
        "application/fhir+json" if fhir else "application/problem+json")
    if fhir:
        assert resp.json["issue"][0]["code"] == "login"


def test_a_bad_token_is_a_401_saying_invalid_token(secured):
    for header in ("Bearer mpi_" + "x" * 43, "Bearer not-a-token", "Basic dXNlcjpwYXNz",
                   "Bearer", "Bearer a b"):
        resp = secured.client.simulate_get(f"{API}/events", headers={"Authorization": header})
        assert resp.status_code == 401, header
        assert 'error="invalid_token"' in resp.headers["www-authenticate"], header


@pytest.mark.parametrize(("method", "path", "need"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_each_route_needs_exactly_its_scope(secured, method, path, need):
    everything_else = [s for s in ("system/Patient.cruds", "system/Person.cruds", AUDIT, FEED,
                                   STEWARD, ADMIN) if not s.startswith(need.rsplit(".", 1)[0])
                       and s != need]
    without = secured.token("without", *everything_else)
    resp = _call(secured.client, method, path, without)
    assert resp.status_code == 403, resp.text
    if path.startswith("/fhir/"):  # an OperationOutcome naming the scope
        assert resp.json["issue"][0]["code"] == "forbidden"
        assert need in resp.json["issue"][0]["diagnostics"]
    else:
        assert resp.json["required_scope"] == need
    assert resp.headers["www-authenticate"] == (
        f'Bearer realm="mpi", error="insufficient_scope", scope="{need}"')
    # A conditional update that matches nothing creates, which needs the create scope too.
    creates = ("system/Patient.c",) if method == "PUT" and "?" in path else ()
    with_it = secured.token("with", need, *creates)
    assert _call(secured.client, method, path, with_it).status_code not in (401, 403)


@pytest.mark.parametrize("transaction", sorted(TRANSACTIONS))
def test_an_iua_scope_opens_exactly_its_transactions_routes(secured, transaction):
    """A token with nothing but an IHE IUA scope: every route of that transaction answers,
    every other route is a 403 naming the SMART scope it needs (and the transaction, when
    the route is part of one)."""
    headers = secured.token(f"iua-{transaction}", transaction)
    allowed = TRANSACTIONS[transaction]
    part_of = {route: t for t, routes in TRANSACTIONS.items() for route in routes}
    for method, path, need in ROUTES:
        resp = _call(secured.client, method, path, headers)
        if (method, path) in allowed:
            assert resp.status_code not in (401, 403), (method, path, resp.text)
            continue
        assert resp.status_code == 403, (method, path, resp.status_code)
        assert resp.headers["www-authenticate"].endswith(f'scope="{need}"')
        said = (resp.json["issue"][0]["diagnostics"] if path.startswith("/fhir/")
                else resp.json["detail"])
        other = part_of.get((method, path))
        assert need in said and (other is None or f"IHE IUA scope {other}" in said), said


def test_the_api_document_lists_the_iua_scope_as_the_alternative(client):
    doc = client.simulate_get("/openapi.json").json
    ops = {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert ops[("POST", "/fhir/Patient/$match")]["security"] == [
        {"bearer": ["system/Patient.s"]}, {"bearer": ["ITI-119"]}]
    assert ops[("GET", "/fhir/Patient/{patient_id}/_history")]["security"] == [
        {"bearer": ["system/Patient.r"]}]
    assert "ITI-104" in doc["components"]["securitySchemes"]["bearer"]["description"]


def test_a_refused_scope_is_audited(secured):
    reader = secured.token("reader", "system/Patient.rs")
    secured.client.simulate_get(f"{API}/events", headers={"X-User-ID": "nurse-4", **reader})
    with connection(secured.services.db):
        (row,) = AuditEventRow.select().where(AuditEventRow.action == "access:scope:denied")
    assert row.actor == "reader" and row.on_behalf_of == "nurse-4"
    assert row.new_value == {"method": "GET", "route": f"{API}/events", "scope": FEED}


def test_smart_v1_scopes_are_understood(secured):
    read = secured.token("v1-read", "system/Patient.read")
    write = secured.token("v1-write", "system/Patient.write")
    created = secured.client.simulate_post(f"{API}/patients", json=patient(), headers=write)
    assert created.status_code == 201
    url = f"{API}/patients/{created.json['id']}"
    assert secured.client.simulate_get(url, headers=read).status_code == 200
    assert secured.client.simulate_get(url, headers=write).status_code == 403
    assert secured.client.simulate_post(f"{API}/patients", json=patient(source_id="B"),
                                        headers=read).status_code == 403


def test_a_client_writes_only_its_own_sources(secured):
    """The identity-poisoning drill: a client allowed the lab's source cannot plant or
    change records in the EHR's, and every refusal is audited."""
    client = secured.client
    ehr = secured.token("ehr", "system/Patient.cruds", sources="st-marys-ehr")
    lab = secured.token("lab", "system/Patient.cruds", sources="lab")
    victim = client.simulate_post(f"{API}/patients", json=patient(), headers=ehr)
    assert victim.status_code == 201
    url = f"{API}/patients/{victim.json['id']}"
    planted = client.simulate_post(f"{API}/patients", json=patient(source_id="X-1"),
                                   headers=lab)
    assert planted.status_code == 403 and "st-marys-ehr" in planted.json["detail"]
    assert client.simulate_put(url, json=patient(gender="female"),
                               headers={**lab, "If-Match": '"1"'}).status_code == 403
    # Moving the record into the lab's source is as much a write into the EHR's.
    assert client.simulate_put(url, json=patient(source="lab", gender="female"),
                               headers={**lab, "If-Match": '"1"'}).status_code == 403
    assert client.simulate_delete(url, headers={**lab, "If-Match": '"1"'}).status_code == 403
    assert client.simulate_get(url, headers=ehr).json["gender"] == "male"
    assert client.simulate_post(f"{API}/patients", json=patient(source="lab", source_id="L-1"),
                                headers=lab).status_code == 201
    read_only = secured.token("no-sources", "system/Patient.cruds", sources="")
    assert client.simulate_post(f"{API}/patients", json=patient(source="lab", source_id="L-2"),
                                headers=read_only).status_code == 403
    with connection(secured.services.db):
        assert PatientRow.select().count() == 2
        denied = [(r.actor, r.entity_id, r.new_value) for r in AuditEventRow.select()
                  .where(AuditEventRow.action == "access:source:denied")
                  .order_by(AuditEventRow.pk)]
    assert denied == [
        ("lab", None, {"source": "st-marys-ehr", "action": "create"}),
        ("lab", victim.json["id"], {"source": "st-marys-ehr", "action": "update"}),
        ("lab", victim.json["id"], {"source": "st-marys-ehr", "action": "update"}),
        ("lab", victim.json["id"], {"source": "st-marys-ehr", "action": "delete"}),
        ("no-sources", None, {"source": "lab", "action": "create"}),
    ]


def test_the_client_address_comes_from_trusted_proxies_only(settings, clock):
    database = database_for(settings.database, max_connections=2)
    import ipaddress

    proxied = dataclasses.replace(settings, auth_mode="token",
                                  trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    services = build(proxied, db=database, clock=clock)
    with connection(database):
        token = services.tokens.create("desk", ["system/Patient.cruds", AUDIT], "*",
                                       _actor()).secret
    client = falcon.testing.TestClient(create_app(services))
    auth = {"Authorization": f"Bearer {token}"}
    spoof = {"X-Forwarded-For": "203.0.113.66", **auth}
    client.simulate_post(f"{API}/patients", json=patient(), headers=spoof,
                         remote_addr="198.51.100.7")  # not a proxy: its header is ignored
    client.simulate_post(f"{API}/patients", json=patient(source_id="A-2"), remote_addr="10.1.2.3",
                         headers={"X-Forwarded-For": "203.0.113.66, 192.0.2.10, 10.9.9.9",
                                  **auth})  # the nearest untrusted hop is the client
    client.simulate_post(f"{API}/patients", json=patient(source_id="A-3"), remote_addr="10.1.2.3",
                         headers={"Forwarded": 'for=192.0.2.44;proto=https, for="10.0.0.5"',
                                  **auth})
    # What a client wrote that is no address is not stored as one (nor overflows the column).
    for n, hop in enumerate(["x" * 300, "_hidden-proxy", "unknown"]):
        client.simulate_post(f"{API}/patients", json=patient(source_id=f"B-{n}"),
                             remote_addr="10.1.2.3",
                             headers={"X-Forwarded-For": f"{hop}, 10.9.9.9", **auth})
    trail = client.simulate_get(f"{API}/audit/recent", headers=auth).json["items"]
    creates = [e["ip"] for e in trail if e["action"] == "patient:record:create"]
    assert creates == ["unknown", "_hidden-proxy", "invalid", "192.0.2.44", "192.0.2.10",
                       "198.51.100.7"]
    close_database(database)


def _actor():
    from mpi.domain.audit import Actor

    return Actor("tests")


def test_bearer_jwts_from_the_identity_provider(settings, clock, tmp_path: Path):
    idp = Idp()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(idp.jwks()))
    database = database_for(settings.database, max_connections=2)
    services = build(dataclasses.replace(
        settings, auth_mode="jwt", auth_issuer=ISSUER, auth_audience=AUDIENCE,
        auth_jwks_file=jwks, auth_client_sources={"lab-system": frozenset({"st-marys-ehr"})}),
        db=database, clock=clock)
    client = falcon.testing.TestClient(create_app(services))
    bearer = {"Authorization": f"Bearer {idp.token()}", "X-User-ID": "tech-3"}
    created = client.simulate_post(f"{API}/patients", json=patient(), headers=bearer)
    assert created.status_code == 201, created.text
    feed = client.simulate_get(f"{API}/events", headers=bearer)
    assert feed.status_code == 200
    assert client.simulate_get(f"{API}/audit/recent", headers=bearer).status_code == 403
    expired = {"Authorization": f"Bearer {idp.token(exp=1)}"}
    resp = client.simulate_get(f"{API}/events", headers=expired)
    assert resp.status_code == 401 and "expired" in resp.headers["www-authenticate"]
    with connection(database):
        row = AuditEventRow.get(AuditEventRow.action == "patient:record:create")
    assert (row.actor, row.on_behalf_of) == ("lab-system", "tech-3")
    close_database(database)
