"""``nox -s lint`` checks what it says: ruff and mypy cover the same paths, and every
top-level folder of Python code in the repository is among them."""

from __future__ import annotations

import ast
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _linted() -> tuple[str, ...]:
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "LINTED" for t in targets):
                assert node.value is not None
                return tuple(ast.literal_eval(node.value))
    raise AssertionError("noxfile.py has no LINTED")


def test_ruff_and_mypy_check_the_same_paths():
    mypy_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["files"]
    # mypy names the package directory (app/mpi) so that its modules are called mpi.*
    assert {path.split("/")[0] for path in mypy_files} == set(_linted())


def test_every_tracked_python_file_is_linted():
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "*.py"], capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked, "git ls-files found no Python files"
    linted = set(_linted())
    missed = sorted(f for f in tracked if f.split("/")[0] not in linted)
    assert missed == []
