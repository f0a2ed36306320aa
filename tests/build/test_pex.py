"""The PEX build: reproducible, offline once cached, incremental, multi-platform, stamped."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

from tests.pexbuilds import OFFLINE, Build, build_in
from toolkit import pexbuild


def zip_differences(a: Path, b: Path) -> list[str]:
    """Names of the members that differ (content, metadata or presence)."""
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        ia = {i.filename: i for i in za.infolist()}
        ib = {i.filename: i for i in zb.infolist()}
        diffs = sorted(set(ia) ^ set(ib))
        for name in sorted(set(ia) & set(ib)):
            x, y = ia[name], ib[name]
            if (x.CRC, x.date_time, x.external_attr, x.compress_type, x.extra) != (
                    y.CRC, y.date_time, y.external_attr, y.compress_type, y.extra):
                diffs.append(name)
        if not diffs and [i.filename for i in za.infolist()] != [i.filename for i in zb.infolist()]:
            diffs.append("(member order)")
        return diffs


def test_two_builds_of_one_commit_are_byte_identical(builds):
    first, second = builds
    assert first.repo != second.repo
    a, b = first.layout.pex.read_bytes(), second.layout.pex.read_bytes()
    if a != b:
        raise AssertionError("the two PEX files differ in: "
                             + ", ".join(zip_differences(first.layout.pex, second.layout.pex)[:50]))
    assert first.result.sha256 == second.result.sha256


def test_second_build_fetched_nothing(builds):
    first, second = builds
    assert first.result.fetched or (first.layout.wheels / ".fetched").exists()
    assert second.result.fetched is False


def test_sha256_file_names_the_pex(builds):
    first, _ = builds
    text = (first.layout.dist / "mpi.pex.sha256").read_text()
    assert text == f"{pexbuild.sha256_file(first.layout.pex)}  mpi.pex\n"


def test_unchanged_tree_is_a_no_op(builds):
    first, _ = builds
    again = build_in(first.repo, umask=0o022, env=OFFLINE)
    assert again.result.skipped
    assert again.result.sha256 == first.result.sha256


def test_source_change_rebuilds_offline_without_resolving(builds, tmp_path):
    _, second = builds
    deps_before = sorted((second.layout.cache / "deps").iterdir())
    module = second.repo / "app" / "mpi" / "domain" / "__init__.py"
    original = module.read_text()
    module.write_text(original + "\n# a source-only change\n")
    try:
        changed = build_in(second.repo, umask=0o022, env=OFFLINE)
    finally:
        module.write_text(original)
        build_in(second.repo, umask=0o022, env=OFFLINE)  # leave the shared build as it was
    assert not changed.result.skipped and not changed.result.fetched
    assert changed.result.sha256 != second.result.sha256
    assert sorted((second.layout.cache / "deps").iterdir()) == deps_before
    assert changed.result.timings["deps"] < 1.0  # the cached deps PEX was reused, not rebuilt


def _pex_info(build: Build) -> dict:
    with zipfile.ZipFile(build.layout.pex) as z:
        return json.loads(z.read("PEX-INFO"))


def test_every_target_platform_is_inside(builds):
    info = _pex_info(builds[0])
    wheels = set(info["distributions"])
    for target in pexbuild.TARGETS:
        for project in ("psycopg_binary", "pydantic_core", "markupsafe", "falcon"):
            assert any(w.startswith(f"{project}-") and f"-{target.abi}-{target.abi}-" in w
                       and target.arch in w for w in wheels), (project, target.name)
    assert any(w.startswith("peewee-") for w in wheels)


def test_host_site_packages_never_leak_in(builds):
    info = _pex_info(builds[0])
    assert info["inherit_path"] == "false"
    assert info["venv"] is True


def test_version_names_the_commit(builds):
    first, _ = builds
    commit = subprocess.run(["git", "-C", str(first.repo), "rev-parse", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    env = {**os.environ, "PEX_ROOT": str(first.layout.cache / "run_root")}
    out = subprocess.run(["/usr/bin/python3.11", str(first.layout.pex), "version"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"mpi 0.1.0 (commit {commit})"
