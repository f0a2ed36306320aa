"""Scopes: SMART on FHIR v1 and v2 system scopes and the MPI's own, and the principal."""

from __future__ import annotations

import pytest

from mpi.domain.access import (
    LOCAL,
    STEWARD,
    Principal,
    check_scope,
    grants,
    parse_sources,
    smart,
)


@pytest.mark.parametrize(("granted", "need", "ok"), [
    # v2: any in-order subset of c r u d s
    (["system/Patient.rs"], "system/Patient.r", True),
    (["system/Patient.rs"], "system/Patient.s", True),
    (["system/Patient.rs"], "system/Patient.c", False),
    (["system/Patient.cruds"], "system/Patient.d", True),
    (["system/Patient.cud"], "system/Patient.r", False),
    # v1: read = rs, write = cud, * = cruds
    (["system/Patient.read"], "system/Patient.s", True),
    (["system/Patient.read"], "system/Patient.u", False),
    (["system/Patient.write"], "system/Patient.c", True),
    (["system/Patient.write"], "system/Patient.r", False),
    (["system/Patient.*"], "system/Patient.d", True),
    # the resource wildcard; another resource grants nothing
    (["system/*.rs"], "system/Person.r", True),
    (["system/Person.cruds"], "system/Patient.r", False),
    # only system/ scopes; granular scopes are narrower than a route
    (["patient/Patient.rs", "user/Patient.rs"], "system/Patient.r", False),
    (["system/Patient.rs?identifier=urn:oid:1|2"], "system/Patient.r", False),
    # malformed v2 permissions grant nothing
    (["system/Patient.sr"], "system/Patient.r", False),
    (["system/Patient.rr"], "system/Patient.r", False),
    (["system/Patient.x"], "system/Patient.r", False),
    # the MPI's own scopes are matched exactly
    (["mpi:steward"], STEWARD, True),
    (["system/*.cruds"], STEWARD, False),
    (["mpi:steward:x"], STEWARD, False),
    ([], "system/Patient.r", False),
])
def test_grants(granted, need, ok):
    assert grants(granted, need) is ok


def test_smart_names_one_permission_of_a_served_resource():
    assert smart("Patient", "c") == "system/Patient.c"
    for resource, permission in (("Observation", "r"), ("Patient", "rs"), ("Patient", "x")):
        with pytest.raises(ValueError):
            smart(resource, permission)


@pytest.mark.parametrize("scope", ["system/Patient.cruds", "system/*.read", "system/Person.r",
                                   "mpi:audit", "mpi:feed", "mpi:steward", "mpi:admin",
                                   "ITI-78", "ITI-119", "ITI-83", "ITI-104"])
def test_check_scope_accepts_what_grants_something(scope):
    assert check_scope(scope) == scope


@pytest.mark.parametrize(("scope", "reason"), [
    ("patient/Patient.rs", "only system/"),
    ("system/Patient.rs?x=1", "granular"),
    ("system/Observation.r", "serves Patient, Person"),
    ("system/Patient.sr", "in that order"),
    ("openid", "unknown scope"),
    ("ITI-8", "unknown scope"),
    ("iti-78", "unknown scope"),
    ('bad"scope', "not an OAuth scope token"),
])
def test_check_scope_says_why_not(scope, reason):
    with pytest.raises(ValueError, match=reason):
        check_scope(scope)


def test_sources():
    assert parse_sources(" lab, st-marys-ehr ,,") == {"lab", "st-marys-ehr"}
    assert parse_sources("") == frozenset()
    assert parse_sources("*") == {"*"}
    with pytest.raises(ValueError, match="not a source name"):
        parse_sources("lab, two words")
    lab = Principal("lab-system", frozenset({"system/Patient.cu"}), frozenset({"lab"}))
    assert lab.may_write("lab") and not lab.may_write("st-marys-ehr")
    assert lab.may("system/Patient.c") and not lab.may("system/Patient.r")
    assert LOCAL.may_write("anything") and LOCAL.may(STEWARD) and LOCAL.may("system/Person.r")


def test_an_iua_scope_grants_its_transaction_and_nothing_else():
    """IHE IUA: ``ITI-78`` "authorizes the full [ITI-78] transaction": a route that is part
    of it (its declared transaction) and no SMART need as such."""
    pdqm = Principal("pdq-consumer", frozenset({"ITI-78"}))
    assert pdqm.may("system/Patient.s", "ITI-78")
    assert not pdqm.may("system/Patient.s")  # a route of no IHE transaction
    assert not pdqm.may("system/Patient.s", "ITI-119")
    assert not grants(["ITI-78"], "system/Patient.r")
    smart_client = Principal("ehr", frozenset({"system/Patient.rs"}))
    assert smart_client.may("system/Patient.s", "ITI-78")  # either grants the route
