"""The compose ``monitoring`` profile's files: Prometheus scrapes the service as it serves,
and every query of the alert rules and the Grafana dashboard names a metric the service
really exposes (read from a live scrape, not from a list kept by hand)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import patient

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "compose" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "mpi.json"
_METRIC_RE = re.compile(r"\b(mpi_[a-z0-9_]+)\b")


def _exposed(client) -> set[str]:
    """Every sample name a scrape of the service shows, after a little traffic."""
    client.simulate_post("/api/v1/patients", json=patient())
    client.simulate_get("/api/v1/patients/search?family=Smith")
    text = client.simulate_get("/metrics").text
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "info": ("_info",), "gauge": ("",)}
    # By family: a labelled counter nothing has counted yet shows its HELP and TYPE only.
    return {f.name + suffix for f in text_string_to_metric_families(text)
            for suffix in suffixes[f.type]}


def _queries() -> dict[str, str]:
    found = {}
    for group in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            found[f"alert {rule['alert']}"] = rule["expr"]
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            found[f"panel {panel['title']} {target['refId']}"] = target["expr"]
    return found


def test_every_query_names_metrics_the_service_exposes(client):
    exposed = _exposed(client)
    queries = _queries()
    assert len(queries) >= 15
    for where, expr in queries.items():
        names = _METRIC_RE.findall(expr)
        assert names or "up{" in expr, where
        for name in names:
            assert name in exposed, f"{where}: {name} is not exposed"


def test_prometheus_scrapes_the_compose_service_with_its_own_token():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["mpi:8080"]
    assert job["authorization"]["credentials_file"] == "/etc/prometheus/mpi-metrics.token"
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert any(m.endswith(":/etc/prometheus/mpi-metrics.token:ro") for m in mounts)
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert "./monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_grafana_is_provisioned_with_the_dashboard():
    sources = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = sources["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert all(p["datasource"]["uid"] == uid for p in dashboard["panels"])
    providers = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "dashboards" / "mpi.yml").read_text())
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    path = providers["providers"][0]["options"]["path"]
    assert f"./monitoring/grafana/dashboards:{path}:ro" in mounts
