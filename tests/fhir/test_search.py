"""PDQm ITI-78 search in the database: the cases of the IHE text, each parameter type,
modifiers, AND/OR, paging, counts; by GET and by POST ``_search``; on both backends."""

from __future__ import annotations

import pytest

from tests.fhir.conftest import MRN, create, fhir_patient, valid

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def registry(fhir):
    """Four records: two of one person (two sources), a namesake, a José Müller, the
    last two at other addresses (so that address searches tell them apart)."""
    ids = {
        "john": create(fhir, fhir_patient("A-1", mrn="M-1")).json["id"],
        "john-lab": create(fhir, fhir_patient("L-1", source="lab")).json["id"],
        "jane": create(fhir, fhir_patient("A-2", given=("Jane",), gender="female",
                                          birth_date="1975-02-03", ssn="555-12-3456",
                                          mrn="M-2", address=[{"city": "Springfield",
                                                               "state": "MA",
                                                               "postalCode": "01101"}],
                                          telecom=[])).json["id"],
        "jose": create(fhir, fhir_patient("A-3", family="Müller", given=("José",),
                                          birth_date="1990-12-31", ssn=None,
                                          address=[{"city": "Springfield", "state": "IL",
                                                    "postalCode": "62702"}],
                                          telecom=[])).json["id"],
    }
    return ids


def search(fhir, query: str):
    answer = fhir.simulate_get("/fhir/Patient", query_string=query)
    assert answer.status_code == 200, answer.text
    return valid(answer.json)


def found(bundle) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])
            if e["search"]["mode"] == "match"}


def test_case1_matches_with_total_and_self_link(fhir, registry):
    bundle = search(fhir, "family=smith&gender=male")
    assert bundle["type"] == "searchset" and bundle["total"] == 2
    assert found(bundle) == {registry["john"], registry["john-lab"]}
    self_link = next(x["url"] for x in bundle["link"] if x["relation"] == "self")
    assert "family=smith" in self_link and "gender=male" in self_link


def test_case3_nothing_found_is_an_empty_bundle_with_total_0(fhir, registry):
    bundle = search(fhir, "family=nobody")
    assert bundle["total"] == 0 and "entry" not in bundle


def test_string_search_is_prefix_case_and_accent_insensitive(fhir, registry):
    assert found(search(fhir, "family=MUL")) == {registry["jose"]}
    assert found(search(fhir, "family=müller")) == {registry["jose"]}
    assert found(search(fhir, "given=jos")) == {registry["jose"]}
    assert found(search(fhir, "given=paul")) == {registry["john"], registry["john-lab"]}
    assert found(search(fhir, "given=aul")) == set()  # a prefix, not a substring
    assert found(search(fhir, "given:contains=aul")) == {registry["john"], registry["john-lab"]}
    assert found(search(fhir, "name=jan")) == {registry["jane"]}


def test_exact_modifier_compares_the_stored_text(fhir, registry):
    assert found(search(fhir, "family:exact=Müller")) == {registry["jose"]}
    assert found(search(fhir, "family:exact=muller")) == set()
    assert found(search(fhir, "given:exact=José")) == {registry["jose"]}


def test_identifier_token_forms(fhir, registry):
    assert found(search(fhir, f"identifier={MRN}|M-2")) == {registry["jane"]}
    assert found(search(fhir, "identifier=M-2")) == {registry["jane"]}
    assert found(search(fhir, "identifier=urn:mpi:source:lab|L-1")) == {registry["john-lab"]}
    assert found(search(fhir, "identifier=|M-2")) == set()  # every identifier has a system
    assert found(search(fhir, f"identifier={MRN}|M-1,{MRN}|M-2")) == {registry["john"],
                                                                       registry["jane"]}


def test_enterprise_identifier_finds_every_record_of_the_person(fhir, registry):
    record = fhir.simulate_get(f"/fhir/Patient/{registry['john']}").json
    person = next(i["value"] for i in record["identifier"] if i["system"] == "urn:mpi:person")
    assert found(search(fhir, f"identifier=urn:mpi:person|{person}")) == {
        registry["john"], registry["john-lab"]}


def test_case2_domains_to_return_filter_records_and_their_identifiers(fhir, registry):
    bundle = search(fhir, f"family=smith&identifier={MRN}|")
    assert found(bundle) == {registry["john"], registry["jane"]}
    for entry in bundle["entry"]:
        assert {i["system"] for i in entry["resource"]["identifier"]} == {MRN}
    both = search(fhir, f"identifier={MRN}|,urn:mpi:source:lab|")
    assert found(both) == {registry["john"], registry["jane"], registry["john-lab"]}


def test_case4_unknown_domain_is_404_with_a_warning(fhir, registry):
    answer = fhir.simulate_get("/fhir/Patient", query_string="identifier=urn:oid:9.9.9|")
    assert answer.status_code == 404
    issue = valid(answer.json)["issue"][0]
    assert issue["severity"] == "warning" and issue["code"] == "not-found"
    assert "targetSystem not found" in issue["diagnostics"]


def test_birthdate_prefixes_and_partial_dates(fhir, registry):
    assert found(search(fhir, "birthdate=1980")) == {registry["john"], registry["john-lab"]}
    assert found(search(fhir, "birthdate=1975-02")) == {registry["jane"]}
    assert found(search(fhir, "birthdate=lt1980-01-01")) == {registry["jane"]}
    assert found(search(fhir, "birthdate=ge1990-12-31")) == {registry["jose"]}
    assert found(search(fhir, "birthdate=gt1980-05-17&birthdate=le1990-12-31")) == {
        registry["jose"]}
    assert found(search(fhir, "birthdate=ne1980-05-17")) == {registry["jane"], registry["jose"]}
    assert found(search(fhir, "birthdate=sa1980")) == {registry["jose"]}
    assert found(search(fhir, "birthdate=eb1980")) == {registry["jane"]}
    assert registry["john"] in found(search(fhir, "birthdate=ap1980-05-20"))


def test_and_across_parameters_or_within_one(fhir, registry):
    assert found(search(fhir, "family=smith&given=jane")) == {registry["jane"]}
    assert found(search(fhir, "given=jane,jose")) == {registry["jane"], registry["jose"]}
    assert found(search(fhir, "family=smith&family=mul")) == set()


def test_other_parameters(fhir, registry):
    assert found(search(fhir, "gender=female")) == {registry["jane"]}
    # John's lab record is not his person's active Patient (PDQm: one per person).
    assert found(search(fhir, "active=true")) == {registry[k] for k in ("john", "jane", "jose")}
    assert found(search(fhir, "active=false")) == {registry["john-lab"]}
    assert len(found(search(fhir, "address-city=spring&address-state=il"))) == 3
    assert len(found(search(fhir, "address-city=spring&address-state=ma,il"))) == 4
    assert len(found(search(fhir, "address=62701"))) == 2
    assert len(found(search(fhir, "address-postalcode=99"))) == 0
    assert len(found(search(fhir, "telecom=phone|%2B1-217-555-0100"))) == 2
    assert len(found(search(fhir, "telecom:missing=true"))) == 2
    assert found(search(fhir, f"_id={registry['jane']}")) == {registry["jane"]}
    assert found(search(fhir, "birthdate:missing=true")) == set()
    assert len(found(search(fhir, "_lastUpdated=ge2000-01-01"))) == 4


def test_unknown_parameters_are_ignored_and_left_out_of_self(fhir, registry):
    bundle = search(fhir, "family=smith&shoe-size=44")
    assert len(found(bundle)) == 3
    self_link = next(x["url"] for x in bundle["link"] if x["relation"] == "self")
    assert "shoe-size" not in self_link
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "shoe-size" in outcome[0]["resource"]["issue"][0]["diagnostics"]


def test_bad_values_are_400_naming_the_parameter(fhir, registry):
    for query in ("birthdate=1980-13-01", "gender=robot", "_count=-1", "family:fuzzy=x",
                  "active=maybe", "_sort=shoe"):
        answer = fhir.simulate_get("/fhir/Patient", query_string=query)
        assert answer.status_code == 400, query
        assert query.split("=")[0].split(":")[0] in str(valid(answer.json)["issue"]), query


def test_paging_links_walk_every_match_once(fhir, registry):
    seen, url, pages = [], "/fhir/Patient?_count=1&_sort=birthdate", 0
    while url:
        _, _, query = url.partition("?")
        bundle = search(fhir, query)
        assert bundle["total"] == 4
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        relations = {x["relation"]: x["url"] for x in bundle["link"]}
        assert "first" in relations and ("previous" in relations) == (pages > 0)
        url = relations.get("next", "").split("/fhir", 1)[-1] if "next" in relations else ""
        url = "/fhir" + url if url else ""
        pages += 1
    assert pages == 4 and len(seen) == 4 and set(seen) == set(registry.values())
    assert seen[0] == registry["jane"] and seen[-1] == registry["jose"]  # by birthdate


def test_summary_count_and_total_none(fhir, registry):
    counted = search(fhir, "family=smith&_summary=count")
    assert counted["total"] == 3 and "entry" not in counted
    assert "total" not in search(fhir, "family=smith&_total=none")


def test_post_search_takes_form_parameters(fhir, registry):
    answer = fhir.simulate_post("/fhir/Patient/_search", body="family=smith&gender=female",
                                headers=FORM)
    assert answer.status_code == 200 and found(valid(answer.json)) == {registry["jane"]}
    wrong = fhir.simulate_post("/fhir/Patient/_search", body="{}",
                               headers={"Content-Type": "application/json"})
    assert wrong.status_code == 415


def test_deleted_records_are_never_found(fhir, registry):
    fhir.simulate_delete(f"/fhir/Patient/{registry['jane']}")
    assert found(search(fhir, "given=jane")) == set()


def test_one_active_patient_per_person_and_links_between_its_records(fhir, registry):
    """PDQm Patient profile: "no more than one Patient Resource referencing a Patient
    Identity contains active=true", and Patient.link relates a person's records: the
    oldest live record is active with a seealso link to each other record, the others
    are active=false with a refer link to it; in a search, a read, alone or together."""
    john, lab = registry["john"], registry["john-lab"]
    refer = [{"other": {"reference": f"Patient/{john}"}, "type": "refer"}]
    seealso = [{"other": {"reference": f"Patient/{lab}"}, "type": "seealso"}]
    bundle = valid(search(fhir, "family=smith&gender=male"))
    shown = {e["resource"]["id"]: (e["resource"]["active"], e["resource"].get("link"))
             for e in bundle["entry"]}
    assert shown == {john: (True, seealso), lab: (False, refer)}
    alone = search(fhir, f"_id={lab}")["entry"][0]["resource"]
    assert (alone["active"], alone["link"]) == (False, refer)
    read = valid(fhir.simulate_get(f"/fhir/Patient/{john}").json)
    assert (read["active"], read["link"]) == (True, seealso)
    single = fhir.simulate_get(f"/fhir/Patient/{registry['jane']}").json
    assert single["active"] is True and "link" not in single
