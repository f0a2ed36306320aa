"""Domain errors. The API maps each to an HTTP status in one place (``mpi.api.errors``)."""

from __future__ import annotations

import json
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
    """The input cannot be read at all (not JSON, wrong encoding), or cannot be read one
    way only (a key given twice in one object); ``problems`` names the part when known."""

    def __init__(self, message: str, problems: list[FieldProblem] | None = None):
        super().__init__(message)
        self.problems = problems or []


def reject_duplicate_keys(body: bytes | str) -> None:
    """:class:`MalformedInput` naming the key when an object in the JSON ``body`` has one
    key twice. JSON parsers disagree on which one counts (ours took the last; a validating
    proxy may read the first and pass a record other than the one stored), so such a body
    is refused rather than read one way. A body that is not JSON passes: the parser that
    follows says what is wrong with it."""

    def unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
        seen: dict[str, object] = {}
        for key, value in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen[key] = value
        return seen

    try:
        json.loads(body, object_pairs_hook=unique)
    except _DuplicateKey as dup:
        raise MalformedInput(
            f"the key {dup.key!r} appears twice in one object of the body",
            [FieldProblem(dup.key, "appears more than once in one object")]) from None
    except (ValueError, RecursionError):
        return


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


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
