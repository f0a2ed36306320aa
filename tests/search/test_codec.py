"""The codec the service writes segments with keeps a one-document term in its entry, and
reads back exactly what whoosh's own codec does."""

from __future__ import annotations

import random

import pytest
from whoosh.codec.whoosh3 import W3Codec, W3FieldWriter
from whoosh.scoring import BM25F
from whoosh.writing import SegmentWriter

from mpi.search.codec import InliningCodec, inlined_entry
from mpi.search.schema import document
from mpi.search.store import IndexDirectory, _BulkSegmentWriter, segment_writer
from tests.search.conftest import all_postings


def _records(count: int, seed: int) -> list[dict]:
    """Records sharing some words (families, given names, cities) and not others
    (identifiers, ids, house numbers): terms of one document and of many."""
    rng = random.Random(seed)
    return [{"id": f"p{i}", "version": 1, "source": "A", "source_id": str(i),
             "person_id": f"person-{i // 2}",
             "birth_date": f"19{rng.randrange(10, 99)}-0{rng.randrange(1, 9)}-1{i % 9}",
             "gender": rng.choice(("male", "female")),
             "names": [{"family": rng.choice(("Smith", "Nguyen", "O'Brien", f"Rare{i}")),
                        "given": [rng.choice(("Ada", "Bo", "Chidi")), f"Mid{i % 50}"]}],
             "identifiers": [{"system": "urn:mrn", "value": f"MRN{i:05d}"}],
             "addresses": [{"line": [f"{i} Main St"], "city": rng.choice(("Salem", "Lyon")),
                            "postal_code": f"9{i % 97:04d}"}],
             "telecom": [{"system": "phone", "value": f"555-01{i % 100:02d}"}]}
            for i in range(count)]


def _write(tmp_path, name: str, codec, records: list[dict]):
    directory = IndexDirectory(tmp_path / name)
    built = directory.new_build()
    ix = directory.create_index(built)
    # The service's writer, or whoosh's own with ``codec`` for the reference.
    writer = segment_writer(ix, limitmb=64) if codec is None else ix.writer(codec=codec)
    assert isinstance(writer.codec, InliningCodec) == (codec is None)
    for record in records:
        writer.add_document(**document(record))
    writer.commit()
    return directory.open_index(built)


def test_the_service_writer_reads_back_what_whoosh_writes(tmp_path):
    records = _records(600, seed=1)
    ours = _write(tmp_path, "ours", None, records)
    theirs = _write(tmp_path, "whoosh", W3Codec(), records)
    try:
        assert len(all_postings(ours)[0]) > 600 * 40
        assert all_postings(ours) == all_postings(theirs)
        with ours.reader() as reader, theirs.reader() as reference:
            for field, term in reader.all_terms():
                assert reader.doc_frequency(field, term) == reference.doc_frequency(field, term)
                assert reader.frequency(field, term) == reference.frequency(field, term)
                mine, its = reader.term_info(field, term), reference.term_info(field, term)
                assert (mine.min_length(), mine.max_length(), mine.max_weight()) == (
                    its.min_length(), its.max_length(), its.max_weight())
    finally:
        ours.close()
        theirs.close()


def test_a_term_one_document_holds_is_kept_in_its_entry(tmp_path):
    ix = _write(tmp_path, "ours", None, _records(300, seed=2))
    try:
        with ix.reader() as reader:
            inlined = shared = 0
            for field, term in reader.all_terms():
                info = reader.term_info(field, term)
                assert info.is_inlined() == (reader.doc_frequency(field, term) == 1)
                inlined += info.is_inlined()
                shared += not info.is_inlined()
            assert inlined > 300 and shared > 30
            # An ID field's postings carry no value: None, as from a block on disk.
            matcher = reader.postings("id", b"p7")
            assert matcher.value() is None and matcher.id() == 7
    finally:
        ix.close()


@pytest.mark.parametrize("term", [("identifier", b"mrn00007"), ("family", b"rare7")])
def test_an_inlined_term_copied_keeps_what_scoring_a_block_reads(tmp_path, term):
    """Whoosh's ListMatcher loses its term and entry when copied (a compound matcher's
    copy copies its parts), and then fails to score a block; the codec's does not."""
    records = _records(20, seed=3)
    records[7]["names"][0]["family"] = "Rare7"
    ix = _write(tmp_path, "ours", None, records)
    try:
        with ix.searcher(weighting=BM25F()) as searcher:
            reader = searcher.reader()
            assert reader.term_info(*term).is_inlined()
            scorer = searcher.weighting.scorer(searcher, *term)
            matcher = reader.postings(*term, scorer=scorer)
            copy = matcher.copy()
            assert copy.term() == term and copy.id() == matcher.id() == 7
            assert copy.block_quality() == matcher.block_quality() > 0
            assert copy.score() == matcher.score()
    finally:
        ix.close()


class _PostingAtATime(InliningCodec):
    """The service's codec with whoosh's own field writer: its ``add_postings`` loop, a
    posting at a time, is the reference for the term-at-a-time writer."""

    def field_writer(self, storage, segment):
        return W3FieldWriter(self, storage, segment)


class _WhooshAdds(_BulkSegmentWriter):
    """The rebuild's writer adding documents as whoosh's ``SegmentWriter`` does."""

    add_document = SegmentWriter.add_document


def _segment_files(tmp_path, name: str, records: list[dict], *, codec, bulk: bool
                   ) -> dict[str, bytes]:
    """The files of the one segment ``records`` make, by name after the segment's random
    id (not assembled into a compound file, whose directory names that id)."""
    directory = IndexDirectory(tmp_path / name)
    built = directory.new_build()
    ix = directory.create_index(built)
    if bulk:  # the rebuild's writer: field lengths read whole (``length_bytes``)
        kind = _WhooshAdds if isinstance(codec, _PostingAtATime) else _BulkSegmentWriter
        writer = kind(ix, limitmb=1, codec=codec, compound=False)
    else:  # whoosh's writer: lengths asked a document at a time
        writer = ix.writer(codec=codec, compound=False)
    for record in records:
        writer.add_document(**document(record))
    writer.commit()
    ix.close()
    # patients_<segment id>.trm, patients_<segment id>._name_len.col, ...
    files = {p.name.split(".", 1)[1]: p.read_bytes() for p in built.iterdir()
             if p.suffix not in (".toc", "") and "WRITELOCK" not in p.name}
    assert {"trm", "pst", "_stored.col", "_name_len.col"} <= set(files)
    return files


@pytest.mark.parametrize("bulk", [True, False], ids=["rebuild writer", "whoosh writer"])
def test_terms_written_a_term_at_a_time_are_the_bytes_whoosh_writes(tmp_path, bulk):
    # 700 records: "patient" and each common family name hold more postings than a block
    # (128), spread over blocks; identifiers and rare names one; the pool spills (1 MB).
    records = _records(700, seed=3)
    ours = _segment_files(tmp_path, "ours", records, codec=InliningCodec(), bulk=bulk)
    theirs = _segment_files(tmp_path, "theirs", records, codec=_PostingAtATime(), bulk=bulk)
    assert ours.keys() == theirs.keys()
    for suffix in ours:
        assert ours[suffix] == theirs[suffix], suffix


def test_a_one_document_entry_is_what_the_term_info_writes():
    from array import array

    from whoosh.codec.whoosh3 import W3TermInfo
    from whoosh.util.numeric import byte_to_length

    for docnum, weight, value, length in [(7, 1.0, b"\x00\x00\x00\x01", 3),
                                          (0, 2.3, b"", 0), (4_000_000, 0.1, None, 255)]:
        info = W3TermInfo()
        block = _Block(docnum, weight, length and byte_to_length(length))
        info.add_block(block)
        info.set_inlined(array("I", [docnum]), array("f", [weight]), [value or None])
        assert inlined_entry(docnum, weight, value, length) == info.to_bytes()


class _Block:
    """A postings block of one posting, as ``W3TermInfo.add_block`` reads it."""

    def __init__(self, docnum: int, weight: float, length: int | None):
        from array import array

        self._weights = array("f", [weight])
        self._docnum, self._weight, self._length = docnum, weight, length

    def __len__(self) -> int:
        return 1

    def min_length(self):
        return self._length or None

    def max_length(self):
        return self._length or 0

    def max_weight(self):
        return self._weight

    def min_id(self):
        return self._docnum

    def max_id(self):
        return self._docnum


class _WhooshMerges(_BulkSegmentWriter):
    """The service's writer merging as whoosh's ``SegmentWriter`` does: every posting of
    the merged segments through the pool, field lengths asked a document at a time."""

    add_reader = SegmentWriter.add_reader
    write_per_doc = SegmentWriter.write_per_doc


def _merged_files(tmp_path, name: str, kind, *, compound: bool, delete: tuple[int, ...]
                  ) -> dict[str, bytes]:
    """The files of the segment ``kind`` merges three segments into (written by the
    service's writer, the second with ``delete``'s documents deleted), by suffix."""
    from whoosh.reading import SegmentReader

    directory = IndexDirectory(tmp_path / name)
    built = directory.new_build()
    ix = directory.create_index(built)
    for part, seed in enumerate((5, 6, 7)):
        writer = segment_writer(ix, limitmb=64)
        writer.compound = compound
        for record in _records(300 + 100 * part, seed=seed):
            writer.add_document(**document(record))
        writer.commit(merge=False)
    segments = ix._segments()
    for docnum in delete:
        segments[1].delete_document(docnum)
    target = IndexDirectory(tmp_path / f"{name}-merged")
    into = target.create_index(target.new_build())
    writer = kind(into, limitmb=1, codec=InliningCodec(), compound=False)
    for segment in segments:
        reader = SegmentReader(ix.storage, ix.schema, segment)
        writer.add_reader(reader)
        reader.close()
    # the service's writer copies the terms (whoosh's pools the postings)
    assert (len(writer._copies) == 3) == (kind is _BulkSegmentWriter)
    merged = writer._finalize_segment()
    writer._finish()
    assert merged.doc_count_all() == 300 + 400 + 500 - len(delete)
    ix.close()
    into.close()
    files = {p.name.split(".", 1)[1]: p.read_bytes() for p in target.root.glob("*/*")
             if p.suffix not in (".toc", "") and "WRITELOCK" not in p.name}
    assert {"trm", "pst", "_stored.col", "_name_len.col"} <= set(files)
    return files


@pytest.mark.parametrize("compound", [True, False], ids=["compound", "separate files"])
@pytest.mark.parametrize("delete", [(), (0, 5, 399)], ids=["all live", "some deleted"])
def test_a_merge_copying_terms_writes_the_bytes_whoosh_merging_writes(tmp_path, compound,
                                                                       delete):
    """Segments merged a term at a time (each segment's terms table and postings read
    whole) make the segment whoosh's ``add_reader`` makes through the pool: every file
    the same bytes, with documents deleted or not, from compound segments or not."""
    ours = _merged_files(tmp_path, "ours", _BulkSegmentWriter, compound=compound,
                         delete=delete)
    theirs = _merged_files(tmp_path, "theirs", _WhooshMerges, compound=compound,
                           delete=delete)
    assert ours.keys() == theirs.keys()
    for suffix in ours:
        assert ours[suffix] == theirs[suffix], suffix


def test_segment_terms_reads_what_whoosh_reads(tmp_path):
    """Every term and posting ``segment_terms`` reads from a segment, inlined or in
    blocks (a segment of whoosh's own codec, which inlines nothing, too), is whoosh's."""
    from whoosh.reading import SegmentReader

    from mpi.search.codec import segment_terms

    for name, codec in (("ours", None), ("whoosh", W3Codec())):
        ix = _write(tmp_path, name, codec, _records(500, seed=8))
        expected, _ = all_postings(ix)
        reader = SegmentReader(ix.storage, ix.schema, ix._segments()[0])
        try:
            read = [(field, term, docnum, weight, value)
                    for field, term, ids, weights, values in segment_terms(reader) or ()
                    for docnum, weight, value in zip(ids, weights, values, strict=True)]
        finally:
            reader.close()
            ix.close()
        assert len(read) > 500 * 40
        assert read == expected, name


def test_a_writer_that_merges_and_adds_documents_pools_both(tmp_path):
    """A writer given documents after a segment (an indexer's step that merges) puts the
    segment's postings in the pool and writes the same index as whoosh."""
    from whoosh.reading import SegmentReader

    results = []
    for name, kind in (("ours", _BulkSegmentWriter), ("theirs", _WhooshMerges)):
        directory = IndexDirectory(tmp_path / name)
        ix = directory.create_index(directory.new_build())
        writer = segment_writer(ix, limitmb=64)
        for record in _records(200, seed=9):
            writer.add_document(**document(record))
        writer.commit(merge=False)
        writer = kind(ix, limitmb=64, codec=InliningCodec())
        reader = SegmentReader(ix.storage, ix.schema, ix._segments()[0])
        writer.add_reader(reader)
        reader.close()
        for record in _records(50, seed=10):
            writer.add_document(**document(record))
        writer.commit(mergetype=lambda _writer, _segments: [])
        results.append(all_postings(ix))
        ix.close()
    assert results[0] == results[1]
    assert len(results[0][1]) == 250
