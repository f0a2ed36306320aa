"""The ``mpi`` command: config check, migrate, version, healthcheck."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from mpi import cli


def run(*args: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "SERVER_"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "mpi", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=60)


def test_config_check_prints_masked_settings():
    result = run("config", "check",
                 env={"DATABASE_URL": "postgresql://mpi:topsecret@db/mpi"})
    assert result.returncode == 0, result.stderr
    assert "postgresql://mpi:***@db/mpi" in result.stdout
    assert "topsecret" not in result.stdout


def test_config_check_fails_listing_every_problem():
    result = run("config", "check", env={"SERVER_PORT": "x", "LOG_FORMAT": "xml"})
    assert result.returncode == 2
    assert "SERVER_PORT" in result.stderr and "LOG_FORMAT" in result.stderr


def test_config_check_env_file(tmp_path):
    env = tmp_path / "prod.env"
    env.write_text("DATABASE_URL=postgresql://u:pw@db:5432/mpi\nWORKERS=4\n")
    result = run("config", "check", "--env-file", str(env))
    assert result.returncode == 0, result.stderr
    assert re.search(rf"WORKERS +  = 4  \(file {re.escape(str(env))}\)", result.stdout)
    missing = run("config", "check", "--env-file", str(tmp_path / "nope.env"))
    assert missing.returncode == 2


def test_migrate_then_status(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/cli.db", "LOG_FORMAT": "text"}
    first = run("migrate", env=env)
    assert first.returncode == 0, first.stderr
    from mpi.storage import migrate

    shipped = migrate.discover()
    assert f"applied {len(shipped)} migration(s): " + ", ".join(
        f"{m.version}_{m.name}" for m in shipped) in first.stdout
    again = run("migrate", env=env)
    assert "the schema is current" in again.stdout
    status = run("migrate", "--status", "--check", env=env)
    assert status.returncode == 0
    assert all(f"{m.version}_{m.name}: applied" in status.stdout for m in shipped)


def test_migrate_status_check_fails_when_pending(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/new.db"}
    result = run("migrate", "--status", "--check", env=env)
    assert result.returncode == 1
    assert "0001_initial: pending" in result.stdout


def test_migrate_against_postgres(postgres_url):
    result = run("migrate", env={"DATABASE_URL": postgres_url})
    assert result.returncode == 0, result.stderr


def test_version(capsys):
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.startswith("mpi ")


def test_healthcheck_fails_when_nothing_listens():
    result = run("healthcheck", env={"SERVER_PORT": "1"})
    assert result.returncode == 1
    assert "unhealthy" in result.stderr


def test_healthcheck_imports_no_heavy_modules():
    code = ("import sys; from mpi import cli; cli.main(['healthcheck', '--quiet']) ; "
            "heavy = [m for m in ('falcon', 'peewee', 'pydantic', 'gunicorn', 'psycopg') "
            "if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "SERVER_PORT": "1"}, timeout=30)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_serve_refuses_an_open_address_without_authentication(tmp_path):
    result = run("serve", env={"SERVER_HOST": "0.0.0.0", "DATABASE_URL":
                               f"sqlite:///{tmp_path}/mpi.db"})
    assert result.returncode == 2
    assert "AUTH_MODE=none: SERVER_HOST=0.0.0.0 would serve patient records to anyone" in (
        result.stderr)
