"""The API tokens of AUTH_MODE=token: only a SHA-256 of each secret is stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mpi.storage.models import ApiTokenRow


@dataclass(frozen=True)
class StoredToken:
    name: str
    scopes: tuple[str, ...]
    sources: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def _stored(row: ApiTokenRow) -> StoredToken:
    return StoredToken(row.name, tuple(row.scopes.split()),
                       tuple(s for s in row.sources.split(",") if s),
                       row.created_at, row.last_used_at, row.revoked_at)


class TokenRepository:
    """Rows of ``api_token``; call inside a unit of work (or a connection, for reads)."""

    def insert(self, *, name: str, token_hash: str, scopes: tuple[str, ...],
               sources: tuple[str, ...], now: datetime) -> StoredToken:
        row = ApiTokenRow.create(name=name, token_hash=token_hash, scopes=" ".join(scopes),
                                 sources=",".join(sources), created_at=now)
        return _stored(row)

    def exists(self, name: str) -> bool:
        return ApiTokenRow.select().where(ApiTokenRow.name == name).exists()

    def live_by_hash(self, token_hash: str) -> StoredToken | None:
        row = (ApiTokenRow.select()
               .where(ApiTokenRow.token_hash == token_hash, ApiTokenRow.revoked_at.is_null())
               .first())
        return _stored(row) if row is not None else None

    def all(self) -> list[StoredToken]:
        return [_stored(r) for r in ApiTokenRow.select().order_by(ApiTokenRow.name)]

    def revoke(self, name: str, *, now: datetime) -> StoredToken | None:
        """Revoke ``name`` (a revoked token stays revoked, with its first revocation time)."""
        (ApiTokenRow.update(revoked_at=now)
         .where(ApiTokenRow.name == name, ApiTokenRow.revoked_at.is_null()).execute())
        row = ApiTokenRow.get_or_none(ApiTokenRow.name == name)
        return _stored(row) if row is not None else None

    def touch(self, token_hash: str, *, now: datetime, older_than: datetime) -> None:
        """Record a use, at most once per interval (a write per request would be waste)."""
        (ApiTokenRow.update(last_used_at=now)
         .where(ApiTokenRow.token_hash == token_hash,
                (ApiTokenRow.last_used_at.is_null()) | (ApiTokenRow.last_used_at < older_than))
         .execute())

