"""The audit trail's vocabulary: who acts (:class:`Actor`), what they did (:class:`AuditTag`),
and an entry as it is read back (:class:`AuditEntryOut`, :class:`AuditPage`).

A tag reads ``source:subject:action`` (``patient:record:update``). Each tag names the
kind of entity its rows are about and whether it records a *read*: a unit of work whose
only audit rows are reads may commit without waiting for the disk flush
(``AUDIT_SYNCHRONOUS_READS``, see :mod:`mpi.storage.work`). That is declared here, per
tag, never worked out from the spelling.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from mpi.domain.types import UtcDatetime


@dataclass(frozen=True)
class Actor:
    """Who is acting, and from where.

    ``user_id`` is the authenticated client (the token's subject; ``local`` when
    AUTH_MODE=none, the command's name for CLI work); ``on_behalf_of`` the end user the
    client says it acts for (``X-User-ID``), recorded beside it, never trusted as the actor.
    ``sources`` are the sources the client may write records into (``*``: any); ``ip``
    is the client's address (behind a trusted proxy, the one the proxy saw).
    """

    user_id: str = "anonymous"
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    on_behalf_of: str | None = None
    sources: frozenset[str] = frozenset({"*"})

    def may_write(self, source: str) -> bool:
        return "*" in self.sources or source in self.sources


READ = True


class AuditTag(StrEnum):
    """Every audit action the service records; the value is what the row stores."""

    entity_type: str
    is_read: bool

    def __new__(cls, value: str, entity_type: str, read: bool = False) -> AuditTag:
        member = str.__new__(cls, value)
        member._value_ = value
        member.entity_type = entity_type
        member.is_read = read
        return member

    # Patient records.
    PATIENT_CREATE = "patient:record:create", "patient"
    PATIENT_UPDATE = "patient:record:update", "patient"
    PATIENT_DELETE = "patient:record:delete", "patient"
    PATIENT_READ = "patient:record:read", "patient", READ
    PATIENT_LIST = "patient:record:list", "patient", READ
    PATIENT_SEARCH = "patient:record:search", "patient", READ
    # Enterprise identity: where a record was linked, and how.
    LINK_AUTO = "identity:link:auto", "patient"
    LINK_NEW = "identity:link:new", "patient"
    LINK_MANUAL = "identity:link:manual", "patient"
    LINK_REVIEW = "identity:link:review", "patient"
    UNLINK_MANUAL = "identity:unlink:manual", "patient"
    MERGE_CREATE = "identity:merge:create", "person"
    MERGE_AUTO = "identity:merge:auto", "person"
    MERGE_UNDO = "identity:merge:undo", "person"
    REVIEW_OPEN = "identity:review:open", "review"
    REVIEW_RESOLVE = "identity:review:resolve", "review"
    REVIEW_READ = "identity:review:read", "review", READ
    REVIEW_LIST = "identity:review:list", "review", READ
    MATCH_QUERY = "identity:match:query", "person", READ
    PERSON_READ = "person:record:read", "person", READ
    PERSON_HISTORY_READ = "person:history:read", "person", READ
    # Reading what shows record content: the audit trail itself and the change feed.
    AUDIT_TRAIL_READ = "audit:trail:read", "patient", READ
    AUDIT_RECENT_READ = "audit:recent:read", "audit", READ
    AUDIT_USER_READ = "audit:user:read", "user", READ
    EVENTS_FEED_READ = "events:feed:read", "events", READ
    # Operations: a scrape of the metrics (counts and timings only).
    METRICS_READ = "metrics:scrape:read", "metrics", READ
    # Refusals: a route the client's scopes do not cover, a source it may not write.
    ACCESS_SCOPE_DENIED = "access:scope:denied", "route"
    ACCESS_SOURCE_DENIED = "access:source:denied", "patient"
    # Administration: API tokens (AUTH_MODE=token).
    TOKEN_CREATE = "access:token:create", "token"
    TOKEN_REVOKE = "access:token:revoke", "token"
    # Administration: identity domains.
    DOMAIN_CREATE = "admin:domain:create", "domain"
    DOMAIN_DELETE = "admin:domain:delete", "domain"
    DOMAIN_LIST = "admin:domain:list", "domain", READ
    # Administration: HL7 v2 senders; and messages refused before they were read.
    HL7_SENDER_CREATE = "admin:hl7-sender:create", "hl7-sender"
    HL7_SENDER_DELETE = "admin:hl7-sender:delete", "hl7-sender"
    HL7_MESSAGE_REJECTED = "hl7:message:rejected", "hl7-sender"

    @classmethod
    def link(cls, how: str) -> AuditTag:
        """The tag of a link made ``how`` (auto, new, manual or review)."""
        return _LINKS[how]


_LINKS = {"auto": AuditTag.LINK_AUTO, "new": AuditTag.LINK_NEW,
          "manual": AuditTag.LINK_MANUAL, "review": AuditTag.LINK_REVIEW,
          # A source merged the record into another (PIXm): a placement by hand, as a
          # steward's, by the source's authority.
          "merge": AuditTag.LINK_MANUAL}


# One audit row, as the audit trail endpoints return it (named as in the API document; a
# docstring would become its schema's description there).
class AuditEntryOut(BaseModel):

    id: int
    occurred_at: UtcDatetime
    action: str
    actor: str = Field(description="The authenticated client (the token's subject)")
    on_behalf_of: str | None = Field(
        default=None, description="The end user the client said it acts for (X-User-ID)")
    entity_type: str
    entity_id: str | None = None
    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    old_value: Any = None
    new_value: Any = None


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None = None
