"""``mpi reindex``: builds a new generation beside the current one and switches to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mpi.config import Settings
from mpi.domain.audit import Actor
from mpi.search.index import WhooshSearchIndex
from mpi.search.query import parse
from mpi.search.store import IndexDirectory
from mpi.storage.changes import ChangeRepository
from mpi.storage.db import connection
from mpi.wiring import build, migrate_database
from tests.helpers import patient


def _reindex(env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "SEARCH_"))}
    return subprocess.run([sys.executable, "-m", "mpi", "reindex", *(["--quiet"] if
                                                                      env.pop("quiet", "") else
                                                                      [])],
                          env={**full, **env}, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_reindex_builds_beside_and_swaps(tmp_path):
    url = f"sqlite:///{tmp_path}/mpi.db"
    settings = Settings.defaults(database_url=url, search_index_path=tmp_path / "index")
    migrate_database(settings)
    services = build(settings)
    with connection(services.db):
        service = services.patients
        for n in range(3):
            body = patient(source_id=f"R-{n}", identifiers=[],
                           names=[{"family": "Reindexer", "given": [f"G{n}"]}])
            service.create(service.parse(json.dumps(body).encode()), Actor("t"))
        last_event = ChangeRepository().last_id()
    services.close()
    env = {"DATABASE_URL": url, "SEARCH_INDEX_PATH": str(tmp_path / "index"),
           "LOG_FORMAT": "text"}

    first = _reindex(dict(env), tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"indexed 3 patients through change-log event {last_event}" in first.stdout
    assert "patients" in first.stderr  # the progress bar
    directory = IndexDirectory(tmp_path / "index")
    before = directory.current_name()
    reader = WhooshSearchIndex(tmp_path / "index")
    assert reader.search(parse("reindexer"), offset=0, limit=10).total == 3

    second = _reindex({**env, "quiet": "1"}, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "patients/s" not in second.stderr and "it/s" not in second.stderr  # no bar
    assert directory.current_name() != before
    assert reader.search(parse("reindexer"), offset=0, limit=10).total == 3  # reopened
    gens = sorted(p.name for p in (tmp_path / "index").iterdir() if p.name.startswith("gen-"))
    assert len(gens) == 2  # the new one and the one it replaced, nothing older
    reader.close()
