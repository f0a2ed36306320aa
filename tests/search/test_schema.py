"""The document for a record: every name, its derived forms, identifiers, dates, contacts."""

from __future__ import annotations

from mpi.search.schema import NAME_ANALYZER, PHONETIC_ANALYZER, document, phone_forms
from tests.helpers import SSN, patient


def _record(**changes):
    return {"id": "00000000-0000-4000-8000-000000000001", "version": 3, **patient(**changes)}


def test_document_holds_every_searchable_field():
    doc = document(_record(names=[{"family": "Smith", "given": ["John", "Paul"]},
                                  {"use": "maiden", "family": "Jones"}]))
    assert doc["id"].endswith("0001") and doc["kind"] == "patient" and doc["version"] == 3
    assert doc["family"].split("\n") == ["Smith", "Jones"]
    assert doc["given"].split("\n") == ["John", "Paul"]
    assert set(doc["name"].split("\n")) == {"Smith", "Jones", "John", "Paul"}
    assert doc["birth_date"] == "1980-05-17" and doc["birth_year"] == "1980"
    assert doc["identifier"] == "123-45-6789"
    assert "Springfield" in doc["address"] and "62701" in doc["address"]
    assert doc["telecom"].split() == ["12175550100", "2175550100", "5550100"]
    assert doc["source"] == "st-marys-ehr" and doc["source_id"] == "A-1001"
    assert "person_id" not in doc


def test_person_id_is_indexed_when_the_payload_has_it():
    assert document({**_record(), "person_id": "P-1"})["person_id"] == "P-1"


def test_missing_optional_fields_are_left_out():
    doc = document(_record(birth_date=None, identifiers=[], addresses=[], telecom=[]))
    assert not {"birth_date", "birth_year", "identifier", "address", "telecom"} & set(doc)


def test_email_is_lower_cased_whole():
    doc = document(_record(telecom=[{"system": "email", "value": "Ada@Example.ORG"}],
                           identifiers=[{"system": SSN, "value": "1"}]))
    assert doc["telecom"] == "ada@example.org"


def test_name_analyzer_folds_accents_apostrophes_and_hyphens():
    words = [t.text for t in NAME_ANALYZER("García-López O'Brien ZOË")]
    assert words == ["garcia", "lopez", "obrien", "zoe"]


def test_phonetic_codes_match_spelling_variants():
    def codes(word):
        return {t.text for t in PHONETIC_ANALYZER(word)}

    assert codes("Smith") & codes("Smyth")
    assert codes("Catherine") & codes("Kathryn")


def test_phone_forms():
    assert phone_forms("+1 (217) 555-0100") == ["12175550100", "2175550100", "5550100"]
    assert phone_forms("555-0100") == ["5550100"]
