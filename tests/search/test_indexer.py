"""The indexer follows the change log, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import tempfile
import threading

import pytest
from whoosh import index as whoosh_index

from mpi.domain.events import EventType
from mpi.search.index import SearchUnavailable, WhooshSearchIndex
from mpi.search.indexer import (
    HANDLERS,
    RECORD_EVENTS,
    Indexer,
    ShareSizes,
    UnknownEventType,
    build_generation,
    changes_for,
)
from mpi.search.schema import INDEX_NAME, META_ID
from mpi.search.store import IndexDirectory, IndexState
from mpi.storage.changes import ChangeRepository
from mpi.storage.patients import PatientRepository
from mpi.storage.work import UnitOfWork
from tests.search.conftest import ACTOR, ids


def test_created_updated_deleted_are_followed(db, patients, indexer, reader):
    john = patients.create()
    ada = patients.create(source_id="B-1", names=[{"family": "Lovelace", "given": ["Ada"]}],
                          identifiers=[])
    indexer.catch_up()
    assert ids(reader, "smith") == [john.id]
    assert ids(reader, "lovelace") == [ada.id]

    patients.update(ada, names=[{"family": "King", "given": ["Ada"]}])
    patients.delete(john)
    indexer.catch_up()
    assert ids(reader, "family:lovelace~0") == []
    assert ids(reader, "king") == [ada.id]
    assert ids(reader, "smith") == []  # deleted: never found again
    assert ids(reader, "NOT king") == []


def test_cursor_is_committed_with_the_documents(db, patients, indexer, index_root):
    patients.create()
    patients.create(source_id="B-2", identifiers=[])
    indexer.catch_up()
    last = ChangeRepository().last_id()
    assert indexer.cursor == last
    path = IndexDirectory(index_root).current_path()
    ix = whoosh_index.open_dir(str(path), indexname=INDEX_NAME)
    with ix.searcher() as searcher:
        assert searcher.document(id=META_ID)["cursor"] == last
    ix.close()
    # A new indexer (another worker, a restart) continues from the stored cursor.
    again = Indexer(db, index_root)
    indexer.stop()
    assert again.step() == 0 and again.cursor == last
    again.stop()


def test_other_patient_events_re_read_the_patient(db, clock, patients, indexer, reader):
    """A PatientLinked-style event: whatever changed, the record is read again."""
    john = patients.create()
    indexer.catch_up()
    repo = PatientRepository()
    with UnitOfWork(db, clock=clock, synchronous_reads=True).begin(ACTOR) as tx:
        row = repo.get_row(john.id)  # a change whose event carries no record
        data = patients.service.parse(
            b'{"source": "st-marys-ehr", "source_id": "A-1001", '
            b'"names": [{"family": "Quimby", "given": ["John"]}]}')
        repo.update(row, data, expected_version=row.version, now=tx.now)
        tx.emit(EventType.PATIENT_LINKED, john.id, version=2, payload={"person_id": "P-9"})
    indexer.catch_up()
    assert ids(reader, "quimby") == [john.id]


def test_person_id_from_the_payload_is_returned(db, clock, patients, indexer, reader):
    john = patients.create()
    indexer.catch_up()
    with UnitOfWork(db, clock=clock, synchronous_reads=True).begin(ACTOR) as tx:
        tx.emit(EventType.PATIENT_UPDATED, john.id, version=1,
                payload={**john.to_dict(), "person_id": "P-42"})
    indexer.catch_up()
    from mpi.search.query import parse

    (hit,) = reader.search(parse("smith"), offset=0, limit=5).hits
    assert hit.person_id == "P-42"


def test_a_record_event_whose_text_holds_no_record_re_reads_the_patient(db, clock, patients,
                                                                         indexer, reader):
    """The indexer reads records' events as JSON text and decodes each where its document
    is written; a payload that turns out to hold no record (no names) re-reads the
    patient, as a decoded one always did."""
    john = patients.create()
    indexer.catch_up()
    repo = PatientRepository()
    with UnitOfWork(db, clock=clock, synchronous_reads=True).begin(ACTOR) as tx:
        row = repo.get_row(john.id)
        data = patients.service.parse(
            b'{"source": "st-marys-ehr", "source_id": "A-1001", '
            b'"names": [{"family": "Quenby", "given": ["John"]}]}')
        repo.update(row, data, expected_version=row.version, now=tx.now)
        tx.emit(EventType.PATIENT_UPDATED, john.id, version=2, payload={"id": john.id})
    (event,) = ChangeRepository().read(after=indexer.cursor or 0, limit=5,
                                       undecoded=RECORD_EVENTS)
    (change,) = changes_for([event]).values()
    assert change.action == "upsert" and change.document_record() is None
    indexer.catch_up()
    assert ids(reader, "quenby") == [john.id] and ids(reader, "smith") == []


def test_a_record_s_text_is_decoded_with_its_person_from_a_later_link():
    record = {"id": "p1", "names": [{"family": "Smith"}], "person_id": "P-old", "version": 3}
    text = json.dumps(record)
    net = changes_for([_event(1, "PatientCreated", payload=text),
                       _event(2, "PatientLinked", payload={"person_id": "P-new"})])
    assert net["p1"].record == text  # still the text: decoded where the document is written
    assert net["p1"].document_record() == {**record, "person_id": "P-new"}
    assert changes_for([_event(1, "PatientUpdated", payload=text)])["p1"].document_record() \
        == record
    # Text that is no JSON object is no record: re-read, as a decoded payload would be.
    assert changes_for([_event(1, "PatientUpdated", payload="null")])["p1"].action == "refetch"


def test_share_sizes_keep_both_processes_busy_to_the_end():
    sizes = ShareSizes()
    assert sizes.child_count(1000, 900) == 500  # nothing measured: half the step's changes
    assert sizes.child_count(1000, 300) == 300  # at most its new records
    sizes.learn(500, 1.0, 500, 0.5)  # the child wrote twice as fast
    assert sizes.child_count(900, 900) == 600
    sizes.learn(500, 1.0, 500, 100.0)  # a child hardly working: never less than a quarter
    assert sizes.child_count(1000, 1000) == 250
    sizes.learn(0, 1.0, 500, 1.0)  # nothing to learn from
    assert sizes.child_count(1000, 1000) == 250


def test_every_event_type_has_a_handler():
    assert set(HANDLERS) == set(EventType)


def test_an_unknown_event_type_is_an_error_when_strict_and_logged_otherwise(caplog):
    event = _event(1, "PatientRenamed")  # say, written by a newer release
    with pytest.raises(UnknownEventType, match="PatientRenamed"):
        changes_for([event], strict=True)
    with caplog.at_level("ERROR", logger="mpi.search"):
        net = changes_for([event])
    assert {k: v.action for k, v in net.items()} == {"p1": "refetch"}
    assert "PatientRenamed" in caplog.text


def test_net_change_per_patient_keeps_the_last():
    from datetime import datetime

    from mpi.domain.events import ChangeEvent

    def event(n, kind, entity="p1", payload=None):
        return ChangeEvent(n, datetime(2026, 1, 1), kind, "patient", entity, n, "x", None,
                           payload)

    net = changes_for([event(1, "PatientCreated", payload={"id": "p1", "names": []}),
                       event(2, "PatientDeleted"), event(3, "PatientLinked", entity="p2")])
    assert {k: v.action for k, v in net.items()} == {"p1": "delete", "p2": "refetch"}
    merged = ChangeEvent(4, datetime(2026, 1, 1), "PersonsMerged", "person", "P1", None, "x",
                         None, {"moved_patient_ids": ["p3", "p4"]})
    review = ChangeEvent(5, datetime(2026, 1, 1), "ReviewOpened", "review", "R1", None, "x",
                         None, {"patient_id": "p5"})
    assert {k: v.action for k, v in changes_for([merged, review]).items()} == {
        "p3": "refetch", "p4": "refetch"}  # events about other entities change nothing


@pytest.mark.parametrize("damage", ["missing", "corrupt", "old-schema", "all-deleted"])
def test_damaged_index_is_rebuilt(db, patients, indexer, reader, index_root, damage):
    john = patients.create()
    indexer.catch_up()
    directory = IndexDirectory(index_root)
    path = directory.current_path()
    assert path is not None
    if damage == "missing":
        (index_root / "CURRENT").unlink()
    elif damage == "corrupt":
        for toc in path.glob("*.toc"):
            toc.write_bytes(b"garbage")
    elif damage == "old-schema":
        ix = whoosh_index.open_dir(str(path), indexname=INDEX_NAME)
        with ix.writer() as w:
            w.update_document(id=META_ID, kind="meta", cursor=0, schema_version=0)
        ix.close()
    else:
        import shutil

        shutil.rmtree(index_root)
    expected = {"missing": IndexState.MISSING, "corrupt": IndexState.CORRUPT,
                "old-schema": IndexState.OLD_SCHEMA, "all-deleted": IndexState.MISSING}
    assert directory.check().state is expected[damage]
    with pytest.raises(SearchUnavailable):
        ids(reader, "smith")
    indexer.stop()
    restarted = Indexer(db, index_root)  # what a worker finds at start-up
    restarted.catch_up()
    restarted.stop()
    assert directory.check().state is IndexState.OK
    assert ids(reader, "smith") == [john.id]


def test_one_writer_per_directory(db, patients, index_root):
    first, second = Indexer(db, index_root), Indexer(db, index_root)
    try:
        patients.create()
        assert first.step() > 0
        assert second.step() == 0 and not second.lock.held()
        first.stop()  # the writer goes away (a worker exits): another one takes over
        patients.create(source_id="B-3", identifiers=[])
        second.catch_up()
        assert second.lock.held() and second.cursor == ChangeRepository().last_id()
    finally:
        first.stop()
        second.stop()


def test_writer_notices_its_directory_was_deleted(db, patients, indexer, index_root):
    import shutil

    patients.create()
    indexer.catch_up()
    shutil.rmtree(index_root)
    assert not indexer.lock.held()
    other = Indexer(db, index_root)
    try:
        other.catch_up()  # a worker that finds the directory gone takes the new lock
        assert other.lock.held()
        assert indexer.step() == 0  # and the old writer stands down
    finally:
        other.stop()


def test_whoosh_temporary_files_stay_in_the_index_directory(db, patients, indexer, reader,
                                                          monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a temporary file outside SEARCH_INDEX_PATH")

    for name in ("mkstemp", "mkdtemp", "gettempdir", "NamedTemporaryFile", "TemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)
    john = patients.create()
    indexer.catch_up()  # a rebuild
    patients.update(john, gender="female")
    indexer.catch_up()  # an incremental commit
    assert ids(reader, "gender:female") == [john.id]


def test_rebuild_beside_keeps_readers_answering(db, patients, indexer, reader, index_root):
    john = patients.create()
    indexer.catch_up()
    before = IndexDirectory(index_root).current_name()
    seen: list[list[str]] = []
    stop = threading.Event()

    def keep_searching():
        while not stop.is_set():
            seen.append(ids(reader, "smith"))

    searcher = threading.Thread(target=keep_searching)
    searcher.start()
    try:
        ada = patients.create(source_id="B-4", names=[{"family": "Smith", "given": ["Ada"]}],
                              identifiers=[])
        build_generation(db, IndexDirectory(index_root))
    finally:
        stop.set()
        searcher.join()
    assert IndexDirectory(index_root).current_name() != before
    assert seen and all(john.id in found for found in seen)  # never an error, never empty
    assert sorted(ids(reader, "smith")) == sorted([john.id, ada.id])
    # The writer moves to the new generation and follows the log from its cursor.
    patients.delete(ada)
    indexer.catch_up()
    assert ids(reader, "smith") == [john.id]


def test_a_build_and_a_backlog_leave_each_page_out_of_later_collections(db, patients, index_root,
                                                           monkeypatch):
    """An index build holds the new segment's postings (millions at a million records):
    after each page its heap is settled (collected, then frozen) so that Python's full
    collections do not walk it again and again, and given back to the collector when
    the build is done; so is a step of a backlog."""
    import gc

    from mpi import heap
    from mpi.search import indexer as indexer_module

    for n in range(5):
        patients.create(source_id=f"G-{n}", identifiers=[],
                        names=[{"family": f"Gc{n}", "given": ["Ann"]}])
    settled = []
    real = heap.settle

    def settle():
        real()
        settled.append(gc.get_freeze_count())

    monkeypatch.setattr(indexer_module, "REBUILD_PAGE", 2)
    monkeypatch.setattr(indexer_module.heap, "settle", settle)
    _, count, _ = build_generation(db, IndexDirectory(index_root))
    assert count == 5 and len(settled) == 3 and min(settled) > 0
    assert gc.get_freeze_count() == 0

    # A step of a backlog (an instance catching up) the same, a page at a time.
    indexer = Indexer(db, index_root, poll_interval=0.05, strict=True)
    try:
        for n in range(5):
            patients.create(source_id=f"H-{n}", identifiers=[],
                            names=[{"family": f"Gc{n}", "given": ["Bo"]}])
        settled.clear()
        indexer.catch_up()
        assert len(settled) == 2 and min(settled) > 0
        assert gc.get_freeze_count() == 0
    finally:
        indexer.stop()


def _event(n, kind, entity="p1", payload=None):
    from datetime import datetime

    from mpi.domain.events import ChangeEvent

    return ChangeEvent(n, datetime(2026, 1, 1), kind, "patient", entity, n, "x", None, payload)


def test_a_link_after_the_record_in_one_step_amends_it():
    record = {"id": "p1", "names": [{"family": "Smith"}], "person_id": "P-old", "version": 1}
    net = changes_for([_event(1, "PatientCreated", payload=record),
                       _event(2, "PatientLinked", payload={"patient_id": "p1",
                                                           "person_id": "P-new"})])
    assert net["p1"].action == "upsert"
    assert net["p1"].document_record() == {**record, "person_id": "P-new"}
    assert record["person_id"] == "P-old"  # the event's payload is not changed


@pytest.mark.parametrize("events, action", [
    # A link alone: the rest of the record is not in the step.
    ([("PatientLinked", {"person_id": "P-1"})], "refetch"),
    ([("PatientUnlinked", {"person_id": "P-1"})], "refetch"),
    # A link that names no person says nothing the index can use.
    ([("PatientUpdated", {"id": "p1", "names": []}), ("PatientLinked", {})], "refetch"),
    # A deletion after the link wins; a link after a deletion re-reads (and finds nothing).
    ([("PatientUpdated", {"id": "p1", "names": []}), ("PatientLinked", {"person_id": "P"}),
      ("PatientDeleted", None)], "delete"),
    ([("PatientDeleted", None), ("PatientLinked", {"person_id": "P"})], "refetch"),
])
def test_net_change_never_leaves_a_bare_link(events, action):
    net = changes_for([_event(n, kind, payload=payload)
                       for n, (kind, payload) in enumerate(events, 1)])
    assert net["p1"].action == action


def test_records_created_through_the_service_are_not_re_read(db, patients, indexer, reader,
                                                             monkeypatch):
    """Created and linked in one transaction: one document from the payload, with the
    person the link chose; no look-up in the database."""
    import mpi.search.indexer as indexer_module

    indexer.catch_up()  # the first (empty) generation
    asked: list[list[str]] = []
    real = indexer_module.live_records

    def spy(db, ids):
        asked.append(list(ids))
        return real(db, ids)

    monkeypatch.setattr(indexer_module, "live_records", spy)
    john = patients.create()
    ada = patients.create(source_id="B-9", names=[{"family": "Lovelace", "given": ["Ada"]}],
                          identifiers=[])
    indexer.catch_up()
    assert all(not ids for ids in asked)
    from mpi.search.query import parse

    hits = {h.id: h.person_id for h in reader.search(parse("smith OR lovelace"), offset=0,
                                                     limit=10).hits}
    assert hits == {john.id: john.person_id, ada.id: ada.person_id}
    assert john.person_id and ada.person_id


def test_re_reads_of_a_step_cost_the_same_few_queries_for_any_number(db, patients):
    from playhouse.test_utils import count_queries

    from mpi.search.indexer import live_records

    made = [patients.create(source_id=f"Q-{n}", identifiers=[],
                            names=[{"family": f"Querycount{chr(97 + n)}", "given": ["Al"]}])
            for n in range(6)]
    patients.delete(made[-1])
    with count_queries() as one:
        first = live_records(db, [made[0].id])[made[0].id]
    assert first is not None and first["id"] == made[0].id
    with count_queries() as six:
        found = live_records(db, [p.id for p in made] + ["not-a-uuid"])
    assert six.count == one.count
    assert found[made[-1].id] is None and found["not-a-uuid"] is None
    assert [(found[p.id] or {}).get("id") for p in made[:-1]] == [p.id for p in made[:-1]]


def test_small_commits_do_not_pile_up_segments(db, patients, indexer, index_root):
    from mpi.search.indexer import MERGE_FACTOR

    indexer.catch_up()
    for n in range(MERGE_FACTOR * 2):
        patients.create(source_id=f"M-{n}", identifiers=[],
                        names=[{"family": f"Segment{chr(97 + n % 26)}", "given": ["Al"]}])
        indexer.catch_up()  # one commit each
    path = IndexDirectory(index_root).current_path()
    ix = whoosh_index.open_dir(str(path), indexname=INDEX_NAME)
    try:
        assert len(ix._segments()) <= MERGE_FACTOR
    finally:
        ix.close()


def test_compaction_when_idle_merges_segments_and_keeps_every_answer(db, patients, indexer,
                                                                    reader, index_root,
                                                                    monkeypatch):
    import mpi.search.indexer as indexer_module

    monkeypatch.setattr(indexer_module, "STEP_MERGE_DOCS", 0)  # no merge on the hot path
    indexer.catch_up()
    made = []
    for n in range(indexer_module.COMPACT_AT_SEGMENTS + 2):
        made.append(patients.create(source_id=f"C-{n}", identifiers=[],
                                    names=[{"family": "Compactson", "given": [f"K{n}"]}]))
        indexer.catch_up()
    patients.delete(made[0])
    indexer.catch_up()

    def segments() -> int:
        ix = whoosh_index.open_dir(str(IndexDirectory(index_root).current_path()),
                                   indexname=INDEX_NAME)
        try:
            return len(ix._segments())
        finally:
            ix.close()

    before = segments()
    assert before >= indexer_module.COMPACT_AT_SEGMENTS
    assert indexer.compact(wait=True) is True
    while True:  # what the indexer does while the log is quiet
        assert segments() < before
        before = segments()
        if not indexer.compact(wait=True):
            break
    assert segments() < indexer_module.COMPACT_AT_SEGMENTS
    assert indexer.compact() is False  # nothing left to do: the idle loop sleeps
    assert sorted(ids(reader, "compactson")) == sorted(p.id for p in made[1:])
    assert indexer.cursor == ChangeRepository().last_id()


def test_a_backlog_is_caught_up_before_segments_are_merged(db, patients, index_root,
                                                          monkeypatch):
    """Steps that read a full batch (more events wait) only index and commit; the merge
    waits until the index has caught up, so a backlog is searchable sooner."""
    import mpi.search.indexer as indexer_module
    from mpi.search.indexer import MERGE_FACTOR, Indexer

    merges: list[int] = []
    real = indexer_module._commit_merge

    def counted(index, mergetype):
        merges.append(len(index._segments()))
        real(index, mergetype)

    monkeypatch.setattr(indexer_module, "_commit_merge", counted)
    behind = Indexer(db, index_root, poll_interval=0.05, strict=True, batch_size=2,
                     catch_up_events=2)
    try:
        behind.catch_up()
        for n in range(MERGE_FACTOR * 2 + 2):
            patients.create(source_id=f"B-{n}", identifiers=[],
                            names=[{"family": "Backlogson", "given": [f"B{n}"]}])
        steps = 0
        while behind.step() == behind.batch_size:  # a full batch each step: behind
            steps += 1
        assert steps >= MERGE_FACTOR and merges == []
        behind.catch_up()
        assert merges == []
        behind.batch_size = 100
        patients.create(source_id="B-last", identifiers=[],
                        names=[{"family": "Backlogson", "given": ["Last"]}])
        assert 0 < behind.step() < behind.batch_size and merges  # caught up: merged
    finally:
        behind.stop()


def _a_family(patients, family: str, n: int, start: int = 0) -> list:
    """``n`` records of one family name, given names F<start>, ... (F: its first letter)."""
    return [patients.create(source_id=f"{family}-{i}", identifiers=[],
                            names=[{"family": family, "given": [f"{family[0]}{i}"]}])
            for i in range(start, start + n)]


def test_a_backlog_is_read_in_large_steps(db, patients, index_root):
    """Behind (a step read a full batch), each next step reads catch_up_events: fewer
    segments and commits for a backlog, each record still indexed once; caught up, steps
    are small again."""
    behind = Indexer(db, index_root, poll_interval=0.05, strict=True, batch_size=2,
                     catch_up_events=16)
    try:
        behind.catch_up()
        made = _a_family(patients, "Growson", 20)
        backlog = ChangeRepository().last_id() - (behind.cursor or 0)
        assert backlog >= 40  # a record's creation and its link
        steps = []
        while (done := behind.step()) > 0:
            steps.append(done)
        assert steps[0] == 2 and set(steps[1:-1]) == {16} and 0 < steps[-1] <= 16
        assert sum(steps) == backlog
        patients.create(source_id="G-last", identifiers=[],
                        names=[{"family": "Growson", "given": ["Last"]}])
        assert behind.step() == 2  # caught up: the batch size again
        reader = WhooshSearchIndex(index_root)
        try:
            assert sorted(ids(reader, "growson")) == sorted(
                [p.id for p in made] + ids(reader, "given:last"))
        finally:
            reader.close()
        behind.stop()
        # An index opened (a restart) far behind starts with a backlog's step at once.
        _a_family(patients, "Growson", 10, start=20)
        behind = Indexer(db, index_root, poll_interval=0.05, strict=True, batch_size=2,
                         catch_up_events=16)
        assert behind.step() == 16
    finally:
        behind.stop()


def test_records_created_in_a_step_are_added_without_a_look_up(db, patients, indexer, reader,
                                                               index_root, monkeypatch):
    """A record whose creation is among a step's events has no document yet (the index
    holds what the events up to its cursor made, a rebuild included): it is added without
    looking its id up in every segment. Updated and deleted records are looked up, and a
    rebuild followed by new records leaves one document per live record."""
    from whoosh.searching import Searcher

    patients.create(source_id="L-0", identifiers=[], names=[{"family": "Lookson",
                                                              "given": ["Zero"]}])
    build_generation(db, IndexDirectory(index_root))  # a rebuild holds L-0
    looked: list[str] = []
    real = Searcher.document_number

    def spy(self, **kw):
        if kw.get("id") != META_ID:  # (the cursor's own document)
            looked.append(kw["id"])
        return real(self, **kw)

    monkeypatch.setattr(Searcher, "document_number", spy)
    made = [patients.create(source_id=f"L-{n}", identifiers=[],
                            names=[{"family": "Lookson", "given": [f"N{n}"]}])
            for n in range(1, 4)]
    gone = patients.create(source_id="L-gone", identifiers=[],
                           names=[{"family": "Lookson", "given": ["Gone"]}])
    patients.delete(gone)
    changed = patients.update(made[0], names=[{"family": "Lookson", "given": ["Changed"]}])
    indexer.catch_up()
    assert looked == []  # created in the step: updated or deleted there too
    patients.update(changed, names=[{"family": "Lookson", "given": ["Again"]}])
    patients.delete(made[1])
    indexer.catch_up()
    assert looked == [changed.id]  # (a delete goes by whoosh's delete_by_term)
    found = ids(reader, "lookson")
    assert len(found) == len(set(found)) == 3
    assert set(found) == set(ids(reader, "zero OR again OR n3"))
    assert ids(reader, "given:gone") == [] and ids(reader, "given:changed") == []


def test_a_backlog_s_new_records_are_shared_with_a_child_process(db, clock, patients,
                                                                  index_root, reader,
                                                                  monkeypatch):
    """With SEARCH_REBUILD_PROCESSES > 1, a step holding many new records (a backlog) has
    half of them written into a segment by a forked child, named in the indexer's own
    commit: every record found once. A child that fails fails the step, which changes
    nothing (the cursor stays), and the next step does it all again."""
    import mpi.search.indexer as indexer_module

    monkeypatch.setattr(indexer_module, "CATCH_UP_SHARE_FROM", 4)
    shared = Indexer(db, index_root, poll_interval=0.05, strict=True, batch_size=100,
                     rebuild_processes=2)
    try:
        shared.catch_up()
        made = _a_family(patients, "Shareson", 10)
        real = indexer_module._write_share

        def failing(path, records, messages):
            messages.put(("error", 0, "OSError"))
            messages.close()
            messages.join_thread()
            raise SystemExit(1)

        monkeypatch.setattr(indexer_module, "_write_share", failing)
        before = shared.cursor
        with pytest.raises(indexer_module.IndexBuildFailed, match="OSError"):
            shared.step()
        assert ids(reader, "shareson") == []  # nothing of the step: the index is as it was
        shared.catch_up()  # after a failed child, in this process alone for a while
        assert sorted(ids(reader, "shareson")) == sorted(p.id for p in made)
        # The failed step's own segment (written before the child's was awaited) is gone.
        assert _segment_files(index_root) == _segments_named(index_root)
        made += _a_family(patients, "Shareson", 10, start=10)
        shared._share_failed_at = float("-inf")
        monkeypatch.setattr(indexer_module, "_write_share", real)
        children: list[int] = []
        start = indexer_module.SharedSegment.start

        def counted(self):
            children.append(len(self.ids))
            return start(self)

        monkeypatch.setattr(indexer_module.SharedSegment, "start", counted)
        shared.catch_up()
        assert children == [5] and shared.cursor is not None and shared.cursor > (before or 0)
        found = ids(reader, "shareson")
        assert sorted(found) == sorted(p.id for p in made)
        assert ids(reader, "given:s19") == [made[19].id]  # written by the child
        assert ids(reader, "given:s10") == [made[10].id]  # by the indexer
        patients.update(made[19], names=[{"family": "Shareson", "given": ["Nineteen"]}])
        shared.catch_up()  # the child's documents are looked up and replaced like any other
        assert ids(reader, "given:s19") == [] and ids(reader, "given:nineteen") == [made[19].id]
        assert len(ids(reader, "shareson")) == 20
        # A record event in the child's share whose text holds no record fails the child
        # (it cannot re-read): the step is done again in this process, which re-reads it.
        last = _a_family(patients, "Shareson", 6, start=20)
        with UnitOfWork(db, clock=clock, synchronous_reads=True).begin(ACTOR) as tx:
            for record in last:
                tx.emit(EventType.PATIENT_CREATED, record.id, version=1,
                        payload={"id": record.id})
        with pytest.raises(indexer_module.IndexBuildFailed, match="NotARecord"):
            shared.step()
        shared.catch_up()
        assert sorted(ids(reader, "shareson")) == sorted(p.id for p in [*made, *last])
    finally:
        shared.stop()


def _segment_files(index_root) -> set[str]:
    """The current generation's segment files, by segment name."""
    path = IndexDirectory(index_root).current_path()
    assert path is not None
    return {f.name.split(".")[0] for f in path.glob("*.seg")}


def _segments_named(index_root) -> set[str]:
    """The segments the current generation's table of contents names."""
    path = IndexDirectory(index_root).current_path()
    assert path is not None
    index = IndexDirectory.open_index(path)
    try:
        return {segment.segment_id() for segment in index._segments()}
    finally:
        index.close()


def _stream(commit: int, commits: int, large: tuple[int, ...] = (650_000, 650_000)):
    """Segment sizes after ``commits`` steps of ``commit`` documents each, merged as a
    step merges (:func:`merge_plan`): (the sizes, the most segments seen, every merge's
    size)."""
    from mpi.search.indexer import merge_plan

    sizes, most, merges = list(large), 0, []
    for _ in range(commits):
        sizes.append(commit)
        picked = merge_plan(sizes)
        if picked:
            merges.append(sum(sizes[i] for i in picked))
            sizes = [n for i, n in enumerate(sizes) if i not in picked] + [merges[-1]]
        most = max(most, len(sizes))
    return sizes, most, merges


@pytest.mark.parametrize(("commit", "commits"), [(1, 5_000), (20, 5_000), (200, 1_000),
                                                 (500, 400)])
def test_a_stream_of_commits_keeps_few_segments_and_merges_each_document_rarely(
        commit, commits):
    """Under a steady stream of writes (never idle), a step merges a level's segments once
    it holds MERGE_FACTOR of them: segments stay few (at most MERGE_FACTOR - 1 a level,
    plus those too large for a step to merge), each merge stays within STEP_MERGE_DOCS,
    and a document is merged about once per level it climbs. The policy before merged
    only while the 10 smallest segments held 200 documents in all: commits of 200 (a
    stream of creates at 200 a second) were never merged, a segment a second."""
    from mpi.search.indexer import MERGE_FACTOR, STEP_MERGE_DOCS

    sizes, most, merges = _stream(commit, commits)
    documents = commit * commits
    assert sum(sizes) == documents + 1_300_000
    assert all(m <= STEP_MERGE_DOCS for m in merges)
    top, levels = commit, 0  # the largest segment steps make, and the levels below it
    while top * MERGE_FACTOR <= STEP_MERGE_DOCS:
        top, levels = top * MERGE_FACTOR, levels + 1
    assert most <= 2 + (MERGE_FACTOR - 1) * levels + documents // top + 1
    assert sum(merges) / documents <= levels + 0.5  # merges per document


def test_an_idle_index_compacts_what_steps_could_not_merge():
    from mpi.search.indexer import (
        COMPACT_AT_SEGMENTS,
        COMPACT_MERGE_DOCS,
        MERGE_FACTOR,
        compaction_plan,
    )

    sizes, _, _ = _stream(500, 1_000)  # 500,000 documents: 10 segments of 50,000
    assert len(sizes) >= COMPACT_AT_SEGMENTS
    rounds = 0
    while picked := compaction_plan(sizes):
        merged = sum(sizes[i] for i in picked)
        assert 2 <= len(picked) <= MERGE_FACTOR and merged <= COMPACT_MERGE_DOCS
        assert sorted(sizes)[:len(picked)] == sorted(sizes[i] for i in picked)  # the smallest
        sizes = [n for i, n in enumerate(sizes) if i not in picked] + [merged]
        rounds += 1
    assert rounds and len(sizes) < COMPACT_AT_SEGMENTS
    assert compaction_plan([COMPACT_MERGE_DOCS] * 20) == []  # none small enough: no merge
    assert compaction_plan([1] * (COMPACT_AT_SEGMENTS - 1)) == []


def test_a_quiet_index_merges_its_small_segments_and_rewrites_a_document_a_few_times():
    """What 3,500 creates left beside a rebuild's two halves at 1,000,000 records: six
    small segments that every search paid for, fewer than a level's MERGE_FACTOR and than
    COMPACT_AT_SEGMENTS, so nothing merged them. Quiet, they are merged into one; not
    while changes keep coming; the large ones never. A record written now and then, each
    followed by a quiet spell, does not rewrite the merged one every time: the small ones
    merge among themselves first (each document is rewritten a few times, not hundreds)."""
    from mpi.search.indexer import (
        MERGE_FACTOR,
        SMALL_SEGMENT_SHARE,
        compaction_plan,
        small_segments_plan,
    )

    after_creates = [506_690, 506_690, 1, 13, 1_760, 137, 134, 1_813]
    assert compaction_plan(after_creates) == []  # changes still coming: as before
    assert sorted(compaction_plan(after_creates, quiet=True)) == [2, 3, 4, 5, 6, 7]
    assert small_segments_plan([506_690, 506_690, 3_858]) == []  # one small: nothing to do
    assert small_segments_plan([600_000, 400_000]) == []  # none small
    assert small_segments_plan([1, 1]) == []  # a tiny index: each is half of it
    # A trickle: one record at a time, a quiet spell after each, on a million documents.
    # (Merging every small one at each quiet spell rewrote 4,978 documents per record.)
    sizes = [500_000, 500_000, 5_000]
    rewritten = most = 0
    for _ in range(20_000):
        sizes.append(1)
        picked = small_segments_plan(sizes)
        if picked:
            merged = sum(sizes[i] for i in picked)
            assert all(sizes[i] < SMALL_SEGMENT_SHARE * sum(sizes) for i in picked)
            rewritten += merged
            sizes = [n for i, n in enumerate(sizes) if i not in picked] + [merged]
        most = max(most, len(sizes))
    assert sum(sizes) == 1_025_000
    assert most <= 8  # the two large ones and at most six small ones
    assert rewritten / 20_000 < 3 * MERGE_FACTOR  # documents rewritten per record (26)


def test_workers_lower_their_own_priority(monkeypatch):
    from mpi import server

    calls: list[int] = []
    monkeypatch.setattr("os.nice", calls.append)
    server.lower_priority(0)
    server.lower_priority(10)
    assert calls == [10]


def test_commits_are_paced_while_records_keep_arriving(tmp_path, monkeypatch):
    """The run loop's pauses, recorded rather than slept: after a step that indexed records
    the next waits out the commit interval (fewer, larger commits while writes stream in);
    after an empty step only the poll interval (a write to a quiet registry is indexed at
    the next poll); a backlog of a full batch does not pause at all."""
    running = Indexer(None, tmp_path, poll_interval=0.2, commit_interval=1.0,  # type: ignore[arg-type]
                      batch_size=100)
    monkeypatch.setattr(running.directory, "discard_stale_builds", lambda: None)
    monkeypatch.setattr(running.lock, "held", lambda: True)
    monkeypatch.setattr(running, "compact", lambda: False)
    monkeypatch.setattr(running, "verify_and_repair", lambda: False)
    script = iter([100, 7, 3, 0, 0, 5])
    steps: list[int] = []
    waits: list[float] = []

    def step() -> int:
        steps.append(next(script, -1))
        if steps[-1] < 0:
            running.request_stop()
            return 0
        return steps[-1]

    class Recorded(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(round(timeout or 0.0, 1))
            return self.is_set()

    running._stop = Recorded()
    monkeypatch.setattr(running, "step", step)
    running.run()
    assert steps == [100, 7, 3, 0, 0, 5, -1]
    # 100 (a full batch): none; 7 and 3: the commit interval (less the step's own time);
    # 0 and 0: the poll interval; 5: the commit interval; the last, empty: the poll.
    assert waits == [1.0, 1.0, 0.2, 0.2, 1.0, 0.2]
    quiet = Indexer(None, tmp_path, poll_interval=0.2)  # type: ignore[arg-type]
    assert quiet.commit_interval == 0.2  # tests' and tools' indexers: as before


def test_a_stop_does_not_release_the_lock_under_a_step_still_running(tmp_path, monkeypatch):
    """``stop`` gives up waiting after its timeout while the thread is still in a step (a
    rebuild, a merge): the lock stays with the thread, which still writes, and the thread
    releases it when the step is over; no other writer gets in meanwhile."""
    from mpi.search.indexer import Indexer
    from mpi.search.store import WriterLock

    busy = Indexer(None, tmp_path, poll_interval=0.01)  # type: ignore[arg-type]
    in_step, go_on = threading.Event(), threading.Event()

    def step() -> int:
        assert busy.lock.acquire()
        in_step.set()
        go_on.wait(10)
        return 0

    monkeypatch.setattr(busy, "step", step)
    monkeypatch.setattr(busy, "compact", lambda: False)
    monkeypatch.setattr(busy, "verify_and_repair", lambda: False)
    monkeypatch.setattr(busy.directory, "discard_stale_builds", lambda: None)
    busy.start()
    assert in_step.wait(5)
    busy.stop(timeout=0.1)
    other = WriterLock(tmp_path)
    assert busy.lock.held() and not other.acquire()  # still the busy thread's
    go_on.set()
    thread = busy._thread
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive()
    assert not busy.lock.held() and other.acquire()  # released when its step ended
    other.release()
