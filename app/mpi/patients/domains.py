"""Identity domains (assigning authorities): which identifier systems the registry knows,
and which sources may assign identifiers in each.

A system is *known* when it is registered, or built in (``urn:mpi:source:<source>`` of a
source with live records, ``urn:mpi:person``). Until the first domain is registered, any
system some live identifier is in counts as known too, so an installation that has not
set up its domains answers as before; once one is registered the registry decides.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

from mpi.domain.audit import Actor, AuditTag
from mpi.domain.domains import (
    PERSON_SYSTEM,
    SOURCE_SYSTEM,
    IdentityDomain,
    IdentityDomainInput,
)
from mpi.domain.errors import InvalidInput, MalformedInput, NotFound
from mpi.domain.patient import problems_from
from mpi.storage.domains import DomainRepository
from mpi.storage.work import UnitOfWork


class DomainService:
    def __init__(self, work: UnitOfWork, repository: DomainRepository, *,
                 new_id: Callable[[], uuid.UUID]):
        self._work = work
        self._repository = repository
        self._new_id = new_id

    def parse(self, body: bytes) -> IdentityDomainInput:
        from pydantic import ValidationError

        try:
            return IdentityDomainInput.model_validate_json(body)
        except ValidationError as exc:
            if any(e["type"] == "json_invalid" for e in exc.errors()):
                raise MalformedInput("the body is not valid JSON") from None
            raise InvalidInput(problems_from(exc)) from None

    def all(self, actor: Actor) -> list[IdentityDomain]:
        with self._work.begin(actor) as tx:
            found = self._repository.all()
            tx.audit(AuditTag.DOMAIN_LIST, None, new={"returned": len(found)})
        return found

    def add(self, data: IdentityDomainInput, actor: Actor) -> IdentityDomain:
        with self._work.begin(actor) as tx:
            made = self._repository.insert(domain_id=self._new_id(), system=data.system,
                                           name=data.name, sources=data.sources, now=tx.now,
                                           namespace=data.namespace)
            tx.audit(AuditTag.DOMAIN_CREATE, made.id, new=made.model_dump(mode="json"))
        return made

    def remove(self, key: str, actor: Actor) -> IdentityDomain:
        """Remove the domain with this id or system."""
        with self._work.begin(actor) as tx:
            named = self._repository.by_systems([key]).get(key)
            gone = self._repository.delete(named.id if named else key)
            if gone is None:
                raise NotFound(f"no identity domain {key}")
            tx.audit(AuditTag.DOMAIN_DELETE, gone.id, old=gone.model_dump(mode="json"))
        return gone

    def by_namespace(self, namespace: str) -> IdentityDomain | None:
        """The registered domain with this HL7 v2 namespace id (HD-1), if any."""
        with self._work.reading():
            return self._repository.by_namespaces([namespace]).get(namespace)

    def namespaces(self, systems: Iterable[str]) -> dict[str, str]:
        """The HL7 v2 namespace id of each of these systems that has one."""
        with self._work.reading():
            found = self._repository.by_systems(systems)
        return {system: d.namespace for system, d in found.items() if d.namespace}

    def unknown(self, systems: Iterable[str]) -> list[str]:
        """The systems among ``systems`` this registry does not know (module docstring)."""
        wanted = sorted(set(systems))
        with self._work.reading():
            registered = self._repository.by_systems(wanted)
            rest = [s for s in wanted if s not in registered and s != PERSON_SYSTEM]
            unknown = []
            fallback = not self._repository.any_registered()
            in_use = self._repository.in_use(
                [s for s in rest if not s.startswith(SOURCE_SYSTEM)]) if fallback else set()
            for system in rest:
                if system.startswith(SOURCE_SYSTEM):
                    if not self._repository.source_has_records(system[len(SOURCE_SYSTEM):]):
                        unknown.append(system)
                elif system not in in_use:
                    unknown.append(system)
        return unknown

    def source_for(self, candidates: Iterable[tuple[str, str]], actor: Actor
                   ) -> tuple[str, str] | None:
        """(source, record id) for a record sent without its ``urn:mpi:source:`` identifier:
        the first (system, value) of ``candidates`` in a registered domain that exactly one
        source ``actor`` may write assigns in (a PIXm source sends its own domain's
        identifier); None when none settles it."""
        pairs = list(candidates)
        with self._work.reading():
            registered = self._repository.by_systems([system for system, _ in pairs])
        mine = sorted(s for s in actor.sources if s != "*")
        for system, value in pairs:
            domain = registered.get(system)
            if domain is None:
                continue
            named = [s for s in domain.sources if s != "*" and actor.may_write(s)]
            if not named and "*" in domain.sources:
                named = mine
            if len(named) == 1:
                return named[0], value
        return None

    def may_feed(self, system: str, actor: Actor) -> bool:
        """Whether ``actor`` may feed records keyed by an identifier in ``system`` (PIXm
        ITI-104: a source feeds only the domains it may assign in). A source's own
        ``urn:mpi:source:`` domain is checked as a write to that source; a system that is
        not registered is free while no domain is."""
        if system.startswith(SOURCE_SYSTEM):
            return actor.may_write(system[len(SOURCE_SYSTEM):])
        with self._work.reading():
            domain = self._repository.by_systems([system]).get(system)
            if domain is None:
                return not self._repository.any_registered()
        if "*" in actor.sources:
            return True
        return any(domain.may_assign(source) for source in actor.sources)
