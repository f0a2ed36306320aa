"""``mpi rekey``'s service: stored blocking keys brought to the current rules, page by
page, only where they differ, resumable (both backends)."""

from __future__ import annotations

import json

from mpi.domain.audit import Actor
from mpi.storage.models import BlockingKeyRow, PatientLinkRow, PatientRow
from mpi.wiring import Services
from tests.helpers import patient

ACTOR = Actor("mpi-rekey")


def _create(services: Services, n: int) -> None:
    families = ["Okafor", "Lindqvist", "Nakamura", "Fernandes", "Kowalczyk"]
    for i in range(n):
        body = patient(source_id=f"R-{i}", names=[{"family": families[i], "given": ["Ann"]}],
                       identifiers=[], telecom=[])
        services.patients.create(services.patients.parse(json.dumps(body).encode()), ACTOR)


def _keys() -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for row in BlockingKeyRow.select():
        out.setdefault(row.patient_id, set()).add(row.key)
    return out


def _run(services: Services, after: int = 0, batch: int = 2) -> tuple[int, int, list[int]]:
    checked = changed = 0
    pages = []
    while (page := services.rekeying.page(after, batch, ACTOR)).last_pk is not None:
        checked, changed, after = checked + page.checked, changed + page.changed, page.last_pk
        pages.append(after)
    return checked, changed, pages


def test_stale_keys_are_rebuilt_and_current_ones_left(services: Services):
    _create(services, 5)
    current = _keys()
    pks = sorted(current)
    # As an older release left them: one record without the name-only key, one with an
    # obsolete key, one with none at all.
    BlockingKeyRow.delete().where(BlockingKeyRow.patient == pks[0],
                                  BlockingKeyRow.key.startswith("m:")).execute()
    BlockingKeyRow.insert(patient=pks[1], key="x:obsolete").execute()
    BlockingKeyRow.delete().where(BlockingKeyRow.patient == pks[3]).execute()
    assert services.rekeying.total() == 5
    assert _run(services) == (5, 3, [pks[1], pks[3], pks[4]])
    assert _keys() == current
    assert _run(services)[:2] == (5, 0)  # again: nothing to do
    # Resumed after the second record: only the rest is read.
    assert _run(services, after=pks[1])[0] == 3


def test_deleted_and_unmatched_records_are_left_alone(services: Services):
    _create(services, 3)
    pks = sorted(_keys())
    PatientRow.update(deleted_at=PatientRow.created_at).where(PatientRow.pk == pks[0]).execute()
    PatientLinkRow.update(match_data={}).where(PatientLinkRow.patient == pks[1]).execute()
    BlockingKeyRow.delete().where(BlockingKeyRow.patient.in_(pks[:2])).execute()
    checked, changed, _ = _run(services)
    assert (checked, changed) == (2, 0)  # the deleted one is not read; the empty form kept
    assert set(_keys()) == {pks[2]}
