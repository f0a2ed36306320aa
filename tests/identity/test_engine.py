"""The production engine behind the identity seam: settings reach the decision rule."""

from __future__ import annotations

import pytest

from mpi.config import load
from mpi.identity.engine import Candidate
from mpi.matching.model import Model, ModelError
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


def test_a_retrained_model_file_is_used_from_the_next_decision(tmp_path):
    """``mpi train`` writes the file anew (one rename): the engine reads it again only
    when it changed, each decision reports the version that made it, and a file that
    does not load leaves the model in use as it was."""
    path = tmp_path / "model.json"
    first = Model.default().evolve(name="first")
    first.save(path)
    engine = engine_for(load({"MATCHING_MODEL_PATH": str(path)}))
    assert engine.model_file == path and engine.model_version == first.version
    candidate = Candidate("r1", "p1", record("r1", "Chidinma", "111-22-3333"))
    assert engine.decide(record("r2", "Chidinma", "111-22-3333"),
                         [candidate]).model_version == first.version
    assert engine.reload_model() is None  # unchanged
    second = first.evolve(name="second", prior=first.prior * 2)
    second.save(path)
    assert engine.reload_model() == second.version
    assert engine.model_version == second.version
    decision = engine.decide(record("r2", "Chidinma", "111-22-3333"), [candidate])
    assert decision.model_version == second.version
    assert engine.reload_model() is None
    path.write_text('{"format": 1, "truncated')
    with pytest.raises(ModelError):
        engine.reload_model()
    assert engine.model_version == second.version
    shipped = engine_for(load({}))
    assert shipped.model_file is None and shipped.reload_model() is None


def test_prepared_records_are_cached_least_recently_used_first_out_and_by_their_text():
    """The engine keeps prepared forms of the records it scored, up to ``cache_size``:
    a record met again is not prepared again (its stored JSON text compared), one whose
    text changed (an update) is, and the least recently used goes first when full."""
    import json

    engine = engine_for(load({}))
    engine.cache_size = 3
    texts = {f"r{i}": json.dumps(record(f"r{i}", "Amara", f"111-22-{3330 + i}"))
             for i in range(5)}
    made = {rid: engine._prepare(rid, text) for rid, text in list(texts.items())[:3]}
    assert engine._prepare("r0", texts["r0"]) is made["r0"]  # r0 used again: now newest
    engine._prepare("r3", texts["r3"])  # full: r1, the least recently used, goes
    assert list(engine._prepared) == ["r2", "r0", "r3"]
    assert engine._prepare("r2", texts["r2"]) is made["r2"]
    changed = json.dumps(record("r2", "Amarachi", "111-22-3332"))
    again = engine._prepare("r2", changed)
    assert again is not made["r2"] and again.given == "amarachi"
    assert len(engine._prepared) == 3


def test_a_record_met_first_arriving_is_not_prepared_again_as_a_candidate():
    """An arriving record is prepared from its matching form (a dict); met later as a
    candidate, its stored JSON text of that same form reuses it, and a text that says
    something else (the record changed since) is prepared afresh."""
    import json

    engine = engine_for(load({}))
    arriving = record("r1", "Amara", "111-22-3331")
    first = engine._prepare("r1", arriving)
    assert engine._prepare("r1", json.dumps(arriving)) is first
    assert engine._prepared["r1"][0] == json.dumps(arriving)  # kept by its text from now on
    engine._prepare("r2", record("r2", "Amara", "111-22-3332"))
    changed = engine._prepare("r2", json.dumps(record("r2", "Amarachi", "111-22-3332")))
    assert changed.given == "amarachi"
