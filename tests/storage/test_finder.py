"""The database search behind FHIR/PDQm: its prefix searches use the name index."""

from __future__ import annotations

import uuid
from datetime import date, datetime

import pytest

from mpi.domain.criteria import Criteria, Term
from mpi.domain.patient import PatientInput
from mpi.storage.finder import PatientFinder
from mpi.storage.patients import PatientRepository
from tests.helpers import patient

NOW = datetime(2026, 1, 1, 12, 0)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_family_prefix_search_uses_the_family_name_index(db):
    """On PostgreSQL a b-tree serves LIKE 'prefix%' only under the "C" collation, which
    migration 0006 gives the folded name columns; the plan must use the index (with
    sequential scans discouraged, as on a large table) rather than read every name."""
    repo = PatientRepository()
    for i in range(50):
        data = PatientInput.model_validate_json(__import__("json").dumps(patient(
            source_id=f"F{i}", names=[{"family": f"Fam{i:03d}", "given": ["A"]}],
            identifiers=[])))
        repo.insert(data, patient_id=uuid.uuid4(), now=NOW)
    db.execute_sql("ANALYZE")
    finder = PatientFinder(repo)
    query = finder._query(Criteria((Term("family", ("fam01",)),)), date(2026, 1, 1))
    sql, params = query.sql()
    db.execute_sql("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in db.execute_sql(f"EXPLAIN {sql}", params).fetchall())
    assert "patient_name_family_norm" in plan, plan
    found = finder.find(Criteria((Term("family", ("fam01",)),)), offset=0, count=50,
                        total=True, today=date(2026, 1, 1))
    assert found.total == 10 and len(found.items) == 10
