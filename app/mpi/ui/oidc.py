"""Signing stewards in through the hospital's OpenID Connect provider (AUTH_MODE=jwt).

The authorization code flow with PKCE (RFC 6749 section 4.1, RFC 7636 with ``S256``, OpenID
Connect Core 1.0 section 3.1): the pages send the browser to the provider's authorization
endpoint with a fresh ``state``, ``nonce`` and code challenge, kept in the sealed session
cookie; the provider sends it back with a code, which the service exchanges, with the
verifier, at the token endpoint over a back channel. The ID token must be signed by the
provider (the same JWKS as access tokens), be for the pages' client and carry the nonce;
the access token must be one the API itself accepts (issuer, audience, the steward scope),
because it is what every page then acts with.

The endpoints come from the provider's discovery document
(``AUTH_ISSUER/.well-known/openid-configuration``), read once and kept. Nothing here is
hand-rolled cryptography: PKCE is SHA-256 and base64url (standard library), tokens are
verified by PyJWT through :class:`mpi.auth.oauth.BearerTokens`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from mpi.auth import Unauthenticated
from mpi.auth.oauth import BearerTokens
from mpi.config import Settings
from mpi.domain.access import Principal

TIMEOUT = 10.0
_USER_RE = re.compile(r"^[\x21-\x7e]{1,128}$")  # as an audit row's actor


class SignInFailed(Exception):
    """The sign-in cannot finish; the message is safe to show the steward."""


@dataclass(frozen=True)
class Endpoints:
    authorization: str
    token: str


@dataclass(frozen=True)
class Started:
    url: str  # where to send the browser
    flow: dict[str, str]  # what the session keeps until the provider sends it back


class OidcClient:
    def __init__(self, settings: Settings, tokens: BearerTokens):
        self._settings = settings
        self._tokens = tokens
        self._endpoints: Endpoints | None = None
        self._lock = threading.Lock()

    def endpoints(self) -> Endpoints:
        with self._lock:
            if self._endpoints is None:
                issuer = self._settings.auth_issuer.rstrip("/")
                document = _get_json(f"{issuer}/.well-known/openid-configuration")
                try:
                    self._endpoints = Endpoints(_url(document["authorization_endpoint"]),
                                                _url(document["token_endpoint"]))
                except (KeyError, TypeError, ValueError) as exc:
                    raise SignInFailed("the identity provider's discovery document has no "
                                       "usable authorization and token endpoints") from exc
            return self._endpoints

    def start(self, redirect_uri: str, next_path: str) -> Started:
        verifier = secrets.token_urlsafe(48)  # 64 characters, within RFC 7636's 43-128
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self._settings.ui_oidc_client_id,
            "redirect_uri": redirect_uri, "scope": self._settings.ui_oidc_scopes,
            "state": state, "nonce": nonce, "code_challenge": challenge(verifier),
            "code_challenge_method": "S256"})
        authorization = self.endpoints().authorization
        separator = "&" if urllib.parse.urlsplit(authorization).query else "?"
        return Started(f"{authorization}{separator}{query}",
                       {"state": state, "nonce": nonce, "verifier": verifier,
                        "redirect_uri": redirect_uri, "next": next_path})

    def finish(self, flow: dict[str, str], params: dict[str, str]
               ) -> tuple[str, str, Principal]:
        """From the provider's answer ``params``: the access token, the steward it was
        issued to (the ID token's ``preferred_username``, else its ``sub``) and the
        principal the access token makes."""
        if "error" in params:
            raise SignInFailed(f"the identity provider refused the sign-in: "
                               f"{params['error'][:100]}")
        if not flow or not secrets.compare_digest(params.get("state", ""),
                                                  flow.get("state", "")):
            raise SignInFailed("this sign-in was not started here, or has expired; "
                               "sign in again")
        code = params.get("code")
        if not code:
            raise SignInFailed("the identity provider sent no code")
        s = self._settings
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": flow["redirect_uri"], "client_id": s.ui_oidc_client_id,
                "code_verifier": flow["verifier"]}
        headers = {"Accept": "application/json",
                   "Content-Type": "application/x-www-form-urlencoded"}
        if s.ui_oidc_client_secret:  # a confidential client: HTTP Basic (RFC 6749 2.3.1)
            pair = (f"{urllib.parse.quote(s.ui_oidc_client_id, safe='')}:"
                    f"{urllib.parse.quote(s.ui_oidc_client_secret, safe='')}")
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        answer = _post_form(self.endpoints().token, form, headers)
        access, id_token = answer.get("access_token"), answer.get("id_token")
        if not isinstance(access, str) or not isinstance(id_token, str):
            raise SignInFailed("the identity provider's answer has no access token and ID "
                               "token")
        try:
            identity = self._tokens.verify(id_token, audience=s.ui_oidc_client_id)
            principal = self._tokens.authenticate(access)
        except Unauthenticated as exc:
            raise SignInFailed(f"the identity provider's token was refused: {exc.detail}"
                               ) from None
        if not secrets.compare_digest(str(identity.get("nonce", "")), flow["nonce"]):
            raise SignInFailed("the ID token does not answer this sign-in (nonce)")
        user = next((identity[c] for c in ("preferred_username", "sub")
                     if isinstance(identity.get(c), str) and _USER_RE.match(identity[c])),
                    None)
        if user is None:
            raise SignInFailed("the ID token names no user (preferred_username or sub)")
        return access, user, principal


def challenge(verifier: str) -> str:
    """RFC 7636 S256: base64url(SHA-256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not a URL")
    parts = urllib.parse.urlsplit(value)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and local):
        raise ValueError("an identity provider endpoint must be https://")
    return value


def _get_json(url: str) -> dict[str, Any]:
    request = urllib.request.Request(_url(url), headers={"Accept": "application/json"})  # noqa: S310
    return _answer(request, "discovery document")


def _post_form(url: str, form: dict[str, str], headers: dict[str, str]) -> dict[str, Any]:
    body = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    return _answer(request, "token answer")


def _answer(request: urllib.request.Request, what: str) -> dict[str, Any]:
    """The provider's JSON object answering ``request`` (at most 1 MiB)."""
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            answer = json.loads(response.read(1 << 20))
    except urllib.error.HTTPError as exc:
        raise SignInFailed(f"the identity provider refused the request ({exc.code})"
                           ) from None
    except (OSError, ValueError) as exc:
        raise SignInFailed("the identity provider cannot be reached "
                           f"({type(exc).__name__})") from exc
    if not isinstance(answer, dict):
        raise SignInFailed(f"the identity provider's {what} is not an object")
    return answer
