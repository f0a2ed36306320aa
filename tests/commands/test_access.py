"""``mpi token create|list|revoke`` as an operator runs them, and a token then used."""

from __future__ import annotations

import dataclasses

import falcon.testing

from mpi.api.app import create_app
from mpi.config import load
from mpi.storage.db import close_database, database_for
from mpi.wiring import build
from tests.helpers import patient
from tests.test_cli import run


def test_create_use_list_and_revoke(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/mpi.db", "AUTH_MODE": "token",
           "SEARCH_INDEX_PATH": str(tmp_path / "index"), "LOG_FORMAT": "text",
           "LOG_LEVEL": "WARNING"}
    made = run("token", "create", "--name", "lab-system", "--scopes", "system/Patient.cruds",
               "mpi:feed", "--sources", "lab", "--by", "alice", env=env)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("mpi_") and "\n" not in secret  # stdout: the token alone
    assert "shown only this once" in made.stderr and secret not in made.stderr

    settings = load(env)
    database = database_for(settings.database)
    client = falcon.testing.TestClient(create_app(build(dataclasses.replace(settings),
                                                        db=database)))
    auth = {"Authorization": f"Bearer {secret}"}
    assert client.simulate_post("/api/v1/patients", json=patient(source="lab"),
                                headers=auth).status_code == 201

    listed = run("token", "list", env=env)
    assert listed.returncode == 0 and secret not in listed.stdout
    name, state, *rest = listed.stdout.strip().split("\t")
    assert (name, state) == ("lab-system", "active") and "last used never" not in rest[1]

    assert run("token", "revoke", "lab-system", env=env).returncode == 0
    assert client.simulate_get("/api/v1/events", headers=auth).status_code == 401
    assert "\trevoked " in run("token", "list", env=env).stdout
    close_database(database)


def test_mistakes_are_one_line_each_and_exit_1(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/mpi.db", "AUTH_MODE": "token",
           "SEARCH_INDEX_PATH": str(tmp_path / "index"), "LOG_LEVEL": "WARNING"}
    bad = run("token", "create", "--name", "x", "--scopes", "user/Patient.r", "--sources",
              "a b", env=env)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "mpi token create: scopes: 'user/Patient.r': only system/ scopes grant anything here",
        "mpi token create: sources: 'a b' is not a source name (letters, digits, '.', '_', "
        "':' or '-'; or * for any)"]
    missing = run("token", "revoke", "nobody", env=env)
    assert missing.returncode == 1 and missing.stderr.strip() == (
        "mpi token revoke: no token named 'nobody'")
