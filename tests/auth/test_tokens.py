"""API tokens (AUTH_MODE=token): made, checked, listed and revoked, on both backends."""

from __future__ import annotations

import pytest

from mpi.auth import Unauthenticated
from mpi.auth.tokens import token_hash
from mpi.domain.audit import Actor
from mpi.domain.errors import Conflict, InvalidInput, NotFound
from mpi.storage.models import ApiTokenRow, AuditEventRow

ADMIN = Actor("mpi token (root)")


def test_a_token_is_shown_once_and_stored_only_as_its_hash(services, clock):
    made = services.tokens.create("lab-system", ["system/Patient.cruds", "mpi:feed"],
                                  "lab, lab-2", ADMIN)
    assert made.secret.startswith("mpi_") and len(made.secret) == 47
    (row,) = ApiTokenRow.select()
    assert row.token_hash == token_hash(made.secret) and made.secret not in str(row.__data__)
    principal = services.tokens.authenticate(made.secret)
    assert principal.client_id == "lab-system" and principal.method == "token"
    assert principal.scopes == {"system/Patient.cruds", "mpi:feed"}
    assert principal.sources == {"lab", "lab-2"}
    (listed,) = services.tokens.list()
    assert listed.last_used_at is not None and listed.revoked_at is None


def test_use_is_recorded_at_most_once_a_minute(services, clock):
    made = services.tokens.create("ehr", ["system/Patient.r"], "", ADMIN)
    services.tokens.authenticate(made.secret)
    first = services.tokens.list()[0].last_used_at
    clock.advance(seconds=30)
    services.tokens.authenticate(made.secret)
    assert services.tokens.list()[0].last_used_at == first
    clock.advance(seconds=31)
    services.tokens.authenticate(made.secret)
    assert services.tokens.list()[0].last_used_at > first


def test_revoked_unknown_and_malformed_tokens_are_refused(services):
    made = services.tokens.create("lab", ["system/Patient.r"], "", ADMIN)
    services.tokens.revoke("lab", ADMIN)
    for secret, reason in ((made.secret, "unknown or revoked"),
                           ("mpi_" + "A" * 43, "unknown or revoked"),
                           ("Bearer-ish nonsense", "not an API token"),
                           (None, "send an API token")):
        with pytest.raises(Unauthenticated, match=reason):
            services.tokens.authenticate(secret)
    with pytest.raises(NotFound):
        services.tokens.revoke("nobody", ADMIN)


def test_bad_requests_name_each_field(services):
    with pytest.raises(InvalidInput) as caught:
        services.tokens.create("has space", ["user/Patient.r", "openid"], "a b", ADMIN)
    assert [p.field for p in caught.value.problems] == ["name", "scopes", "scopes", "sources"]
    with pytest.raises(InvalidInput, match="cannot be made"):
        services.tokens.create("empty", [], "", ADMIN)
    services.tokens.create("lab", ["system/Patient.r"], "", ADMIN)
    with pytest.raises(Conflict, match="exists"):
        services.tokens.create("lab", ["system/Patient.r"], "", ADMIN)


def test_making_and_revoking_are_audited_without_the_secret(services):
    made = services.tokens.create("lab", ["system/Patient.r"], "lab", ADMIN)
    services.tokens.revoke("lab", ADMIN)
    rows = list(AuditEventRow.select().order_by(AuditEventRow.pk))
    assert [(r.action, r.actor, r.entity_id) for r in rows] == [
        ("access:token:create", "mpi token (root)", "lab"),
        ("access:token:revoke", "mpi token (root)", "lab")]
    assert made.secret not in str(rows[0].new_value)
    assert rows[0].new_value == {"scopes": ["system/Patient.r"], "sources": ["lab"]}
