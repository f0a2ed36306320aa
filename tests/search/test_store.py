"""The index directory: generations, the CURRENT pointer, the writer lock; and no warnings."""

from __future__ import annotations

import subprocess
import sys
import warnings

from mpi.search.store import IndexDirectory, IndexState, PositionedFile, WriterLock, storage_at


def _built(directory: IndexDirectory):
    path = directory.new_build()
    ix = directory.create_index(path)
    from mpi.search.schema import meta_document

    with ix.writer() as w:
        w.add_document(**meta_document(7))
    ix.close()
    return path


def test_publish_switches_current_and_keeps_only_the_previous(tmp_path):
    directory = IndexDirectory(tmp_path / "ix")
    assert directory.check().state is IndexState.MISSING
    names = [directory.publish(_built(directory)).name for _ in range(3)]
    assert directory.current_name() == names[-1]
    left = sorted(p.name for p in directory.root.iterdir() if p.name.startswith("gen-"))
    assert left == sorted(names[-2:])
    checked = directory.check()
    assert checked.state is IndexState.OK and checked.opened is not None
    assert checked.opened.cursor == 7
    checked.opened.index.close()


def test_a_half_built_generation_is_never_current_and_is_cleaned_up(tmp_path):
    directory = IndexDirectory(tmp_path / "ix")
    half = directory.new_build()
    assert directory.current_name() is None
    directory.discard_stale_builds(older_than_s=-1)
    assert not half.exists()


def test_writer_lock_is_exclusive_and_follows_the_file(tmp_path):
    first, second = WriterLock(tmp_path), WriterLock(tmp_path)
    assert first.acquire() and first.held()
    assert not second.acquire()
    (tmp_path / "writer.lock").unlink()  # the directory was wiped under the writer
    assert not first.held()
    assert second.acquire() and second.held()
    assert not first.acquire()  # the old holder now finds the new file taken
    second.release()
    assert first.acquire()
    first.release()


def test_search_modules_and_whoosh_run_without_warnings(tmp_path):
    """whoosh-reloaded, not whoosh 2.7.4 (invalid escapes, ``is`` with a literal)."""
    code = ("import mpi.search.index, mpi.search.indexer, mpi.search.query, "
            "mpi.search.service, mpi.commands.search")
    # A fresh interpreter without bytecode caches, so compile-time warnings show too.
    result = subprocess.run([sys.executable, "-B", "-W", "error", "-X", "pycache_prefix="
                             + str(tmp_path / "pyc"), "-c", code],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        directory = IndexDirectory(tmp_path / "ix")
        directory.publish(_built(directory))
        checked = directory.check()
        assert checked.state is IndexState.OK and checked.opened is not None
        checked.opened.index.close()


def test_a_bulk_segment_gets_the_field_lengths_whoosh_itself_reads(tmp_path):
    """The bulk writer reads each lengths column whole instead of one byte per posting; the
    lengths (and so the segment) are the ones whoosh's own reader gives."""
    from mpi.search.schema import SCHEMA, document
    from mpi.search.store import _WholeLengths, segment_writer

    directory = IndexDirectory(tmp_path)
    built = directory.new_build()
    ix = directory.create_index(built)
    writer = segment_writer(ix, limitmb=16)
    records = [{"id": f"p{i}", "version": 1, "source": "A", "source_id": str(i),
                "names": [{"family": "Smith" + "-Jones" * (i % 3), "given": ["Ada"] * (i % 4)}],
                "addresses": [{"line": [f"{i} Main St"] * (1 + i % 2)}] if i % 5 else []}
               for i in range(300)]
    for record in records:
        writer.add_document(**document(record))
    writer.commit()
    ix = directory.open_index(built)
    reader = ix.reader()  # one segment
    whoosh_own = reader._perdoc
    whole = _WholeLengths(reader._codec.per_document_reader(reader._storage, reader.segment()))
    for field in SCHEMA.names():
        for docnum in range(reader.doc_count_all()):
            assert whole.doc_field_length(docnum, field) == \
                whoosh_own.doc_field_length(docnum, field), (field, docnum)
    assert whole.doc_field_length(299, "name") == whoosh_own.doc_field_length(299, "name") > 0
    whole.close()
    reader.close()
    ix.close()


def test_a_written_file_knows_its_position_as_the_file_does(tmp_path):
    from array import array

    storage = storage_at(tmp_path)
    f = storage.create_file("segment.trm")
    assert isinstance(f, PositionedFile)
    f.write(b"abc")
    f.write_int(7)
    f.write_varint(300)
    assert f.tell() == f.file.tell() == 9
    f.write_pickle({"fieldmap": {"name": 0}})  # written to the file itself
    assert f.tell() == f.file.tell()
    f.write_array(array("I", [1, 2, 3]))  # (array.tofile)
    assert f.tell() == f.file.tell()
    f.write(memoryview(b"12345"))
    assert f.tell() == f.file.tell()
    f.seek(2)
    assert f.tell() == 2
    f.write(b"XY")
    assert f.tell() == f.file.tell() == 4
    f.seek(0, 2)
    end = f.tell()
    raw = f.raw_file()  # whoever holds it may write past what the wrapper counts
    raw.write(b"more")
    assert f.tell() == f.file.tell() == end + 4
    f.close()
    assert (tmp_path / "segment.trm").stat().st_size == end + 4


def test_a_file_opened_for_reading_too_is_asked_its_position(tmp_path):
    storage = storage_at(tmp_path)
    f = storage.create_file("both", mode="w+b")
    f.write(b"abcdef")
    f.seek(0)
    assert f.read(2) == b"ab"
    assert f.tell() == 2
    f.write(b"Z")
    assert f.get(0, 4) == b"abZd"  # whoosh reads seek the file itself
    assert f.tell() == f.file.tell()
    f.close()
