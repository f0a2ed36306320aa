"""Unmodified FHIR client libraries against the running routes on PostgreSQL: fhirpy and
fhirclient (SMART on FHIR's Python client) create, read, update, search with paging and
``$match`` over real HTTP."""

from __future__ import annotations

import threading
import wsgiref.simple_server
from collections.abc import Iterator
from typing import Any

import pytest
from fhirclient import client as smart_client
from fhirclient.models.patient import Patient as SmartPatient
from fhirpy import SyncFHIRClient

from mpi.api.app import create_app
from mpi.storage.db import close_database, database_for
from mpi.wiring import build
from tests.conftest import Ids
from tests.fhir.conftest import fhir_patient

POSTGRES = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


class _Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fhir_base(settings, clock) -> Iterator[str]:
    database = database_for(settings.database, max_connections=4)
    app = create_app(build(settings, db=database, clock=clock, new_id=Ids()))
    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/fhir"
    finally:
        server.shutdown()
        server.server_close()
        close_database(database)


@POSTGRES
def test_fhirpy_create_read_update_search_page_and_match(fhir_base):
    client = SyncFHIRClient(fhir_base)
    made = client.resource("Patient", **fhir_patient("A-1"))
    made.save()  # POST
    assert made.id and made["meta"]["versionId"] == "1"
    read = client.reference("Patient", made.id).to_resource()
    assert read["name"][0]["family"] == "Smith"
    read["gender"] = "other"
    read.save()  # PUT
    assert client.reference("Patient", made.id).to_resource()["meta"]["versionId"] == "2"
    for n in range(2, 7):
        client.resource("Patient", **fhir_patient(
            f"A-{n}", given=(f"Gi{n}",), family="Paging", ssn=f"111-22-{3000 + n}",
            birth_date=f"19{50 + n}-01-02",
            address=[{"city": f"Town{n}"}], telecom=[])).save()
    search = client.resources("Patient").search(family="paging").limit(2)
    assert search.count() == 5
    every = search.fetch_all()  # follows the next links, two at a time
    assert sorted(p["name"][0]["given"][0] for p in every) == [f"Gi{n}" for n in range(2, 7)]
    first_page = search.fetch()
    assert len(first_page) == 2
    bundle = client.execute("Patient/$match", method="post", data={
        "resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {
            "resourceType": "Patient", "name": [{"family": "Smith", "given": ["John"]}],
            "birthDate": "1980-05-17"}}]})
    assert bundle["entry"][0]["resource"]["id"] == made.id
    assert bundle["entry"][0]["search"]["mode"] == "match"


@POSTGRES
def test_fhirclient_reads_the_capability_statement_creates_reads_and_searches(fhir_base):
    smart = smart_client.FHIRClient(settings={"app_id": "mpi-tests", "api_base": fhir_base})
    patient = SmartPatient(fhir_patient("B-1", family="Clientson"))
    created = patient.create(smart.server)
    assert created["resourceType"] == "Patient"
    fetched = SmartPatient.read(created["id"], smart.server)  # strict R4 model parsing
    assert fetched.name[0].family == "Clientson" and fetched.birthDate.isostring == "1980-05-17"
    fetched.gender = "unknown"
    fetched.update(smart.server)
    again = SmartPatient.read(created["id"], smart.server)
    assert again.gender == "unknown" and again.meta.versionId == "2"
    found = SmartPatient.where(struct={"family": "clientson"}).perform_resources(smart.server)
    assert [p.id for p in found] == [created["id"]]
    assert smart.server.capabilityStatement.fhirVersion == "4.0.1"


@POSTGRES
def test_fhirpy_read_change_save_of_a_persons_other_record(fhir_base):
    """Two sources' records of one person: the younger is shown active=false with a refer
    link (PDQm: one active Patient per person). fhirpy reads it, changes it and saves it
    back whole: the server's links are ignored and the record stays as its source keeps it
    (active); the older one, saved back with its seealso link, too. Deleting the older
    makes the younger the person's active Patient."""
    client = SyncFHIRClient(fhir_base)
    first = client.resource("Patient", **fhir_patient("A-1"))
    first.save()
    second = client.resource("Patient", **fhir_patient("L-1", source="lab"))
    second.save()
    lab = client.reference("Patient", second.id).to_resource()
    assert lab["active"] is False
    assert [(x["type"], x["other"].reference) for x in lab["link"]] == [
        ("refer", f"Patient/{first.id}")]  # fhirpy makes the reference an object
    lab["gender"] = "other"
    lab.save()  # PUT of everything it read, links and active=false included
    again = client.reference("Patient", second.id).to_resource()
    assert (again["gender"], again["active"], again["meta"]["versionId"]) == ("other", False, "2")
    ehr = client.reference("Patient", first.id).to_resource()
    assert ehr["active"] is True and ehr["link"][0]["type"] == "seealso"
    ehr["birthDate"] = "1980-05-18"
    ehr.save()
    actives = [e["resource"]["active"] for e in client.execute(
        "Patient/$match", method="post", data={"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": {"resourceType": "Patient",
                                              "name": [{"family": "Smith", "given": ["John"]}],
                                              "birthDate": "1980-05-17"}}]})["entry"]]
    assert sorted(actives) == [False, True]  # one person, one active Patient
    first.delete()
    promoted = client.reference("Patient", second.id).to_resource()
    assert promoted["active"] is True and "link" not in promoted
