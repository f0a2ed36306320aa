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
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache, lru_cache
from typing import Any

from whoosh import fields, formats
from whoosh.analysis import (
    CharsetFilter,
    Filter,
    IDTokenizer,
    LowercaseFilter,
    NgramFilter,
    RegexTokenizer,
    SubstitutionFilter,
)
from whoosh.analysis.morph import DoubleMetaphoneFilter
from whoosh.support.charset import accent_map
from whoosh.system import pack_uint

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


#: Words whose analysis each analyzer remembers (per process; a name's words repeat).
#: 100,000 of the search bench's records (2/5 of them with a made-up rare surname): 93.5 %
#: of look-ups found, 6.5 MB for the four caches; 8,192 words: 94.7 %, 23.5 MB.
WORD_CACHE = 2048


@cache
def _word_terms(kind: str) -> Callable[[str], tuple[tuple[str, float], ...]]:
    """For the analyzer ``kind`` names: a word's terms and their boosts, as the analyzer
    makes them from that word (its filters see one word at a time), remembered. A bare
    tokenizer's word is its one term."""
    analyzer = ANALYZERS[kind]
    if kind in _DIRECT:
        return _DIRECT[kind]
    if not hasattr(analyzer, "items"):  # no filters: nothing to remember
        return lambda word: ((word, 1.0),)

    @lru_cache(maxsize=WORD_CACHE)
    def terms(word: str) -> tuple[tuple[str, float], ...]:
        return tuple((t.text, t.boost) for t in analyzer(word, mode="index", boosts=True))

    return terms


def _identifier_terms(word: str) -> tuple[tuple[str, float], ...]:
    folded = fold_identifier(word)  # (lower case first, as LowercaseFilter then _Normalize)
    return ((folded, 1.0),) if folded else ()


#: Analyzers whose whole work on a word is a string method or two: a word's terms made
#: directly, neither through whoosh's chain of generators (~5 µs a word) nor remembered
#: (identifiers and phone numbers seldom come back). tests/search/test_schema.py checks
#: they give what the analyzers give.
_DIRECT: dict[str, Callable[[str], tuple[tuple[str, float], ...]]] = {
    "token": lambda word: ((word.lower(), 1.0),),
    "identifier": _identifier_terms,
}


def _tokenizer(analyzer: Any) -> Any:
    return analyzer.items[0] if hasattr(analyzer, "items") else analyzer


def analysed(kind: str, value: str) -> list[str]:
    """The terms the analyzer ``kind`` names makes of ``value`` for the index, in order."""
    terms = _word_terms(kind)
    return [text for word in _tokenizer(ANALYZERS[kind]).expression.findall(value)
            for text, _ in terms(word)]


class WordCachedText(fields.TEXT):  # type: ignore[misc]
    """A text field indexed as whoosh's ``TEXT`` indexes it, each word analyzed once.

    Every analyzer here is a regular-expression tokenizer followed by filters that take
    one word at a time (folding, n-grams, metaphone codes). A record's names go through
    seven of them (``name``, ``name_ngram``, ``name_prefix``, ...), and the same names
    come back record after record: ``index`` splits the value with the tokenizer's own
    expression and takes each word's terms from :func:`_word_terms`, then counts
    frequencies, weights (the boosts summed) and positions as whoosh's formats do. The
    postings are the ones ``TEXT.index`` gives (tests/search/test_schema.py compares
    them); searching still analyzes query text through the analyzer itself.

    The field is stored in the index's table of contents by ``kind`` (the name of its
    analyzer in :data:`ANALYZERS`), so the cache is the process's, not the pickle's.
    """

    def __init__(self, kind: str, **kwargs: Any):
        super().__init__(analyzer=ANALYZERS[kind], **kwargs)
        self.kind = kind

    def index(self, value: Any, **kwargs: Any) -> Iterator[tuple[bytes, int, float, bytes]]:
        tokenizer = _tokenizer(self.analyzer)
        if not isinstance(value, str) or tokenizer.gaps or kwargs:
            yield from super().index(value, **kwargs)
            return
        terms = _word_terms(self.kind)
        fb = self.format.field_boost
        weights: dict[str, float] = defaultdict(float)
        if isinstance(self.format, formats.Positions):
            poses: dict[str, list[int]] = defaultdict(list)
            for pos, word in enumerate(tokenizer.expression.findall(value)):
                for text, boost in terms(word):
                    poses[text].append(pos)
                    weights[text] += boost
            for text, positions in poses.items():
                yield (text.encode("utf-8"), len(positions), weights[text] * fb,
                       self.format.encode(positions))
            return
        freqs: dict[str, int] = defaultdict(int)
        for word in tokenizer.expression.findall(value):
            for text, boost in terms(word):
                freqs[text] += 1
                weights[text] += boost
        for text, freq in freqs.items():
            yield (text.encode("utf-8"), freq, weights[text] * fb, pack_uint(freq))


class WholeValueID(fields.ID):  # type: ignore[misc]
    """Whoosh's ``ID`` field, its one term (the value as it is) made without the analysis
    machinery (a tokenizer's generator, a token object, a set) for each of a document's
    six ID fields; the postings ``ID.index`` gives (tests/search/test_schema.py)."""

    def index(self, value: Any, **kwargs: Any) -> Any:
        if (isinstance(value, str) and not kwargs
                and type(self.analyzer) is IDTokenizer):
            return [(value.encode("utf-8"), 1, self.format.field_boost, b"")]
        return super().index(value, **kwargs)


ANALYZERS = {"name": NAME_ANALYZER, "phonetic": PHONETIC_ANALYZER, "ngram": NGRAM_ANALYZER,
             "prefix": PREFIX_ANALYZER, "kept": KEPT_ANALYZER, "token": TOKEN_ANALYZER,
             "identifier": IDENTIFIER_ANALYZER}

SCHEMA = fields.Schema(
    id=WholeValueID(stored=True, unique=True),
    kind=WholeValueID(),
    version=fields.STORED(),
    person_id=WholeValueID(stored=True),
    name=WordCachedText("name", field_boost=1.0),
    family=WordCachedText("name"),
    given=WordCachedText("name"),
    name_phonetic=WordCachedText("phonetic", phrase=False),
    name_ngram=WordCachedText("ngram", phrase=False),
    name_prefix=WordCachedText("prefix", phrase=False),
    name_year=WordCachedText("kept", phrase=False),
    name_phonetic_year=WordCachedText("kept", phrase=False),
    family_prefix=WordCachedText("prefix", phrase=False),
    birth_date=WholeValueID(),
    birth_year=WholeValueID(),
    gender=WholeValueID(),
    identifier=WordCachedText("identifier", phrase=False),
    address=WordCachedText("name"),
    telecom=WordCachedText("token", phrase=False),
    source=WholeValueID(),
    source_id=WordCachedText("identifier", phrase=False),
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
        doc["name_year"] = " ".join(key + t for t in analysed("name", all_names) if t)
        doc["name_phonetic_year"] = " ".join(
            key + t for t in analysed("phonetic", all_names) if t)
    if record.get("gender"):
        doc["gender"] = str(record["gender"])
    return {k: v for k, v in doc.items() if v != ""}


def meta_document(cursor: int) -> dict[str, Any]:
    return {"id": META_ID, "kind": KIND_META, "cursor": int(cursor),
            "schema_version": SCHEMA_VERSION}
