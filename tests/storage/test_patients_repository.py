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
    assert small.count == large.count == 5  # the page + one query per child table


def test_live_identifier_unique_index_is_enforced_by_the_database(db):
    repo = PatientRepository()
    repo.insert(_input(), patient_id=uuid.uuid4(), now=NOW)
    row = PatientRow.get()
    with pytest.raises(peewee.IntegrityError), db.atomic():
        taken = row.identifier_rows[0]
        PatientIdentifierRow.create(patient=row.pk, position=9, system=taken.system,
                                    value=taken.value)


def test_deleted_record_frees_its_identifiers(db):
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
