"""Task graph. Sessions are thin verbs; the logic lives in ``toolkit/`` (unit-tested)."""

from __future__ import annotations

import os
import sys

import nox

sys.path.insert(0, os.path.dirname(__file__))

from toolkit import locks
from toolkit.venv import install_locked

nox.options.sessions = ["lint", "test"]
nox.options.reuse_venv = "yes"
nox.options.error_on_external_run = True

PYTHON = "3.11"
DEV_LOCKS = ("requirements-dev.lock",)


@nox.session(python=PYTHON)
def test(session: nox.Session) -> None:
    """Run the test suite against a throwaway PostgreSQL and SQLite (posargs go to pytest)."""
    install_locked(session, *DEV_LOCKS)
    args = session.posargs or ["-q"]
    session.run("pytest", *args)


@nox.session(python=PYTHON)
def serve(session: nox.Session) -> None:
    """Run the service from source on the embedded SQLite default."""
    # The build lock brings the pinned setuptools the editable install needs.
    install_locked(session, "requirements.lock", "requirements-build.lock")
    session.run("mpi", *(session.posargs or ["serve"]))


#: What ``nox -s lint`` checks, ruff and mypy alike (mypy's list is ``files`` in pyproject.toml).
LINTED = ("app", "migrations", "toolkit", "images", "bench", "tests", "noxfile.py")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (lint) and mypy (types) over the service, its migrations, the build toolkit, the
    images, the benchmarks, the tests and this file."""
    install_locked(session, *DEV_LOCKS)
    session.run("ruff", "check", *(session.posargs or LINTED))
    session.run("mypy")


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Build dist/mpi.pex reproducibly from the locks (a no-op when inputs are unchanged)."""
    install_locked(session, "requirements-tools.lock", "requirements-build.lock", project=False)
    session.run("python", "-m", "toolkit.pexbuild", *session.posargs)


@nox.session(python=PYTHON)
def image(session: nox.Session) -> None:
    """Write dist/mpi-image.tar (OCI layout + docker manifest), its digest and SBOM; --load."""
    install_locked(session, "requirements-tools.lock", "requirements-build.lock", project=False)
    session.run("python", "-m", "images.runtime_image", *session.posargs)


@nox.session(python=PYTHON)
def lock(session: nox.Session) -> None:
    """Resolve and rewrite every lock with hashes (the only session that resolves versions)."""
    session.install("--require-hashes", "--no-deps", "-r", "requirements-tools.lock")
    upgrade = "--upgrade" in session.posargs
    for spec in locks.ALL:
        session.run(*locks.compile_command(spec, upgrade=upgrade))
    # Debian packages of the images: pinned as apt resolves them here (apt-get update first).
    session.run("apt-get", "update", "-q", external=True)
    for definition in ("images/runtime", "images/postgres"):
        session.run("python", "-m", "images.debian", "lock", definition)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: API next to bare Falcon (default); -- matching (next to Splink);
    -- multisource (four feeds lacking different fields, online and batch next to Splink);
    -- identity (import and online matching at 100,000 persons); -- search; -- steward
    (the review queue page at 10,000 open reviews, /metrics scrapes under load)."""
    install_locked(session, *DEV_LOCKS, "requirements-bench.lock")
    suites = {"matching": "bench.matching", "multisource": "bench.multisource",
              "identity": "bench.identity",
              "search": "bench.search", "steward": "bench.steward"}
    if session.posargs[:1] and session.posargs[0] in suites:
        session.run("python", "-m", suites[session.posargs[0]], *session.posargs[1:])
    else:
        session.run("python", "-m", "bench.api", *session.posargs)
