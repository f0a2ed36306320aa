"""Identity domains: the registry (service, HTTP, command line) and what it decides: which
systems PDQm/PIXm know, and which domains a source may feed (PIXm ITI-104)."""

from __future__ import annotations

import json
import uuid

import pytest

from mpi.domain.audit import Actor
from mpi.domain.errors import Conflict, InvalidInput, NotFound
from mpi.storage.db import connection
from mpi.storage.models import AuditEventRow
from tests.helpers import SSN, patient
from tests.test_cli import run

ADMIN = Actor("admin-1")
LAB = Actor("lab-feed", sources=frozenset({"lab"}))


def _add(services, system: str, *sources: str, name: str = "A domain"):
    body = json.dumps({"system": system, "name": name, "sources": list(sources)}).encode()
    return services.domains.add(services.domains.parse(body), ADMIN)


def test_register_list_and_remove_are_audited(services):
    made = _add(services, "urn:oid:2.16.840.1.113883.4.1", "*", name="US SSN")
    assert made.oid == "2.16.840.1.113883.4.1" and made.sources == ["*"]
    assert [d.system for d in services.domains.all(ADMIN)] == [made.system]
    with pytest.raises(Conflict):
        _add(services, made.system, "lab")
    services.domains.remove(made.system, ADMIN)  # by system, or by id
    assert services.domains.all(ADMIN) == []
    with pytest.raises(NotFound):
        services.domains.remove(made.id, ADMIN)
    with connection(services.db):
        actions = [r.action for r in AuditEventRow.select().order_by(AuditEventRow.pk)]
    assert actions[0] == "admin:domain:create" and "admin:domain:delete" in actions


@pytest.mark.parametrize(("system", "sources", "field"), [
    ("urn:oid:1.2.x", ["lab"], "system"),
    ("not a uri", ["lab"], "system"),
    ("urn:mpi:source:lab", ["lab"], "system"),
    ("urn:oid:1.2.3", [], "sources"),
    ("urn:oid:1.2.3", ["bad source!"], "sources"),
])
def test_bad_domains_are_refused_naming_the_field(services, system, sources, field):
    with pytest.raises(InvalidInput) as refused:
        _add(services, system, *sources)
    assert refused.value.problems[0].field == field


def test_known_systems_before_and_after_the_first_registration(services):
    services.patients.create(services.patients.parse(json.dumps(patient()).encode()), ADMIN)
    unknown = services.domains.unknown
    # Nothing registered: the systems in use are known, as are the built-in domains.
    assert unknown([SSN, "urn:mpi:source:st-marys-ehr", "urn:mpi:person"]) == []
    assert unknown(["urn:oid:9.9", "urn:mpi:source:nobody"]) == [
        "urn:mpi:source:nobody", "urn:oid:9.9"]
    # Once a domain is registered, the registry decides.
    _add(services, "urn:oid:1.2.36.146.595.217.0.1", "st-marys-ehr")
    assert unknown([SSN]) == [SSN]
    assert unknown(["urn:oid:1.2.36.146.595.217.0.1", "urn:mpi:source:st-marys-ehr"]) == []


def test_a_source_feeds_only_the_domains_it_may_assign_in(services):
    assert services.domains.may_feed("urn:oid:1.7.7", LAB)  # nothing registered yet
    _add(services, "urn:oid:1.7.7", "lab")
    _add(services, "urn:oid:1.8.8", "st-marys-ehr")
    assert services.domains.may_feed("urn:oid:1.7.7", LAB)
    assert not services.domains.may_feed("urn:oid:1.8.8", LAB)
    assert not services.domains.may_feed("urn:oid:9.9", LAB)  # not registered
    assert services.domains.may_feed("urn:mpi:source:lab", LAB)
    assert not services.domains.may_feed("urn:mpi:source:st-marys-ehr", LAB)
    assert services.domains.may_feed("urn:oid:1.8.8", Actor("any", sources=frozenset({"*"})))


def test_the_admin_api(client):
    body = {"system": "urn:oid:1.2.3.4", "name": "Lab MRN", "sources": ["lab"]}
    made = client.simulate_post("/api/v1/domains", json=body)
    assert made.status_code == 201 and made.headers["location"].endswith(made.json["id"])
    assert client.simulate_post("/api/v1/domains", json=body).status_code == 409
    bad = client.simulate_post("/api/v1/domains", json={**body, "system": "urn:oid:1..2"})
    assert bad.status_code == 422 and bad.json["errors"][0]["field"] == "system"
    assert [d["system"] for d in client.simulate_get("/api/v1/domains").json["items"]] == [
        "urn:oid:1.2.3.4"]
    assert client.simulate_delete(f"/api/v1/domains/{made.json['id']}").status_code == 204
    assert client.simulate_delete(f"/api/v1/domains/{made.json['id']}").status_code == 404


def test_the_command_line(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/mpi.db",
           "SEARCH_INDEX_PATH": str(tmp_path / "index"), "LOG_LEVEL": "WARNING"}
    added = run("domain", "add", "urn:oid:2.16.840.1.113883.4.1", "--name", "US SSN",
                "--sources", "*", "--by", "alice", env=env)
    assert added.returncode == 0, added.stderr
    listed = run("domain", "list", env=env)
    assert "urn:oid:2.16.840.1.113883.4.1\tUS SSN\tsources *" in listed.stdout
    again = run("domain", "add", "urn:oid:2.16.840.1.113883.4.1", "--name", "x",
                "--sources", "*", env=env)
    assert again.returncode == 1 and "registered already" in again.stderr
    assert run("domain", "remove", "urn:oid:2.16.840.1.113883.4.1", env=env).returncode == 0
    assert run("domain", "list", env=env).stdout == ""
    bad = run("domain", "add", "urn:oid:1..2", "--name", "x", "--sources", "lab", env=env)
    assert bad.returncode == 1 and "system:" in bad.stderr


def test_person_records_are_the_live_active_ones_oldest_first(services):
    """What FHIR's one-active-Patient-per-person rests on: a person's live records that
    their sources keep active, by age; a deleted or inactive record is not one of them."""
    def made(**changes):
        body = json.dumps(patient(**changes)).encode()
        return services.patients.create(services.patients.parse(body), ADMIN)

    first = made(source="ehr", source_id="E-1")
    second = made(source="lab", source_id="L-1")
    inactive = made(source="clinic", source_id="C-1", active=False)
    assert first.person_id == second.person_id == inactive.person_id
    with connection(services.db):
        records = services.patients.person_records([first.person_id, str(uuid.uuid4())])
    assert records == {first.person_id: [first.id, second.id]}
    services.patients.delete(first.id, ADMIN, expected_version=None)
    with connection(services.db):
        assert services.patients.person_records({first.person_id}) == {
            first.person_id: [second.id]}
        assert services.patients.person_records([]) == {}
