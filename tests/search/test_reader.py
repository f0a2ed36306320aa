"""The reader each worker keeps: opened without copying segments, never stale after a commit."""

from __future__ import annotations

import random

import pytest
from whoosh.codec.whoosh3 import W3Codec
from whoosh.filedb.structfile import BufferFile

from mpi.search.index import _meta_numbers
from tests.search.conftest import ids


def _leaves(reader):
    return [leaf for leaf, _ in reader._searcher.reader().leaf_readers()]


def test_segments_are_read_from_the_file_not_copied_into_memory(db, patients, indexer, reader):
    """With whoosh's default mmap storage, opening a compound segment copies its terms and
    postings into a BytesIO (~100 ms at 100,000 patients); the index is opened without it."""
    patients.create()
    indexer.catch_up()
    patients.create(source_id="B-1", identifiers=[],
                    names=[{"family": "Lovelace", "given": ["Ada"]}])
    indexer.catch_up()
    assert len(ids(reader, "smith")) == 1
    assert reader._index.storage.supports_mmap is False
    assert indexer._opened.index.storage.supports_mmap is False
    leaves = _leaves(reader)
    assert leaves
    for leaf in leaves:
        terms = leaf.storage().open_file(leaf.segment().make_filename(W3Codec.TERMS_EXT))
        try:
            assert not isinstance(terms, BufferFile)
        finally:
            terms.close()


def test_a_worker_never_finds_what_was_deleted_or_replaced_in_an_older_segment(
        db, patients, indexer, reader):
    """Deleting or updating a record changes the deletions of the segment holding it, and
    of no other: the worker's searcher, open since before, must not answer from the old
    deletions (what whoosh 2.7's ``searcher.refresh()`` would do by re-using the reader)."""
    old = [patients.create(source_id=f"O-{n}", identifiers=[],
                           names=[{"family": "Oldfield", "given": [f"G{n}"]}])
           for n in range(3)]
    indexer.catch_up()
    assert sorted(ids(reader, "oldfield")) == sorted(p.id for p in old)
    for n in range(3):  # more, small segments after the first one; the worker follows each
        patients.create(source_id=f"N-{n}", identifiers=[],
                        names=[{"family": "Newman", "given": [f"H{n}"]}])
        indexer.catch_up()
        assert len(ids(reader, "newman")) == n + 1
    segments_before = {leaf.segment().segment_id() for leaf in _leaves(reader)}

    patients.delete(old[0])
    renamed = patients.update(old[1], names=[{"family": "Renamed", "given": ["G1"]}])
    indexer.catch_up()

    assert ids(reader, "oldfield") == [old[2].id]
    assert ids(reader, "renamed") == [renamed.id]
    assert ids(reader, "family:oldfield given:g0") == []
    assert len(ids(reader, "newman")) == 3
    # The deleted and replaced documents were in a segment the worker had open already.
    assert {leaf.segment().segment_id() for leaf in _leaves(reader)} & segments_before
    assert reader._searcher.reader().generation() == reader._index.latest_generation()


# --------------------------------------------------------------------------- top hits

CROWD = (["Smith"] * 300 + ["Smyth"] * 120 + ["Smithson", "Smithers", "Smit", "Schmidt"] * 30
         + ["Smith Jones", "Smithe"] * 20 + ["Smiht", "Smithwick", "Smyth Smiley"])


@pytest.fixture(scope="module", params=["whoosh codec", "inlining codec"])
def crowd(tmp_path_factory, request):
    """An index of CROWD in three segments (some records deleted from the first), with a
    meta document: hundreds of postings per word, several blocks each, and words only one
    record holds. Written by whoosh's own codec, and by the one the service writes with,
    which keeps a word one record holds in the word's entry (mpi.search.codec)."""
    from mpi.search.codec import InliningCodec
    from mpi.search.schema import document, meta_document
    from mpi.search.store import IndexDirectory

    codec = {"whoosh codec": W3Codec, "inlining codec": InliningCodec}[request.param]

    directory = IndexDirectory(tmp_path_factory.mktemp("crowd"))
    ix = directory.create_index(directory.new_build())
    rng = random.Random(5)
    records = list(enumerate(CROWD))
    rng.shuffle(records)
    for part in (records[:300], records[300:520], records[520:]):
        writer = ix.writer(codec=codec())
        for i, family in part:
            writer.add_document(**document({
                "id": f"r{i}", "names": [{"family": family, "given": [rng.choice(GIVEN)]}],
                "birth_date": f"{rng.randrange(1950, 1953)}-0{rng.randrange(1, 9)}-1{i % 9}"}))
        if part[0] is records[0]:
            writer.add_document(**meta_document(7))
        writer.commit(merge=False)
    with ix.writer() as writer:
        for i, _ in records[:40]:
            writer.delete_by_term("id", f"r{i}")
    yield ix
    ix.close()


GIVEN = ["John", "Jon", "Mary", "Maria", "Ann", "Anne", "Li", "Ola", "Ivan", "Sean", "Shaun"]


def _reference(searcher, query, limit):
    """Every match scored (whoosh's unlimited collector drops nothing), best first and
    earlier documents first among equals; and how many there are."""
    results = searcher.search(query, limit=None, terms=False)
    scored = sorted(((round(h.score, 6), h.docnum) for h in results), key=lambda x: (-x[0], x[1]))
    return scored[:limit], len(scored)


@pytest.mark.parametrize("text", ["family:smi*", "family:smith", "family:smyth", "family:smiht",
                                  "family:schmidt", "smith", "smith 1951", "family:sm*",
                                  "given:jon family:smith", "family:smyth OR given:ivan",
                                  "family:smithwick", "smiley", "family:smithw*",
                                  "family:smyth OR family:smithwick"])
@pytest.mark.parametrize("limit", [1, 5, 20, 200])
def test_top_hits_are_the_best_scored_and_every_match_is_counted(crowd, text, limit):
    """Skipping what cannot reach the top keeps the same hits in the same order as
    scoring every match (a fuzzy word's documents alike), and the total counts every
    live match (not the deleted ones, not the meta document) however much was skipped."""

    from mpi.search.index import CountedApart, TopHits
    from mpi.search.query import Options, Shortcuts, build, skippable

    query = build(text, Shortcuts(), Options(fuzzy=1))
    with crowd.searcher() as searcher:
        mask = _meta_numbers(searcher)
        expected, total = _reference(searcher, query, limit)
        assert total > 0 and len(mask) == 1
        for skip in {skippable(query), False}:
            top = TopHits(limit, skip=skip)
            collector = CountedApart(top, restrict=mask)
            searcher.search_with_collector(query, collector)
            results = collector.results()
            assert [(round(h.score, 6), h.docnum) for h in results] == expected
            assert len(results) == total
            if skip and total > limit and text in ("family:smi*", "family:smith"):
                assert top.minscore > 0 and not top.computes_count()  # skipped, recounted
            if skip and total > 2 * limit and text == "family:smi*":  # every match alike:
                assert top.skipped_times > 0  # the blocks past the page are not read


def test_whoosh_own_collector_undercounts_what_it_drops(crowd):
    """Why the total is counted apart: whoosh's top-N collector, told not to skip, still
    drops a fuzzy word's branch once the kept scores beat it, and counts only what is
    left; the reader counts every match."""
    from mpi.search.query import Options, Shortcuts, build

    query = build("family:smith", Shortcuts(), Options(fuzzy=1))
    with crowd.searcher() as searcher:
        _, total = _reference(searcher, query, 5)
        theirs = searcher.search(query, limit=5, optimize=False, terms=False)
        assert len(theirs) < total


def test_alike_scored_words_and_counting_read_no_term_statistics(crowd, monkeypatch):
    """A prefix's and a fuzzy word's documents all score alike, and counting scores
    nothing: none of them builds whoosh's BM25F scorer, which reads each term's
    information again in every segment (for its idf) even when asked for no weighting."""
    from whoosh import scoring

    from mpi.search.index import CountedApart, TopHits
    from mpi.search.query import Options, Shortcuts, build

    built = []
    real = scoring.BM25F.scorer
    with crowd.searcher() as searcher:
        mask = _meta_numbers(searcher)

        def scorer(self, *args, **kw):
            built.append(args[1:])
            return real(self, *args, **kw)

        monkeypatch.setattr(scoring.BM25F, "scorer", scorer)
        for text in ("family:smi*", "family:smitx", "family:sm*"):
            top = TopHits(5, skip=True)
            collector = CountedApart(top, restrict=mask)
            searcher.search_with_collector(build(text, Shortcuts(), Options(fuzzy=1)), collector)
            assert len(collector.results()) > 5 and not top.computes_count()  # counted apart
        assert built == []
        searcher.search(build("family:smith", Shortcuts(), Options(fuzzy=0)), limit=5)
        assert built  # (a word scored by its weighting does)


def test_counting_what_was_skipped_reads_postings_a_block_at_a_time(crowd, monkeypatch):
    """The total of a search that skipped comes from each segment's matches as a set:
    a term's documents a block of postings at a time, a union's as the union of its
    branches', deleted documents and the meta document left out; not a document at a
    time through whoosh's matchers (6.5 µs a document for a fuzzy word's union)."""
    from whoosh.codec.whoosh3 import W3LeafMatcher

    from mpi.search.index import CountedApart, TopHits
    from mpi.search.query import Options, Shortcuts, build

    with crowd.searcher() as searcher:
        mask = _meta_numbers(searcher)
        for text in ("family:smi*", "family:smitx", "family:smith"):
            query = build(text, Shortcuts(), Options(fuzzy=1))
            _, total = _reference(searcher, query, 5)
            top = TopHits(5, skip=True)
            collector = CountedApart(top, restrict=mask)
            searcher.search_with_collector(query, collector)
            stepped: list[int] = []
            monkeypatch.setattr(W3LeafMatcher, "id", _counting(W3LeafMatcher.id, stepped))
            assert not top.computes_count() and collector.count() == total > 5, text
            # (a segment's deleted documents are stepped over as its matcher opens)
            assert len(stepped) < total / 4, (text, len(stepped), total)
            monkeypatch.undo()


def _counting(method, calls):
    def counted(self):
        calls.append(1)
        return method(self)
    return counted
