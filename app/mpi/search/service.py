"""Searching patients: the index finds and ranks, the database answers.

The index only chooses ids and scores. The records returned are read from the
database (in one statement, then how far the index is behind in another), so a result
is always the record's current version and a record deleted since the index last
caught up is dropped rather than shown. Searching is access to health information:
every search is audited (``patient:record:search``) with what was asked and which
records were returned, as a read (``UnitOfWork.read``: the row may wait, within
AUDIT_READ_WINDOW, to be written with other reads' rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from mpi.domain.audit import Actor, AuditTag
from mpi.domain.patient import Patient
from mpi.search.index import Hit, SearchIndex, SearchUnavailable
from mpi.search.query import Options, Shortcuts, build
from mpi.storage.changes import ChangeRepository
from mpi.storage.patients import PatientFilter, PatientRepository
from mpi.storage.work import Transaction, UnitOfWork


@dataclass(frozen=True)
class SearchRequest:
    q: str | None = None
    shortcuts: Shortcuts = field(default_factory=Shortcuts)
    offset: int = 0
    limit: int = 20
    fuzzy: int | None = None  # None: the configured default


@dataclass(frozen=True)
class Found:
    hit: Hit
    patient: Patient


@dataclass(frozen=True)
class SearchOutcome:
    items: list[Found]
    total: int
    cursor: int | None
    dropped: int  # hits the index still had but the database no longer holds live
    behind_events: int = 0  # change-log events the index does not hold yet (at most)
    behind_seconds: float | None = None  # since the oldest of them (None: none)
    served_by: Literal["index", "database"] = "index"  # database: exact matches only

    @property
    def complete(self) -> bool:
        """Whether the answer has every record the search would find: the index held
        every committed change (a database answer has exact matches only: never)."""
        return self.served_by == "index" and self.behind_events == 0


class SearchService:
    def __init__(self, work: UnitOfWork, index: SearchIndex, repository: PatientRepository,
                 changes: ChangeRepository, *, fuzzy: int):
        self._work = work
        self.index = index
        self._repository = repository
        self._changes = changes
        self.fuzzy = fuzzy

    def freshness(self) -> Freshness:
        """Whether a search now would see every committed change (no audit row: this
        reads no record). Needs a connection."""
        try:
            cursor = self.index.position()
        except SearchUnavailable as exc:
            return Freshness("unavailable", reason=str(exc))
        with self._work.reading():
            behind, since = self._changes.backlog(cursor)
        if not behind or since is None:
            return Freshness("ok", applied=cursor, newest=cursor)
        seconds = round(max((self._work.clock() - since).total_seconds(), 0.0), 3)
        return Freshness("behind", behind, seconds, applied=cursor,
                         newest=(cursor or 0) + behind)

    def _from_database(self, request: SearchRequest, exact: PatientFilter,
                       actor: Actor) -> SearchOutcome:
        """The search answered by exact matches from the database (audited as a search)."""
        wanted = request.offset + request.limit
        with self._work.begin(actor) as tx:
            page = self._repository.list_page(exact, after=None, limit=min(wanted, 200))
            items = [Found(Hit(p.id, 0.0, p.person_id), p)
                     for p in page.items[request.offset:wanted]]
            tx.audit(AuditTag.PATIENT_SEARCH, None, new={
                "query": _asked(request), "returned": [f.patient.id for f in items],
                "served_by": "database"})
        total = request.offset + len(items) + (1 if page.next_cursor else 0)
        return SearchOutcome(items, total, None, 0, served_by="database")

    def search(self, request: SearchRequest, actor: Actor) -> SearchOutcome:
        """Raises QuerySyntaxError (bad query), SearchUnavailable (no index yet)."""
        options = Options(fuzzy=self.fuzzy if request.fuzzy is None else request.fuzzy)
        query = build(request.q, request.shortcuts, options)
        try:
            results = self.index.search(query, offset=request.offset, limit=request.limit)
        except SearchUnavailable:
            exact = database_filter(request)
            if exact is None:
                raise
            return self._from_database(request, exact, actor)

        def fetch(tx: Transaction) -> tuple[list[Found], int, float | None]:
            live = self._repository.get_live_many([h.id for h in results.hits])
            items = [Found(h, live[h.id]) for h in results.hits if h.id in live]
            # An index that is behind may miss records: the answer says so (a clerk who sees
            # no result would register a duplicate), and so does the audit row. Read after
            # the records: a change committed between the two shows as behind.
            behind, since = self._changes.backlog(results.cursor)
            seconds = None if since is None else round(
                max((tx.now - since).total_seconds(), 0.0), 3)
            asked: dict[str, Any] = {"query": _asked(request),
                                     "returned": [f.patient.id for f in items]}
            if behind:
                asked["index_behind_events"] = behind
            tx.audit(AuditTag.PATIENT_SEARCH, None, new=asked)
            return items, behind, seconds

        items, behind, seconds = self._work.read(actor, fetch)
        dropped = len(results.hits) - len(items)
        return SearchOutcome(items, max(results.total - dropped, len(items)), results.cursor,
                             dropped, behind, seconds)


@dataclass(frozen=True)
class Freshness:
    """How complete the index is now (for readiness): ``state`` is "ok", "behind" or
    "unavailable" (being built or rebuilt, or unreadable)."""

    state: str
    behind_events: int = 0
    behind_seconds: float | None = None
    reason: str | None = None
    applied: int | None = None  # the newest change-log event id the index holds
    newest: int | None = None  # the newest event id in the change log


def database_filter(request: SearchRequest) -> PatientFilter | None:
    """The exact filter the database can answer a search with while the index cannot
    (a fresh instance building it, a damaged one being rebuilt): an identifier value as
    stored, a family name (case and accents folded as the database keeps it), a birth
    date, a source, alone or together, and nothing else (None: the search needs the
    index)."""
    s = request.shortcuts
    if (request.q or s.name or s.given or s.birth_year is not None or s.phone
            or request.fuzzy or not (s.identifier or s.family or s.birth_date)):
        return None
    return PatientFilter(source=s.source, family=s.family, birth_date=s.birth_date,
                         identifier_value=s.identifier.strip() if s.identifier else None)


def _asked(request: SearchRequest) -> dict[str, Any]:
    asked: dict[str, Any] = {k: (v.isoformat() if isinstance(v, date) else v)
                             for k, v in vars(request.shortcuts).items() if v is not None}
    if request.q:
        asked["q"] = request.q
    asked.update(offset=request.offset, limit=request.limit)
    if request.fuzzy is not None:
        asked["fuzzy"] = request.fuzzy
    return asked
