"""Commands fail like commands: one line naming the cause, a non-zero exit, no traceback.

Each command that touches the database or the data directory is run against an
unreachable server, with a wrong password, and with a data directory that cannot be
created; the unit tests below check the wording of each kind of failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import peewee
import pytest

from mpi.commands.failures import explain
from mpi.domain.errors import StorageUnavailable
from mpi.storage.migrate import MigrationError

COMMANDS = ["migrate", "migrate --status", "serve", "reindex --quiet", "import {csv}",
            "export --clusters {out}", "train --output {out}"]


def _run(line: str, env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    csv = tmp / "in.csv"
    csv.write_text("record_id,given_name,family_name\nr1,Ann,Lee\n")
    argv = line.format(csv=csv, out=tmp / "out").split()
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("DATABASE_", "SEARCH_", "SERVER_"))}
    full.update(env, LOG_FORMAT="text", DATABASE_TIMEOUT="2", SERVER_PORT="1")
    return subprocess.run([sys.executable, "-m", "mpi", *argv], env=full, cwd=tmp,
                          capture_output=True, text=True, timeout=60)


def _one_line_failure(result: subprocess.CompletedProcess[str], command: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert lines, "no error shown"
    assert lines[-1].startswith(f"mpi {command}: "), lines[-1]
    return lines[-1]


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.parametrize("line", COMMANDS)
def test_an_unreachable_database(line: str, tmp_path: Path) -> None:
    result = _run(line, {"DATABASE_URL": "postgresql://mpi:secret@127.0.0.1:1/mpi"}, tmp_path)
    message = _one_line_failure(result, line.split()[0])
    assert "the database is unavailable" in message and "Connection refused" in message
    assert "secret" not in result.stderr + result.stdout


@pytest.mark.parametrize("line", COMMANDS)
def test_a_wrong_password(line: str, tmp_path: Path, postgres_url: str) -> None:
    url = _with_password(postgres_url, "not-the-password")
    result = _run(line, {"DATABASE_URL": url}, tmp_path)
    message = _one_line_failure(result, line.split()[0])
    assert "password authentication failed" in message, message
    assert "not-the-password" not in result.stderr + result.stdout


@pytest.mark.parametrize("line", COMMANDS)
def test_a_data_directory_that_cannot_be_created(line: str, tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file where the data directory should be")
    result = _run(line, {"DATABASE_URL": f"sqlite:///{tmp_path}/data/mpi.db"}, tmp_path)
    message = _one_line_failure(result, line.split()[0])
    assert message.endswith(f"cannot write {tmp_path}/data: it exists and is not a "
                            "directory"), message


@pytest.mark.parametrize("line", ["serve", "reindex --quiet"])
def test_a_search_index_directory_that_cannot_be_created(line: str, tmp_path: Path) -> None:
    (tmp_path / "index").write_text("a file")
    result = _run(line, {"DATABASE_URL": f"sqlite:///{tmp_path}/mpi.db",
                         "SEARCH_INDEX_PATH": str(tmp_path / "index" / "live")}, tmp_path)
    message = _one_line_failure(result, line.split()[0])
    assert f"cannot write {tmp_path}/index" in message, message


def test_the_wording_of_each_failure() -> None:
    unavailable = StorageUnavailable("the database is unavailable")
    unavailable.__cause__ = peewee.OperationalError(
        'connection failed: connection to server at "db", port 5432 failed: FATAL:  '
        'password authentication failed for user "mpi"\n')
    failure = explain(unavailable)
    assert failure is not None and failure.exit_code == 1
    assert failure.message == ('the database is unavailable: connection failed: connection to '
                               'server at "db", port 5432 failed: FATAL:  password '
                               'authentication failed for user "mpi"')
    assert explain(MigrationError("the database has migration 0009")).message == (  # type: ignore[union-attr]
        "migration error: the database has migration 0009")
    denied = explain(PermissionError(13, "Permission denied", "/var/lib/mpi"))
    assert denied is not None and denied.message == "cannot write /var/lib/mpi: Permission denied"
    env = explain(FileNotFoundError(2, "No such file or directory", "prod.env"),
                  env_file="prod.env")
    assert env is not None and (env.message, env.exit_code) == (
        "cannot read prod.env: No such file or directory", 2)
    assert explain(ValueError("a bug")) is None  # a bug keeps its traceback
