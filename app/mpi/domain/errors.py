"""Domain errors. The API maps each to an HTTP status in one place (``mpi.api.errors``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldProblem:
    """One bad field: a dotted path such as ``names[0].family`` and why it is bad."""

    field: str
    reason: str


class DomainError(Exception):
    """Base class for errors a caller can act on."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(DomainError):
    """The input breaks one or more rules; ``problems`` names each field."""

    def __init__(self, problems: list[FieldProblem], message: str = "the request body is invalid"):
        super().__init__(message)
        self.problems = problems


class MalformedInput(DomainError):
    """The input cannot be read at all (not JSON, wrong encoding)."""


class NotFound(DomainError):
    """No such record."""


class Deleted(DomainError):
    """The record existed and was deleted."""


class Conflict(DomainError):
    """The change would break a uniqueness rule: ``field`` clashes with ``existing_id``."""

    def __init__(self, message: str, *, field: str, existing_id: str | None = None):
        super().__init__(message)
        self.field = field
        self.existing_id = existing_id


class VersionMismatch(DomainError):
    """The caller's version of the record is stale."""

    def __init__(self, message: str, *, current_version: int):
        super().__init__(message)
        self.current_version = current_version


class Forbidden(DomainError):
    """The caller is known but may not do this (a source it may not write, a scope it lacks);
    ``scope`` names the missing scope when that is the reason."""

    def __init__(self, message: str, *, scope: str | None = None):
        super().__init__(message)
        self.scope = scope


class StorageUnavailable(DomainError):
    """The database cannot be reached or has no free connection."""


class ConcurrentChange(DomainError):
    """Another writer changed the same rows at the same moment and the database chose
    this write to give way (a deadlock or a serialization failure). Nothing was written;
    the write was retried a few times already and may simply be sent again."""


class StateConflict(DomainError):
    """The action does not fit the current state (a review already resolved, a merge undone)."""
