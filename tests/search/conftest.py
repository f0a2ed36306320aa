"""Fixtures for the search tests: a patient service, an indexer and a reader on one directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peewee
import pytest

from mpi.config import Settings
from mpi.domain.audit import Actor
from mpi.domain.patient import Patient
from mpi.search.index import WhooshSearchIndex
from mpi.search.indexer import Indexer
from mpi.search.query import Options, parse
from mpi.wiring import build
from tests.conftest import Clock, Ids
from tests.helpers import patient

ACTOR = Actor("search-test")


class Patients:
    """Create/update/delete records through the real service (so the change log is real)."""

    def __init__(self, settings: Settings, db: peewee.Database, clock: Clock):
        self.service = build(settings, db=db, clock=clock, new_id=Ids()).patients

    def create(self, **changes: Any) -> Patient:
        body = patient(**changes)
        return self.service.create(self.service.parse(json.dumps(body).encode()), ACTOR)

    def update(self, record: Patient, **changes: Any) -> Patient:
        body = {**record.to_dict(), **changes}
        for key in ("id", "version", "created_at", "updated_at"):
            body.pop(key, None)
        return self.service.update(record.id, self.service.parse(json.dumps(body).encode()),
                                   ACTOR, expected_version=record.version)

    def delete(self, record: Patient) -> None:
        self.service.delete(record.id, ACTOR, expected_version=None)


@pytest.fixture
def patients(settings: Settings, db: peewee.Database, clock: Clock) -> Patients:
    return Patients(settings, db, clock)


@pytest.fixture
def index_root(tmp_path: Path) -> Path:
    return tmp_path / "search-index"


@pytest.fixture
def indexer(db: peewee.Database, index_root: Path) -> Iterator[Indexer]:
    ix = Indexer(db, index_root, poll_interval=0.05, strict=True)
    yield ix
    ix.stop()


@pytest.fixture
def reader(index_root: Path) -> Iterator[WhooshSearchIndex]:
    r = WhooshSearchIndex(index_root)
    yield r
    r.close()


def ids(reader: WhooshSearchIndex, text: str, **options: Any) -> list[str]:
    return [h.id for h in reader.search(parse(text, Options(**options)), offset=0,
                                        limit=100).hits]


def all_postings(ix: Any) -> tuple[list[tuple[Any, ...]], list[tuple[int, list[Any]]]]:
    """Every term's postings (field, term, document, weight, value) and every document's
    stored fields, of a whoosh index: to compare two indexes whole."""
    with ix.reader() as reader:
        postings = []
        for field, term in reader.all_terms():
            matcher = reader.postings(field, term)
            while matcher.is_active():
                postings.append((field, term, matcher.id(), matcher.weight(), matcher.value()))
                matcher.next()
        stored = [(docnum, sorted(fields.items())) for docnum, fields in reader.iter_docs()]
    return postings, stored
