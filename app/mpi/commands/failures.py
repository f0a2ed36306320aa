"""How a command that fails says why: one line naming the cause, and a non-zero exit.

A traceback is for bugs. An unreachable database, a wrong password, a directory that
cannot be written or a migration history that does not fit are the operator's to fix,
so the command says which, in one line, and exits 1 (2 for configuration and input).
The database driver's own message is shown: it names the host, port and user, never
the password, and a connection error carries no patient data.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_FAILED = 1
EXIT_CONFIG = 2


@dataclass(frozen=True)
class Failure:
    message: str
    exit_code: int = EXIT_FAILED


def explain(exc: BaseException, *, env_file: str | None = None) -> Failure | None:
    """The one-line account of ``exc``, or None for an error that is a bug."""
    import peewee

    from mpi.domain.errors import StorageUnavailable
    from mpi.storage.migrate import MigrationError

    if isinstance(exc, MigrationError):
        return Failure(f"migration error: {exc}")
    if isinstance(exc, StorageUnavailable | peewee.OperationalError | peewee.InterfaceError):
        return Failure(f"the database is unavailable: {_database_reason(exc)}")
    if isinstance(exc, OSError):
        path = exc.filename or env_file
        if env_file is not None and path == env_file:
            return Failure(f"cannot read {env_file}: {exc.strerror}", EXIT_CONFIG)
        reason = exc.strerror or str(exc) or type(exc).__name__
        if isinstance(exc, FileExistsError):  # mkdir where a file is in the way
            reason = "it exists and is not a directory"
        if path is not None:
            return Failure(f"cannot write {path}: {reason}")
        return Failure(reason)
    return None


def _database_reason(exc: BaseException) -> str:
    """The innermost driver message, on one line (psycopg spreads it over several)."""
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    if not lines:
        return type(cause).__name__
    # psycopg: 'connection failed: connection to server at "h" (ip), port p failed: FATAL: ...'
    return " ".join(lines)[:500]
