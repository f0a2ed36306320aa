"""The composition root: every service, built from ``Settings`` alone.

The API (``mpi.api.app``), the indexer process and every command build what they use
here; nothing else constructs services or binds the database proxy the models use.
Tests pass a clock and an id factory (and may pass their own database or search
index); everything else follows from the settings, so a setting such as
``AUDIT_SYNCHRONOUS_READS`` reaches every reader by construction: they share one
:class:`~mpi.storage.work.UnitOfWork`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import peewee

from mpi import metrics
from mpi.audit.trail import AuditTrail
from mpi.auth import Authenticator, NoAuthentication
from mpi.auth.oauth import BearerTokens
from mpi.auth.senders import Hl7Senders
from mpi.auth.tokens import ApiTokens
from mpi.config import Settings
from mpi.events.feed import ChangeFeed
from mpi.identity.engine import Engine, MatchingEngine
from mpi.identity.linking import Linking
from mpi.identity.match import MatchService
from mpi.identity.merging import Merging
from mpi.identity.persons import PersonService
from mpi.identity.rekey import Rekeying
from mpi.identity.relink import Relinking
from mpi.identity.stewardship import StewardService
from mpi.identity.upkeep import MatchingUpkeep
from mpi.identity.views import IdentityViews
from mpi.patients.domains import DomainService
from mpi.patients.service import PatientService, utc_now
from mpi.search.index import SearchIndex, WhooshSearchIndex
from mpi.search.indexer import Indexer
from mpi.search.service import SearchService
from mpi.storage import migrate
from mpi.storage.audit import AuditRepository
from mpi.storage.changes import ChangeRepository
from mpi.storage.db import close_database, connection, database_proxy, make_database
from mpi.storage.domains import DomainRepository
from mpi.storage.hl7 import ContinuationRepository, ReceiptRepository, SenderRepository
from mpi.storage.identity import IdentityRepository
from mpi.storage.patients import PatientRepository
from mpi.storage.tokens import TokenRepository
from mpi.storage.work import UnitOfWork

log = logging.getLogger("mpi.migrate")


@dataclass(frozen=True)
class Services:
    """Everything a process serves with; built by :func:`build`."""

    settings: Settings
    db: peewee.Database
    work: UnitOfWork
    engine: Engine
    patients: PatientService
    persons: PersonService
    stewards: StewardService
    matching: MatchService
    search: SearchService
    audit_trail: AuditTrail
    change_feed: ChangeFeed
    tokens: ApiTokens
    domains: DomainService
    authenticator: Authenticator
    rekeying: Rekeying
    relinking: Relinking
    senders: Hl7Senders
    upkeep: MatchingUpkeep

    def indexer(self, *, standby: bool = False) -> Indexer:
        """This process's search indexer (it writes only if it takes the directory's lock;
        ``standby``, a worker's thread, only while no indexer process lives)."""
        return Indexer(self.db, self.settings.search_index_path,
                       poll_interval=self.settings.search_poll_interval,
                       commit_interval=self.settings.search_commit_interval, standby=standby,
                       rebuild_processes=self.settings.search_rebuild_processes)

    def close(self) -> None:
        """Write the reads' audit rows that wait, then close every pooled connection
        (commands and serving processes, at the end)."""
        self.upkeep.stop()
        self.work.close()
        close_database(self.db)


def open_database(settings: Settings) -> peewee.Database:
    """The configured database, pooled and not yet connected, NOT bound to the models
    (migrations bind their own models)."""
    return make_database(settings)


def migrate_database(settings: Settings) -> list[migrate.Migration]:
    """Apply every pending migration to the configured database; the ones applied."""
    db = open_database(settings)
    try:
        with connection(db):
            return migrate.apply(db, on_apply=lambda m: log.info(
                "applied migration %s_%s", m.version, m.name, extra={"migration": m.version}))
    finally:
        close_database(db)


def prepare(settings: Settings) -> None:
    """What ``serve`` does before it forks workers, so that a problem is one clear error
    at start-up rather than a 503 on every request: the embedded database migrates
    itself (PostgreSQL is migrated by ``mpi migrate``); the database answers; the search
    index's directory can be written."""
    if settings.embedded:
        migrate_database(settings)
    db = open_database(settings)
    try:
        with connection(db):
            db.execute_sql("SELECT 1")
    finally:
        close_database(db)
    settings.search_index_path.mkdir(parents=True, exist_ok=True)
    probe = settings.search_index_path / ".mpi-write-test"
    probe.write_bytes(b"")
    probe.unlink()


def matching_engine(settings: Settings) -> MatchingEngine:
    """The engine with the configured model (MATCHING_MODEL_PATH, else the shipped one)
    and placeholders (MATCHING_PLACEHOLDERS_PATH, else the shipped list)."""
    from mpi.matching import placeholders
    from mpi.matching.model import Model

    blank = settings.matching_placeholders_path
    placeholders.use(placeholders.Placeholders.load(blank) if blank is not None else None)
    path = settings.matching_model_path
    model = Model.load(path) if path is not None else Model.default()
    return MatchingEngine(model, link_threshold=settings.matching_threshold,
                          review_threshold=settings.matching_review_threshold,
                          twin_guard=settings.matching_twin_guard, model_file=path)


def build(settings: Settings, *, db: peewee.Database | None = None,
          clock: Callable[[], datetime] = utc_now,
          new_id: Callable[[], uuid.UUID] = uuid.uuid4,
          search_index: SearchIndex | None = None,
          engine: Engine | None = None) -> Services:
    """Every service for ``settings``, sharing one database and one unit of work.

    Binds the models to the database (opens no connection). ``db``, ``search_index`` and
    ``engine`` are for tests; by default they come from the settings (the search index
    read-only at SEARCH_INDEX_PATH).
    """
    db = db if db is not None else open_database(settings)
    database_proxy.initialize(db)
    work = UnitOfWork(db, clock=clock, synchronous_reads=settings.audit_synchronous_reads,
                      read_audit_window=settings.audit_read_window)
    if engine is None:
        engine = matching_engine(settings)
    patients, identity = PatientRepository(), IdentityRepository(db)
    views = IdentityViews(identity, patients)
    merging = Merging(identity, new_id=new_id)
    linking = Linking(engine, identity, merging, new_id=new_id,
                      auto_merge=settings.matching_auto_merge)
    tokens = ApiTokens(work, TokenRepository())
    index = (search_index if search_index is not None
             else WhooshSearchIndex(settings.search_index_path))
    stewards = StewardService(work, identity, patients, views, merging, new_id=new_id)
    return Services(
        settings=settings, db=db, work=work, engine=engine,
        patients=PatientService(work, patients, linking, new_id=new_id, stewards=stewards),
        persons=PersonService(work, identity, patients, views),
        stewards=stewards,
        matching=MatchService(work, linking),
        search=SearchService(work, index, patients, ChangeRepository(),
                             fuzzy=settings.search_fuzzy_distance),
        audit_trail=AuditTrail(work, AuditRepository(), patients),
        change_feed=ChangeFeed(work, ChangeRepository()),
        tokens=tokens,
        domains=DomainService(work, DomainRepository(), new_id=new_id),
        authenticator=authenticator(settings, tokens),
        rekeying=Rekeying(work, identity, engine),
        relinking=Relinking(work, identity, patients, linking),
        senders=Hl7Senders(work, SenderRepository(), ReceiptRepository(),
                           ContinuationRepository()),
        upkeep=MatchingUpkeep(work, db, identity, engine,
                              interval=settings.matching_frequencies_refresh,
                              share=_shared_directory()),
    )


def _shared_directory() -> Path | None:
    """Under ``mpi serve``: the instance's private run-time directory (made afresh at each
    start; its processes keep their metrics there), where they share the registry's
    value counts (``mpi.identity.upkeep``). None in a command: it counts for itself."""
    directory = metrics.multiprocess_directory()
    return Path(directory) if directory else None


@contextlib.contextmanager
def connected(settings: Settings) -> Iterator[Services]:
    """For a command: every service, with a connection held, closed again afterwards."""
    services = build(settings)
    try:
        with connection(services.db):
            yield services
    finally:
        services.close()


def authenticator(settings: Settings, tokens: ApiTokens) -> Authenticator:
    """The authenticator AUTH_MODE names."""
    if settings.auth_mode == "token":
        return tokens
    if settings.auth_mode == "jwt":
        return BearerTokens(settings)
    return NoAuthentication()
