"""Registry frequencies (MATCHING_FREQUENCIES_REFRESH), on both backends: in a one-town
registry, sharing the town's city, state and postal code is no evidence, so a namesake on
another street is no longer linked to the desk's John Smith; a value that is rare in the
registry does not weigh more than the model says."""

from __future__ import annotations

import dataclasses
import logging
import random
import string
import threading
from typing import Any

import pytest

from mpi.domain.audit import Actor
from mpi.domain.patient import PatientInput
from mpi.wiring import Services, build
from tests.conftest import Ids
from tests.identity.test_fragments import _input

FEED = Actor("feed")
TOWN = {"city": "Springfield", "state": "IL", "postal_code": "62701", "country": "US"}


def _townsfolk(n: int, seed: int = 3) -> list[PatientInput]:
    """``n`` different people, every one of them in one town (no SSN, no phone)."""
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choices(string.ascii_lowercase, k=8)).title()

    return [_input(
        source="town-ehr", source_id=f"T{i}", identifiers=None, telecom=None,
        names=[{"family": word(), "given": [word()]}],
        birth_date=f"19{rng.randrange(30, 99)}-0{rng.randrange(1, 9)}-1{rng.randrange(9)}",
        addresses=[{"line": [f"{i} {word()} Rd"], **TOWN}])
        for i in range(n)]


def _namesake() -> PatientInput:
    """Another John Smith of the town: payroll's record, another street, no birth date."""
    return _input(
        source="payroll", source_id="P-7", identifiers=None, telecom=None, birth_date=None,
        gender=None, names=[{"family": "Smith", "given": ["John"]}],
        addresses=[{"line": ["5 Mill Rd"], **TOWN}])


@pytest.fixture
def town(services: Services) -> Services:
    services.patients.import_batch(_townsfolk(1200), FEED)
    services.patients.create(_input(identifiers=None, telecom=None), FEED)
    return services


def _postal_weight(result: Any) -> float:
    (best,) = result.candidates[:1]
    return next(c.weight for c in best.explanation.comparisons
                if c.comparison == "postal_code")


def test_sharing_the_one_town_is_no_evidence_once_counted(town):
    before = town.matching.match(_namesake(), FEED)
    assert before.decision == "link"  # the shipped model assumes a diverse registry
    assert _postal_weight(before) > 8
    assert town.upkeep.refresh() == 1201
    after = town.matching.match(_namesake(), FEED)
    assert after.decision == "new"
    assert after.candidates[0].probability < 0.5
    assert _postal_weight(after) == pytest.approx(0.0, abs=0.3)
    # John Smith's names are rare here: they weigh what the model says, no more.
    names = {c.comparison: c.weight for c in after.candidates[0].explanation.comparisons}
    shipped = {c.comparison: c.weight for c in before.candidates[0].explanation.comparisons}
    assert names["family_name"] == shipped["family_name"]
    assert names["given_name"] == shipped["given_name"]


def test_counts_are_of_live_records_as_stored(services):
    for i, city in enumerate(["Springfield", "SPRINGFIELD", "springfield", "Shelbyville"]):
        services.patients.create(_input(
            source_id=f"S{i}", identifiers=None,
            addresses=[{"line": ["1 Elm St"], "city": city, "postal_code": "62701"}]), FEED)
    gone = services.patients.create(_input(source_id="S9", identifiers=None), FEED)
    services.patients.delete(gone.id, FEED, expected_version=None)
    engine = services.engine
    seen: dict[str, Any] = {}
    engine.use_frequencies = lambda total, counts: seen.update(total=total, counts=counts)
    assert services.upkeep.refresh() == 4
    assert seen["total"] == 4
    assert seen["counts"]["city"] == {"Springfield": 1, "SPRINGFIELD": 1, "springfield": 1,
                                      "Shelbyville": 1}
    assert seen["counts"]["postal_code"] == {"62701": 4}
    assert seen["counts"]["family_name"] == {"Smith": 4}


def test_the_processes_of_an_instance_count_once_and_share_the_counts(services, tmp_path,
                                                                      caplog):
    """Under ``mpi serve`` the processes share a private directory: the first whose turn
    comes counts and leaves the counts there; the others read them (no query) until they
    are half an interval old, then the next one counts again. A file that does not read
    is counted again. The file is the service user's alone."""
    import json
    import os
    import stat

    from mpi.identity.upkeep import FREQUENCIES_FILE, MatchingUpkeep

    for i, city in enumerate(["Springfield", "Shelbyville"]):
        services.patients.create(_input(
            source_id=f"S{i}", identifiers=None,
            addresses=[{"line": ["1 Elm St"], "city": city, "postal_code": "62701"}]), FEED)
    repo = services.upkeep._repo
    queries: list[int] = []
    counting = repo.value_counts

    def counted(*args: Any, **kwargs: Any) -> Any:
        queries.append(1)
        return counting(*args, **kwargs)

    repo.value_counts = counted  # type: ignore[method-assign]
    seen: list[dict[str, Any]] = []
    services.engine.use_frequencies = (  # type: ignore[method-assign]
        lambda total, counts: seen.append({"total": total, "counts": counts}))

    def process() -> MatchingUpkeep:
        return MatchingUpkeep(services.work, services.db, repo, services.engine,
                              interval=900, share=tmp_path)

    with caplog.at_level(logging.INFO, logger="mpi.identity.upkeep"):
        first, second = process(), process()
        assert first.refresh() == 2 and second.refresh() == 2
    assert len(queries) == 1 and seen[0] == seen[1]
    assert seen[0]["counts"]["city"] == {"Springfield": 1, "Shelbyville": 1}
    assert "read (counted by another process)" in caplog.text
    assert "Springfield" not in caplog.text
    path = tmp_path / FREQUENCIES_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = json.loads(path.read_text())
    data["counted_at"] -= 451  # more than half the interval ago
    path.write_text(json.dumps(data))
    assert second.refresh() == 2 and len(queries) == 2
    path.write_text("{not json")
    assert first.refresh() == 2 and len(queries) == 3
    assert process().refresh() == 2 and len(queries) == 3
    gone = MatchingUpkeep(services.work, services.db, repo, services.engine, interval=900,
                          share=tmp_path / "removed")  # counts alone, as without a share
    assert gone.refresh() == 2 and len(queries) == 4


def test_off_means_the_model_alone(settings, db, clock):
    off = build(dataclasses.replace(settings, matching_frequencies_refresh=0), db=db,
                clock=clock, new_id=Ids())
    off.patients.import_batch(_townsfolk(1200), FEED)
    off.patients.create(_input(identifiers=None, telecom=None), FEED)
    assert off.upkeep.refresh() == 0
    assert off.upkeep.start()._thread is None
    assert off.matching.match(_namesake(), FEED).decision == "link"


def test_the_background_refresh_keeps_counting_and_survives_a_failure(services, caplog):
    services.patients.create(_input(identifiers=None), FEED)
    calls: list[int] = []
    counted = threading.Event()
    real = services.engine.use_frequencies

    def failing_once(total: int, counts: Any) -> None:
        calls.append(total)
        if len(calls) == 1:
            raise RuntimeError("the database went away")
        real(total, counts)
        counted.set()

    services.engine.use_frequencies = failing_once
    services.upkeep.interval = 0.05  # (the setting allows 10 s and more)
    assert 5 <= services.upkeep.first_count <= 10  # not while the server starts
    services.upkeep.first_count = 0
    with caplog.at_level(logging.WARNING, logger="mpi.identity.upkeep"):
        services.upkeep.start()
        try:
            assert counted.wait(60)
        finally:
            services.upkeep.stop()
    assert calls[:2] == [1, 1]
    assert "registry frequencies not counted (RuntimeError)" in caplog.text
    assert "Smith" not in caplog.text


def test_a_large_registry_is_counted_on_a_fixed_spread_of_its_records(services):
    """Over ``sample`` records the counts come from a spread of records chosen by primary
    key (the same each time) and are scaled up to the registry."""
    services.patients.import_batch([_input(
        source_id=f"S{i}", identifiers=None, names=[{"family": "Smith" if i % 4 else "Jones",
                                                     "given": ["Ann"]}],
        addresses=[{"line": ["1 Elm St"], **TOWN}]) for i in range(400)], FEED)
    repo = services.upkeep._repo
    total, full = repo.value_counts(("postal_code", "family_name"))
    assert total == 400 and full["postal_code"] == {"62701": 400}
    assert full["family_name"] == {"Smith": 300, "Jones": 100}
    total, sampled = repo.value_counts(("postal_code", "family_name"), sample=100)
    assert total == 400 and sampled["postal_code"] == {"62701": pytest.approx(400)}
    assert sampled["family_name"]["Smith"] == pytest.approx(300, rel=0.35)
    assert repo.value_counts(("family_name",), sample=100)[1] == {
        "family_name": sampled["family_name"]}


def test_a_retrained_model_is_picked_up_and_recorded_on_each_decision(settings, db, clock,
                                                                       tmp_path, caplog):
    """A schedule runs ``mpi train`` and writes MATCHING_MODEL_PATH anew; the serving
    process's upkeep thread uses it from its next check, each link records the version
    that decided it, and a file that does not load leaves the model in use."""
    from mpi.matching.model import Model
    from mpi.storage.models import PatientLinkRow

    path = tmp_path / "model.json"
    first = Model.default().evolve(name="first")
    first.save(path)
    services = build(dataclasses.replace(settings, matching_model_path=path), db=db,
                     clock=clock, new_id=Ids())
    before = services.patients.create(_input(source_id="M1"), FEED)
    second = first.evolve(name="second", prior=first.prior * 2)
    second.save(path)
    picked = threading.Event()
    upkeep = services.upkeep
    upkeep.model_check = 0.05
    real = upkeep.reload_model

    def watched() -> str | None:
        version = real()
        if version is not None:
            picked.set()
        return version

    upkeep.reload_model = watched  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="mpi.identity.upkeep"):
        upkeep.start()
        try:
            assert picked.wait(60)
        finally:
            upkeep.stop()
    after = services.patients.create(_input(source_id="M2"), FEED)
    versions = {str(row.patient.id): row.model_version for row in PatientLinkRow.select()}
    assert versions == {before.id: first.version, after.id: second.version}
    assert f"matching model {second.version} in use" in caplog.text
    path.write_text("{}")
    with caplog.at_level(logging.WARNING, logger="mpi.identity.upkeep"):
        assert upkeep.reload_model() is None
    assert "the matching model file does not load (ModelError" in caplog.text
    assert services.engine.model_version == second.version
