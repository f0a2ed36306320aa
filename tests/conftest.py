"""Shared fixtures: a throwaway PostgreSQL for the session, and one app per backend.

Database tests run on PostgreSQL (testcontainers where a container engine
answers, else a local server from this machine's binaries, or
``MPI_TEST_DATABASE_URL``) and on the embedded SQLite. The run says which
PostgreSQL it used, in the header of the summary. PostgreSQL tests are never
skipped: if no server can be had, they error.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import falcon.testing
import peewee
import pytest

from mpi.api.app import create_app
from mpi.config import Settings, parse_database_url
from mpi.storage import migrate
from mpi.storage.db import close_database, connection, database_for, database_proxy
from mpi.storage.models import ALL_MODELS, SchemaMigrationRow
from mpi.wiring import Services, build
from tests.pexbuilds import builds  # noqa: F401 - session fixture shared by build/image tests
from toolkit.postgres import PostgresServer, start_postgres

BACKENDS = ("sqlite", "postgresql")
_used: list[str] = []


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = start_postgres(workdir=tmp_path_factory.mktemp("pg"))
    _used.append(f"{server.kind}: {server.description}")
    try:
        yield server
    finally:
        server.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _used:
        terminalreporter.write_sep("-", "PostgreSQL used by this run")
        for line in _used:
            terminalreporter.write_line(line)
    else:
        terminalreporter.write_line("PostgreSQL: not used by the selected tests")


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """The session's PostgreSQL, migrated once."""
    db = database_for(parse_database_url(postgres_server.url), max_connections=2)
    with connection(db):
        migrate.apply(db)
    close_database(db)
    return postgres_server.url


@pytest.fixture(autouse=True)
def _reads_audit_rows_written_at_the_end(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every unit of work a test made writes its reads' waiting audit rows when the test
    ends (AUDIT_READ_WINDOW), as a process does at its end: none is left writing into a
    later test's database."""
    from mpi.storage import readaudit, work

    made: list[work.UnitOfWork] = []
    init = work.UnitOfWork.__init__

    def recorded(self: work.UnitOfWork, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        made.append(self)

    monkeypatch.setattr(work.UnitOfWork, "__init__", recorded)
    monkeypatch.setattr(readaudit, "CLOSE_PAUSE_S", 0.0)
    yield
    for unit_of_work in made:
        unit_of_work.close()


class Clock:
    """A settable clock: tests move time explicitly."""

    def __init__(self, start: datetime | None = None):
        self.now = start or datetime(2026, 1, 15, 9, 30, tzinfo=UTC).replace(tzinfo=None)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _clean(db: peewee.Database) -> None:
    tables = [m._meta.table_name for m in ALL_MODELS if m is not SchemaMigrationRow]
    if isinstance(db, peewee.PostgresqlDatabase):
        db.execute_sql(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
    else:  # pragma: no cover - SQLite databases are fresh per test
        for table in reversed(tables):
            db.execute_sql(f"DELETE FROM {table}")


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        db = database_for(parse_database_url(url), max_connections=1)
        with connection(db):
            _clean(db)
        close_database(db)
        return url
    url = f"sqlite:///{tmp_path / 'mpi.db'}"
    db = database_for(parse_database_url(url), max_connections=1)
    with connection(db):
        migrate.apply(db)
    close_database(db)
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings.defaults(database_url=database_url, database_max_connections=4,
                             search_index_path=tmp_path / "index", workers=1)


@pytest.fixture
def db(settings: Settings) -> Iterator[peewee.Database]:
    """The test's database, bound to the models' proxy and connected."""
    database = database_for(settings.database, max_connections=4)
    database_proxy.initialize(database)
    database.connect()
    try:
        yield database
    finally:
        if not database.is_closed():
            database.close()
        close_database(database)


class Ids:
    """Predictable ids: 00000000-0000-4000-8000-000000000001, ..."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> uuid.UUID:
        self.n += 1
        return uuid.UUID(f"00000000-0000-4000-8000-{self.n:012d}")


@pytest.fixture
def pg(postgres_url: str, tmp_path: Path) -> Iterator[Services]:
    """Every service on an emptied PostgreSQL with a pool of 8, for tests whose threads
    race on their own connections."""
    db = database_for(parse_database_url(postgres_url), max_connections=8)
    with connection(db):
        _clean(db)
    services = build(Settings.defaults(database_url=postgres_url,
                                       search_index_path=tmp_path / "ix"), db=db)
    yield services
    close_database(db)


@pytest.fixture
def services(settings: Settings, db: peewee.Database, clock: Clock) -> Iterator[Services]:
    """Every service, built by the composition root on the test's database (the reads'
    audit rows that wait are written at the end, as a process's are)."""
    built = build(settings, db=db, clock=clock, new_id=Ids())
    yield built
    built.work.close()


@pytest.fixture
def client(settings: Settings, clock: Clock) -> Iterator[falcon.testing.TestClient]:
    database = database_for(settings.database, max_connections=4)
    built = build(settings, db=database, clock=clock, new_id=Ids())
    yield falcon.testing.TestClient(create_app(built))
    built.work.close()
    close_database(database)


class Secured:
    """An app with AUTH_MODE=token and a way to mint its tokens."""

    def __init__(self, client: falcon.testing.TestClient, services: Services, clock: Clock):
        self.client = client
        self.services = services
        self.clock = clock

    def token(self, name: str, *scopes: str, sources: str = "*") -> dict[str, str]:
        """Headers carrying a new token ``name`` with ``scopes`` (default: everything)."""
        from mpi.domain.access import MPI_SCOPES
        from mpi.domain.audit import Actor

        with connection(self.services.db):
            made = self.services.tokens.create(
                name, scopes or ("system/*.cruds", *MPI_SCOPES), sources, Actor("tests"))
        return {"Authorization": f"Bearer {made.secret}"}


@pytest.fixture
def secured(settings: Settings, clock: Clock) -> Iterator[Secured]:
    """The API with AUTH_MODE=token (``secured.token(name, *scopes)`` makes a token)."""
    database = database_for(settings.database, max_connections=4)
    services = build(dataclasses.replace(settings, auth_mode="token"), db=database,
                     clock=clock, new_id=Ids())
    yield Secured(falcon.testing.TestClient(create_app(services)), services, clock)
    services.work.close()
    close_database(database)


@pytest.fixture
def backend(database_url: str) -> str:
    return parse_database_url(database_url).kind
