"""The compose files under ``compose/``: valid, consistent with the service, and working.

1. Both files (as written, and as ``podman-compose config`` resolves them) validate
   against the Compose Specification schema vendored by ``check-jsonschema`` (offline).
2. Semantic checks: every variable set for the MPI services is one the service reads
   (``mpi.config.ENV_NAMES`` or its ``_FILE`` form); health checks are in exec form
   (the MPI image has no ``/bin/sh``); the production file hardens the MPI services.
3. The development stack is brought up for real with ``podman-compose`` (PostgreSQL from
   ``mpi-postgres:15``): ready through the published port, a patient created and read
   back, then ``down -v``. The production stack (without the proxy unless its image is
   loaded) comes up with its secrets and hardening, every replica ready.

podman 4.3 (Debian 12) lacks ``podman wait --condition=healthy``, so podman-compose
ignores ``condition: service_healthy`` there; without systemd podman never runs health
checks by itself; and podman-compose turns ``depends_on`` into ``podman create
--requires``, with which podman 4.3 refuses to start the service once the migration has
exited ("generating dependency graph ... not found in input list"). The bring-up is
therefore staged, as ``compose/README.md`` tells podman 4.3 users: ``up -d --no-deps``
for db, its health check run by hand (``podman healthcheck run``) until it passes; then
migrate, waited for (``podman wait``) and required to exit 0; then the service.

Where no engine can run, the bring-up is skipped, loudly; with
``MPI_TEST_CONTAINERS=required`` it fails instead.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import jsonschema
import pytest
import yaml

from mpi.config import ENV_NAMES
from tests.helpers import free_port as _free_port
from tests.helpers import http_json
from toolkit import commands, engine

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
DEV = COMPOSE / "docker-compose.yml"
PROD = COMPOSE / "docker-compose.prod.yml"
FILES = (DEV, PROD)
MPI_SERVICES = ("mpi", "migrate")
MPI_BINARY = "/opt/mpi/bin/mpi"
POSTGRES_IMAGE = "mpi-postgres:15"
WAIT_LIMIT = 120.0  # seconds for any one stage of the bring-up
PATIENT = {"source": "compose", "source_id": "1",
           "names": [{"family": "Test", "given": ["Compose"]}], "birth_date": "1980-01-01"}



def _request(port: int, method: str, path: str, body: object = None,
             token: str | None = None) -> tuple[int, dict[str, str], Any]:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    return http_json(port, method, path, body, headers={"X-User-ID": "compose-test", **auth})

def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _schema() -> dict[str, Any]:
    package = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((package / "compose-spec.json").read_text(encoding="utf-8"))


def _validate(config: Mapping[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(_schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(config), key=lambda e: list(e.path))]


def _podman_compose(*args: str, env: Mapping[str, str] | None = None, timeout: float = 300.0,
                    check: bool = True) -> subprocess.CompletedProcess[str]:
    return commands.run([sys.executable, "-m", "podman_compose", *args], cwd=ROOT,
                        env=env if env is not None else os.environ, timeout=timeout, check=check)


# --------------------------------------------------------------------------- (1) schema


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_file_matches_the_compose_specification(path: Path):
    assert _validate(_load(path)) == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_resolved_config_matches_the_compose_specification(path: Path, tmp_path: Path):
    """What podman-compose makes of the file (variables interpolated, anchors merged)."""
    pytest.importorskip("podman_compose")
    env = {**os.environ, "MPI_SECRETS_DIR": str(tmp_path)}
    resolved = yaml.safe_load(_podman_compose("-f", str(path), "config", env=env).stdout)
    assert _validate(resolved) == []
    assert set(resolved["services"]) >= {"db", "migrate", "mpi"}
    assert "${" not in json.dumps(resolved)


def test_files_are_complete_stacks():
    dev, prod = _load(DEV), _load(PROD)
    assert set(dev["services"]) == {"db", "migrate", "mpi", "pgadmin", "prometheus", "grafana"}
    assert dev["services"]["pgadmin"]["profiles"] == ["tools"]
    assert dev["services"]["prometheus"]["profiles"] == ["monitoring"]
    assert dev["services"]["grafana"]["profiles"] == ["monitoring"]
    assert set(prod["services"]) == {"db", "migrate", "mpi", "proxy"}
    for config in (dev, prod):
        services = config["services"]
        assert services["db"]["image"] == "${POSTGRES_IMAGE:-postgres:15}"
        for name in MPI_SERVICES:
            assert services[name]["image"] == "${MPI_IMAGE:-mpi:0.1.0}"
            assert "build" not in services[name]  # images are loaded, not built
        assert services["migrate"]["restart"] == "no"
        assert services["migrate"]["command"] == ["migrate"]
        assert services["mpi"]["depends_on"] == {
            "db": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"}}
        assert services["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}
        assert services["mpi"]["restart"] == "unless-stopped"
        assert all(s.get("networks") == ["backend"] for s in services.values())
        assert config["networks"]["backend"]["driver"] == "bridge"
    assert dev["services"]["mpi"]["ports"] == ["127.0.0.1:${MPI_PORT:-8080}:8080"]
    assert "mpi-data:/data" in dev["services"]["mpi"]["volumes"]
    assert "db-data:/var/lib/postgresql/data" in dev["services"]["db"]["volumes"]
    assert "ports" not in prod["services"]["mpi"]  # only through the proxy
    assert (COMPOSE / "nginx.conf").is_file()


# --------------------------------------------------------------------------- (2) semantics


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_mpi_environment_is_what_the_service_reads(path: Path):
    known = set(ENV_NAMES) | {f"{name}_FILE" for name in ENV_NAMES}
    for name in MPI_SERVICES:
        environment = _load(path)["services"][name].get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        unknown = sorted(set(environment) - known)
        assert not unknown, f"{path.name}: {name} sets variables the service never reads: {unknown}"
        both = sorted(n for n in ENV_NAMES if n in environment and f"{n}_FILE" in environment)
        assert not both, f"{path.name}: {name} sets both NAME and NAME_FILE for {both}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_health_checks_are_in_exec_form(path: Path):
    for name, service in _load(path)["services"].items():
        test = service.get("healthcheck", {}).get("test")
        if test is None:
            continue
        assert isinstance(test, list) and test[0] == "CMD", (
            f"{path.name}: {name}: health check {test!r} needs a shell; use [\"CMD\", ...]")
        assert not {"sh", "/bin/sh", "bash", "/bin/bash"} & set(test), test
    services = _load(path)["services"]
    assert services["mpi"]["healthcheck"]["test"][:3] == ["CMD", MPI_BINARY, "healthcheck"]
    assert services["db"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]


def test_production_hardening():
    prod = _load(PROD)
    for name in MPI_SERVICES:
        service = prod["services"][name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert "/tmp" in service["tmpfs"], name
        assert service["logging"]["driver"] == "json-file", name
        assert {"max-size", "max-file"} <= set(service["logging"]["options"]), name
        assert service["environment"]["DATABASE_URL_FILE"] == "/run/secrets/mpi-database-url"
        assert "DATABASE_URL" not in service["environment"]
        assert service["secrets"] == ["mpi-database-url"]
        assert {"cpus", "memory"} <= set(service["deploy"]["resources"]["limits"]), name
    mpi = prod["services"]["mpi"]
    assert mpi["deploy"]["replicas"] == "${MPI_REPLICAS:-2}"
    db = prod["services"]["db"]
    assert db["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres-password"
    assert "POSTGRES_PASSWORD" not in db["environment"]
    assert set(prod["secrets"]) == {"postgres-password", "mpi-database-url"}
    assert all("file" in secret for secret in prod["secrets"].values())
    proxy = prod["services"]["proxy"]
    assert proxy["depends_on"] == {"mpi": {"condition": "service_healthy"}}
    assert "server mpi:8080" in (COMPOSE / "nginx.conf").read_text()


# --------------------------------------------------------------------------- (3) bring-up


def _required() -> bool:
    return os.environ.get("MPI_TEST_CONTAINERS", "").strip().lower() == "required"


def _unavailable(reason: str) -> NoReturn:
    if _required():
        pytest.fail(f"MPI_TEST_CONTAINERS=required, but {reason}", pytrace=False)
    # Loud: the warning summary names it, as well as the skip reason.
    import warnings
    warnings.warn(f"COMPOSE BRING-UP SKIPPED: {reason}", stacklevel=2)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def podman_env() -> dict[str, str]:
    try:
        env = engine.podman_env(ROOT)
    except engine.EngineError as exc:
        _unavailable(f"no container engine: {exc}")
    problem = engine.podman_unavailable(env)
    if problem:
        _unavailable(f"no container engine: {problem}")
    try:
        import podman_compose  # noqa: F401
    except ImportError:
        _unavailable("podman-compose is not installed (pip install podman-compose)")
    for image in ("mpi:0.1.0", POSTGRES_IMAGE):
        if not engine.image_exists(image, env=env):
            _unavailable(f"{image} is not loaded in podman (nox -s image; "
                         "python -m images.postgres_image; podman load -i ...)")
    return env


class Stack:
    """One podman-compose project; ``down -v`` removes it (containers, network, volumes)."""

    def __init__(self, file: Path, env: dict[str, str]) -> None:
        self.file = file
        self.project = f"mpi-compose-test-{secrets.token_hex(4)}"
        self.env = env

    def compose(self, *args: str, timeout: float = 300.0,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return _podman_compose("-f", str(self.file), "-p", self.project, *args,
                               env=self.env, timeout=timeout, check=check)

    def containers(self, service: str) -> list[str]:
        out = engine.podman("ps", "-a",
                            "--filter", f"label=io.podman.compose.project={self.project}",
                            "--filter", f"label=com.docker.compose.service={service}",
                            "--format", "{{.Names}}", env=self.env).stdout
        return sorted(out.split())

    def inspect(self, container: str) -> dict[str, Any]:
        return json.loads(engine.podman("container", "inspect", container, env=self.env).stdout)[0]

    def logs(self) -> str:
        return self.compose("logs", check=False, timeout=60).stdout[-6000:]

    def wait_healthy(self, service: str) -> float:
        """Run the service's health check (podman has no timer here) until each passes."""
        started = time.monotonic()
        for container in self.containers(service) or [f"(no {service} container)"]:
            while True:
                proc = engine.podman("healthcheck", "run", container, env=self.env, check=False,
                                     timeout=60)
                if proc.returncode == 0:
                    break
                elapsed = time.monotonic() - started
                if elapsed > WAIT_LIMIT:
                    raise AssertionError(f"{container} not healthy after {elapsed:.0f} s: "
                                         f"{proc.stdout}{proc.stderr}\n{self.logs()}")
                time.sleep(0.5)
        return time.monotonic() - started

    def up(self, service: str, *, scale: int | None = None) -> None:
        extra = ["--scale", f"{service}={scale}"] if scale else []
        self.compose("up", "-d", "--no-deps", *extra, service)

    def migrate(self) -> None:
        """Run the one-off migration service; assert that it exited 0."""
        self.up("migrate")
        (migrate,) = self.containers("migrate")
        engine.podman("wait", migrate, env=self.env, timeout=WAIT_LIMIT)
        state = self.inspect(migrate)["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 0), (state, self.logs())

    def start(self, *services: str, scale: int | None = None) -> float:
        """Staged ``up`` (see the module's docstring): db, healthy; migrate; ``services``.

        ``scale``: replicas per service, passed as ``--scale`` because podman-compose
        does not read ``deploy.replicas`` (Docker Compose does).
        """
        started = time.monotonic()
        self.up("db")
        self.wait_healthy("db")
        self.migrate()
        for service in services:
            self.up(service, scale=scale)
        return time.monotonic() - started

    def down(self) -> None:
        """``down -v``, then remove by label whatever it left (it stops at a missing service)."""
        with contextlib.suppress(Exception):
            self.compose("down", "-v", "-t", "5", check=False, timeout=180)
        label = f"label=io.podman.compose.project={self.project}"
        for kind in ("container", "volume", "network"):
            with contextlib.suppress(engine.CommandError):
                names = engine.podman(kind, "ls", *(["-a"] if kind == "container" else []),
                                      "--filter", label, "--format", "{{.Name}}"
                                      if kind != "container" else "{{.Names}}",
                                      env=self.env).stdout.split()
                if names:
                    engine.podman(kind, "rm", "--force", *names, env=self.env, timeout=120)


@pytest.fixture
def stack_env(podman_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**podman_env, "POSTGRES_IMAGE": POSTGRES_IMAGE, "MPI_IMAGE": "mpi:0.1.0",
            "MPI_PORT": str(_free_port()), "POSTGRES_PASSWORD": secrets.token_hex(12),
            "MPI_SECRETS_DIR": str(tmp_path / "secrets")}


@pytest.fixture
def dev_stack(stack_env: dict[str, str]) -> Iterator[Stack]:
    stack = Stack(DEV, stack_env)
    try:
        yield stack
    finally:
        stack.down()


def test_development_stack_serves_patients(dev_stack: Stack, record_property):
    port = int(dev_stack.env["MPI_PORT"])
    started = time.monotonic()
    db_migrated = dev_stack.start("mpi")
    while True:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if _request(port, "GET", "/api/v1/health/ready")[0] == 200:
                break
        if time.monotonic() - started > WAIT_LIMIT:
            raise AssertionError(f"mpi not ready on port {port}:\n{dev_stack.logs()}")
        time.sleep(0.2)
    ready_after = time.monotonic() - started
    dev_stack.wait_healthy("mpi")  # the exec-form health check works in the shell-less image
    assert not dev_stack.containers("pgadmin")  # profile "tools" only

    # Access control is on: nothing without a token; an operator makes one in the container.
    assert _request(port, "POST", "/api/v1/patients", PATIENT)[0] == 401
    (container,) = dev_stack.containers("mpi")
    token = engine.podman("exec", container, MPI_BINARY, "token", "create", "--name", "compose",
                          "--scopes", "system/Patient.cruds", "--sources", "compose",
                          env=dev_stack.env).stdout.strip()
    status, headers, created = _request(port, "POST", "/api/v1/patients", PATIENT, token)
    assert status == 201, created
    status, _, read = _request(port, "GET", headers["location"], token=token)
    assert status == 200 and read == created, read
    assert read["source"] == "compose" and read["birth_date"] == "1980-01-01"

    record_property("db_migrated_s", round(db_migrated, 2))
    record_property("ready_s", round(ready_after, 2))
    print(f"development stack: db healthy and migrated {db_migrated:.1f} s, mpi ready "
          f"{ready_after:.1f} s after the first `up`")


@pytest.fixture
def prod_stack(stack_env: dict[str, str]) -> Iterator[Stack]:
    folder = Path(stack_env["MPI_SECRETS_DIR"])
    folder.mkdir(mode=0o755)
    password = stack_env.pop("POSTGRES_PASSWORD")
    for name, value in (("postgres-password", password),
                        ("mpi-database-url", f"postgresql://mpi:{password}@db:5432/mpi")):
        (folder / name).write_text(value + "\n")
        (folder / name).chmod(0o644)  # read by uid 999 (postgres) and 65532 (mpi)
    stack = Stack(PROD, stack_env)
    try:
        yield stack
    finally:
        stack.down()
        shutil.rmtree(folder, ignore_errors=True)


def test_production_stack_runs_hardened_replicas(prod_stack: Stack, record_property):
    proxy_image = prod_stack.env.get("NGINX_IMAGE", "nginx:1.27-alpine")
    with_proxy = engine.image_exists(proxy_image, env=prod_stack.env)
    started = time.monotonic()
    prod_stack.start("mpi", scale=2)
    ready = prod_stack.wait_healthy("mpi")  # `mpi healthcheck --ready` in every replica
    if with_proxy:  # no proxy image here (Docker Hub): the MPI replicas only
        prod_stack.up("proxy")
    took = time.monotonic() - started

    replicas = prod_stack.containers("mpi")
    assert len(replicas) == 2, replicas
    for name in [*replicas, *prod_stack.containers("migrate")]:
        info = prod_stack.inspect(name)
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] is True, name
        assert any("no-new-privileges" in opt for opt in host.get("SecurityOpt") or []), name
        assert "/tmp" in (host.get("Tmpfs") or {}), name
        env = dict(item.partition("=")[::2] for item in info["Config"]["Env"])
        assert env["DATABASE_URL_FILE"] == "/run/secrets/mpi-database-url"
        assert "CAP_NET_BIND_SERVICE" not in (info.get("EffectiveCaps") or []), name
    for name in replicas:
        assert prod_stack.inspect(name)["State"]["Status"] == "running"
    if with_proxy:
        port = int(prod_stack.env["MPI_PORT"])
        assert _request(port, "GET", "/api/v1/health/ready")[0] == 200
    record_property("prod_ready_s", round(took, 2))
    print(f"production stack: {len(replicas)} replicas ready {took:.1f} s after `up` "
          f"(health {ready:.1f} s){'' if with_proxy else '; proxy image absent, not started'}")
