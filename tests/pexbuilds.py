"""Two real PEX builds of the same commit, in two clones, at different times and umasks.

Shared by tests/build (the PEX) and tests/images (the image made from it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from toolkit import pexbuild

ROOT = Path(__file__).resolve().parents[1]
# Any attempt to reach the network fails fast: proves a build works from the cache alone.
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "PIP_NO_INDEX": "1"}


@dataclass
class Build:
    repo: Path
    layout: pexbuild.Layout
    result: pexbuild.BuildResult


def clone(target: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(target)],
                   check=True)
    return target


def build_in(repo: Path, *, umask: int, env: dict[str, str]) -> Build:
    layout = pexbuild.Layout.for_repo(repo)
    old = os.umask(umask)
    try:
        result = pexbuild.build(layout, env={**os.environ, **env}, log=lambda _m: None)
    finally:
        os.umask(old)
    return Build(repo, layout, result)


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Build, Build]:
    base = tmp_path_factory.mktemp("builds")
    first = build_in(clone(base / "first"), umask=0o022, env={"TZ": "UTC"})
    second_repo = clone(base / "elsewhere" / "second")
    # The second clone gets the fetched wheels (hash-checked inputs), nothing else, and no network.
    shutil.copytree(first.layout.wheels, second_repo / ".cache" / "build" / "wheels")
    time.sleep(1.5)
    second = build_in(second_repo, umask=0o077, env={"TZ": "Asia/Tokyo", **OFFLINE})
    return first, second
