"""Every package of the service ships: pyproject lists each directory under app/mpi."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    app = ROOT / "app"
    found = {".".join(init.parent.relative_to(app).parts)
             for init in app.rglob("__init__.py") if "__pycache__" not in init.parts}
    assert found - listed == set(), "packages missing from pyproject.toml"
    assert "mpi.migrations" in listed
