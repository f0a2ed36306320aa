"""The matching engine is pure Python: no database, ORM, web framework or HTTP imports."""

import ast
import subprocess
import sys
from pathlib import Path

import mpi.matching

PACKAGE = Path(mpi.matching.__file__).parent
FORBIDDEN = ("peewee", "playhouse", "psycopg", "falcon", "gunicorn", "http", "urllib",
             "requests", "sqlite3", "mpi.storage", "mpi.api", "mpi.services", "mpi.server",
             "mpi.identity")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_no_module_imports_the_database_or_http_layers():
    files = sorted(PACKAGE.glob("*.py"))
    assert len(files) >= 9
    for path in files:
        bad = sorted(n for n in _imports(path) if _forbidden(n))
        assert not bad, f"{path.name} imports {bad}"


def test_importing_and_using_everything_loads_none_of_them():
    # http/urllib are left out here: the standard library loads urllib.parse on its own.
    layers = tuple(f for f in FORBIDDEN if f not in ("http", "urllib"))
    code = (
        "import sys, mpi.matching as m\n"
        "import mpi.matching.batch, mpi.matching.training\n"
        "r = m.MatchRecord('1', given_name='Ann')\n"
        "m.score(r, r); m.blocking_keys(r); m.Linker(m.Model.default()).add(r)\n"
        f"bad = [n for n in sys.modules if any(n == f or n.startswith(f + '.') "
        f"for f in {layers!r})]\n"
        "print(','.join(sorted(bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
