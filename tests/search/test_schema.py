"""The document for a record: every name, its derived forms, identifiers, dates, contacts;
and the fields that index it."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st
from whoosh import fields

from mpi.search.schema import (
    ANALYZERS,
    NAME_ANALYZER,
    PHONETIC_ANALYZER,
    SCHEMA,
    WholeValueID,
    WordCachedText,
    analysed,
    document,
    phone_forms,
)
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


_WORDS = st.sampled_from(["Smith", "smith", "O'Brien", "Nguyễn", "-", "'", "Anne-Marie", "van",
                          "X", "ab", "Seán", "1967|rees", "McDonald", "a.b", "Zoë", "jr.",
                          "(x)", "Ĳsselmeer", "straße", "ﬁn", "12", "\u2019t", "_", "ÅSA"])
_TEXT = st.one_of(st.lists(_WORDS, max_size=12).map(" ".join),
                  st.lists(_WORDS, max_size=6).map("\n".join), st.text(max_size=40))


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_a_word_cached_field_gives_the_postings_whoosh_gives(value):
    """Each word analyzed once and remembered: the same terms, frequencies, weights
    (metaphone's secondary codes weigh half) and positions, in the same order, as
    whoosh's TEXT field makes of the value with the same analyzer."""
    cached = {name: field for name, field in SCHEMA.items()
              if isinstance(field, WordCachedText)}
    assert {f.kind for f in cached.values()} == {"name", "phonetic", "ngram", "prefix", "kept",
                                                 "token", "identifier"}
    for field in cached.values():
        assert list(field.index(value)) == list(fields.TEXT.index(field, value))
    for kind, analyzer in ANALYZERS.items():
        assert analysed(kind, value) == [t.text for t in analyzer(value, mode="index")]
    for _, field in SCHEMA.items():
        if isinstance(field, WholeValueID):
            assert list(field.index(value)) == list(fields.ID.index(field, value))


def test_the_schema_kept_in_an_index_indexes_as_the_one_in_code():
    """The index's table of contents holds its schema (pickled): a field read back from it
    names its analyzer by kind and indexes as before."""
    value = "Anne-Marie O'Brien\nSeán Nguyễn Smith Smith"
    again = pickle.loads(pickle.dumps(SCHEMA))
    for name, field in SCHEMA.items():
        if isinstance(field, WordCachedText):
            assert again[name].kind == field.kind
        if field.indexed:
            assert list(again[name].index(value)) == list(field.index(value))
    assert {n for n, f in SCHEMA.items() if isinstance(f, WholeValueID)} == {
        "id", "kind", "person_id", "birth_date", "birth_year", "gender", "source"}
