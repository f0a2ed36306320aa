"""Who is calling: the authenticators of AUTH_MODE (none, token, jwt) and API tokens.

An authenticator turns the bearer credential of a request into a
:class:`~mpi.domain.access.Principal` (the client, its scopes, the sources it may write)
or raises :class:`Unauthenticated`. What a route needs is declared on the route
(:mod:`mpi.api.access`); this package only establishes who the caller is.
"""

from __future__ import annotations

from typing import Protocol

from mpi.domain.access import Principal


class Unauthenticated(Exception):
    """No usable credential; ``detail`` says why (safe to show the caller)."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class Authenticator(Protocol):
    #: AUTH_MODE this authenticator implements.
    mode: str

    def authenticate(self, credential: str | None) -> Principal:
        """The principal for a bearer ``credential`` (None: none was sent)."""
        ...


class NoAuthentication:
    """AUTH_MODE=none (loopback only): every caller is :data:`~mpi.domain.access.LOCAL`."""

    mode = "none"

    def authenticate(self, credential: str | None) -> Principal:
        from mpi.domain.access import LOCAL

        return LOCAL


__all__ = ["Authenticator", "NoAuthentication", "Unauthenticated"]
