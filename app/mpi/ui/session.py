"""The steward's session: a sealed cookie, and the CSRF token its forms carry.

The cookie holds the credential the pages act with (the pasted API token, or the access
token the identity provider issued at sign-in), the CSRF token and an expiry, sealed with
Fernet (AES-128-CBC and HMAC-SHA256, from ``cryptography``, already a dependency of the
JWT support) under a key derived from UI_SESSION_SECRET: the browser can neither read nor
change it, and any instance with the same secret can open it, so no session table is
needed. The cookie is ``HttpOnly``, ``SameSite=Strict``, limited to ``/ui``, and ``Secure``
unless the page is served over plain HTTP to a loopback address (the embedded default).

A form is accepted only with the session's CSRF token (compared in constant time), and,
when the browser says where the form came from (``Origin``), only from this site.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import falcon
from cryptography.fernet import Fernet, InvalidToken

from mpi.config import is_loopback_host

COOKIE = "mpi_ui"
PATH = "/ui"


@dataclass(frozen=True)
class Session:
    csrf: str
    expires: float
    token: str | None = None  # the credential the pages act with (None: AUTH_MODE=none)
    user: str | None = None  # who signed in, as shown on the pages
    # An OpenID Connect sign-in under way: state, nonce, PKCE verifier, where to go next.
    flow: dict[str, str] = field(default_factory=dict)


class Sessions:
    def __init__(self, secret: str, *, hours: int, clock: Callable[[], float] = time.time):
        key = base64.urlsafe_b64encode(hashlib.sha256(b"mpi-ui-session\0" + secret.encode())
                                       .digest())
        self._fernet = Fernet(key)
        self._lifetime = hours * 3600
        self._clock = clock

    def new(self, *, token: str | None = None, user: str | None = None,
            flow: dict[str, str] | None = None) -> Session:
        return Session(csrf=secrets.token_urlsafe(32), expires=self._clock() + self._lifetime,
                       token=token, user=user, flow=flow or {})

    def read(self, req: falcon.Request) -> Session | None:
        """The request's session, or None (no cookie, tampered with, or expired)."""
        raw = req.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data: dict[str, Any] = json.loads(self._fernet.decrypt(raw.encode(),
                                                                   ttl=self._lifetime))
            session = Session(**data)
        except (InvalidToken, ValueError, TypeError):
            return None
        return session if session.expires > self._clock() else None

    def write(self, req: falcon.Request, resp: falcon.Response, session: Session) -> None:
        sealed = self._fernet.encrypt(json.dumps(asdict(session)).encode()).decode()
        resp.set_cookie(COOKIE, sealed, path=PATH, http_only=True, same_site="Strict",
                        secure=_secure(req),
                        max_age=max(int(session.expires - self._clock()), 0))

    def clear(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.unset_cookie(COOKIE, path=PATH, same_site="Strict")

    def ensure(self, req: falcon.Request, resp: falcon.Response) -> Session:
        """The session, or a new empty one (with its CSRF token) set on the response."""
        session = self.read(req)
        if session is None:
            session = self.new()
            self.write(req, resp, session)
        return session


def _secure(req: falcon.Request) -> bool:
    """Secure cookies, except over plain HTTP to loopback (the embedded default)."""
    return req.scheme == "https" or not is_loopback_host(req.host)


def csrf_ok(req: falcon.Request, session: Session | None, submitted: str | None) -> bool:
    """Whether a form carries the session's CSRF token and, if the browser named its origin,
    comes from this site."""
    if session is None or not submitted:
        return False
    origin = req.get_header("Origin")
    if origin and origin != "null":
        parts = urlsplit(origin)
        if parts.netloc.lower() != req.netloc.lower():
            return False
    return hmac.compare_digest(session.csrf.encode(), submitted.encode())
