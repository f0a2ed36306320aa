"""The import graph of ``mpi`` goes one way: each layer imports only the layers below it.

    entry     mpi.cli, mpi.__main__
    hosts     mpi.server, mpi.commands   (commands import nothing from mpi.api)
    api       mpi.api, mpi.fhir, mpi.hl7, mpi.ui
    root      mpi.wiring                 (the composition root)
    services  mpi.patients, mpi.identity, mpi.search, mpi.audit, mpi.events, mpi.auth
    storage   mpi.storage                (repositories, the unit of work)
    base      mpi, mpi.config, mpi.logs, mpi.metrics, mpi.tracing, mpi.domain, mpi.matching

Every import counts: at module level, inside functions (lazy) and for type checking.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mpi

ROOT = Path(mpi.__file__).parent
LAYERS = {
    "mpi.cli": 6, "mpi.__main__": 6,
    "mpi.server": 5, "mpi.worker": 5, "mpi.commands": 5,
    "mpi.api": 4, "mpi.fhir": 4, "mpi.hl7": 4, "mpi.ui": 4,
    "mpi.wiring": 3,
    "mpi.patients": 2, "mpi.identity": 2, "mpi.search": 2, "mpi.audit": 2, "mpi.events": 2,
    "mpi.auth": 2,
    "mpi.storage": 1,
    "mpi.config": 0, "mpi.logs": 0, "mpi.metrics": 0, "mpi.tracing": 0,
    "mpi.lifecycle": 0, "mpi.heap": 0, "mpi.domain": 0,
    "mpi.matching": 0,
    "mpi": 0,
}
FORBIDDEN = {("mpi.commands", "mpi.api")}


def _layer(module: str) -> tuple[str, int]:
    """The longest LAYERS prefix of ``module`` and its layer."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(("mpi", *parts)).removesuffix(".__init__")
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n == "mpi" or n.startswith("mpi.")}


def edges() -> list[tuple[str, str]]:
    """(importer, imported) for every import of one mpi module by another."""
    modules = _modules()
    out = []
    for name, path in modules.items():
        for imported in sorted(_imports(path)):
            # "from mpi.x import name" names a module only when name is one.
            target = imported if imported in modules else imported.rsplit(".", 1)[0]
            if target in modules and target != name:
                out.append((name, target))
    return sorted(set(out))


def upward_edges() -> list[tuple[str, str]]:
    bad = []
    for importer, imported in edges():
        low, high = _layer(importer)[1], _layer(imported)[1]
        if high > low or any(importer.startswith(a) and imported.startswith(b)
                             for a, b in FORBIDDEN):
            bad.append((importer, imported))
    return bad


def test_every_module_is_in_a_layer():
    for name in _modules():
        _layer(name)


def test_no_module_imports_a_layer_above_its_own():
    assert upward_edges() == []


def test_the_database_proxy_is_bound_in_one_place():
    """Only the composition root binds the models' database (tests may bind their own)."""
    binders = [name for name, path in _modules().items()
               if "database_proxy.initialize(" in path.read_text()]
    assert binders == ["mpi.wiring"]


def test_no_service_defaults_its_collaborators():
    """``x or X()`` in a constructor silently ignores the settings: the root passes all."""
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                for sub in ast.walk(node):
                    if (isinstance(sub, ast.BoolOp) and isinstance(sub.op, ast.Or)
                            and isinstance(sub.values[-1], ast.Call)):
                        offenders.append(f"{name}:{sub.lineno}")
    assert offenders == []


if __name__ == "__main__":  # the figures quoted in the closing note
    print(f"{len(edges())} import edges, {len(upward_edges())} upward")
    for edge in upward_edges():
        print(" ", *edge)
