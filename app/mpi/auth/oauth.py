"""AUTH_MODE=jwt: OAuth 2.0 bearer tokens (JWT access tokens) from the hospital's OIDC
identity provider, verified with PyJWT against the provider's published keys (JWKS).

What is checked: the signature, with an algorithm from AUTH_ALGORITHMS only (asymmetric:
never ``none``, never HS*), by the key the token's ``kid`` names; ``iss`` and ``aud``;
``exp`` (required) and ``nbf`` with AUTH_LEEWAY seconds of clock skew. The client is the
first of ``client_id`` (RFC 9068), ``azp`` (OIDC) and ``sub``; its scopes come from
``scope`` (space-separated, RFC 9068) or ``scp`` (a list, as some providers send); the
sources it may write from the claim AUTH_SOURCES_CLAIM, else AUTH_CLIENT_SOURCES.

The key set is fetched once and cached. A token naming a key id the cache lacks (the
provider rotated its keys) makes one refetch, at most once per AUTH_JWKS_COOLDOWN
seconds, so a flood of made-up key ids cannot turn into a flood of fetches; the set is
also refreshed when it is older than :data:`MAX_AGE`. PyJWT parses and verifies; this
module only decides when to fetch.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jwt

from mpi.auth import Unauthenticated
from mpi.config import Settings
from mpi.domain.access import Principal, parse_sources

log = logging.getLogger("mpi.auth")

#: Seconds after which the cached key set is fetched again (keys roll over).
MAX_AGE = 3600.0
FETCH_TIMEOUT = 5.0
_CLIENT_RE = re.compile(r"^[\x21-\x7e]{1,128}$")


class KeySet:
    """The identity provider's signing keys by key id, fetched from ``load``."""

    def __init__(self, load: Callable[[], Mapping[str, Any]], *, cooldown: float,
                 clock: Callable[[], float] = time.monotonic):
        self._load = load
        self._cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self.fetches = 0

    def key(self, kid: str | None) -> jwt.PyJWK:
        with self._lock:
            now = self._clock()
            stale = self._fetched_at is None or now - self._fetched_at >= MAX_AGE
            missing = kid not in self._keys and (kid is not None or len(self._keys) != 1)
            may_refetch = self._fetched_at is None or now - self._fetched_at >= self._cooldown
            if stale or (missing and may_refetch):
                self._refresh(now)
            if kid is None and len(self._keys) == 1:
                return next(iter(self._keys.values()))
            found = self._keys.get(kid)
            if found is None:
                raise Unauthenticated("the token's signing key is not one of the identity "
                                      "provider's" if kid else "the token names no key (kid)")
            return found

    def _refresh(self, now: float) -> None:
        try:
            document = self._load()
            keys = jwt.PyJWKSet.from_dict(dict(document)).keys
        except (OSError, ValueError, jwt.PyJWKSetError, jwt.PyJWKError) as exc:
            log.warning("cannot read the identity provider's keys (JWKS): %s",
                        type(exc).__name__)
            self._fetched_at = now  # the cooldown holds after a failure too
            if not self._keys:
                raise Unauthenticated("the identity provider's keys are unavailable") from exc
            return
        self._keys = {k.key_id: k for k in keys
                      if (k.public_key_use in (None, "sig"))}
        self._fetched_at = now
        self.fetches += 1


def url_loader(url: str) -> Callable[[], Mapping[str, Any]]:
    def load() -> Mapping[str, Any]:
        # AUTH_JWKS_URL is checked to be https:// (http:// only on localhost) at start-up.
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:  # noqa: S310
            return json.loads(response.read(1 << 20))
    return load


def file_loader(path: Path) -> Callable[[], Mapping[str, Any]]:
    return lambda: json.loads(path.read_text(encoding="utf-8"))


class BearerTokens:
    """Verifies JWT access tokens; see the module docstring."""

    mode = "jwt"

    def __init__(self, settings: Settings, *, keys: KeySet | None = None,
                 now: Callable[[], float] = time.time):
        if keys is None:
            load = (file_loader(settings.auth_jwks_file) if settings.auth_jwks_file
                    else url_loader(settings.auth_jwks_url))
            keys = KeySet(load, cooldown=settings.auth_jwks_cooldown)
        self.keys = keys
        self._settings = settings
        self._now = now

    def authenticate(self, credential: str | None) -> Principal:
        if credential is None:
            raise Unauthenticated("send an access token from the identity provider: "
                                  "Authorization: Bearer <token>")
        return self.principal(self.verify(credential, audience=self._settings.auth_audience))

    def verify(self, credential: str, *, audience: str) -> dict[str, Any]:
        """The claims of a token the identity provider signed for ``audience`` (an access
        token for this service; an ID token for the steward pages' client)."""
        s = self._settings
        try:
            header = jwt.get_unverified_header(credential)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("not a JWT") from exc
        if header.get("alg") not in s.auth_algorithms:
            raise Unauthenticated(f"signature algorithm {header.get('alg')!r} is not accepted")
        key = self.keys.key(header.get("kid"))
        try:
            claims = jwt.decode(
                credential, key.key, algorithms=list(s.auth_algorithms),
                audience=audience, issuer=s.auth_issuer, leeway=s.auth_leeway,
                options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("the token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthenticated("the token is not valid yet (nbf)") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated("the token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated("the token is from another issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token has no {exc.claim} claim") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("the token's signature or content is invalid") from exc
        return dict(claims)

    def principal(self, claims: Mapping[str, Any]) -> Principal:
        client = next((claims[c] for c in ("client_id", "azp", "sub")
                       if isinstance(claims.get(c), str) and claims[c]), None)
        if client is None or not _CLIENT_RE.match(client):
            raise Unauthenticated("the token names no client (client_id, azp or sub)")
        scopes = claims.get("scope", claims.get("scp", ""))
        if isinstance(scopes, str):
            scopes = scopes.split()
        if not isinstance(scopes, list) or not all(isinstance(x, str) for x in scopes):
            raise Unauthenticated("the token's scope claim is malformed")
        return Principal(client, frozenset(scopes), self._sources(client, claims), "jwt")

    def _sources(self, client: str, claims: Mapping[str, Any]) -> frozenset[str]:
        claim = self._settings.auth_sources_claim
        value = claims.get(claim) if claim else None
        if value is None:
            return frozenset(self._settings.auth_client_sources.get(client, frozenset()))
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise Unauthenticated(f"the token's {claim} claim is malformed")
        try:
            # Each item is one source name: "two words" or "a,b" is refused, not split.
            if any("," in item or not item.strip() for item in value):
                raise ValueError("one source name per item")
            return frozenset().union(*(parse_sources(item) for item in value))
        except ValueError as exc:
            raise Unauthenticated(f"the token's {claim} claim is malformed") from exc
