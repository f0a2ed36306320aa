"""Who may do what: scopes, the principal a request acts as, and what a route needs.

Scopes are OAuth 2.0 scope strings (RFC 6749 section 3.3), in two vocabularies:

- **SMART on FHIR** system scopes for the FHIR resources the MPI serves (``Patient``,
  ``Person``): v2 ``system/Patient.rs`` (any in-order subset of ``c r u d s``: create,
  read, update, delete, search) and v1 ``system/Patient.read`` (= ``rs``),
  ``system/Patient.write`` (= ``cud``) and ``system/Patient.*`` (= ``cruds``); the
  resource may be ``*``. Only ``system/`` scopes grant anything: the MPI serves systems,
  and ``patient/`` or ``user/`` scopes need a launch context it does not have. A scope
  with a query (``system/Patient.rs?identifier=...``, SMART v2 granular scopes) is
  narrower than the whole resource and grants no route here.
- **IHE IUA transaction scopes** (:data:`IHE_SCOPES`): ``ITI-78``, ``ITI-119``, ``ITI-83``
  and ``ITI-104``, each as its transaction's "Use with the Internet User Authorization
  (IUA) Profile" section defines it: the scope "authorizes the full transaction", here the
  routes that make it up and nothing else (a route names its transaction next to its SMART
  scope, and either grants it).
- **The MPI's own** for what FHIR has no word for: :data:`STEWARD` (review queue, link,
  unlink, merge, undo), :data:`AUDIT` (the audit trail), :data:`FEED` (the change feed),
  :data:`METRICS` (the Prometheus metrics) and :data:`ADMIN` (administration).

SMART's grammar is small and there is no maintained Python library for it, so it is
parsed here (about 40 lines) rather than pulled in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: The MPI's own scopes.
STEWARD = "mpi:steward"
AUDIT = "mpi:audit"
FEED = "mpi:feed"
ADMIN = "mpi:admin"
METRICS = "mpi:metrics"
MPI_SCOPES = {
    STEWARD: "steward actions: the review queue, link, unlink, merge and undo",
    AUDIT: "read the audit trail",
    FEED: "read the change feed (every version of every record)",
    ADMIN: "administration (reserved; tokens are managed with the mpi command)",
    METRICS: "scrape the Prometheus metrics (counts and timings, no patient data)",
}
#: IHE IUA scopes: the IHE transaction each authorizes in full (PDQm 3.x ITI-78 and
#: ITI-119, PIXm 3.x ITI-83 and ITI-104, "Security Considerations").
IHE_SCOPES = {
    "ITI-78": "PDQm Mobile Patient Demographics Query: Patient search (GET and POST "
              "_search) and read",
    "ITI-119": "PDQm Patient Demographics Match: Patient $match",
    "ITI-83": "PIXm Mobile Patient Identifier Cross-reference Query: Patient $ihe-pix",
    "ITI-104": "PIXm Patient Identity Feed FHIR: conditional update (add, revise, merge) and "
               "conditional delete (remove) of Patient by identifier, within the client's "
               "sources",
}
#: The FHIR resources the MPI serves, for SMART scopes.
RESOURCES = ("Patient", "Person")
PERMISSIONS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SMART_RE = re.compile(r"^(?P<context>patient|user|system)/(?P<resource>\*|[A-Z][A-Za-z]*)"
                       r"\.(?P<perms>[a-z*]+)(?P<query>\?.*)?$")
#: RFC 6749 scope-token characters (no space, no quote, no backslash).
_SCOPE_TOKEN_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")


def smart(resource: str, permission: str) -> str:
    """The SMART v2 system scope a route needs, e.g. ``smart("Patient", "r")``."""
    if resource not in RESOURCES or permission not in PERMISSIONS or len(permission) != 1:
        raise ValueError(f"no such SMART need: {resource}.{permission}")
    return f"system/{resource}.{permission}"


def _smart_grant(scope: str) -> tuple[str, str] | None:
    """(resource or ``*``, permission letters) a granted SMART scope gives, else None."""
    match = _SMART_RE.match(scope)
    if match is None or match["context"] != "system" or match["query"]:
        return None
    perms = match["perms"]
    if perms in _V1:
        return match["resource"], _V1[perms]
    # v2: a non-empty subsequence of "cruds", in that order, no repeats.
    position = -1
    for letter in perms:
        found = PERMISSIONS.find(letter)
        if found <= position:
            return None
        position = found
    return match["resource"], perms


def grants(granted: Iterable[str], need: str) -> bool:
    """Whether any of the ``granted`` scopes gives what ``need`` names."""
    wanted = _smart_grant(need)
    if wanted is None:
        return need in set(granted)
    resource, permission = wanted
    for scope in granted:
        given = _smart_grant(scope)
        if given is not None and given[0] in ("*", resource) and permission in given[1]:
            return True
    return False


def check_scope(scope: str) -> str:
    """``scope`` if this service knows what it grants; ValueError saying why not."""
    if not _SCOPE_TOKEN_RE.match(scope):
        raise ValueError(f"{scope!r} is not an OAuth scope token")
    if scope in MPI_SCOPES or scope in IHE_SCOPES:
        return scope
    match = _SMART_RE.match(scope)
    if match is None:
        raise ValueError(f"unknown scope {scope!r} (SMART system/<Resource>.<cruds>, an IHE "
                         f"transaction {', '.join(IHE_SCOPES)}, or one of "
                         f"{', '.join(sorted(MPI_SCOPES))})")
    if match["context"] != "system":
        raise ValueError(f"{scope!r}: only system/ scopes grant anything here")
    if match["query"]:
        raise ValueError(f"{scope!r}: granular scopes (with ?...) are not supported")
    if match["resource"] != "*" and match["resource"] not in RESOURCES:
        raise ValueError(f"{scope!r}: this service serves {', '.join(RESOURCES)}")
    if _smart_grant(scope) is None:
        raise ValueError(f"{scope!r}: permissions are c, r, u, d, s in that order, or "
                         "read, write, *")
    return scope


#: A source name, as PatientInput.source accepts it.
SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
#: A client may write to every source.
ANY_SOURCE = "*"


@dataclass(frozen=True)
class Principal:
    """The authenticated client a request acts as.

    ``client_id`` is the token's subject (recorded as the actor on every audit row);
    ``sources`` the sources it may write records into (``*``: any); ``name`` says how it
    was authenticated, for the audit trail and logs (never the token itself).
    """

    client_id: str
    scopes: frozenset[str]
    sources: frozenset[str] = frozenset()
    method: str = "none"

    def may(self, need: str, transaction: str | None = None) -> bool:
        """Whether a scope grants ``need``, or the IHE ``transaction`` it is part of."""
        return grants(self.scopes, need) or (transaction is not None
                                              and transaction in self.scopes)

    def may_write(self, source: str) -> bool:
        return ANY_SOURCE in self.sources or source in self.sources


#: Who acts when AUTH_MODE=none (loopback only): everything is allowed.
LOCAL = Principal("local", frozenset({"system/*.cruds", *MPI_SCOPES}),
                  frozenset({ANY_SOURCE}), "none")


def parse_sources(text: str) -> frozenset[str]:
    """``"ehr-1, lab"`` -> the set of source names (``*`` for any)."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    for name in names:
        if name != ANY_SOURCE and not (len(name) <= 100 and SOURCE_RE.match(name)):
            raise ValueError(f"{name!r} is not a source name (letters, digits, '.', '_', "
                             "':' or '-'; or * for any)")
    return frozenset(names)


__all__ = [
    "ADMIN",
    "ANY_SOURCE",
    "AUDIT",
    "FEED",
    "IHE_SCOPES",
    "LOCAL",
    "MPI_SCOPES",
    "STEWARD",
    "Principal",
    "check_scope",
    "grants",
    "parse_sources",
    "smart",
]
