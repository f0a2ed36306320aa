"""Blocking keys brought up to date with the current rules (``mpi rekey``).

Blocking keys are derived data: each record's are computed from its stored matching form
when it is written. When the rules change (a new key, a placeholder list), records
stored before keep their old keys, and a new record meets them only through keys both
rules share. :meth:`Rekeying.page` recomputes one page of records' keys, by primary key,
in one transaction, and writes only those that differ; a run is a loop over pages, so an
interrupted run is resumed from the last page it reports (or simply run again: unchanged
records cost a read). No link changes: re-deciding links is another step.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpi.domain.audit import Actor
from mpi.identity.engine import Engine
from mpi.storage.identity import IdentityRepository
from mpi.storage.work import UnitOfWork, retried


@dataclass(frozen=True)
class RekeyPage:
    last_pk: int | None  # the last record of the page (None: no more records)
    checked: int
    changed: int


class Rekeying:
    def __init__(self, work: UnitOfWork, repo: IdentityRepository, engine: Engine):
        self._work = work
        self._repo = repo
        self._engine = engine

    def total(self) -> int:
        with self._work.reading():
            return self._repo.live_linked_count()

    @retried
    def page(self, after_pk: int, limit: int, actor: Actor) -> RekeyPage:
        """Recompute the keys of up to ``limit`` live records after ``after_pk``."""
        with self._work.begin(actor):
            forms = self._repo.forms_after(after_pk, limit)
            if not forms:
                return RekeyPage(None, 0, 0)
            stored = self._repo.keys_of([pk for pk, _ in forms])
            changed = 0
            for pk, data in forms:
                if not data:  # linked before matching existed: keys come with an update
                    continue
                keys = set(self._engine.keys(data))
                if keys != stored[pk]:
                    self._repo.replace_keys(pk, keys)
                    changed += 1
        return RekeyPage(forms[-1][0], len(forms), changed)
