"""Tests for toolkit.postgres: selection logic with fake environments, and one real local server."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

import toolkit.postgres as pg
from toolkit.commands import CommandError
from toolkit.postgres import (
    PostgresServer,
    PostgresUnavailable,
    container_engine_available,
    start_postgres,
)

NO_ENGINE = "unix:///nonexistent/docker.sock"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def fake_engine(serve_unix) -> str:
    """DOCKER_HOST value of a fake engine that answers pings and fails every other call."""
    return f"unix://{serve_unix()}"


@pytest.fixture
def record_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the three start paths by recorders; return the list of chosen paths."""
    chosen: list[str] = []

    def fake(kind: str) -> Callable[..., PostgresServer]:
        def start(*args: object) -> PostgresServer:
            chosen.append(kind)
            return PostgresServer(url="postgresql://x", kind=kind, description=kind)

        return start

    monkeypatch.setattr(pg, "_start_external", fake("external"))
    monkeypatch.setattr(pg, "_start_container", fake("testcontainers"))
    monkeypatch.setattr(pg, "_start_local", fake("local"))
    return chosen


def _engine(answers: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "container_engine_available", lambda env=None: answers)


# --------------------------------------------------------------------------- selection


def test_external_url_chosen_when_set(
    record_paths: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _engine(True, monkeypatch)
    server = start_postgres(env={"MPI_TEST_DATABASE_URL": "postgresql://u:p@db:5432/mpi"})
    assert server.kind == "external"
    assert record_paths == ["external"]


def test_container_chosen_when_engine_answers(
    record_paths: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _engine(True, monkeypatch)
    assert start_postgres(env={}).kind == "testcontainers"


def test_local_when_no_engine(record_paths: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _engine(False, monkeypatch)
    assert start_postgres(env={}).kind == "local"


@pytest.mark.parametrize("extra", [{}, {"MPI_TEST_DATABASE_URL": "postgresql://u:p@db/mpi"}])
def test_local_forced(
    record_paths: list[str], monkeypatch: pytest.MonkeyPatch, extra: dict[str, str]
) -> None:
    _engine(True, monkeypatch)
    assert start_postgres(env={"MPI_TEST_POSTGRES": "local", **extra}).kind == "local"


def test_container_forced_with_engine(
    record_paths: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _engine(True, monkeypatch)
    assert start_postgres(env={"MPI_TEST_POSTGRES": "container"}).kind == "testcontainers"


def test_container_forced_without_engine_is_an_error(record_paths: list[str]) -> None:
    env = {"MPI_TEST_POSTGRES": "container", "DOCKER_HOST": NO_ENGINE}
    with pytest.raises(PostgresUnavailable, match="no container engine answers"):
        start_postgres(env=env)
    assert record_paths == []


def test_external_forced_without_url_is_an_error(record_paths: list[str]) -> None:
    with pytest.raises(PostgresUnavailable, match="MPI_TEST_DATABASE_URL is not set"):
        start_postgres(env={"MPI_TEST_POSTGRES": "external"})


def test_unknown_mode_is_rejected(record_paths: list[str]) -> None:
    with pytest.raises(ValueError, match="MPI_TEST_POSTGRES"):
        start_postgres(env={"MPI_TEST_POSTGRES": "docker"})


def test_unreachable_external_url_raises() -> None:
    with pytest.raises(PostgresUnavailable, match="cannot connect to MPI_TEST_DATABASE_URL"):
        start_postgres(env={"MPI_TEST_DATABASE_URL": "postgresql://mpi:secret@127.0.0.1:1/mpi"})


# --------------------------------------------------------------------------- engine probe


@pytest.mark.parametrize(
    "docker_host", [NO_ENGINE, "tcp://127.0.0.1:1", "ssh://user@host", "npipe:////./pipe/x"]
)
def test_engine_unavailable(docker_host: str) -> None:
    started = time.monotonic()
    assert container_engine_available({"DOCKER_HOST": docker_host}) is False
    assert time.monotonic() - started < 2


def test_engine_available_when_ping_answers(fake_engine: str) -> None:
    assert container_engine_available({"DOCKER_HOST": fake_engine}) is True


def test_engine_failure_is_not_hidden(fake_engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that answers but cannot run the container is an error, not a fallback to local."""
    monkeypatch.setenv("DOCKER_HOST", fake_engine)
    for key in pg.TESTCONTAINERS_DEFAULTS:
        monkeypatch.delenv(key, raising=False)  # restored (removed) after the test
    with pytest.raises(PostgresUnavailable, match="did not start"):
        start_postgres()


# --------------------------------------------------------------------------- local pieces


def test_bin_override_without_binaries(tmp_path: Path) -> None:
    with pytest.raises(PostgresUnavailable, match="MPI_TEST_POSTGRES_BIN"):
        pg.find_postgres_bindir({"MPI_TEST_POSTGRES_BIN": str(tmp_path)})


def test_failing_command_reports_command_code_and_stderr() -> None:
    with pytest.raises(CommandError) as info:
        pg._run(["sh", "-c", "echo broken pipe dream >&2; exit 3"])
    assert info.value.returncode == 3
    assert info.value.argv == ["sh", "-c", "echo broken pipe dream >&2; exit 3"]
    message = str(info.value)
    assert "sh -c" in message and "exit code 3" in message and "broken pipe dream" in message


def test_server_argv_builders(tmp_path: Path) -> None:
    bindir, data = tmp_path / "bin", tmp_path / "data"
    initdb = pg.initdb_command(bindir, data, tmp_path / "pw")
    assert initdb[:3] == [str(bindir / "initdb"), "-D", str(data)]
    assert {"--username", "mpi", f"--pwfile={tmp_path / 'pw'}", "--auth-host=scram-sha-256",
            "--auth-local=trust", "--encoding=UTF8", "--no-sync"} <= set(initdb)
    start = pg.pg_ctl_start_command("pg_ctl", data, tmp_path / "log", port=54321, wait=7)
    assert start == ["pg_ctl", "start", "-D", str(data), "-l", str(tmp_path / "log"),
                     "-w", "-t", "7", "-o", "-p 54321"]
    assert pg.pg_ctl_stop_command("pg_ctl", data) == [
        "pg_ctl", "stop", "-D", str(data), "-m", "fast", "-w", "-t", "30"]


def test_stop_is_idempotent() -> None:
    calls: list[int] = []
    server = PostgresServer(
        url="u", kind="local", description="d", _stopper=lambda: calls.append(1)
    )
    with server:
        pass
    server.stop()
    assert calls == [1]


# --------------------------------------------------------------------------- real server


def test_local_server_lifecycle(tmp_path: Path) -> None:
    """Start a real local server, use it (also as an "external" URL), stop it, check cleanup."""
    server = start_postgres(workdir=tmp_path, env={"MPI_TEST_POSTGRES": "local"})
    try:
        assert server.kind == "local"
        assert server.url.startswith("postgresql://mpi:mpi@127.0.0.1:")
        assert server.tempdir is not None and server.tempdir.is_dir()
        assert str(server.tempdir) in server.description
        with psycopg.connect(server.url) as conn:
            (version,) = conn.execute("select version()").fetchone() or ("",)
            assert version.startswith("PostgreSQL ")
            assert conn.execute("select current_user, current_database()").fetchone() == (
                "mpi",
                "mpi",
            )
            conn.execute("create table person (id serial primary key, family_name text not null)")
            conn.execute("insert into person (family_name) values ('Müller')")
            assert conn.execute("select lower(family_name) from person").fetchone() == ("müller",)

        external = start_postgres(env={"MPI_TEST_DATABASE_URL": server.url})
        assert external.kind == "external"
        external.stop()  # a no-op for an external server
        with psycopg.connect(server.url) as conn:
            assert conn.execute("select count(*) from person").fetchone() == (1,)
    finally:
        server.stop()
    assert not server.tempdir.exists()
    server.stop()  # idempotent
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url, connect_timeout=2)
