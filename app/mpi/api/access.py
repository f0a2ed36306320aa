"""Access control: what each route needs, checked before its responder runs.

Every responder declares what it needs with ``@requires(scope)`` (see
:mod:`mpi.domain.access` for the scopes) or ``@public`` (health, readiness, the API
document); a responder without either is refused, so a new route is closed until it says
otherwise, and the OpenAPI document shows the same declaration. :class:`AccessControl`
authenticates the bearer credential (401 with ``WWW-Authenticate: Bearer`` when it is
missing or invalid), then checks the scope (403 naming it, audited).

The client's address for the audit trail comes from ``X-Forwarded-For`` / ``Forwarded``
only when the connection comes from a proxy listed in TRUSTED_PROXIES.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import falcon

from mpi.api.errors import Problem, forbidden, unauthorized
from mpi.auth import Authenticator, Unauthenticated
from mpi.domain.access import IHE_SCOPES, Principal
from mpi.domain.audit import Actor, AuditTag
from mpi.storage.work import UnitOfWork

log = logging.getLogger("mpi.access")

F = TypeVar("F", bound=Callable[..., Any])
PUBLIC = "public"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_USER_ID_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
_BEARER_RE = re.compile(r"^Bearer +([A-Za-z0-9\-._~+/]+=*) *$", re.IGNORECASE)


def requires(scope: str, *, transaction: str | None = None) -> Callable[[F], F]:
    """Declare the scope a responder needs; ``transaction``, the IHE transaction it is
    part of, whose IUA scope (``mpi.domain.access.IHE_SCOPES``) grants it as well."""
    if transaction is not None and transaction not in IHE_SCOPES:
        raise ValueError(f"no IUA scope for {transaction!r}")

    def mark(fn: F) -> F:
        fn.__scope__ = scope  # type: ignore[attr-defined]
        fn.__transaction__ = transaction  # type: ignore[attr-defined]
        return fn
    return mark


def public(fn: F) -> F:
    """Declare a responder open to anyone (health, readiness, documentation)."""
    fn.__scope__ = PUBLIC  # type: ignore[attr-defined]
    return fn


def declared_scope(responder: Callable[..., Any]) -> str | None:
    """What ``responder`` declared: a scope, :data:`PUBLIC`, or None (nothing: refused)."""
    return getattr(responder, "__scope__", None)


def declared_transaction(responder: Callable[..., Any]) -> str | None:
    """The IHE transaction ``responder`` is part of (its IUA scope grants it), or None."""
    return getattr(responder, "__transaction__", None)


def bearer_credential(req: falcon.Request) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (RFC 6750 section 2.1), else None."""
    header = req.get_header("Authorization")
    if header is None:
        return None
    match = _BEARER_RE.match(header)
    if match is None:
        raise unauthorized("the Authorization header must be: Bearer <token>",
                           invalid_token=True)
    return match.group(1)


class AccessControl:
    """Falcon middleware: authenticate, then check the responder's declared scope."""

    def __init__(self, authenticator: Authenticator, work: UnitOfWork,
                 trusted_proxies: Sequence[Network] = ()):
        self._authenticator = authenticator
        self._work = work
        self._trusted = tuple(trusted_proxies)

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         params: dict[str, Any]) -> None:
        req.context.client_ip = client_address(req, self._trusted)
        if resource is None or isinstance(resource, falcon.routing.StaticRoute):
            return  # no route (404) or the documentation's static files
        responder = getattr(resource, f"on_{req.method.lower()}", None)
        if responder is None:
            return  # falcon answers 405 (or the default OPTIONS) without running anything
        need = declared_scope(responder)
        if need == PUBLIC:
            return
        # A page (mpi.ui) carries its credential in the session cookie, and a browser
        # without a usable one is sent to sign in; an API client sends a bearer token.
        credential_of = getattr(resource, "credential", bearer_credential)
        credential = credential_of(req)
        try:
            principal = self._authenticator.authenticate(credential)
        except Unauthenticated as exc:
            log.info("unauthenticated request to %s: %s", req.uri_template or "-", exc.detail,
                     extra={"request_id": getattr(req.context, "request_id", None)})
            signin = getattr(resource, "signin", None)
            if signin is not None:
                raise falcon.HTTPSeeOther(signin(req)) from None
            raise unauthorized(exc.detail, invalid_token=credential is not None) from None
        req.context.principal = principal
        transaction = declared_transaction(responder)
        if need is None or not principal.may(need, transaction):
            self._refuse(req, principal, need, transaction)

    def _refuse(self, req: falcon.Request, principal: Principal, need: str | None,
                transaction: str | None) -> None:
        denied = {"method": req.method, "route": req.uri_template, "scope": need}
        if transaction is not None:
            denied["transaction"] = transaction
        with self._work.begin(actor_for(req)) as tx:
            tx.audit(AuditTag.ACCESS_SCOPE_DENIED, None, new=denied)
        if need is None:
            raise Problem(falcon.HTTP_403, "Forbidden", "this route declares no scope")
        either = f" (or the IHE IUA scope {transaction})" if transaction else ""
        raise forbidden(f"this needs the scope {need}{either}, which the token does not grant",
                        need)


def actor_for(req: falcon.Request) -> Actor:
    """Who is acting: the authenticated client (on the steward's pages, the steward signed
    in), for whom (``X-User-ID``), from where."""
    principal: Principal | None = getattr(req.context, "principal", None)
    user = req.get_header("X-User-ID")
    if user is not None and not _USER_ID_RE.match(user):
        raise Problem(falcon.HTTP_400, "Bad request",
                      "X-User-ID must be 1-128 printable characters without spaces")
    agent = req.user_agent
    ip = getattr(req.context, "client_ip", None) or req.remote_addr
    steward = getattr(req.context, "steward", None)
    if principal is not None and steward is not None:
        # The steward's pages: the person signed in acts (for AUTH_MODE=jwt the identity
        # provider's user, not the pages' client id), whatever a header says.
        acting, user = steward, None
    else:
        acting = principal.client_id if principal is not None else "anonymous"
    return Actor(
        user_id=acting,
        on_behalf_of=user,
        sources=principal.sources if principal is not None else frozenset(),
        ip=ip,
        user_agent=agent[:512] if agent else None,
        request_id=getattr(req.context, "request_id", None),
    )


def client_address(req: falcon.Request, trusted: Sequence[Network]) -> str | None:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the
    nearest address in ``Forwarded`` (RFC 7239) or ``X-Forwarded-For`` that is not one,
    read right to left (the proxies append; whatever the client wrote is leftmost)."""
    peer = req.remote_addr
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = _forwarded_for(req)
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return _node(hop)
    return hops[0] if hops else peer


_OBFUSCATED_RE = re.compile(r"^(unknown|_[A-Za-z0-9._-]{1,62})$")


def _node(hop: str) -> str:
    """A forwarded hop as recorded: an address, RFC 7239's ``unknown`` or obfuscated
    ``_name``, or else ``invalid`` (whatever a client wrote is not stored as an address)."""
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return hop if _OBFUSCATED_RE.match(hop) else "invalid"


def _trusted(address: str | None, trusted: Sequence[Network]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def _forwarded_for(req: falcon.Request) -> list[str]:
    forwarded = req.get_header("Forwarded")
    if forwarded:
        hops = []
        for element in forwarded.split(","):
            for pair in element.split(";"):
                name, _, value = pair.strip().partition("=")
                if name.lower() == "for":
                    hops.append(_strip_port(value.strip().strip('"')))
        return [h for h in hops if h]
    xff = req.get_header("X-Forwarded-For")
    return [h.strip() for h in xff.split(",") if h.strip()] if xff else []


def _strip_port(node: str) -> str:
    """``[2001:db8::1]:443`` -> ``2001:db8::1``; ``192.0.2.1:80`` -> ``192.0.2.1``."""
    if node.startswith("["):
        return node[1:].split("]", 1)[0]
    if node.count(":") == 1:
        return node.split(":", 1)[0]
    return node
