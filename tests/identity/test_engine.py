"""The production engine behind the identity seam: settings reach the decision rule."""

from __future__ import annotations

from mpi.config import load
from mpi.identity.engine import Candidate
from mpi.wiring import matching_engine as engine_for


def record(record_id: str, given: str, ssn: str) -> dict[str, object]:
    return {"record_id": record_id, "source": "ehr", "given_name": given,
            "family_name": "Okafor", "birth_date": "1990-02-03", "sex": "f",
            "address_line": "12 Harbour Road", "city": "Leeds", "postal_code": "LS1 4AB",
            "phone": "0113 496 0001", "ssn": ssn}


def test_twin_guard_setting_decides_whether_twin_like_pairs_link():
    # Same family name, birth date, address and phone; another given name and SSN.
    first = Candidate("r1", "p1", record("r1", "Chidinma", "111-22-3333"))
    second = record("r2", "Amara", "444-55-6666")
    guarded = engine_for(load({}))
    assert guarded.twin_guard is True
    decision = guarded.decide(second, [first])
    assert decision.kind == "review" and decision.person_id == "p1"
    assert decision.probability >= guarded.link_threshold  # the score alone would link

    unguarded = engine_for(load({"MATCHING_TWIN_GUARD": "false"}))
    linked = unguarded.decide(second, [first])
    assert linked.kind == "link" and linked.person_id == "p1"


def test_a_shared_ssn_is_not_the_twin_pattern():
    first = Candidate("r1", "p1", record("r1", "Chidinma", "111-22-3333"))
    decision = engine_for(load({})).decide(record("r2", "Amara", "111-22-3333"), [first])
    assert decision.kind == "link"
