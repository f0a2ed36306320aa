"""``GET /metrics`` in one process (both backends): what known traffic adds, read back with
prometheus_client's own parser of the text format. The multi-worker scrape is in
tests/integration/test_metrics_serve.py."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from mpi.domain.access import METRICS
from tests.helpers import patient

API = "/api/v1"


def scrape(client, **kw) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = client.simulate_get("/metrics", **kw)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert resp.headers["cache-control"] == "no-store"
    return samples(resp.text)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found, name, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_known_traffic_is_counted(client):
    before = scrape(client)
    a = client.simulate_post(f"{API}/patients", json=patient())
    assert a.status_code == 201
    # A twin-like record: the engine sends it to review.
    b = client.simulate_post(f"{API}/patients", json=patient(
        source="walk-in", source_id="W-1", identifiers=[],
        names=[{"family": "Smith", "given": ["Peter"]}]))
    assert b.status_code == 201
    for _ in range(3):
        assert client.simulate_get(f"{API}/patients/{a.json['id']}").status_code == 200
    assert client.simulate_get(f"{API}/patients/00000000-0000-4000-8000-00000000dead"
                               ).status_code == 404
    assert client.simulate_get("/nowhere/at/all").status_code == 404
    after = scrape(client)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    read = {"route": f"{API}/patients/{{patient_id:uuid}}", "method": "GET"}
    assert grew("mpi_http_requests_total", status="200", **read) == 3
    assert grew("mpi_http_requests_total", status="404", **read) == 1
    # A path with no route is counted under one label, never under its path.
    assert grew("mpi_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert not any("nowhere" in str(labels) for _, labels in after)
    assert grew("mpi_http_request_duration_seconds_count", **read) == 4
    assert grew("mpi_http_requests_total", route=f"{API}/patients", method="POST",
                status="201") == 2
    assert grew("mpi_records_written_total", operation="create") == 2
    assert grew("mpi_link_decisions_total", outcome="new_person") == 2
    assert grew("mpi_link_decisions_total", outcome="review") == 1
    assert value(after, "mpi_review_queue_depth", kind="possible_match") == 1
    assert value(after, "mpi_review_queue_depth", kind="possible_duplicate") == 0
    assert value(after, "mpi_review_queue_oldest_age_seconds", kind="possible_match") >= 0
    assert value(after, "mpi_db_pool_connections_max") >= 1
    assert grew("mpi_db_pool_wait_seconds_count") >= 7
    info = [labels for (name, labels) in after if name == "mpi_model_info"]
    assert len(info) == 1 and dict(info[0])["link_threshold"] == "0.95"
    # Nothing of the records: no name, identifier or id in any label or name.
    text = client.simulate_get("/metrics").text
    for secret in ("Smith", "Peter", "123-45-6789", a.json["id"], a.json["person_id"]):
        assert secret not in text

    # A steward's decision is counted once it commits.
    review = client.simulate_get(f"{API}/reviews").json["items"][0]
    done = client.simulate_post(f"{API}/reviews/{review['id']}/resolve",
                                json={"resolution": "link"})
    assert done.status_code == 200
    later = scrape(client)
    assert (value(later, "mpi_link_decisions_total", outcome="review_resolved")
            - value(after, "mpi_link_decisions_total", outcome="review_resolved")) == 1
    assert value(later, "mpi_review_queue_depth", kind="possible_match") == 0


def test_a_refused_write_counts_nothing_it_did_not_do(client):
    before = scrape(client)
    bad = client.simulate_post(f"{API}/patients", json=patient(birth_date="not a date"))
    assert bad.status_code == 422
    after = scrape(client)
    assert value(after, "mpi_records_written_total", operation="create") == value(
        before, "mpi_records_written_total", operation="create")
    assert value(after, "mpi_http_requests_total", route=f"{API}/patients", method="POST",
                 status="422") - value(before, "mpi_http_requests_total",
                                       route=f"{API}/patients", method="POST",
                                       status="422") == 1


def test_openmetrics_when_asked(client):
    resp = client.simulate_get("/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    assert resp.text.rstrip().endswith("# EOF")


def test_the_scrape_needs_its_scope_and_is_audited(secured):
    assert secured.client.simulate_get("/metrics").status_code == 401
    steward = secured.token("stewards", "mpi:steward")
    assert secured.client.simulate_get("/metrics", headers=steward).status_code == 403
    scraper = secured.token("prometheus", METRICS)
    resp = secured.client.simulate_get("/metrics", headers=scraper)
    assert resp.status_code == 200, resp.text
    trail = secured.client.simulate_get(
        f"{API}/audit/recent", headers=secured.token("auditor", "mpi:audit")).json["items"]
    assert any(row["action"] == "metrics:scrape:read" and row["actor"] == "prometheus"
               for row in trail)
