"""``MatchService``: scoring a record against the registry without storing it (both
backends)."""

from __future__ import annotations

import json

import pytest

from mpi.domain.audit import Actor, AuditTag
from mpi.identity.linking import Linking
from mpi.storage.models import AuditEventRow, PatientRow
from tests.helpers import patient

CLERK = Actor("clerk-1", ip="10.0.0.9", request_id="req-9")


def test_a_match_scores_outside_any_transaction_and_its_audit_row_is_committed(
        services, db, monkeypatch):
    """A match is a read: its look-ups hold no transaction (on SQLite a unit of work held
    the write lock while it scored, queueing every writer behind the match) and its audit
    row is written with the process's other reads' (AUDIT_READ_WINDOW) or sooner."""
    stored = services.patients.create(services.patients.parse(json.dumps(patient())),
                                      Actor("desk"))
    during: list[bool] = []
    decide = Linking.decide

    def watched(self, *args, **kwargs):
        during.append(db.in_transaction())
        return decide(self, *args, **kwargs)

    monkeypatch.setattr(Linking, "decide", watched)
    probe = services.matching.parse(json.dumps(patient(source="desk", source_id="probe")))
    result = services.matching.match(probe, CLERK)

    assert result.decision == "link" and result.person_id == stored.person_id
    assert during == [False] and not db.in_transaction()
    services.work.flush_reads()
    (row,) = AuditEventRow.select().where(AuditEventRow.action == AuditTag.MATCH_QUERY.value)
    assert (row.actor, row.ip, row.request_id) == ("clerk-1", "10.0.0.9", "req-9")
    assert row.new_value == {"returned": [stored.person_id]}
    assert PatientRow.select().count() == 1  # nothing stored


def test_a_match_that_fails_records_nothing(services, db, monkeypatch):
    def broken(self, *args, **kwargs):
        raise LookupError("boom")

    monkeypatch.setattr(Linking, "decide", broken)
    probe = services.matching.parse(json.dumps(patient()))
    with pytest.raises(LookupError):
        services.matching.match(probe, CLERK)
    assert AuditEventRow.select().count() == 0 and not db.in_transaction()


def test_a_dated_record_finds_an_undated_one_by_family_name_and_initial(services):
    """A payroll record (no birth date) and a registration (a birth date; the given name
    mistyped, so its sound differs) share only the family name and initial: the
    registration looks it up among the records without a birth date (``u:``), and a
    dated record with the same name and initial is no candidate by that key."""
    def stored(source_id: str, given: str, **fields: object) -> str:
        body = patient(source="payroll", source_id=source_id,
                       names=[{"family": "Mokoena", "given": [given]}], identifiers=None,
                       telecom=None, **fields)
        return services.patients.create(services.patients.parse(json.dumps(body)),
                                        Actor("feed")).person_id or ""

    undated = stored("p1", "Thandiwe", birth_date=None,
                     addresses=[{"line": ["4 Quarry Lane"], "city": "Springfield"}])
    dated = stored("p2", "Themba", birth_date="1990-02-03", addresses=None)
    probe = patient(source="desk", source_id="d1", identifiers=None, telecom=None,
                    addresses=None, names=[{"family": "Mokoena", "given": ["Thnadiwe"]}],
                    birth_date="1971-03-09")
    found = services.matching.match(services.patients.parse(json.dumps(probe)), CLERK)
    persons = {c.person_id for c in found.candidates}
    assert undated in persons
    assert dated not in persons
