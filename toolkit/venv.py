"""Install a lock into a nox session's virtualenv once, and again only when the lock changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.locks import digest

STAMP = ".mpi-installed"


def stamp_path(venv_location: str | Path) -> Path:
    return Path(venv_location) / STAMP


def needs_install(venv_location: str | Path, key: str) -> bool:
    path = stamp_path(venv_location)
    return not path.exists() or path.read_text() != key


def install_locked(session: Any, *locks: str, editable: bool = True,
                   project: bool = True) -> None:
    """``pip install --require-hashes -r LOCK`` then (unless ``project`` is False) the project.

    Skipped when the venv already holds exactly these locks (a stamp file
    records their digest), so repeated runs do not re-check every package.
    """
    key = digest(*locks, "pyproject.toml") + (":e" if editable else "") + (":p" if project else "")
    location = getattr(session.virtualenv, "location", None)
    if location and not needs_install(location, key):
        session.log("dependencies unchanged since the last install; skipping pip")
        return
    args = ["--require-hashes", "--no-deps"]
    for lock in locks:
        args += ["-r", lock]
    session.install(*args)
    if project:
        session.install("--no-deps", "--no-build-isolation",
                        *(["-e", "."] if editable else ["."]))
    if location:
        stamp_path(location).write_text(key)
