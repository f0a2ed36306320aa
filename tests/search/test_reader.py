"""The reader each worker keeps: opened without copying segments, never stale after a commit."""

from __future__ import annotations

from whoosh.codec.whoosh3 import W3Codec
from whoosh.filedb.structfile import BufferFile

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
