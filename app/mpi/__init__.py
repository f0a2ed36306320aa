"""Master Patient Index: one enterprise identity for every patient record."""

from __future__ import annotations

SERVICE_NAME = "mpi"


def version() -> str:
    """The package version: stamped by the build, else installed metadata, else ``0+unknown``."""
    try:
        from mpi._build_info import VERSION  # type: ignore[import-not-found]  # nox -s build
    except ImportError:
        pass
    else:
        return str(VERSION)
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("mpi")
    except PackageNotFoundError:
        return "0+unknown"


def build_commit() -> str | None:
    """The git commit this build was made from, when the build recorded one."""
    try:
        from mpi._build_info import COMMIT  # type: ignore[import-not-found]  # written by nox -s build
    except ImportError:
        return None
    return str(COMMIT)
