"""AUTH_MODE=jwt: bearer JWTs verified against a JWKS served over real HTTP (and a file)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from mpi.auth import Unauthenticated
from mpi.auth.oauth import BearerTokens, KeySet
from mpi.config import Settings

ISSUER = "https://idp.test/realms/hospital"
AUDIENCE = "mpi"


class Idp:
    """A test identity provider: RSA and EC signing keys, tokens, and its JWKS."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.published = ["rsa-1", "ec-1"]

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            if kid.startswith("rsa"):
                key = json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key()))
                key.update(kid=kid, use="sig", alg="RS256")
            else:
                key = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
                key.update(kid=kid, use="sig", alg="ES256")
            keys.append(key)
        return {"keys": keys}

    def token(self, *, kid: str = "rsa-1", alg: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-lab", "client_id": "lab-system",
                "scope": "system/Patient.cruds mpi:feed", "iat": now, "exp": now + 300,
                **claims}
        body = {k: v for k, v in body.items() if v is not None}
        key = self.rsa if alg.startswith("RS") else self.ec
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture
def idp() -> Idp:
    return Idp()


@pytest.fixture
def jwks_url(idp: Idp) -> Iterator[tuple[str, list[str]]]:
    """The IdP's JWKS over HTTP on 127.0.0.1; the list records each fetch."""
    fetches: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(self.path)
            body = json.dumps(idp.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/certs", fetches
    server.shutdown()
    server.server_close()


def _settings(url: str = "", file: Path | None = None, **overrides: Any) -> Settings:
    return Settings.defaults(auth_mode="jwt", auth_issuer=ISSUER, auth_audience=AUDIENCE,
                             auth_jwks_url=url, auth_jwks_file=file, **overrides)


def test_a_good_token_names_the_client_its_scopes_and_sources(idp, jwks_url):
    url, fetches = jwks_url
    bearer = BearerTokens(_settings(url, auth_client_sources={"lab-system": frozenset({"lab"})}))
    principal = bearer.authenticate(idp.token())
    assert principal.client_id == "lab-system" and principal.method == "jwt"
    assert principal.scopes == {"system/Patient.cruds", "mpi:feed"}
    assert principal.sources == {"lab"}
    assert bearer.authenticate(idp.token(kid="ec-1", alg="ES256")).client_id == "lab-system"
    assert len(fetches) == 1  # cached


def test_client_claims_in_order_and_scp_lists(idp, jwks_url):
    bearer = BearerTokens(_settings(jwks_url[0]))
    assert bearer.authenticate(idp.token(client_id=None, azp="ehr")).client_id == "ehr"
    only_sub = bearer.authenticate(idp.token(client_id=None, scope=None,
                                             scp=["system/Person.r"]))
    assert only_sub.client_id == "svc-lab" and only_sub.scopes == {"system/Person.r"}
    claimed = bearer.authenticate(idp.token(mpi_sources=["lab", "lab-2"]))
    assert claimed.sources == {"lab", "lab-2"}
    assert bearer.authenticate(idp.token(mpi_sources="lab lab-3")).sources == {"lab", "lab-3"}
    with pytest.raises(Unauthenticated, match="mpi_sources claim is malformed"):
        bearer.authenticate(idp.token(mpi_sources=["two words"]))
    with pytest.raises(Unauthenticated, match="names no client"):
        bearer.authenticate(idp.token(client_id=None, sub=None))


@pytest.mark.parametrize(("claims", "reason"), [
    ({"exp": int(time.time()) - 3600}, "expired"),
    ({"nbf": int(time.time()) + 3600}, "not valid yet"),
    ({"aud": "someone-else"}, "another audience"),
    ({"iss": "https://evil.test"}, "another issuer"),
    ({"exp": None}, "no exp claim"),
])
def test_claims_are_checked(idp, jwks_url, claims, reason):
    with pytest.raises(Unauthenticated, match=reason):
        BearerTokens(_settings(jwks_url[0])).authenticate(idp.token(**claims))


def test_leeway_allows_small_clock_skew_only(idp, jwks_url):
    bearer = BearerTokens(_settings(jwks_url[0], auth_leeway=30))
    assert bearer.authenticate(idp.token(exp=int(time.time()) - 10))
    with pytest.raises(Unauthenticated, match="expired"):
        bearer.authenticate(idp.token(exp=int(time.time()) - 60))


def test_unsigned_symmetric_and_unlisted_algorithms_are_refused(idp, jwks_url):
    bearer = BearerTokens(_settings(jwks_url[0], auth_algorithms=("RS256",)))
    unsigned = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x",
                           "exp": int(time.time()) + 60}, "", algorithm="none")
    with pytest.raises(Unauthenticated, match="'none' is not accepted"):
        bearer.authenticate(unsigned)
    # HS256 keyed with the public key (the classic confusion attack)
    public_pem = idp.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    forged = _hand_signed_hs256({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"},
                                {"iss": ISSUER, "aud": AUDIENCE, "sub": "x",
                                 "exp": int(time.time()) + 60}, public_pem)
    with pytest.raises(Unauthenticated, match="'HS256' is not accepted"):
        bearer.authenticate(forged)
    with pytest.raises(Unauthenticated, match="'ES256' is not accepted"):
        bearer.authenticate(idp.token(kid="ec-1", alg="ES256"))


def _hand_signed_hs256(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    """What an attacker would send (PyJWT itself refuses to sign with a public key)."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def test_a_token_signed_by_another_key_is_refused(idp, jwks_url):
    other = Idp()
    with pytest.raises(Unauthenticated, match="signature or content is invalid"):
        BearerTokens(_settings(jwks_url[0])).authenticate(other.token())
    with pytest.raises(Unauthenticated, match="not a JWT"):
        BearerTokens(_settings(jwks_url[0])).authenticate("mpi_not-a-jwt")


def test_unknown_key_ids_refetch_at_most_once_per_cooldown(idp, jwks_url):
    url, fetches = jwks_url
    now = [1000.0]
    bearer = BearerTokens(_settings(url))
    bearer.keys = KeySet(bearer.keys._load, cooldown=60, clock=lambda: now[0])
    bearer.authenticate(idp.token())
    assert len(fetches) == 1
    for n in range(20):  # made-up key ids: one refetch at most within the cooldown
        with pytest.raises(Unauthenticated, match="not one of the identity provider's"):
            bearer.authenticate(idp.token(kid=f"made-up-{n}"))
    assert len(fetches) == 1
    # The provider rotates: a new key id appears; after the cooldown it is fetched once.
    idp.published.append("rsa-2")
    now[0] += 61
    assert bearer.authenticate(idp.token(kid="rsa-2")).client_id == "lab-system"
    assert len(fetches) == 2


def test_keys_from_a_file_for_air_gapped_sites(idp, tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp.jwks()))
    assert BearerTokens(_settings(file=path)).authenticate(idp.token()).client_id == "lab-system"


def test_an_unreachable_key_set_is_a_401_not_a_crash(idp):
    bearer = BearerTokens(_settings("http://127.0.0.1:9/certs"))
    with pytest.raises(Unauthenticated, match="keys are unavailable"):
        bearer.authenticate(idp.token())
