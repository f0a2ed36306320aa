"""Audit log and change feed through the API (both backends)."""

from __future__ import annotations

import functools

import falcon.testing
import pytest

from mpi.api.app import create_app
from mpi.config import Settings, parse_database_url
from mpi.domain.audit import Actor
from mpi.storage.db import close_database, connection, database_for
from mpi.wiring import build
from tests.conftest import _clean
from tests.helpers import patient

URL = "/api/v1/patients"
CLERK = {"X-User-ID": "clerk-7", "User-Agent": "reg-desk/2.1", "X-Request-ID": "req-42"}


def _lifecycle(secured) -> str:
    """Registration desk creates and updates (for clerk-7), the ward reads (for nurse-1), an
    administrator's client deletes; every client's own token."""
    client, token = secured.client, secured.token
    desk, ward = token("reg-desk", "system/Patient.cruds"), token("ward", "system/Patient.r")
    admin = token("admin-console", "system/Patient.d")
    secured.auditor = token("auditor", "mpi:audit", "mpi:feed")
    created = client.simulate_post(URL, json=patient(), headers={**CLERK, **desk}).json
    pid = created["id"]
    # Time moves between the steps: the trail is in the order they happened (a read's
    # audit row may be written after the update's).
    secured.clock.advance(seconds=1)
    client.simulate_get(f"{URL}/{pid}", headers={"X-User-ID": "nurse-1", **ward})
    secured.clock.advance(seconds=1)
    client.simulate_put(f"{URL}/{pid}", json=patient(gender="unknown"),
                        headers={**CLERK, **desk, "If-Match": '"1"'})
    secured.clock.advance(seconds=1)
    client.simulate_delete(f"{URL}/{pid}", headers=admin)
    return pid


def test_every_change_and_read_is_audited_with_who_and_what(secured):
    pid = _lifecycle(secured)
    client = secured.client
    trail = client.simulate_get(f"{URL}/{pid}/audit", headers=secured.auditor).json["items"]
    assert [e["action"] for e in trail] == [
        "patient:record:delete", "patient:record:update", "patient:record:read",
        "patient:record:create", "identity:link:new"]
    delete, update, read, create, link = trail
    # The actor is the authenticated client; X-User-ID is only whom it acted for.
    assert link["actor"] == "reg-desk" and link["new_value"]["how"] == "new"
    assert link["on_behalf_of"] == "clerk-7"
    assert link["new_value"]["person_id"] == create["new_value"]["person_id"]
    assert create["actor"] == "reg-desk" and create["on_behalf_of"] == "clerk-7"
    assert create["request_id"] == "req-42"
    assert create["user_agent"] == "reg-desk/2.1"
    assert create["ip"]
    assert create["old_value"] is None and create["new_value"]["gender"] == "male"
    assert read["actor"] == "ward" and read["on_behalf_of"] == "nurse-1"
    assert read["new_value"] is None
    assert update["old_value"]["gender"] == "male"
    assert update["new_value"]["gender"] == "unknown"
    assert delete["actor"] == "admin-console" and delete["on_behalf_of"] is None
    assert delete["old_value"]["version"] == 2
    assert create["occurred_at"].endswith("Z") or create["occurred_at"].endswith("+00:00")


def test_without_authentication_the_actor_is_local(client):
    """AUTH_MODE=none (loopback only): the actor is "local", X-User-ID only beside it."""
    created = client.simulate_post(URL, json=patient(), headers={"X-User-ID": "clerk-1"}).json
    trail = client.simulate_get(f"{URL}/{created['id']}/audit").json["items"]
    assert trail[0]["actor"] == "local" and trail[0]["on_behalf_of"] == "clerk-1"


def test_audit_of_unknown_patient_is_404(client):
    resp = client.simulate_get(f"{URL}/00000000-0000-4000-8000-000000000777/audit")
    assert resp.status_code == 404


def test_audit_by_user_and_recent(secured):
    _lifecycle(secured)
    client, auditor = secured.client, secured.auditor
    mine = client.simulate_get("/api/v1/audit/user", params={"user_id": "reg-desk"},
                               headers=auditor).json["items"]
    assert [e["action"] for e in mine] == ["patient:record:update", "patient:record:create",
                                           "identity:link:new"]
    recent = client.simulate_get("/api/v1/audit/recent", params={"limit": 2},
                                 headers=auditor).json
    assert [e["action"] for e in recent["items"]] == ["audit:user:read",
                                                      "patient:record:delete"]
    older = client.simulate_get("/api/v1/audit/recent", headers=auditor,
                                params={"limit": 2, "before": recent["next_cursor"]}).json
    assert [e["action"] for e in older["items"]] == ["patient:record:update",
                                                     "patient:record:read"]
    assert client.simulate_get("/api/v1/audit/user", headers=auditor).status_code == 400


def test_reading_the_feed_or_an_audit_trail_is_itself_audited(secured):
    pid = _lifecycle(secured)
    client = secured.client
    snoop = secured.token("snoop", "mpi:audit", "mpi:feed")
    client.simulate_get("/api/v1/events", headers=snoop)
    client.simulate_get(f"{URL}/{pid}/audit", headers=snoop)
    client.simulate_get("/api/v1/audit/recent", headers=snoop)
    client.simulate_get("/api/v1/audit/user", params={"user_id": "clerk-7"}, headers=snoop)
    seen = client.simulate_get("/api/v1/audit/user", params={"user_id": "snoop"},
                               headers=secured.auditor).json["items"]
    assert [e["action"] for e in seen] == ["audit:user:read", "audit:recent:read",
                                           "audit:trail:read", "events:feed:read"]
    assert seen[2]["entity_id"] == pid


def test_listing_is_audited_with_the_returned_ids(secured):
    client = secured.client
    desk = secured.token("desk", "system/Patient.cs", "mpi:audit")
    created = client.simulate_post(URL, json=patient(), headers=desk).json
    client.simulate_get(URL, params={"family": "smith"}, headers={"X-User-ID": "clerk-9", **desk})
    entry = client.simulate_get("/api/v1/audit/user", params={"user_id": "desk"},
                                headers=desk).json["items"][0]
    assert entry["action"] == "patient:record:list"
    assert entry["new_value"] == {"filters": {"family": "smith"}, "returned": [created["id"]]}
    # The end user's trail finds what a client did on their behalf.
    theirs = client.simulate_get("/api/v1/audit/user", params={"user_id": "clerk-9"},
                                 headers=desk).json["items"]
    assert [(e["action"], e["actor"], e["on_behalf_of"]) for e in theirs] == [
        ("patient:record:list", "desk", "clerk-9")]


@pytest.mark.parametrize("length", [64, 65, 128])
def test_a_user_id_of_any_allowed_length_is_answered_and_audited(secured, length):
    """The read of a user's trail is audited with the user id as its entity: 65-128
    characters were a 500 on PostgreSQL (entity_id was varchar(64))."""
    user, client, auditor = "u" * length, secured.client, secured.token("audit", "mpi:audit")
    resp = client.simulate_get("/api/v1/audit/user", params={"user_id": user},
                               headers=auditor)
    assert resp.status_code == 200, resp.text
    latest = client.simulate_get("/api/v1/audit/recent", params={"limit": 1},
                                 headers=auditor).json["items"][0]
    assert (latest["action"], latest["entity_id"]) == ("audit:user:read", user)
    too_long = client.simulate_get("/api/v1/audit/user", params={"user_id": user + "u" * 129},
                                   headers=auditor)
    assert too_long.status_code == 400 and "user_id" in too_long.text


def test_change_feed_in_commit_order_with_cursor(secured):
    pid = _lifecycle(secured)
    client = secured.client
    client.simulate_get = functools.partial(client.simulate_get, headers=secured.auditor)
    feed = client.simulate_get("/api/v1/events").json
    # The record's own events; linking adds PatientLinked when the record founds its person.
    assert [e["type"] for e in feed["events"]] == ["PatientCreated", "PatientLinked",
                                                   "PatientUpdated", "PatientDeleted"]
    linked = feed["events"].pop(1)
    assert linked["data"]["patient_id"] == pid and linked["data"]["how"] == "new"
    assert [e["entity_version"] for e in feed["events"]] == [1, 2, 3]
    assert all(e["entity_id"] == pid for e in feed["events"])
    assert feed["events"][0]["data"]["names"][0]["family"] == "Smith"
    assert feed["events"][2]["data"] == {"id": pid, "source": "st-marys-ehr",
                                         "source_id": "A-1001",
                                         "person_id": feed["events"][0]["data"]["person_id"]}
    ids = [int(e["id"]) for e in client.simulate_get("/api/v1/events").json["events"]]
    assert ids == sorted(ids)
    first = client.simulate_get("/api/v1/events", params={"limit": 1}).json
    rest = client.simulate_get("/api/v1/events", params={"after": first["next_cursor"]}).json
    assert [e["id"] for e in first["events"] + rest["events"]] == [str(i) for i in ids]
    empty = client.simulate_get("/api/v1/events", params={"after": rest["next_cursor"]}).json
    assert empty == {"events": [], "next_cursor": rest["next_cursor"]}


def test_reads_and_failed_writes_add_no_events(client):
    created = client.simulate_post(URL, json=patient()).json
    client.simulate_get(f"{URL}/{created['id']}")
    client.simulate_post(URL, json=patient())  # 409
    client.simulate_put(f"{URL}/{created['id']}", json=patient(), headers={"If-Match": '"9"'})
    assert [e["type"] for e in client.simulate_get("/api/v1/events").json["events"]] == [
        "PatientCreated", "PatientLinked"]


@pytest.mark.parametrize("after", ["abc", "-1", "99999999999999999999999"])
def test_events_rejects_bad_cursor(client, after):
    assert client.simulate_get("/api/v1/events", params={"after": after}).status_code == 400


@pytest.mark.parametrize("params", [{"before": "99999999999999999999"}, {"limit": "0"},
                                    {"user_id": "a\u0000b"}])
def test_audit_rejects_bad_parameters(client, params):
    resp = client.simulate_get("/api/v1/audit/user", params={"user_id": "u", **params})
    assert resp.status_code == 400


def test_audited_reads_relax_the_commit_inside_their_transaction(postgres_url, tmp_path):
    """``SET LOCAL synchronous_commit`` outside a transaction only warns ("SET LOCAL can
    only be used in transaction blocks") and does nothing: PostgreSQL logged it ~1,200 times in one
    drill, for reads of the audit trail and the feed. Every audited read route, over
    HTTP on PostgreSQL, watched through the server's notices, must warn nothing."""
    db = database_for(parse_database_url(postgres_url), max_connections=1)
    services = build(Settings.defaults(database_url=postgres_url, auth_mode="token",
                                       search_index_path=tmp_path / "ix"), db=db)
    with connection(db):
        _clean(db)
        secret = services.tokens.create("reader", ["system/Patient.cruds", "mpi:audit",
                                                   "mpi:feed", "system/Person.r"], "*",
                                        Actor("tests")).secret
    client = falcon.testing.TestClient(create_app(services))
    auth = {"Authorization": f"Bearer {secret}"}
    pid = client.simulate_post(URL, json=patient(), headers=auth).json["id"]
    notices: list[str] = []
    with connection(db):  # the pool's one connection: every request below reuses it
        db.connection().add_notice_handler(lambda n: notices.append(n.message_primary))
        db.execute_sql("SET LOCAL synchronous_commit TO off")  # the watcher sees it
        assert notices == ["SET LOCAL can only be used in transaction blocks"]
        notices.clear()
    reads = [f"{URL}/{pid}", URL, f"{URL}/{pid}/audit", f"{URL}/{pid}/person",
             "/api/v1/events", "/api/v1/audit/recent", "/api/v1/audit/user?user_id=reader"]
    for url in reads:
        path, _, query = url.partition("?")
        assert client.simulate_get(path, query_string=query, headers=auth).status_code == 200
    close_database(db)
    assert notices == []
