"""Reading the index: the whoosh reader each worker keeps, and its Null twin.

A reader never writes. Before each search it re-reads ``CURRENT`` (a rebuilt
generation was published) and refreshes its searcher when the writer has
committed since (whoosh compares the index generation), so a change is visible
to every worker as soon as the writer commits it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from whoosh import collectors
from whoosh import query as wq
from whoosh.codec.whoosh3 import W3LeafMatcher
from whoosh.matching import binary, wrappers

from mpi.search.query import ConstantScore, prune_infixes, skippable, unweighted
from mpi.search.schema import KIND_META, META_ID
from mpi.search.store import IndexDirectory, IndexState

log = logging.getLogger("mpi.search")


class SearchUnavailable(Exception):
    """The index cannot answer now (being built or rebuilt); retrying later will work."""


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    person_id: str | None


@dataclass(frozen=True)
class Results:
    hits: list[Hit]
    total: int
    cursor: int | None  # the change-log event the index has reached (None: no index)


class SearchIndex(Protocol):
    def search(self, query: wq.Query, *, offset: int, limit: int) -> Results: ...

    def position(self) -> int | None:
        """The last change-log event the index holds; SearchUnavailable if it cannot
        answer."""
        ...


class NullSearchIndex:
    """Finds nothing; for tests and tools that run without an index."""

    def search(self, query: wq.Query, *, offset: int, limit: int) -> Results:
        return Results([], 0, None)

    def position(self) -> int | None:
        return None


class TopHits(collectors.TopCollector):
    """Whoosh's top-N collector, counting every match; with ``skip``, passing over what
    cannot reach the top N as soon as it can.

    Whoosh skips a block of postings (and drops a branch of the query) whose best score
    cannot beat the lowest of the N kept so far, but it only learns that score when a
    document displaces one: never while the first N it met hold, as they do whenever
    later matches score no better (equal scores keep the earlier document). With
    ``skip``, the bar is the lowest kept score from the moment N are kept: at 1,000,000
    records a surname prefix matching 26,000 records took 54 ms scoring them all and
    10 ms this way, with the same hits (bench.search, index only).

    Whatever was passed over is uncounted, so the total then comes from walking the
    query's documents again, unscored (a few milliseconds for tens of thousands of one
    surname's). Whoosh's own collector dropped branches even when told not to skip, and
    counted only what was left: a fuzzy surname matching 20,000 records said 32. Without
    ``skip`` nothing is dropped and the count is the scoring pass's own. Skipping does
    not pay for an intersection (a name and a year): few of its documents score, and
    counting them again means intersecting again (see :func:`mpi.search.query.skippable`).
    """

    def __init__(self, limit: int, *, skip: bool):
        super().__init__(limit=limit, usequality=skip)

    def _collect(self, global_docnum: int, score: float) -> float:
        key = super()._collect(global_docnum, score)
        # Whoosh raises the bar only when a document displaces one, and then even without
        # skipping (its replace() then drops branches and their matches go uncounted).
        full = self.usequality and len(self.items) == self.limit
        self.minscore = self.items[0][0] if full else 0
        return key

    def computes_count(self) -> bool:
        return not self.minscore and not self.skipped_times

    def count_except(self, excluded: set[int]) -> int:
        """How many documents match, those ``excluded`` (global numbers: the index's meta
        document) left out: each segment's matches as a set (:func:`matched_docs`),
        counted without stepping through them in Python."""
        total = 0
        for searcher, offset in self.top_searcher.leaf_searchers():
            matcher = self.q.matcher(searcher, unweighted(searcher.boolean_context()))
            docs = matched_docs(matcher)
            total += len(docs) - len(docs & {n - offset for n in excluded})
        return total

    def all_ids(self) -> Iterator[int]:
        """Every match's document number, unscored, in order (:func:`matched_docs`).
        Whoosh's own (``docs_for_query``) turns each intersection into two sets of every
        document either side matches (330 ms for a free-text name and year at 1,000,000
        records, against 95 ms stepping the intersection as a search does)."""
        for searcher, offset in self.top_searcher.leaf_searchers():
            matcher = self.q.matcher(searcher, unweighted(searcher.boolean_context()))
            for docnum in sorted(matched_docs(matcher)):
                yield offset + docnum


#: Wrappers whose documents are their child's (exactly these types: whoosh's other
#: wrappers filter or transform).
_SAME_DOCUMENTS = (wrappers.WrappingMatcher, wrappers.ConstantScoreWrapperMatcher,
                   ConstantScore)


class CountedApart(collectors.FilterCollector):
    """Whoosh's filtering collector, which counts what its :class:`TopHits` skipped
    with :meth:`TopHits.count_except` (whoosh's own counting walks every match through
    two Python generators: 0.7 µs a document, 16 ms for a prefix of 23,000 records)."""

    def count(self) -> int:
        child = self.child
        if child.computes_count() or self.allow or not isinstance(child, TopHits):
            return int(super().count())
        return child.count_except(self._restrict or set())


def matched_docs(matcher: Any) -> set[int]:
    """The document numbers a fresh ``matcher`` matches in its segment.

    A union's are the union of its branches', and a term's are read a block of postings
    at a time: stepping a fuzzy word's union matcher a document at a time (whoosh's
    ``is_active``/``id``/``next`` in Python at each level of the tree) cost 6.5 µs a
    document, and counting 11,000 records of a surname and its neighbours was 64 % of a
    fuzzy search at 1,170,000 records. Whoosh has no bulk read of a term's documents, so
    its leaf matcher's blocks are read here (``W3LeafMatcher``: whoosh 3's postings,
    which :mod:`mpi.search.codec` writes too; a term it keeps inline holds one document).
    Any other matcher (an intersection, a phrase, whoosh's array union) is stepped
    through."""
    if isinstance(matcher, binary.UnionMatcher):
        return matched_docs(matcher.a) | matched_docs(matcher.b)
    if isinstance(matcher, wrappers.FilterMatcher):  # a segment's deleted documents
        inner = matched_docs(matcher.child)
        return inner - set(matcher._ids) if matcher._exclude else inner & set(matcher._ids)
    if type(matcher) in _SAME_DOCUMENTS:  # a boost, or every document scoring alike
        return matched_docs(matcher.child)
    docs: set[int] = set()
    if type(matcher) is W3LeafMatcher:
        while matcher.is_active():
            if matcher._ids is None:
                matcher._read_ids()
            docs.update(matcher._ids[matcher._i:])
            matcher._next_block()
        return docs
    while matcher.is_active():
        docs.add(matcher.id())
        matcher.next()
    return docs


class WhooshSearchIndex:
    """The index directory at ``root``, read-only. Opens nothing until the first search."""

    def __init__(self, root: Path):
        self.directory = IndexDirectory(root)
        self._lock = threading.Lock()
        self._name: str | None = None
        self._index: Any = None
        self._searcher: Any = None
        self._cursor: int | None = None
        self._mask: set[int] = set()  # the cursor document's number in the searcher

    def search(self, query: wq.Query, *, offset: int, limit: int) -> Results:
        with self._lock:
            try:
                searcher = self._fresh_searcher()
                query = prune_infixes(query, lambda word: searcher.doc_frequency(
                    "name", word) > 0)
                # The mask (the cursor document, never a hit) as a set of its document
                # number: whoosh turns a mask query into a bit array of every document, a
                # Python loop over 125,000 bytes (17 ms) per search at 1,000,000 records.
                collector = CountedApart(
                    TopHits(offset + limit, skip=skippable(query)), restrict=self._mask)
                searcher.search_with_collector(query, collector)
                results = collector.results()
                hits = [Hit(hit["id"], round(float(hit.score or 0.0), 4), hit.get("person_id"))
                        for hit in results[offset:offset + limit]]
                return Results(hits, len(results), self._cursor)
            except SearchUnavailable:
                raise
            except Exception as exc:
                # Files removed under us (the directory was deleted), or damaged ones (a
                # truncated segment raises struct.error, zeros raise anything): never a
                # 500. Reopen next time; the indexer verifies the index and rebuilds it.
                self._reset()
                log.warning("search index read failed: %s", type(exc).__name__,
                            extra={"error": type(exc).__name__})
                raise SearchUnavailable("the search index cannot be read now; retry") \
                    from exc

    def position(self) -> int | None:
        with self._lock:
            try:
                self._fresh_searcher()
            except SearchUnavailable:
                raise
            except Exception as exc:  # as in search(): damaged files are not a 500
                self._reset()
                raise SearchUnavailable("the search index cannot be read now") from exc
            return self._cursor

    def _fresh_searcher(self) -> Any:
        name = self.directory.current_name()
        if name is None:
            self._reset()
            raise SearchUnavailable("the search index is being built")
        if name != self._name or self._searcher is None:
            self._reset()
            checked = self.directory.check()
            if checked.state is not IndexState.OK or checked.opened is None:
                state = checked.state.value
                raise SearchUnavailable(f"the search index is being rebuilt ({state})")
            self._index = checked.opened.index
            self._searcher = self._index.searcher()
            self._name = name
            self._cursor = checked.opened.cursor
            self._mask = _meta_numbers(self._searcher)
            return self._searcher
        try:
            changed = self._index.latest_generation() != self._searcher.reader().generation()
            # A new reader, not searcher.refresh(): whoosh 2.7's refresh re-uses segment
            # readers whose deletions have since changed, and would find deleted records.
            # Opening one is cheap (~1 ms at 100,000 patients) because the storage does not
            # copy the segments into memory (see mpi.search.store.storage_at).
            fresh = self._index.searcher() if changed else self._searcher
        except Exception as exc:
            self._reset()
            raise SearchUnavailable("the search index is being rebuilt") from exc
        if fresh is not self._searcher:
            with contextlib.suppress(Exception):
                self._searcher.close()
            self._searcher = fresh
            meta = fresh.document(id=META_ID)
            self._cursor = int(meta["cursor"]) if meta else None
            self._mask = _meta_numbers(fresh)
        return self._searcher

    def _reset(self) -> None:
        for thing in (self._searcher, self._index):
            if thing is not None:
                # Closing a half-deleted index may fail; it is being dropped anyway.
                with contextlib.suppress(Exception):
                    thing.close()
        self._searcher = self._index = self._name = self._cursor = None
        self._mask = set()

    def close(self) -> None:
        with self._lock:
            self._reset()


def _meta_numbers(searcher: Any) -> set[int]:
    """The document numbers of the cursor document (one; none in a damaged index)."""
    return set(searcher.docs_for_query(wq.Term("kind", KIND_META)))
