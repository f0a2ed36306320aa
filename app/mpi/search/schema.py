"""What the index holds: the whoosh schema, its analyzers, and the document for a record.

Every name of a record goes into ``name`` (and ``family`` / ``given`` for
field searches), plus derived forms: double-metaphone codes
(``name_phonetic``: Smyth finds Smith), character trigrams (``name_ngram``:
"ernan" finds Hernández) and leading n-grams (``name_prefix``,
``family_prefix``: "smi*" is one term, not an expansion), and the names and codes
again prefixed with the birth year (``name_year``, ``name_phonetic_year``: "1967|rees",
"1967|RS"), so that a name + birth year search reads only that year's records of each
name instead of intersecting everyone's with the year's. Names, addresses and the other text
fields are folded the same way at index and at query time: lower case, accents
removed, apostrophes dropped (O'Brien = obrien), hyphens split.

Bump :data:`SCHEMA_VERSION` whenever the schema or an analyzer changes: an index
built with another version is rebuilt automatically at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from whoosh import fields
from whoosh.analysis import (
    CharsetFilter,
    Filter,
    LowercaseFilter,
    NgramFilter,
    RegexTokenizer,
    SubstitutionFilter,
)
from whoosh.analysis.morph import DoubleMetaphoneFilter
from whoosh.support.charset import accent_map

SCHEMA_VERSION = 3
INDEX_NAME = "patients"
META_ID = "__meta__"  # the one document holding the cursor (kind "meta", never a hit)
KIND_PATIENT = "patient"
KIND_META = "meta"

_WORDS = r"[^\s\-_,;/()]+"  # hyphens split double-barrelled names; apostrophes stay, then go


def _folded(pattern: str = _WORDS) -> Any:
    return (RegexTokenizer(pattern) | SubstitutionFilter(r"['\u2019`.]", "") | LowercaseFilter()
            | CharsetFilter(accent_map))


class _DropEmpty(Filter):
    def __call__(self, tokens: Iterator[Any]) -> Iterator[Any]:
        for token in tokens:
            if token.text:
                yield token


NAME_ANALYZER = _folded() | _DropEmpty()
PHONETIC_ANALYZER = _folded() | _DropEmpty() | DoubleMetaphoneFilter(combine=False)
NGRAM_ANALYZER = _folded() | _DropEmpty() | NgramFilter(minsize=3, maxsize=3)
PREFIX_MAX = 8
# Edge n-grams: "smi*" is one term look-up instead of an expansion over every smi... name.
PREFIX_ANALYZER = _folded() | _DropEmpty() | NgramFilter(minsize=1, maxsize=PREFIX_MAX,
                                                         at="start")
TOKEN_ANALYZER = RegexTokenizer(r"\S+") | LowercaseFilter()
# Terms made here, kept as they are (names folded and codes computed before joining).
KEPT_ANALYZER = RegexTokenizer(r"\S+")
YEAR_SEPARATOR = "|"


class _Normalize(Filter):
    """Identifiers: keep letters and digits only, so 123-45-6789 = 123 45 6789 = 123456789."""

    def __call__(self, tokens: Iterator[Any]) -> Iterator[Any]:
        for token in tokens:
            token.text = fold_identifier(token.text)
            if token.text:
                yield token


IDENTIFIER_ANALYZER = RegexTokenizer(r"\S+") | LowercaseFilter() | _Normalize()


def fold_identifier(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.lower())


SCHEMA = fields.Schema(
    id=fields.ID(stored=True, unique=True),
    kind=fields.ID(),
    version=fields.STORED(),
    person_id=fields.ID(stored=True),
    name=fields.TEXT(analyzer=NAME_ANALYZER, field_boost=1.0),
    family=fields.TEXT(analyzer=NAME_ANALYZER),
    given=fields.TEXT(analyzer=NAME_ANALYZER),
    name_phonetic=fields.TEXT(analyzer=PHONETIC_ANALYZER, phrase=False),
    name_ngram=fields.TEXT(analyzer=NGRAM_ANALYZER, phrase=False),
    name_prefix=fields.TEXT(analyzer=PREFIX_ANALYZER, phrase=False),
    name_year=fields.TEXT(analyzer=KEPT_ANALYZER, phrase=False),
    name_phonetic_year=fields.TEXT(analyzer=KEPT_ANALYZER, phrase=False),
    family_prefix=fields.TEXT(analyzer=PREFIX_ANALYZER, phrase=False),
    birth_date=fields.ID(),
    birth_year=fields.ID(),
    gender=fields.ID(),
    identifier=fields.TEXT(analyzer=IDENTIFIER_ANALYZER, phrase=False),
    address=fields.TEXT(analyzer=NAME_ANALYZER),
    telecom=fields.TEXT(analyzer=TOKEN_ANALYZER, phrase=False),
    source=fields.ID(),
    source_id=fields.TEXT(analyzer=IDENTIFIER_ANALYZER, phrase=False),
    # The meta document's stored fields.
    cursor=fields.STORED(),
    schema_version=fields.STORED(),
)


def phone_forms(value: str) -> list[str]:
    """The digits of a phone number, and its last 10 and 7 digits (local dialling)."""
    digits = re.sub(r"\D", "", value)
    forms = [digits]
    forms += [digits[-n:] for n in (10, 7) if len(digits) > n]
    return [f for f in dict.fromkeys(forms) if f]


def _join(values: Iterable[str | None]) -> str:
    return "\n".join(v for v in values if v)


def document(record: Mapping[str, Any]) -> dict[str, Any]:
    """The index document for a record (``Patient.to_dict()`` or a change-log payload)."""
    names = record.get("names") or []
    family = [n.get("family") for n in names]
    given = [g for n in names for g in n.get("given") or []]
    all_names = _join([*family, *given])
    born = record.get("birth_date") or ""
    telecom: list[str] = []
    for contact in record.get("telecom") or []:
        value = str(contact.get("value") or "")
        if contact.get("system") in ("phone", "fax", "sms", "pager"):
            telecom += phone_forms(value)
        else:
            telecom.append(value.lower())
    addresses = [
        _join([*a.get("line", []), a.get("city"), a.get("district"), a.get("state"),
               a.get("postal_code"), a.get("country")])
        for a in record.get("addresses") or []]
    person = record.get("person_id")
    doc: dict[str, Any] = {
        "id": str(record["id"]),
        "kind": KIND_PATIENT,
        "version": int(record.get("version") or 0),
        "name": all_names,
        "family": _join(family),
        "given": _join(given),
        "name_phonetic": all_names,
        "name_ngram": all_names,
        "name_prefix": all_names,
        "family_prefix": _join(family),
        "identifier": _join(i.get("value") for i in record.get("identifiers") or []),
        "address": _join(addresses),
        "telecom": " ".join(telecom),
        "source": str(record.get("source") or ""),
        "source_id": str(record.get("source_id") or ""),
    }
    if person:
        doc["person_id"] = str(person)
    if born:
        doc["birth_date"] = str(born)
        doc["birth_year"] = str(born)[:4]
    elif record.get("birth_date_partial"):  # only the year (or month) is known
        doc["birth_year"] = str(record["birth_date_partial"])[:4]
    if doc.get("birth_year") and all_names:
        key = doc["birth_year"] + YEAR_SEPARATOR
        doc["name_year"] = " ".join(
            key + t.text for t in NAME_ANALYZER(all_names, mode="index") if t.text)
        doc["name_phonetic_year"] = " ".join(
            key + t.text for t in PHONETIC_ANALYZER(all_names, mode="index") if t.text)
    if record.get("gender"):
        doc["gender"] = str(record["gender"])
    return {k: v for k, v in doc.items() if v != ""}


def meta_document(cursor: int) -> dict[str, Any]:
    return {"id": META_ID, "kind": KIND_META, "cursor": int(cursor),
            "schema_version": SCHEMA_VERSION}
