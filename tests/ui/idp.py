"""A small OpenID Connect provider on 127.0.0.1 for the sign-in tests: discovery, an
authorization endpoint that signs its one user in at once, a token endpoint that checks the
code, the redirect URI and the PKCE verifier (S256), and the JWKS. It implements just what
the steward pages' sign-in uses, as the specifications say it (OIDC Core 3.1, RFC 7636)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import secrets
import threading
import time
import urllib.parse
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

CLIENT_ID = "mpi-steward-ui"
AUDIENCE = "mpi"


class Provider:
    def __init__(self, *, user: str = "ann.steward", scope: str = "openid mpi:steward"):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.user, self.scope = user, scope
        self.codes: dict[str, dict[str, str]] = {}
        self.token_requests: list[dict[str, str]] = []
        self.authorizations: list[dict[str, str]] = []
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path == "/.well-known/openid-configuration":
                    self._json(provider.discovery())
                elif url.path == "/certs":
                    self._json(provider.jwks())
                elif url.path == "/authorize":
                    self._redirect(provider.authorize(query))
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                status, body = provider.exchange(form)
                self._json(body, status)

            def _json(self, body: Any, status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def discovery(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/certs",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"]}

    def jwks(self) -> dict[str, Any]:
        key = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        key.update(kid="idp-1", use="sig", alg="RS256")
        return {"keys": [key]}

    def authorize(self, query: dict[str, str]) -> str:
        self.authorizations.append(query)
        assert query["response_type"] == "code" and query["client_id"] == CLIENT_ID
        assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
        code = secrets.token_urlsafe(16)
        self.codes[code] = query
        back = {"code": code, "state": query["state"]}
        return f"{query['redirect_uri']}?{urllib.parse.urlencode(back)}"

    def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.token_requests.append(form)
        asked = self.codes.pop(form.get("code", ""), None)
        if asked is None or form.get("grant_type") != "authorization_code":
            return 400, {"error": "invalid_grant"}
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()
                                             ).rstrip(b"=").decode()
        if challenge != asked["code_challenge"] or form.get("redirect_uri") != asked[
                "redirect_uri"] or form.get("client_id") != CLIENT_ID:
            return 400, {"error": "invalid_grant"}
        now = int(time.time())
        common = {"iss": self.issuer, "sub": "f2c1a7e0-user", "iat": now, "exp": now + 300}
        access = self.sign({**common, "aud": AUDIENCE, "azp": CLIENT_ID,
                            "client_id": CLIENT_ID, "scope": self.scope})
        identity = self.sign({**common, "aud": CLIENT_ID, "nonce": asked["nonce"],
                              "preferred_username": self.user})
        return 200, {"access_token": access, "id_token": identity, "token_type": "Bearer",
                     "expires_in": 300}

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "idp-1"})
