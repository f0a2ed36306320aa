"""Patient repository: batch loading and uniqueness among live records (both backends)."""

from __future__ import annotations

import uuid
from datetime import datetime

import peewee
import pytest
from playhouse.test_utils import count_queries

from mpi.domain.patient import PatientInput
from mpi.storage.models import PatientIdentifierRow, PatientRow
from mpi.storage.patients import PatientFilter, PatientRepository, normalize_name
from tests.helpers import MRN, patient

NOW = datetime(2026, 1, 1, 12, 0)


def _input(**changes) -> PatientInput:
    return PatientInput.model_validate_json(__import__("json").dumps(patient(**changes)))


def test_listing_a_page_costs_the_same_queries_whatever_its_size(db):
    repo = PatientRepository()
    for i in range(30):
        repo.insert(_input(source_id=f"S{i}",
                           identifiers=[{"system": MRN, "value": f"M{i}"}]),
                    patient_id=uuid.uuid4(), now=NOW)
    with count_queries() as small:
        repo.list_page(PatientFilter(), after=None, limit=2)
    with count_queries() as large:
        page = repo.list_page(PatientFilter(), after=None, limit=25)
    assert len(page.items) == 25
    assert small.count == large.count == 6  # the page, one query per child table, persons


def test_live_source_record_unique_index_is_enforced_by_the_database(db):
    repo = PatientRepository()
    repo.insert(_input(), patient_id=uuid.uuid4(), now=NOW)
    with pytest.raises(peewee.IntegrityError), db.atomic():
        PatientRow.insert(id=uuid.uuid4(), source="st-marys-ehr", source_id="A-1001",
                          created_at=NOW, updated_at=NOW).execute()


def test_two_live_records_may_carry_one_identifier(db):
    repo = PatientRepository()
    first = repo.insert(_input(), patient_id=uuid.uuid4(), now=NOW)
    second = repo.insert(_input(source_id="A-2002"), patient_id=uuid.uuid4(), now=NOW)
    assert second.identifiers == first.identifiers
    assert PatientIdentifierRow.select().count() == 2


def test_deleted_record_frees_its_source_id(db):
    repo = PatientRepository()
    first = repo.insert(_input(), patient_id=uuid.uuid4(), now=NOW)
    repo.soft_delete(repo.get_row(first.id), expected_version=None, now=NOW)
    second = repo.insert(_input(), patient_id=uuid.uuid4(), now=NOW)
    assert second.identifiers == first.identifiers
    assert repo.find_live_id_by_source("st-marys-ehr", "A-1001") == second.id


@pytest.mark.parametrize(("raw", "norm"), [("Müller", "muller"), ("  SMITH ", "smith"),
                                           ("Ðiṅh", "ðinh"), (None, None)])
def test_normalize_name(raw, norm):
    assert normalize_name(raw) == norm
