"""The Kubernetes manifests in deploy/kubernetes: valid for the API server, and consistent
with the service (settings, health endpoints, image contract, graceful stop).

Schema validation uses ``kubernetes-validate``, which ships the OpenAPI-derived JSON
schemas of every Kubernetes release it knows: no cluster and no network needed. Strict
mode rejects unknown fields, so a misspelt key fails here rather than being dropped
silently by ``kubectl apply``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mpi import config

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate (dev dependency) is not installed")

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
# The oldest release the manifests target (the preStop `sleep` action needs 1.30) and the
# newest schema set kubernetes-validate ships; both must accept every manifest.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())

IMAGE = "mpi:0.1.0"
UID = 65532
LIVENESS = "/api/v1/health"
READINESS = "/api/v1/health/ready"
PORT = 8080


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


DOCS = _documents()


def _ids(item: tuple[str, dict[str, Any]]) -> str:
    name, doc = item
    return f"{name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def _one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in DOCS if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload."""
    return [(f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"])
            for _, doc in DOCS if doc["kind"] in ("Deployment", "Job", "StatefulSet",
                                                  "DaemonSet")]


def _containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(label, pod spec, container) of every container, init containers included."""
    out = []
    for label, spec in _pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            out.append((f"{label}/{container['name']}", spec, container))
    return out


CONTAINERS = _containers()


def _graceful_timeout() -> int:
    raw = _one("ConfigMap")["data"].get("GRACEFUL_TIMEOUT")
    setting = next(s for s in config.SETTINGS if s.env == "GRACEFUL_TIMEOUT")
    return setting.parse(raw if raw is not None else setting.default)


# --- the set of files ----------------------------------------------------------------------


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    files = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == files
    # The Namespace first, so that `kubectl apply -f` in the listed order also works.
    assert listed[0] == "namespace.yaml"


def test_the_expected_kinds_are_there():
    kinds = sorted(doc["kind"] for _, doc in DOCS)
    assert kinds == sorted(["Namespace", "ConfigMap", "Secret", "Job", "Deployment", "Service",
                            "PodDisruptionBudget", "NetworkPolicy"])


def test_every_namespaced_object_is_in_the_mpi_namespace():
    for name, doc in DOCS:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == "mpi"
        else:
            assert doc["metadata"].get("namespace") == "mpi", name


# --- schemas -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("item", DOCS, ids=_ids)
def test_manifest_matches_the_kubernetes_schema(item, version):
    _, doc = item
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{_ids(item)} is invalid for Kubernetes {version}: "
                    f"{'.'.join(map(str, exc.path))}: {exc.message}")


# --- Pod Security "restricted" -------------------------------------------------------------


def test_namespace_enforces_restricted_pod_security():
    labels = _one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def _effective(spec: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """A container's security setting, falling back to the pod's (as Kubernetes does)."""
    own = container.get("securityContext", {})
    return own[key] if key in own else spec.get("securityContext", {}).get(key)


@pytest.mark.parametrize("item", CONTAINERS, ids=lambda c: c[0])
def test_container_passes_the_restricted_checks(item):
    _, spec, container = item
    sc = container.get("securityContext", {})
    assert _effective(spec, container, "runAsNonRoot") is True
    assert _effective(spec, container, "runAsUser") == UID  # the image's user
    assert _effective(spec, container, "runAsGroup") == UID
    assert sc.get("allowPrivilegeEscalation") is False
    assert sc.get("privileged", False) is False
    assert sc.get("readOnlyRootFilesystem") is True
    assert sc.get("capabilities", {}).get("drop") == ["ALL"]
    assert not sc.get("capabilities", {}).get("add")
    assert _effective(spec, container, "seccompProfile") == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("item", _pod_specs(), ids=lambda p: p[0])
def test_pod_passes_the_restricted_checks(item):
    _, spec = item
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    assert all("hostPath" not in v for v in spec.get("volumes", []))
    assert spec.get("automountServiceAccountToken") is False
    for container in spec["containers"]:
        assert all("hostPort" not in p for p in container.get("ports", []))


@pytest.mark.parametrize("item", CONTAINERS, ids=lambda c: c[0])
def test_writable_paths_are_volumes(item):
    """The root filesystem is read-only: /tmp is an in-memory emptyDir in every pod."""
    _, spec, container = item
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert mounts["/tmp"]["emptyDir"].get("medium") == "Memory"
    assert mounts["/tmp"]["emptyDir"].get("sizeLimit")


def test_data_is_a_per_pod_empty_dir():
    spec = _one("Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert "emptyDir" in mounts["/data"]
    assert _one("ConfigMap")["data"]["SEARCH_INDEX_PATH"].startswith("/data/")


@pytest.mark.parametrize("item", CONTAINERS, ids=lambda c: c[0])
def test_resources_have_requests_and_limits(item):
    _, _, container = item
    resources = container["resources"]
    for key in ("cpu", "memory"):
        assert key in resources["requests"] and key in resources["limits"]


# --- the service's contract ----------------------------------------------------------------


def test_job_and_deployment_run_the_same_image():
    images = {c["image"] for _, _, c in CONTAINERS}
    assert images == {IMAGE}
    assert {c.get("imagePullPolicy") for _, _, c in CONTAINERS} == {"IfNotPresent"}


def test_commands():
    """The image's entrypoint is `mpi`: the Deployment serves, the Job migrates."""
    deployment = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    job = _one("Job")["spec"]["template"]["spec"]
    assert "command" not in deployment and deployment["args"] == ["serve"]
    assert "command" not in job["containers"][0] and job["containers"][0]["args"] == ["migrate"]
    assert job["restartPolicy"] == "Never"


def test_probes_use_the_health_endpoints():
    container = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORT}

    def target(probe: str) -> tuple[str, int]:
        get = container[probe]["httpGet"]
        port = get["port"]
        return get["path"], ports.get(port, port)

    assert target("livenessProbe") == (LIVENESS, PORT)
    assert target("startupProbe") == (LIVENESS, PORT)
    # Readiness checks the database and migrations; liveness must not (a database outage
    # would otherwise restart every pod).
    assert target("readinessProbe") == (READINESS, PORT)


def test_the_service_listens_where_the_probes_look():
    data = _one("ConfigMap")["data"]
    assert int(data["SERVER_PORT"]) == PORT
    assert data["SERVER_HOST"] == "0.0.0.0"


def _env_names(container: dict[str, Any]) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        (doc,) = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == ref["name"]]
        names |= set(doc.get("data", {})) | set(doc.get("stringData", {}))
    return names


@pytest.mark.parametrize("item", CONTAINERS, ids=lambda c: c[0])
def test_env_names_are_settings(item):
    _, _, container = item
    names = _env_names(container)
    allowed = set(config.ENV_NAMES) | {f"{n}_FILE" for n in config.ENV_NAMES}
    assert names <= allowed, sorted(names - allowed)
    # Never NAME and NAME_FILE together: the service refuses that.
    assert not {n for n in names if f"{n}_FILE" in names}


@pytest.mark.parametrize("item", CONTAINERS, ids=lambda c: c[0])
def test_database_url_comes_from_the_mounted_secret(item):
    _, spec, container = item
    env = {e["name"]: e for e in container["env"]}
    assert "DATABASE_URL" not in env
    path = Path(env["DATABASE_URL_FILE"]["value"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    secret = volumes[mount["name"]]["secret"]
    assert mount.get("readOnly") is True
    items = {i["path"]: i["key"] for i in secret.get("items", [])}
    key = items.get(path.name, path.name)
    (doc,) = [d for _, d in DOCS if d["kind"] == "Secret"
              and d["metadata"]["name"] == secret["secretName"]]
    assert key in doc["stringData"]


def test_secret_is_a_marked_placeholder():
    secret = _one("Secret")
    url = secret["stringData"]["database-url"]
    assert "REPLACE-ME" in url
    config.parse_database_url(url)  # a well-formed URL once the placeholders are filled in
    assert "REPLACE BEFORE USE" in (KUBE / "secret.yaml").read_text(encoding="utf-8")


def test_job_and_deployment_share_settings_and_security():
    deployment = _one("Deployment")["spec"]["template"]["spec"]
    job = _one("Job")["spec"]["template"]["spec"]
    assert job["securityContext"] == deployment["securityContext"]
    d, j = deployment["containers"][0], job["containers"][0]
    assert j["securityContext"] == d["securityContext"]
    assert j["envFrom"] == d["envFrom"]
    assert j["env"] == d["env"]


def test_termination_grace_period_exceeds_graceful_timeout():
    spec = _one("Deployment")["spec"]["template"]["spec"]
    pre_stop = spec["containers"][0].get("lifecycle", {}).get("preStop", {})
    pause = pre_stop.get("sleep", {}).get("seconds", 0)
    # SIGTERM comes after the preStop pause; gunicorn then needs GRACEFUL_TIMEOUT.
    assert spec["terminationGracePeriodSeconds"] > pause + _graceful_timeout()


def test_deployment_shape():
    spec = _one("Deployment")["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def _pod_labels() -> dict[str, str]:
    return _one("Deployment")["spec"]["template"]["metadata"]["labels"]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_selectors_match_the_server_pods():
    deployment = _one("Deployment")["spec"]
    job_labels = _one("Job")["spec"]["template"]["metadata"]["labels"]
    selector = deployment["selector"]["matchLabels"]
    assert _matches(selector, _pod_labels())
    for doc, sel in ((_one("Service"), _one("Service")["spec"]["selector"]),
                     (_one("PodDisruptionBudget"),
                      _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"])):
        assert sel == selector, doc["kind"]
        assert _matches(sel, _pod_labels()), doc["kind"]
        # The migration Job's pods are not part of the service.
        assert not _matches(sel, job_labels), doc["kind"]


def test_service_and_pdb():
    service = _one("Service")["spec"]
    assert service["type"] == "ClusterIP"
    (port,) = service["ports"]
    assert port["port"] == 80 and port["targetPort"] in ("http", PORT)
    assert _one("PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_network_policy():
    policy = _one("NetworkPolicy")["spec"]
    selector = policy["podSelector"]["matchLabels"]
    # It covers the server and the migration Job.
    assert _matches(selector, _pod_labels())
    assert _matches(selector, _one("Job")["spec"]["template"]["metadata"]["labels"])
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {(p["protocol"], p["port"]) for rule in policy["ingress"]
                     for p in rule["ports"]}
    assert ingress_ports == {("TCP", PORT)}
    assert all(rule.get("from") for rule in policy["ingress"])  # never from anywhere
    egress_ports = {(p["protocol"], p["port"]) for rule in policy["egress"]
                    for p in rule["ports"]}
    assert egress_ports == {("TCP", 5432), ("UDP", 53), ("TCP", 53)}


def test_config_check_accepts_the_config_map(tmp_path):
    """`mpi config check` accepts the ConfigMap plus the secret's file, as the pods see them."""
    data = _one("ConfigMap")["data"]
    secret_file = tmp_path / "database-url"
    secret_file.write_text("postgresql://mpi:dummy-password@db.example:5432/mpi?sslmode=require\n")
    env_file = tmp_path / "mpi.env"
    lines = [f"{k}={v}" for k, v in data.items()]
    lines.append(f"DATABASE_URL_FILE={secret_file}")
    env_file.write_text("\n".join(lines) + "\n")
    result = subprocess.run([sys.executable, "-m", "mpi", "config", "check", "--env-file",
                             str(env_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "dummy-password" not in result.stdout
    assert f"file {secret_file}" in result.stdout  # DATABASE_URL came from the file
