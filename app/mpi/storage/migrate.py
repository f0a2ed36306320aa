"""Apply the ordered migrations in ``mpi.migrations`` (the top-level ``migrations/``).

Each migration runs in its own transaction together with the row that
records it in ``schema_migration``, under a lock (a PostgreSQL advisory lock,
SQLite's write lock), so several processes starting at once apply each
migration exactly once. An applied migration whose file has changed since is
an error: released migrations are frozen.

A migration whose text had to change after release without changing what it does
(a corrected docstring; live code it imported copied in) lists the checksums of its
earlier texts in a module-level ``SUPERSEDES = ("<sha256>", ...)``: a database that
applied one of those is accepted. The tuple is read from the file, not imported.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

import peewee

from mpi.storage.db import LOCK_MIGRATIONS, analyze, is_postgres, write_transaction
from mpi.storage.models import SchemaMigrationRow

PACKAGE = "mpi.migrations"
_FILE_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.py$")


class MigrationError(Exception):
    """The database's schema history does not fit the migrations shipped."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    checksum: str
    module: str
    supersedes: frozenset[str] = frozenset()

    def accepts(self, checksum: str) -> bool:
        """Whether a database that recorded ``checksum`` applied this migration."""
        return checksum == self.checksum or checksum in self.supersedes

    def load(self) -> Callable[[peewee.Database], None]:
        module = importlib.import_module(self.module)
        return module.upgrade  # type: ignore[no-any-return]


def discover(package: str = PACKAGE) -> list[Migration]:
    """The migrations shipped in ``package``, in order."""
    found = []
    for entry in resources.files(package).iterdir():
        match = _FILE_RE.match(entry.name)
        if not match:
            continue
        text = entry.read_bytes()
        found.append(Migration(match["version"], match["name"],
                               hashlib.sha256(text).hexdigest(),
                               f"{package}.{entry.name[:-3]}", _supersedes(text)))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number: {versions}")
    return found


#: CPython 3.11 (3.11.2 in Debian 12, 3.11.7 here) can fail ast.parse run in two threads at
#: once ("SystemError: AST constructor recursion depth mismatch", fixed in 3.12): several
#: workers migrating on a first start did, in CI. One parse at a time.
_PARSING = threading.Lock()


def _supersedes(text: bytes) -> frozenset[str]:
    """The module-level ``SUPERSEDES`` tuple of checksums, read without importing."""
    with _PARSING:
        tree = ast.parse(text)
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "SUPERSEDES"):
            value = ast.literal_eval(node.value)
            if not (isinstance(value, tuple)
                    and all(isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)
                            for v in value)):
                raise MigrationError("SUPERSEDES must be a tuple of sha256 hex digests")
            return frozenset(value)
    return frozenset()


def _lock(db: peewee.Database) -> None:
    """Inside a transaction: wait until no other process is migrating."""
    if is_postgres(db):
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (LOCK_MIGRATIONS,))


def _applied(db: peewee.Database) -> dict[str, str]:
    with SchemaMigrationRow.bind_ctx(db):
        if not db.table_exists(SchemaMigrationRow._meta.table_name):
            return {}
        return {row.version: row.checksum for row in SchemaMigrationRow.select()}


def newer(db: peewee.Database, shipped: list[Migration] | None = None) -> list[str]:
    """Applied migrations newer than everything this release ships (the database is ahead:
    a rolling update or a rollback of the code). Expand/contract keeps that safe."""
    shipped = discover() if shipped is None else shipped
    last = max((m.version for m in shipped), default="")
    return sorted(v for v in _applied(db) if v > last)


def _check_history(shipped: list[Migration], applied: dict[str, str], *,
                   allow_newer: bool = False) -> None:
    by_version = {m.version: m for m in shipped}
    last = max(by_version, default="")
    for version, checksum in sorted(applied.items()):
        known = by_version.get(version)
        if known is None and allow_newer and version > last:
            continue
        if known is None:
            raise MigrationError(
                f"the database has migration {version}, which this release does not ship "
                "(is it newer than this release?)")
        if not known.accepts(checksum):
            raise MigrationError(f"migration {version}_{known.name} changed after it was applied")


def pending(db: peewee.Database, shipped: list[Migration] | None = None, *,
            allow_newer: bool = False) -> list[Migration]:
    """Migrations not yet applied (raises MigrationError if the history does not fit).

    ``allow_newer`` accepts a database that is ahead of this release (migrations after
    the last one shipped), as readiness does during rolling updates and rollbacks.
    """
    shipped = discover() if shipped is None else shipped
    applied = _applied(db)
    _check_history(shipped, applied, allow_newer=allow_newer)
    return [m for m in shipped if m.version not in applied]


def apply(db: peewee.Database, shipped: list[Migration] | None = None,
          *, now: Callable[[], datetime] | None = None,
          on_apply: Callable[[Migration], None] | None = None) -> list[Migration]:
    """Apply every pending migration; return the ones this call applied."""
    shipped = discover() if shipped is None else shipped
    clock = now or (lambda: datetime.now(UTC).replace(tzinfo=None))
    with write_transaction(db):
        _lock(db)
        with SchemaMigrationRow.bind_ctx(db):
            db.create_tables([SchemaMigrationRow], safe=True)
    done: list[Migration] = []
    for migration in shipped:
        with write_transaction(db):
            _lock(db)
            applied = _applied(db)
            _check_history(shipped, applied)
            if migration.version in applied:
                continue
            migration.load()(db)
            with SchemaMigrationRow.bind_ctx(db):
                SchemaMigrationRow.create(version=migration.version, name=migration.name,
                                          checksum=migration.checksum, applied_at=clock())
        done.append(migration)
        if on_apply:
            on_apply(migration)
    # New tables and indexes, and rows a migration moved: the planner should know.
    if done and (tables := _tables_with_rows(db)):
        analyze(db, tables)
    return done


def _tables_with_rows(db: peewee.Database) -> list[str]:
    """The tables that hold a row (PostgreSQL; SQLite: every table).

    An empty table is left unanalyzed: PostgreSQL takes statistics of no rows for "this
    table stays empty", and plans by them until autovacuum looks again (a minute later,
    after 50 rows). A fresh database then planned the candidate look-up, once per
    connection (prepared), as a scan of the whole blocking-key table per key: 10 ms a
    record after 1,000 records, growing with each one. A table never analyzed is
    planned as one of at least ten pages, and the look-up walks the indexes."""
    if not is_postgres(db):
        return db.get_tables()
    # Table names come from the database's own catalogue, never from input.
    return [table for table in db.get_tables()
            if db.execute_sql(f'SELECT EXISTS (SELECT 1 FROM "{table}")')  # noqa: S608
            .fetchone()[0]]
