"""Rows of ``identity_domain``: the registered identity domains."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

import peewee

from mpi.domain.domains import IdentityDomain, domain_of
from mpi.domain.errors import Conflict
from mpi.storage.db import PreparedSelect
from mpi.storage.models import IdentityDomainRow, PatientIdentifierRow, PatientRow


def _domain(row: IdentityDomainRow) -> IdentityDomain:
    return domain_of(str(row.id), row.system, row.name,
                     [s for s in row.sources.split(",") if s], row.created_at, row.namespace)


_BY_SYSTEM = PreparedSelect(IdentityDomainRow, lambda: IdentityDomainRow.select().where(
    IdentityDomainRow.system == ""))


class DomainRepository:
    def all(self) -> list[IdentityDomain]:
        return [_domain(r) for r in IdentityDomainRow.select().order_by(IdentityDomainRow.system)]

    def by_systems(self, systems: Iterable[str]) -> dict[str, IdentityDomain]:
        wanted = sorted(set(systems))
        if not wanted:
            return {}
        rows = (_BY_SYSTEM.rows(wanted[0]) if len(wanted) == 1  # a message's one domain
                else IdentityDomainRow.select().where(IdentityDomainRow.system.in_(wanted)))
        return {r.system: _domain(r) for r in rows}

    def by_namespaces(self, namespaces: Iterable[str]) -> dict[str, IdentityDomain]:
        wanted = sorted(set(namespaces))
        if not wanted:
            return {}
        rows = IdentityDomainRow.select().where(IdentityDomainRow.namespace.in_(wanted))
        return {str(r.namespace): _domain(r) for r in rows}

    def any_registered(self) -> bool:
        return IdentityDomainRow.select().exists()

    def insert(self, *, domain_id: uuid.UUID, system: str, name: str, sources: list[str],
               now: datetime, namespace: str | None = None) -> IdentityDomain:
        if namespace is not None and IdentityDomainRow.select().where(
                IdentityDomainRow.namespace == namespace).exists():
            raise Conflict(f"another domain has the HL7 namespace {namespace}",
                           field="namespace")
        try:
            with IdentityDomainRow._meta.database.atomic():  # type: ignore[attr-defined]
                row = IdentityDomainRow.create(id=domain_id, system=system, name=name,
                                               sources=",".join(sources), created_at=now,
                                               namespace=namespace)
        except peewee.IntegrityError as exc:
            raise Conflict(f"the domain {system} is registered already",
                           field="system") from exc
        return _domain(row)

    def delete(self, domain_id: str) -> IdentityDomain | None:
        try:
            wanted = uuid.UUID(domain_id)
        except ValueError:
            return None
        row = IdentityDomainRow.get_or_none(IdentityDomainRow.id == wanted)
        if row is None:
            return None
        row.delete_instance()
        return _domain(row)

    def in_use(self, systems: Iterable[str]) -> set[str]:
        """Which of these systems some live identifier is in."""
        return {s for s in set(systems) if PatientIdentifierRow.select().where(
            PatientIdentifierRow.system == s, PatientIdentifierRow.deleted_at.is_null()).exists()}

    def source_has_records(self, source: str) -> bool:
        return PatientRow.select().where(PatientRow.source == source,
                                         PatientRow.deleted_at.is_null()).exists()
