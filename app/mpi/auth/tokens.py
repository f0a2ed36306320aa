"""API tokens for AUTH_MODE=token: made with ``mpi token create``, shown once, stored hashed.

A token is ``mpi_`` followed by 43 URL-safe characters (256 random bits). Only its
SHA-256 is stored: a token is a high-entropy random secret, not a password, so a fast
hash is enough to make the table useless to whoever reads it (no salt or slow hash is
needed), and it can be looked up by an index. Creating and revoking a token are
audited administration actions.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from mpi.auth import Unauthenticated
from mpi.domain.access import Principal, check_scope, parse_sources
from mpi.domain.audit import Actor, AuditTag
from mpi.domain.errors import Conflict, FieldProblem, InvalidInput, NotFound
from mpi.storage.tokens import StoredToken, TokenRepository
from mpi.storage.work import UnitOfWork

PREFIX = "mpi_"
_TOKEN_RE = re.compile(r"^mpi_[A-Za-z0-9_-]{43}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
#: How often a token's last use is written (a write per request would be waste).
TOUCH_INTERVAL = timedelta(minutes=1)


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewToken:
    """A token just made: ``secret`` is shown once and never stored."""

    secret: str
    token: StoredToken


class ApiTokens:
    """Create, list, revoke and check API tokens."""

    mode = "token"

    def __init__(self, work: UnitOfWork, repository: TokenRepository):
        self._work = work
        self._repository = repository

    def create(self, name: str, scopes: Iterable[str], sources: str, actor: Actor) -> NewToken:
        problems = []
        if not _NAME_RE.match(name):
            problems.append(FieldProblem("name", "1-64 letters, digits, '.', '_', ':' or '-'"))
        checked: list[str] = []
        for scope in scopes:
            try:
                checked.append(check_scope(scope))
            except ValueError as exc:
                problems.append(FieldProblem("scopes", str(exc)))
        if not checked and not problems:
            problems.append(FieldProblem("scopes", "name at least one scope"))
        try:
            allowed = tuple(sorted(parse_sources(sources)))
        except ValueError as exc:
            problems.append(FieldProblem("sources", str(exc)))
            allowed = ()
        if problems:
            raise InvalidInput(problems, "the token cannot be made")
        secret = PREFIX + secrets.token_urlsafe(32)
        with self._work.begin(actor) as tx:
            if self._repository.exists(name):
                raise Conflict(f"a token named {name!r} exists (revoke it or pick another name)",
                               field="name")
            stored = self._repository.insert(
                name=name, token_hash=token_hash(secret),
                scopes=tuple(dict.fromkeys(checked)), sources=allowed, now=tx.now)
            tx.audit(AuditTag.TOKEN_CREATE, name,
                     new={"scopes": list(stored.scopes), "sources": list(stored.sources)})
        return NewToken(secret, stored)

    def list(self) -> list[StoredToken]:
        with self._work.reading():
            return self._repository.all()

    def revoke(self, name: str, actor: Actor) -> StoredToken:
        with self._work.begin(actor) as tx:
            stored = self._repository.revoke(name, now=tx.now)
            if stored is None:
                raise NotFound(f"no token named {name!r}")
            tx.audit(AuditTag.TOKEN_REVOKE, name)
        return stored

    def authenticate(self, credential: str | None) -> Principal:
        if credential is None:
            raise Unauthenticated("send an API token: Authorization: Bearer <token>")
        if not _TOKEN_RE.match(credential):
            raise Unauthenticated("not an API token of this service")
        digest = token_hash(credential)
        with self._work.reading():
            stored = self._repository.live_by_hash(digest)
            if stored is None:
                raise Unauthenticated("unknown or revoked token")
            now = self._work.clock()
            if stored.last_used_at is None or stored.last_used_at < now - TOUCH_INTERVAL:
                self._repository.touch(digest, now=now, older_than=now - TOUCH_INTERVAL)
        return Principal(stored.name, frozenset(stored.scopes), frozenset(stored.sources),
                         "token")
