"""The index directory: generations, the CURRENT pointer, the writer lock; and no warnings."""

from __future__ import annotations

import subprocess
import sys
import warnings

from mpi.search.store import IndexDirectory, IndexState, WriterLock


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
