"""Persons and reviews as the API shows them, assembled from the identity tables."""

from __future__ import annotations

from mpi.domain.identity import Person, PersonIdentifier, PersonRecord, ReviewItem
from mpi.storage.identity import IdentityRepository
from mpi.storage.models import PersonRow, ReviewItemRow
from mpi.storage.patients import PatientRepository


class IdentityViews:
    def __init__(self, repo: IdentityRepository, patients: PatientRepository):
        self._repo = repo
        self._patients = patients

    def person(self, row: PersonRow) -> Person:
        """A person with its live records and every identifier across sources."""
        links = self._repo.live_links(row.pk)
        patients = self._patients.load_many([link.patient for link in links])
        records = [PersonRecord(patient=p, how=link.how, manual=link.manual,
                                probability=link.probability, model_version=link.model_version,
                                linked_at=link.linked_at)
                   for p, link in zip(patients, links, strict=True)]
        idents: dict[tuple[str, str], PersonIdentifier] = {}
        for p in patients:
            for ident in p.identifiers:
                entry = idents.setdefault((ident.system, ident.value), PersonIdentifier(
                    system=ident.system, value=ident.value, type=ident.type, patient_ids=[],
                    sources=[]))
                entry.patient_ids.append(p.id)
                if p.source not in entry.sources:
                    entry.sources.append(p.source)
        merged_into = None
        if row.merged_into_id is not None:
            merged_into = str(self._repo.person_by_pk(row.merged_into_id).id)
        return Person(id=str(row.id), status="merged" if merged_into else "active",
                      merged_into=merged_into, created_at=row.created_at,
                      updated_at=row.updated_at, records=records,
                      identifiers=list(idents.values()))

    def reviews(self, rows: list[ReviewItemRow]) -> list[ReviewItem]:
        persons = self._repo.person_ids([r.person_id for r in rows]
                                        + [r.other_person_id for r in rows
                                           if r.other_person_id])
        patients = self._repo.patient_ids(r.patient_id for r in rows if r.patient_id)
        return [ReviewItem(id=str(r.id), kind=r.kind, status=r.status,  # type: ignore[arg-type]
                           patient_id=patients.get(r.patient_id) if r.patient_id else None,
                           person_id=persons[r.person_id],
                           other_person_id=(persons[r.other_person_id]
                                            if r.other_person_id else None),
                           probability=r.probability, model_version=r.model_version,
                           explanation=r.explanation, created_at=r.created_at,
                           resolved_at=r.resolved_at, resolved_by=r.resolved_by,
                           resolution=r.resolution, comment=r.comment)
                for r in rows]
