"""The search language: free text, fields, boolean operators, phrases, prefixes, fuzziness.

    smith                 any field; names also fuzzily, phonetically and by part
    john smith 1980       every word must match (implicit AND)
    smith OR smyth        either
    smith NOT john        AND NOT (also: NOT john, -john is NOT supported)
    "anna maria"          a phrase (names or address); "anna maria"~1 allows one word between
    family:smith          one field; family:(smith OR jones), given:"anna maria"
    smi*                  prefix
    smith~2  smith~0      fuzzy with that edit distance (0-2); ~0 = exact
    birth_date:1980-05-17  birth_year:1980  identifier:123-45-6789  phone:555-0100

Operators are upper case; a bare word that is not one is a term. Precedence:
NOT, then AND (explicit or implied), then OR; parentheses group. The parser is
strict: anything it cannot read exactly is a :class:`QuerySyntaxError` naming
the problem and its position, never a silent guess.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from rapidfuzz import process
from rapidfuzz.distance import Levenshtein
from whoosh import matching, scoring
from whoosh import query as wq
from whoosh.reading import SegmentReader
from whoosh.searching import SearchContext

from mpi.search.schema import PREFIX_MAX, SCHEMA, YEAR_SEPARATOR, fold_identifier, phone_forms

MAX_QUERY_LENGTH = 500
MAX_TERMS = 32
MAX_FUZZY = 2

# Field names a user may write (lower-cased) -> index field.
FIELDS: dict[str, str] = {
    "name": "name", "family": "family", "surname": "family", "given": "given",
    "birth_date": "birth_date", "dob": "birth_date", "birth_year": "birth_year",
    "year": "birth_year", "identifier": "identifier", "mrn": "identifier",
    "telecom": "telecom", "phone": "telecom", "email": "telecom", "address": "address",
    "city": "address", "postal_code": "address", "source": "source", "source_id": "source_id",
    "gender": "gender", "person_id": "person_id",
}
NAME_FIELDS = ("name", "family", "given")
PREFIX_FIELDS = {"name": "name_prefix", "family": "family_prefix"}
TEXT_FIELDS = ("name", "family", "given", "address")
GENDERS = ("male", "female", "other", "unknown")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_YEAR_RE = re.compile(r"^\d{4}$")
_PHONE_RE = re.compile(r"^\+?[0-9().\-/]*[0-9][0-9().\-/]*$")
_FIELD_RE = re.compile(r"^([A-Za-z_]+):(.*)$", re.DOTALL)
_FUZZY_RE = re.compile(r"^(.*?)~(\d*)$", re.DOTALL)


class QuerySyntaxError(ValueError):
    """The query cannot be read; ``reason`` says why (shown to the user)."""

    def __init__(self, reason: str, field: str = "q"):
        super().__init__(reason)
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class Options:
    """How words become index queries."""

    fuzzy: int = 1  # edit distance for name words (0 = exact only)
    phonetic: bool = True
    ngrams: bool = True


# --------------------------------------------------------------------------- lexing


@dataclass(frozen=True)
class Token:
    kind: str  # WORD PHRASE FIELD LPAREN RPAREN AND OR NOT
    text: str
    pos: int  # 1-based character position, for messages
    slop: int = 0


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "()":
            tokens.append(Token("LPAREN" if c == "(" else "RPAREN", c, i + 1))
            i += 1
        elif c == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise QuerySyntaxError(f'the quote (") at position {i + 1} is never closed')
            phrase = text[i + 1:end]
            j = end + 1
            slop = 0
            if j < n and text[j] == "~":
                k = j + 1
                while k < n and text[k].isdigit():
                    k += 1
                if k == j + 1 or (k < n and not text[k].isspace() and text[k] not in "()"):
                    raise QuerySyntaxError(f"~ after a phrase (position {j + 1}) needs a "
                                           f"number of words, e.g. \"anna maria\"~1")
                slop = int(text[j + 1:k])
                j = k
            if not phrase.strip():
                raise QuerySyntaxError(f"the phrase at position {i + 1} is empty")
            tokens.append(Token("PHRASE", phrase, i + 1, slop))
            i = j
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in '()"':
                j += 1
            word = text[i:j]
            match = _FIELD_RE.match(word)
            if word in ("AND", "OR", "NOT"):
                tokens.append(Token(word, word, i + 1))
            elif match:
                tokens.append(Token("FIELD", match[1], i + 1))
                rest = match[2]
                if rest:
                    tokens.append(Token("WORD", rest, i + 2 + len(match[1])))
                elif j >= n or text[j] not in '("':
                    raise QuerySyntaxError(f"{match[1]}: at position {i + 1} has no value "
                                           f"(write {match[1]}:value)")
            else:
                tokens.append(Token("WORD", word, i + 1))
            i = j
    return tokens


# --------------------------------------------------------------------------- parsing


@dataclass
class _Parser:
    tokens: list[Token]
    options: Options
    terms: int = 0
    i: int = 0
    fields_used: set[str] = field(default_factory=set)

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def _needs_operand(self, op: Token) -> None:
        nxt = self.peek()
        if nxt is None or nxt.kind in ("RPAREN", "AND", "OR"):
            raise QuerySyntaxError(f"{op.text} at position {op.pos} needs a term after it")

    def parse(self) -> wq.Query:
        result = self.parse_or(None)
        extra = self.peek()
        if extra is not None:
            raise QuerySyntaxError(f"unexpected ')' at position {extra.pos} "
                                   "(no '(' before it)")
        return result

    def parse_or(self, fieldname: str | None) -> wq.Query:
        parts = [self.parse_and(fieldname)]
        while (tok := self.peek()) is not None and tok.kind == "OR":
            self.take()
            self._needs_operand(tok)
            parts.append(self.parse_and(fieldname))
        return parts[0] if len(parts) == 1 else AnyOf(parts)

    def parse_and(self, fieldname: str | None) -> wq.Query:
        parts = [self.parse_unary(fieldname)]
        while (tok := self.peek()) is not None and tok.kind not in ("OR", "RPAREN"):
            if tok.kind == "AND":
                self.take()
                self._needs_operand(tok)
            parts.append(self.parse_unary(fieldname))
        return parts[0] if len(parts) == 1 else AllOf(parts)

    def parse_unary(self, fieldname: str | None) -> wq.Query:
        tok = self.peek()
        if tok is not None and tok.kind == "NOT":
            self.take()
            self._needs_operand(tok)
            # What is excluded is excluded exactly: no fuzzy, sound-alike or partial matches.
            outer, self.options = self.options, Options(fuzzy=0, phonetic=False, ngrams=False)
            try:
                return wq.Not(self.parse_unary(fieldname))
            finally:
                self.options = outer
        return self.parse_primary(fieldname)

    def parse_primary(self, fieldname: str | None) -> wq.Query:
        tok = self.take()
        if tok.kind == "LPAREN":
            if (nxt := self.peek()) is None or nxt.kind == "RPAREN":
                raise QuerySyntaxError(f"the '(' at position {tok.pos} has nothing inside")
            inner = self.parse_or(fieldname)
            close = self.peek()
            if close is None or close.kind != "RPAREN":
                raise QuerySyntaxError(f"the '(' at position {tok.pos} is never closed")
            self.take()
            return inner
        if tok.kind == "RPAREN":
            raise QuerySyntaxError(f"unexpected ')' at position {tok.pos}")
        if tok.kind in ("AND", "OR"):
            raise QuerySyntaxError(f"{tok.text} at position {tok.pos} needs a term before it")
        if tok.kind == "FIELD":
            target = FIELDS.get(tok.text.lower())
            if target is None:
                raise QuerySyntaxError(
                    f"unknown field '{tok.text}' at position {tok.pos}; fields: "
                    + ", ".join(sorted(FIELDS)))
            if (nxt := self.peek()) is None or nxt.kind not in ("WORD", "PHRASE", "LPAREN"):
                raise QuerySyntaxError(f"{tok.text}: at position {tok.pos} has no value")
            self.fields_used.add(target)
            return self.parse_primary(target)
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise QuerySyntaxError(f"too many terms (at most {MAX_TERMS})")
        if tok.kind == "PHRASE":
            return phrase_query(fieldname, tok.text, tok.slop, tok.pos)
        return word_query(fieldname, tok.text, self.options, tok.pos)


def parse(text: str, options: Options = Options()) -> wq.Query:
    """The index query for ``text``; raises :class:`QuerySyntaxError`."""
    if len(text) > MAX_QUERY_LENGTH:
        raise QuerySyntaxError(f"must be at most {MAX_QUERY_LENGTH} characters")
    tokens = tokenize(text)
    if not tokens:
        raise QuerySyntaxError("is empty")
    return _Parser(tokens, options).parse()


# --------------------------------------------------------------------------- terms


def analyzed(fieldname: str, text: str) -> list[str]:
    return [t for t in SCHEMA[fieldname].process_text(text, mode="query") if t]


def _any(parts: Sequence[wq.Query]) -> wq.Query:
    parts = [p for p in parts if p is not None and p is not wq.NullQuery]
    if not parts:
        return wq.NullQuery
    return parts[0] if len(parts) == 1 else AnyOf(parts)


def _all(parts: Sequence[wq.Query]) -> wq.Query:
    parts = [p for p in parts if p is not wq.NullQuery]
    if not parts:
        return wq.NullQuery
    return parts[0] if len(parts) == 1 else AllOf(parts)


class AnyOf(wq.Or):
    """Whoosh's ``Or`` (the same documents), always matched as whoosh's tree of union
    matchers.

    Left to choose (``AUTO_MATCHER``), whoosh pre-loads an ``Or`` inside another query
    into an ``ArrayUnionMatcher`` in every segment of at most 5,000 documents. That
    matcher fills and clears a 2,048-slot array in Python loops whatever the segment's
    size: 0.44 ms each time, and a name + birth year search builds a few in every small
    segment. An index written by a stream of records has dozens of such segments (one per
    commit until they are merged): at 1,300,000 records with 42 small segments beside the
    two large ones (1.2 % of the documents), the small ones took 60 % of the search's
    time. With the tree, a name + birth year search's median fell from 41 to 24 ms and
    its p99 from 95 to 66 ms (index only, 400 searches, the same hits); segments larger
    than 5,000 documents used the tree already. It also scores a fuzzy word's documents
    alike in every segment: pre-loaded without weighting, each counted 1, where the tree
    counts the term's weight."""

    matcher_type = wq.Or.DEFAULT_MATCHER


class AllOf(wq.And):
    """Whoosh's ``And`` (the same documents, each scored as the sum of its parts),
    intersected smallest part first.

    Whoosh pairs an ``And``'s parts largest first: for "name + birth year" (each name
    word an ``Or`` of its exact, fuzzy, phonetic and partial forms, and the year) it
    intersected the two names' alternatives, tens of thousands of documents each at
    1,300,000 records, stepping through both, and only then the 14,000 of that year.
    Here nested ``And``s of the same kind are flattened and the parts taken in order of
    their estimated size, so the year leads and every later part is only asked about
    the documents left: at 1,300,000 records the p99 of 200 such searches (index only)
    fell from 112 to 51 ms, and of the same as free text from 145 to 65 ms, with the
    same results."""

    def _matcher(self, subs: Sequence[wq.Query], searcher: Any, context: Any) -> Any:
        reader = searcher.reader()
        ordered = sorted(_flattened(subs), key=lambda q: q.estimate_size(reader))
        matcher = ordered[0].matcher(searcher, context)
        for part in ordered[1:]:
            matcher = matching.IntersectionMatcher(matcher, part.matcher(searcher, context))
        return matching.WrappingMatcher(matcher, self.boost) if self.boost != 1.0 else matcher


def _flattened(parts: Sequence[wq.Query]) -> list[wq.Query]:
    """The parts, with those that are themselves a plain, unboosted ``AllOf`` or ``And``
    replaced by their own parts (the same documents and scores)."""
    out: list[wq.Query] = []
    for part in parts:
        if type(part) in (AllOf, wq.And) and part.boost == 1.0:
            out += _flattened(part.subqueries)
        else:
            out.append(part)
    return out


def _split_word(word: str, pos: int) -> tuple[str, int | None, bool]:
    """(text, explicit fuzzy distance or None, is_prefix)."""
    fuzzy: int | None = None
    match = _FUZZY_RE.match(word)
    if match and match[1]:
        word = match[1]
        if match[2] == "":
            fuzzy = 1
        else:
            fuzzy = int(match[2])
            if fuzzy > MAX_FUZZY:
                raise QuerySyntaxError(f"fuzzy distance {fuzzy} at position {pos} is too large "
                                       f"(0-{MAX_FUZZY})")
    prefix = word.endswith("*")
    if prefix:
        word = word[:-1]
    if "*" in word or "?" in word or (prefix and fuzzy is not None):
        raise QuerySyntaxError(f"'{word}' at position {pos}: only a trailing * is supported, "
                               "without ~ (e.g. smi*)")
    if not word:
        raise QuerySyntaxError(f"a wildcard or ~ at position {pos} needs some text before it")
    return word, fuzzy, prefix


class FuzzyWord(wq.FuzzyTerm):
    """Whoosh's ``FuzzyTerm`` (the same words), with the words found in memory.

    Whoosh finds the words within ``maxdist`` edits by walking a Levenshtein automaton
    over the segment's term dictionary on disk: each step a binary search of the key table
    of EVERY field, a file read per probe. At 1,000,000 records that was 35 ms of a 38 ms
    family + birth date search (cProfile), whatever the field's size (3,800 family names).
    Here each segment's words of the field are read once into a sorted list (a segment
    never changes; :func:`segment_words`); the words sharing the prefix are a slice of it,
    and rapidfuzz's Levenshtein distance (compiled) keeps those within ``maxdist``. Whoosh's
    automaton is plain Levenshtein too (no transpositions), so the words are the same.
    """

    def _btexts(self, ixreader: Any) -> Any:
        words = segment_words(ixreader, self.fieldname)
        if words is None:  # not one segment's reader
            return super()._btexts(ixreader)
        prefix = self.text[:self.prefixlength]
        start = bisect.bisect_left(words, prefix)
        end = bisect.bisect_left(words, prefix + chr(0x10FFFF), start) if prefix else len(words)
        found = process.extract(self.text, words[start:end], scorer=Levenshtein.distance,
                                score_cutoff=int(self.maxdist), limit=None)
        return [word for word, _, _ in found]

    def matcher(self, searcher: Any, context: Any = None) -> Any:
        """The words' terms in an :class:`AnyOf`; with ``constantscore`` (the default)
        unscored, each document scoring the boost (:class:`ConstantScore`)."""
        words = [word for word in self._btexts(searcher.reader()) if word]
        if not words:
            return matching.NullMatcher()
        terms = [wq.Term(self.fieldname, word) for word in words]
        if not self.constantscore:
            return AnyOf(terms, boost=self.boost).matcher(searcher, context)
        return ConstantScore(_any(terms).matcher(searcher, unweighted(context)), self.boost)


class _One(scoring.BaseScorer):
    def supports_block_quality(self) -> bool:
        return False

    def score(self, matcher: Any) -> float:
        return 1.0


class Unweighted(scoring.WeightingModel):
    """Every posting scores 1, and nothing of the term is read to say so: for terms whose
    documents all score alike (:class:`ConstantScore`), and for counting. Asked for no
    weighting (``weighting=None``), whoosh's searcher builds its default BM25F scorer all
    the same, which reads the term's information again in every segment for its idf."""

    def scorer(self, searcher: Any, fieldname: str, text: bytes, qf: int = 1) -> Any:
        return _ONE


_ONE = _One()
UNWEIGHTED = Unweighted()


def unweighted(context: Any = None) -> Any:
    """``context`` (a new one if None) with every posting scoring 1 (:class:`Unweighted`)."""
    return (context or SearchContext()).set(weighting=UNWEIGHTED)


class ConstantScore(matching.ConstantScoreWrapperMatcher):
    """Every document of ``child`` scores ``score``, and says so to whoosh's skipping
    (:class:`mpi.search.index.TopHits`): a fuzzy word's documents, as close a match
    whichever of its words they hold.

    Whoosh's own wrapper asks its child whether it can be skipped, and unscored terms
    cannot say, so a query holding a fuzzy word scored every match: at 1,000,000
    records, 10,000 records of a surname and its neighbours, 54 ms (p99 of 200 fuzzy
    surnames). Here the wrapper answers for them: nothing of it is worth reading once the
    lowest score kept is at least ``score`` (30 ms). (Whoosh's ``MultiTerm`` scored one
    word with its own weighting and several with the sum of their term frequencies, so
    one fuzzy word ranked unlike two.)
    """

    child: Any

    def supports_block_quality(self) -> bool:
        return True

    def replace(self, minquality: float = 0) -> Any:
        if minquality >= self._score or not self.child.is_active():
            return matching.NullMatcher()
        child = self.child.replace(0)
        return self if child is self.child else self._replacement(child)

    def skip_to_quality(self, minquality: float) -> int:
        if minquality < self._score or not self.child.is_active():
            return 0
        self.child = matching.NullMatcher()
        return 1


class PrefixTerm(wq.Term):
    """A leading n-gram's term ("smi" of ``family_prefix``: every record whose family name
    starts so), each of its documents scoring the boost, as whoosh scores a ``Prefix``'s
    words (``constantscore``).

    Scored by the field's weighting, a shorter name ranked above a longer one ("Ander"
    above "Anderson": fewer n-grams), which says nothing of the match, and such documents
    are in nearly every block of postings, so nothing could be skipped
    (:class:`mpi.search.index.TopHits`): every match was scored, then counted again. A
    constant score lets the search stop scoring once a page is kept."""

    def matcher(self, searcher: Any, context: Any = None) -> Any:
        matcher = super().matcher(searcher, unweighted(context))
        if isinstance(matcher, matching.NullMatcherClass):
            return matcher
        return ConstantScore(matcher, self.boost)


class DatedFuzzyWord(FuzzyWord):
    """The words :class:`FuzzyWord` finds for ``word`` in ``name``, each as the term of
    the records born in ``year`` (``name_year``: "1967|kirra"). The words are found in the
    ``name`` lexicon (held in memory, ~10,000 words per million records), then looked up
    in ``name_year``, whose lexicon (one word per name and year) is never read whole."""

    def __init__(self, word: str, year: str, *, boost: float, maxdist: int):
        self.key = f"{year}{YEAR_SEPARATOR}"
        super().__init__("name_year", self.key + word, boost=boost, maxdist=maxdist,
                         prefixlength=len(self.key) + 1)
        self.in_name = FuzzyWord("name", word, maxdist=maxdist, prefixlength=1)

    def _btexts(self, ixreader: Any) -> Any:
        return [self.key + word for word in self.in_name._btexts(ixreader)]


#: The sorted words of a field in a segment, by (segment id, documents, field): the most
#: recently used LEXICON_SEGMENTS of them. Memory: about 60 bytes a distinct word; at
#: 1,000,000 records of this project's synthetic registry, 10,000 name words in all (0.6 MB).
LEXICON_SEGMENTS = 64
_lexicons: OrderedDict[tuple[str, int, str], list[str]] = OrderedDict()
_lexicons_lock = threading.Lock()


def segment_words(reader: Any, fieldname: str) -> list[str] | None:
    """The words of ``fieldname`` in the segment ``reader`` reads, sorted (read once per
    segment); None when ``reader`` is not one segment's."""
    if not isinstance(reader, SegmentReader):
        return None
    segment = reader.segment()
    key = (segment.segment_id(), segment.doc_count_all(), fieldname)
    with _lexicons_lock:
        words = _lexicons.get(key)
        if words is not None:
            _lexicons.move_to_end(key)
            return words
    field = reader.schema[fieldname]
    words = [field.from_bytes(term) for term in reader.lexicon(fieldname)]
    with _lexicons_lock:
        _lexicons[key] = words
        while len(_lexicons) > LEXICON_SEGMENTS:
            _lexicons.popitem(last=False)
    return words


class Infix(wq.And):
    """Part of a name (all its trigrams). Only worth running when the word is not a name
    itself: :func:`prune_infixes` drops it for known words before searching."""

    def __init__(self, subqueries: Sequence[wq.Query], boost: float = 1.0, token: str = ""):
        super().__init__(list(subqueries), boost=boost)
        self.token = token


def skippable(q: wq.Query) -> bool:
    """Whether a search for ``q`` gains by skipping what cannot reach the top
    (:class:`mpi.search.index.TopHits`): a word or a union of words, whose matches may be
    tens of thousands (a surname prefix, a fuzzy surname) and are cheap to count again
    unscored. Not a query holding an intersection, a phrase or a negation: few of its
    documents score, and counting them again would mean intersecting again (at 1,000,000
    records, a free-text name and year's p99 rose from 123 to 159 ms when skipping)."""
    if isinstance(q, wq.Or):
        return all(skippable(sub) for sub in q.subqueries)
    return isinstance(q, wq.Term | wq.MultiTerm) or q is wq.NullQuery


def prune_infixes(q: wq.Query, is_known_name: Callable[[str], bool]) -> wq.Query:
    """``q`` without the :class:`Infix` parts whose word is a name in the index."""
    if isinstance(q, Infix):
        return wq.NullQuery if q.token and is_known_name(q.token) else q
    if isinstance(q, wq.Not):
        return wq.Not(prune_infixes(q.query, is_known_name), boost=q.boost)
    if isinstance(q, wq.And | wq.Or):
        return q.__class__([prune_infixes(sub, is_known_name) for sub in q.subqueries],
                           boost=q.boost)
    return q


def _name_token(fieldname: str, token: str, options: Options, fuzzy: int | None,
                prefix: bool, year: str | None = None) -> wq.Query:
    """One name word's alternatives: exact, fuzzy, phonetic and (a word that is no name
    in the index) part of a name. With ``year`` (``name`` only), each alternative is the
    same word of a record born that year: the ``name_year`` and ``name_phonetic_year``
    terms, which list only that year's records (see :mod:`mpi.search.schema`)."""
    if prefix:
        if fieldname in PREFIX_FIELDS and len(token) <= PREFIX_MAX:
            return PrefixTerm(PREFIX_FIELDS[fieldname], token)
        return wq.Prefix(fieldname, token)
    dated = year is not None and fieldname == "name" and fuzzy is None
    key = f"{year}{YEAR_SEPARATOR}" if dated else ""
    alternatives: list[wq.Query] = [wq.Term("name_year" if dated else fieldname,
                                            key + token, boost=3.0)]
    distance = options.fuzzy if fuzzy is None else fuzzy
    if len(token) < 4:
        distance = 0
    elif len(token) < 7:
        distance = min(distance, 1)
    if distance > 0 and dated:
        alternatives.append(DatedFuzzyWord(token, str(year), boost=1.5, maxdist=distance))
    elif distance > 0:
        alternatives.append(FuzzyWord(fieldname, token, boost=1.5, maxdist=distance,
                                      prefixlength=1))
    if fuzzy is None and fieldname == "name":
        if options.phonetic:
            codes = analyzed("name_phonetic", token)
            alternatives += [wq.Term("name_phonetic_year" if dated else "name_phonetic",
                                     key + c, boost=1.0) for c in dict.fromkeys(codes)]
        if options.ngrams and len(token) >= 4:
            grams = analyzed("name_ngram", token)
            parts: list[wq.Query] = [wq.Term("name_ngram", g) for g in dict.fromkeys(grams)]
            if dated:
                parts.append(wq.Term("birth_year", year))
            alternatives.append(Infix(parts, boost=0.5, token=token))
    return _any(alternatives)


def _field_word(fieldname: str, word: str, options: Options, fuzzy: int | None,
                prefix: bool, pos: int) -> wq.Query:
    if fieldname in NAME_FIELDS or fieldname == "address":
        tokens = analyzed(fieldname, word)
        if fieldname == "address":
            return _all([wq.Prefix(fieldname, t) if prefix else wq.Term(fieldname, t)
                         for t in tokens])
        return _all([_name_token(fieldname, t, options, fuzzy, prefix) for t in tokens])
    if fieldname in ("identifier", "source_id"):
        folded = fold_identifier(word)
        if not folded:
            return wq.NullQuery
        return wq.Prefix(fieldname, folded) if prefix else wq.Term(fieldname, folded)
    if fieldname == "telecom":
        value = word.lower()
        if _PHONE_RE.match(value):
            forms = phone_forms(value)
            value = forms[0] if forms else value
        return wq.Prefix(fieldname, value) if prefix else wq.Term(fieldname, value)
    if fieldname == "birth_date":
        if prefix:
            if not re.match(r"^\d{4}(-\d{0,2}){0,2}$", word):
                raise QuerySyntaxError(f"birth_date at position {pos}: a prefix must be the "
                                       "start of YYYY-MM-DD (e.g. 1980-05*)")
            return wq.Prefix(fieldname, word)
        _check_date(word, pos)
        return wq.Term(fieldname, word)
    if fieldname == "birth_year":
        if not _YEAR_RE.match(word) or prefix:
            raise QuerySyntaxError(f"birth_year at position {pos} must be a year such as 1980")
        return wq.Term(fieldname, word)
    if fieldname == "gender":
        if word.lower() not in GENDERS:
            raise QuerySyntaxError(f"gender at position {pos} must be one of "
                                   + ", ".join(GENDERS))
        return wq.Term(fieldname, word.lower())
    return wq.Prefix(fieldname, word) if prefix else wq.Term(fieldname, word)


def _check_date(word: str, pos: int) -> None:
    try:
        if not _DATE_RE.match(word):
            raise ValueError
        date.fromisoformat(word)
    except ValueError:
        raise QuerySyntaxError(f"birth_date at position {pos} must be a date as YYYY-MM-DD "
                               "(or a prefix such as 1980-05*)") from None


def word_query(fieldname: str | None, word: str, options: Options, pos: int = 1) -> wq.Query:
    """One word, in one field or (``fieldname`` None) across all of them."""
    text, fuzzy, prefix = _split_word(word, pos)
    if fieldname is not None:
        result = _field_word(fieldname, text, options, fuzzy, prefix, pos)
    else:
        has_letters = any(c.isalpha() for c in text)
        alternatives = [_field_word("name", text, options, fuzzy, prefix, pos)
                        if has_letters or fuzzy is not None else wq.NullQuery]
        if fuzzy is None:
            if _DATE_RE.match(text) and not prefix:
                alternatives.append(wq.Term("birth_date", text, boost=2.0))
            if _YEAR_RE.match(text) and not prefix:
                alternatives.append(wq.Term("birth_year", text, boost=1.5))
            folded = fold_identifier(text)
            if folded:
                for f, boost in (("identifier", 3.0), ("source_id", 2.0)):
                    alternatives.append(wq.Prefix(f, folded, boost=boost) if prefix
                                        else wq.Term(f, folded, boost=boost))
            if "@" in text or (_PHONE_RE.match(text) and sum(c.isdigit() for c in text) >= 3):
                alternatives.append(_field_word("telecom", text, options, None, prefix, pos))
            address = analyzed("address", text)
            if address:
                alternatives.append(_all([wq.Prefix("address", t) if prefix
                                          else wq.Term("address", t) for t in address]))
            if not prefix:
                alternatives.append(wq.Term("source", text, boost=0.5))
        result = _any(alternatives)
    if result is wq.NullQuery:
        raise QuerySyntaxError(f"'{word}' at position {pos} has nothing to search for")
    return result


def phrase_query(fieldname: str | None, text: str, slop: int = 0, pos: int = 1) -> wq.Query:
    if fieldname is None:
        return _any([phrase_query("name", text, slop, pos),
                     phrase_query("address", text, slop, pos)])
    if fieldname in TEXT_FIELDS:
        tokens = analyzed(fieldname, text)
        if not tokens:
            return wq.NullQuery
        if len(tokens) == 1:
            return wq.Term(fieldname, tokens[0])
        return wq.Phrase(fieldname, tokens, slop=max(slop, 0) + 1)
    # A quoted value in a keyword field is one value (e.g. an identifier with spaces).
    return _field_word(fieldname, text.strip(), Options(fuzzy=0), 0, False, pos)


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class Shortcuts:
    """``name=...&birth_year=...``: each given one must match."""

    name: str | None = None
    family: str | None = None
    given: str | None = None
    birth_year: int | None = None
    birth_date: date | None = None
    identifier: str | None = None
    phone: str | None = None
    source: str | None = None

    def queries(self, options: Options) -> list[wq.Query]:
        out: list[wq.Query] = []
        year = f"{self.birth_year:04d}" if self.birth_year is not None else None
        for param, fieldname in (("name", "name"), ("family", "family"), ("given", "given")):
            value = getattr(self, param)
            if value:
                words = [w for w in analyzed(fieldname, value)]
                if not words:
                    raise QuerySyntaxError("has no letters or digits to search for", param)
                # name + birth year: each word looked up among that year's records
                # (name_year), not among everyone's and then intersected with the year's
                # (at 1,300,000 records, tens of thousands of documents against 14,000).
                out.append(_all([_name_token(fieldname, w, options, None, False, year)
                                 for w in words]))
        if year is not None:
            out.append(wq.Term("birth_year", year))
        if self.birth_date is not None:
            out.append(wq.Term("birth_date", self.birth_date.isoformat()))
        if self.identifier:
            folded = fold_identifier(self.identifier)
            if not folded:
                raise QuerySyntaxError("has no letters or digits to search for", "identifier")
            out.append(wq.Term("identifier", folded))
        if self.phone:
            out.append(_field_word("telecom", self.phone.strip(), options, None, False, 1))
        if self.source:
            out.append(wq.Term("source", self.source))
        return out


def build(text: str | None, shortcuts: Shortcuts, options: Options) -> wq.Query:
    parts = [parse(text, options)] if text else []
    parts += shortcuts.queries(options)
    if not parts:
        raise QuerySyntaxError("give q or at least one of name, family, given, birth_year, "
                               "birth_date, identifier, phone")
    return _all(parts)
