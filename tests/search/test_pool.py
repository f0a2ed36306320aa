"""The postings pool, each field's postings sorted apart and spilled and merged in blocks,
gives whoosh's stream."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from whoosh.filedb.filestore import FileStorage

from mpi.search import pool as pool_module
from mpi.search.pool import FieldPostingPool, merge_blocks
from mpi.search.store import IndexDirectory, segment_writer
from tests.search.conftest import all_postings


def _postings(count: int, seed: int) -> list[tuple]:
    """Unique postings shaped as whoosh's: (field, term bytes, docnum, weight, value)."""
    rng = random.Random(seed)
    fields = ("family", "given", "name_prefix", "identifier")
    found: dict[tuple, tuple] = {}
    while len(found) < count:
        key = (rng.choice(fields), rng.choice(("ab", "abc", "b", "smith", "z")).encode()
               + bytes([rng.randrange(97, 100)]), rng.randrange(10_000))
        found[key] = (*key, float(rng.randrange(1, 4)), rng.choice((None, b"\x00\x01", b"")))
    items = list(found.values())
    rng.shuffle(items)
    return items


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.lists(st.integers(0, 60), min_size=1, max_size=8),
                         min_size=0, max_size=5), min_size=0, max_size=6))
def test_merging_blocks_gives_the_sorted_stream(shape):
    """Runs of sorted, non-empty blocks, items unique across them, merge to sorted(all)."""
    universe = iter(range(10**6))
    everything: list[int] = []
    runs = []
    for run_shape in shape:
        run_items = sorted(next(universe) * 7 % 1009 + 1009 * i
                           for i, block in enumerate(run_shape) for _ in block)
        everything += run_items
        blocks, start = [], 0
        for block in run_shape:
            blocks.append(run_items[start:start + len(block)])
            start += len(block)
        runs.append(iter(blocks))
    assert list(merge_blocks(runs)) == sorted(everything)


def _pool(tmp_path, limit_bytes: int) -> tuple[FieldPostingPool, FileStorage]:
    storage = FileStorage(str(tmp_path)).create()
    pool = FieldPostingPool(storage, segment=None, limitmb=1)
    pool.limit = limit_bytes
    return pool, storage


def _by_document(postings: list[tuple]) -> list[tuple[str, int, list[tuple]]]:
    """The postings as a writer adds them: document by document, a field at a time."""
    grouped: dict[tuple[int, str], list[tuple]] = {}
    for field, term, docnum, weight, value in postings:
        grouped.setdefault((docnum, field), []).append((term, docnum, weight, value))
    return [(field, docnum, items) for (docnum, field), items in sorted(grouped.items())]


def test_a_pool_that_spills_gives_back_every_posting_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(pool_module, "BLOCK", 50)  # several blocks per run
    postings = _postings(3_000, seed=1)
    pool, storage = _pool(tmp_path, limit_bytes=40_000)  # ~200 postings a run
    for field, docnum, items in _by_document(postings):
        pool.add_many(field, docnum, items)
    assert len(pool.runs) > 10
    assert not pool._unordered  # each field's terms sorted on the term alone
    assert list(pool.iter_postings()) == sorted(postings)
    assert not [name for name in storage.list() if name.endswith(".run")]


def test_postings_added_out_of_document_order_are_sorted_whole(tmp_path, monkeypatch):
    """Whoosh adding another segment's postings (``add``, term by term), or any posting
    in no particular order: the field's postings are sorted on all they hold."""
    monkeypatch.setattr(pool_module, "BLOCK", 50)
    postings = _postings(3_000, seed=5)  # shuffled
    pool, storage = _pool(tmp_path, limit_bytes=40_000)
    for posting in postings:
        pool.add(posting)
    assert len(pool.runs) > 10 and pool._unordered
    assert list(pool.iter_postings()) == sorted(postings)
    assert not [name for name in storage.list() if name.endswith(".run")]


def test_runs_merged_into_fewer_runs_first_give_the_same_stream(tmp_path, monkeypatch):
    """More runs than are merged at once: some are merged into new runs first."""
    monkeypatch.setattr(pool_module, "BLOCK", 64)
    monkeypatch.setattr(pool_module, "MAX_RUNS", 3)
    postings = _postings(2_000, seed=2)
    pool, storage = _pool(tmp_path, limit_bytes=20_000)
    for field, docnum, items in _by_document(postings):
        pool.add_many(field, docnum, items)
    assert len(pool.runs) > 8
    fields = [(field, list(items)) for field, items in pool.by_field()]
    assert [field for field, _ in fields] == sorted({p[0] for p in postings})
    assert [(field, *p) for field, items in fields for p in items] == sorted(postings)
    assert not [name for name in storage.list() if name.endswith(".run")]


def test_a_pool_that_never_spills_sorts_in_memory(tmp_path):
    postings = _postings(500, seed=3)
    pool, _ = _pool(tmp_path, limit_bytes=10**9)
    for field, docnum, items in _by_document(postings):
        pool.add_many(field, docnum, items)
    assert pool.runs == []
    assert list(pool.iter_postings()) == sorted(postings)


def test_a_pool_cleaned_up_leaves_no_run(tmp_path):
    pool, storage = _pool(tmp_path, limit_bytes=2_000)
    for field, docnum, items in _by_document(_postings(300, seed=6)):
        pool.add_many(field, docnum, items)
    assert pool.runs
    pool.cleanup()
    assert not [name for name in storage.list() if name.endswith(".run")]


def _segment(tmp_path, name: str, limitmb: int, records: list[dict]) -> tuple[list, list, int]:
    from mpi.search.schema import document

    directory = IndexDirectory(tmp_path / name)
    built = directory.new_build()
    ix = directory.create_index(built)
    writer = segment_writer(ix, limitmb=limitmb)
    assert isinstance(writer.pool, FieldPostingPool)
    for record in records:
        writer.add_document(**document(record))
    runs = len(writer.pool.runs)
    writer.commit()
    ix = directory.open_index(built)
    postings, stored = all_postings(ix)
    ix.close()
    return postings, stored, runs


def test_a_segment_written_through_spilled_runs_is_the_one_written_in_memory(tmp_path):
    """The index a rebuild writes does not depend on whether its pool spilled."""
    rng = random.Random(4)
    records = [{"id": f"p{i}", "version": 1, "source": "A", "source_id": str(i),
                "birth_date": f"19{rng.randrange(10, 99)}-0{rng.randrange(1, 9)}-1{i % 9}",
                "gender": rng.choice(("male", "female")),
                "names": [{"family": rng.choice(("Smith", "Nguyen", "O'Brien", "Kowalski")),
                           "given": [rng.choice(("Ada", "Bo", "Chidi", "Dana")),
                                     rng.choice(("Lee", "Marie"))]}],
                "identifiers": [{"system": "urn:mrn", "value": f"MRN{i:05d}"}],
                "addresses": [{"line": [f"{i} Main St"], "city": "Salem",
                               "postal_code": f"9{i % 97:04d}"}],
                "telecom": [{"system": "phone", "value": f"555-01{i % 100:02d}"}]}
               for i in range(700)]
    spilled, spilled_stored, runs = _segment(tmp_path, "spilled", 1, records)
    in_memory, in_memory_stored, no_runs = _segment(tmp_path, "memory", 256, records)
    assert runs >= 3 and no_runs == 0
    assert len(in_memory) > 700 * 40
    assert spilled == in_memory
    assert spilled_stored == in_memory_stored
