"""deploy/systemd: the unit runs the PEX as user mpi, migrates first, stops gracefully and
is sandboxed; its env template holds exactly the service's settings."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from mpi import config
from tests.helpers import stop_process

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
UNIT = SYSTEMD / "mpi.service"
ENV_EXAMPLE = SYSTEMD / "mpi.env.example"
PEX = "/usr/bin/python3 /opt/mpi/mpi.pex"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}}.

    systemd's syntax, not configparser's: keys repeat (each assignment appends, an empty
    one resets the list), comments start with # or ;, and a trailing backslash continues
    a line.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


UNIT_SECTIONS = parse_unit(UNIT.read_text(encoding="utf-8"))
SERVICE = UNIT_SECTIONS["Service"]


def _value(key: str, section: dict[str, list[str]] = SERVICE) -> str:
    values = section.get(key)
    assert values, f"{key}= is not set"
    return values[-1]  # the last assignment wins


def _environment() -> dict[str, str]:
    env = {}
    for value in SERVICE.get("Environment", []):
        for item in value.split():
            name, _, val = item.partition("=")
            env[name] = val
    return env


def _env_file(path: Path) -> dict[str, str]:
    return config.read_env_file(path)


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


# --- the unit ------------------------------------------------------------------------------


def test_sections():
    assert set(UNIT_SECTIONS) == {"Unit", "Service", "Install"}
    assert _value("WantedBy", UNIT_SECTIONS["Install"]) == "multi-user.target"


def test_runs_the_pex_as_user_mpi():
    assert _value("User") == "mpi"
    assert _value("Group") == "mpi"
    assert _value("DynamicUser") == "no"
    assert SERVICE["ExecStart"] == [f"{PEX} serve"]
    assert _environment()["PEX_ROOT"] == "/var/cache/mpi/pex"


def test_sysusers_creates_the_user():
    lines = [line.split() for line in
             (SYSTEMD / "mpi.sysusers.conf").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    assert [line[:2] for line in lines] == [["u", "mpi"]]


def test_migrates_before_serving():
    assert SERVICE["ExecStartPre"] == [f"{PEX} migrate"]


def test_directories():
    assert _value("StateDirectory") == "mpi"
    assert _value("CacheDirectory") == "mpi"
    assert _value("WorkingDirectory") == "/var/lib/mpi"
    # PEX_ROOT is inside the cache directory, the search index inside the state directory:
    # with ProtectSystem=strict nothing else is writable.
    assert _environment()["PEX_ROOT"].startswith("/var/cache/mpi/")
    assert _env_file(ENV_EXAMPLE)["SEARCH_INDEX_PATH"].startswith("/var/lib/mpi/")


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallFilter": "@system-service",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictSUIDSGID": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
}


@pytest.mark.parametrize(("key", "expected"), HARDENING.items(), ids=list(HARDENING))
def test_hardening(key, expected):
    assert SERVICE.get(key) == [expected]  # set once, nothing added or reset later


def test_graceful_stop():
    assert _value("KillSignal") == "SIGTERM"
    assert _value("KillMode") == "mixed"
    graceful = int(_env_file(ENV_EXAMPLE)["GRACEFUL_TIMEOUT"])
    default = int(next(s.default for s in config.SETTINGS if s.env == "GRACEFUL_TIMEOUT"))
    # Longer than the configured graceful timeout and than the default, in case it is unset.
    assert _seconds(_value("TimeoutStopSec")) > max(graceful, default)


def test_restart_policy():
    assert _value("Restart") == "on-failure"
    # A configuration error (exit 2) is not retried.
    assert _value("RestartPreventExitStatus") == "2"


# --- settings ------------------------------------------------------------------------------


def test_database_url_is_a_credential():
    assert _value("EnvironmentFile") == "/etc/mpi/mpi.env"
    (credential,) = SERVICE["LoadCredential"]
    name, _, source = credential.partition(":")
    assert source.startswith("/etc/mpi/")
    assert _environment()["DATABASE_URL_FILE"] == f"%d/{name}"


def test_env_example_lists_every_setting_but_the_url():
    names = set(_env_file(ENV_EXAMPLE))
    # DATABASE_URL comes from the credential; setting it here too would be refused.
    assert names == set(config.ENV_NAMES) - {"DATABASE_URL"}
    # No NAME_FILE indirection (TLS_CERT_FILE and AUTH_JWKS_FILE are settings of their own).
    assert not {n for n in names if n.endswith("_FILE") and n not in config.ENV_NAMES}
    assert not set(_environment()) & set(config.ENV_NAMES)  # the unit sets no setting itself


def test_config_check_accepts_the_env_example(tmp_path):
    """The env file plus the credential, as the service sees them."""
    credential = tmp_path / "database-url"
    credential.write_text("postgresql://mpi:dummy-password@db.internal:5432/mpi?sslmode=require\n")
    env_file = tmp_path / "mpi.env"
    env_file.write_text(ENV_EXAMPLE.read_text(encoding="utf-8")
                        + f"\nDATABASE_URL_FILE={credential}\n")
    result = subprocess.run([sys.executable, "-m", "mpi", "config", "check", "--env-file",
                             str(env_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "dummy-password" not in result.stdout
    assert f"file {credential}" in result.stdout


# --- systemd's own tools -------------------------------------------------------------------


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    return tool


@pytest.mark.parametrize("names", [("mpi.service",),
                                   ("mpi-train.service", "mpi-train.timer")])
def test_systemd_analyze_verify(tmp_path, names):
    tool = _systemd_analyze()
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("verify checks that ExecStart's program exists; this machine has no "
                    "/usr/bin/python3")
    units = [tmp_path / name for name in names]
    for unit in units:
        shutil.copy(SYSTEMD / unit.name, unit)
    result = subprocess.run([tool, "verify", *map(str, units)], capture_output=True,
                            text=True, timeout=60)
    if result.returncode != 0 and ("Failed to" in result.stderr and "bus" in result.stderr):
        pytest.skip(f"systemd-analyze verify cannot run here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    for name in names:
        assert name not in result.stderr, result.stderr  # no warning about the unit


@pytest.mark.parametrize("name", ["mpi.service", "mpi-train.service"])
def test_systemd_analyze_security(tmp_path, name):
    """The sandbox scores "OK" (exposure 2.0 or lower out of 10) in systemd's own review."""
    tool = _systemd_analyze()
    unit = tmp_path / name
    shutil.copy(SYSTEMD / name, unit)
    result = subprocess.run([tool, "security", "--offline=yes", "--threshold=20", str(unit)],
                            capture_output=True, text=True, timeout=60)
    if "--offline" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip(f"this systemd-analyze cannot review a unit file offline (systemd < 250): "
                    f"{result.stderr.strip()}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_the_model_is_retrained_on_a_schedule_into_the_state_directory():
    """mpi-train.timer runs mpi-train.service weekly: `mpi train` on the registry, as user
    mpi with the service's settings and credential, writing the file MATCHING_MODEL_PATH
    names, from the shipped model (not the one in use), in the same sandbox."""
    train = parse_unit((SYSTEMD / "mpi-train.service").read_text(encoding="utf-8"))
    timer = parse_unit((SYSTEMD / "mpi-train.timer").read_text(encoding="utf-8"))
    service = train["Service"]
    assert _value("Type", service) == "oneshot"
    assert _value("User", service) == "mpi"
    assert _value("ExecStart", service).split() == [
        *PEX.split(), "train", "--output", "/var/lib/mpi/model.json", "--name", "registry",
        "--no-progress"]
    assert _value("StateDirectory", service) == "mpi"
    assert "MATCHING_MODEL_PATH=" in service["Environment"]
    for key in ("EnvironmentFile", "LoadCredential", "ProtectSystem", "NoNewPrivileges",
                "SystemCallFilter", "MemoryDenyWriteExecute", "CapabilityBoundingSet"):
        assert service[key] == SERVICE[key], key
    assert _value("OnCalendar", timer["Timer"]).startswith("Sun")
    assert _value("Persistent", timer["Timer"]) == "true"
    assert _value("WantedBy", timer["Install"]) == "timers.target"


# --- MemoryDenyWriteExecute=yes against the real service -----------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_UNDER_MDWE = textwrap.dedent("""
    import ctypes, os, sys
    # PR_SET_MDWE (65), PR_MDWE_REFUSE_EXEC_GAIN (1): the kernel's own form of systemd's
    # MemoryDenyWriteExecute=; inherited by forked workers and kept across execve.
    if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
        sys.exit(77)
    os.execv(sys.executable, [sys.executable, "-m", "mpi", "serve"])
""")


def test_service_runs_without_writable_executable_memory(tmp_path):
    """`mpi serve` (gunicorn, its workers, psycopg's libpq, pydantic-core) answers its
    health checks while the kernel refuses writable+executable mappings."""
    if not hasattr(ctypes, "CDLL") or sys.platform != "linux":
        pytest.skip("needs Linux")
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if k not in config.ENV_NAMES},
           "DATABASE_URL": f"sqlite:///{tmp_path}/mpi.db", "SERVER_HOST": "127.0.0.1",
           "SERVER_PORT": str(port), "WORKERS": "2", "THREADS": "2",
           "SEARCH_INDEX_PATH": str(tmp_path / "index"), "LOG_FORMAT": "text"}
    proc = subprocess.Popen([sys.executable, "-c", _UNDER_MDWE], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                url = f"http://127.0.0.1:{port}/api/v1/health/ready"
                with urllib.request.urlopen(url, timeout=2) as response:
                    status = response.status
                    break
            except OSError:
                time.sleep(0.3)
        if proc.poll() == 77:
            pytest.skip("the kernel does not support PR_SET_MDWE (Linux 6.3+)")
        assert status == 200, proc.stdout.read() if proc.poll() is not None else "no answer"
    finally:
        stop_process(proc)
    assert proc.returncode == 0, proc.stdout.read()
