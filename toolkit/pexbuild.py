"""The hermetic, reproducible PEX build behind ``nox -s build``.

Inputs, all pinned by hash:
  requirements.lock        the service's wheels, for every target below
  requirements-build.lock  the exact pip, setuptools, wheel and packaging that pex
                           bootstraps for its own resolver
  requirements-tools.lock  pex itself (and nox)
  the tracked sources      app/mpi and migrations/ (untracked files never leak in)

Steps, each skipped when its own inputs are unchanged:
  1. fetch   ``pip download --require-hashes`` of every wheel for every target into
             ``.cache/build/wheels``; later builds are offline
  2. deps    a third-party-only PEX built by pex from those wheels alone
             (``--no-pypi``, hash-checked), cached per lock: the only resolve
  3. stage   the package sources copied with normalised modes and mtimes, the
             migrations as ``mpi/migrations``, and ``mpi/_build_info.py`` (version, commit)
  4. pex     the final PEX: third-party code taken from the deps PEX
             (``--pex-repository``: nothing resolved, nothing downloaded) plus the
             staged sources; written to a temporary file and renamed into place

``SOURCE_DATE_EPOCH`` is the commit time. pex writes sorted zip entries with
fixed timestamps, so the same commit gives the same bytes anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from toolkit import commands

PIP_VERSION = "26.2.1"  # pex's resolver; its wheels are in requirements-build.lock
GLIBC = (2, 28)  # manylinux_2_28: the oldest glibc a target host may have
PYTHONS = ((3, 11), (3, 12), (3, 13))
ARCHES = ("x86_64", "aarch64")
ENTRY_POINT = "mpi.cli:main"
SHEBANG = "/usr/bin/env python3"
SOURCE_DIRS = ("app/mpi", "migrations")
SOURCE_FILES = ("pyproject.toml",)
LOCKS = ("requirements.lock", "requirements-build.lock", "requirements-tools.lock")
PEX_NAME = "mpi.pex"


@dataclass(frozen=True)
class Target:
    python: tuple[int, int]
    arch: str

    @property
    def name(self) -> str:
        return f"cp{self.python[0]}{self.python[1]}-manylinux_{GLIBC[0]}_{GLIBC[1]}_{self.arch}"

    @property
    def abi(self) -> str:
        return f"cp{self.python[0]}{self.python[1]}"

    def manylinux_platforms(self) -> list[str]:
        """Every platform tag a host of this target accepts, most specific first."""
        tags = [f"manylinux_{GLIBC[0]}_{minor}_{self.arch}" for minor in range(GLIBC[1], 16, -1)]
        return [*tags, f"manylinux2014_{self.arch}"]

    def complete_platform(self) -> dict[str, object]:
        """A pex ``--complete-platform`` document: marker environment and compatible tags."""
        from packaging import tags

        platforms = self.manylinux_platforms()
        found = [*tags.cpython_tags(self.python, abis=[self.abi], platforms=platforms),
                 *tags.compatible_tags(self.python, interpreter=self.abi, platforms=platforms)]
        ordered = list(dict.fromkeys(str(t) for t in found))
        version = f"{self.python[0]}.{self.python[1]}"
        return {
            "compatible_tags": ordered,
            "marker_environment": {
                "implementation_name": "cpython",
                "implementation_version": f"{version}.0",
                "os_name": "posix",
                "platform_machine": self.arch,
                "platform_python_implementation": "CPython",
                "platform_release": "",
                "platform_system": "Linux",
                "platform_version": "",
                "python_full_version": f"{version}.0",
                "python_version": version,
                "sys_platform": "linux",
            },
        }


TARGETS = tuple(Target(py, arch) for py in PYTHONS for arch in ARCHES)


@dataclass(frozen=True)
class Layout:
    """Where a build reads and writes, relative to the repository."""

    repo: Path
    dist: Path
    cache: Path

    @classmethod
    def for_repo(cls, repo: Path, *, dist: Path | None = None,
                 cache: Path | None = None) -> Layout:
        repo = repo.resolve()
        return cls(repo, (dist or repo / "dist").resolve(),
                   (cache or repo / ".cache" / "build").resolve())

    @property
    def wheels(self) -> Path:
        return self.cache / "wheels"

    @property
    def pex_root(self) -> Path:
        return self.cache / "pex_root"

    @property
    def pex(self) -> Path:
        return self.dist / PEX_NAME

    @property
    def key_file(self) -> Path:
        return self.dist / f"{PEX_NAME}.inputs"


@dataclass
class BuildResult:
    pex: Path
    sha256: str
    key: str
    skipped: bool
    fetched: bool
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


# --- commands -------------------------------------------------------------------------


def run(cmd: Sequence[str], *, cwd: Path | None = None,
        env: Mapping[str, str] | None = None) -> str:
    """Run a build step; its stdout, or :class:`~toolkit.commands.CommandError`."""
    return commands.run(cmd, cwd=cwd, env=env).stdout


def git(repo: Path, *args: str) -> str:
    return run(["git", "-C", str(repo), *args]).strip()


def tracked_inputs(repo: Path) -> list[str]:
    """The tracked files the build reads, sorted (untracked files never leak in)."""
    listed = git(repo, "ls-files", "-z", "--", *SOURCE_DIRS, *SOURCE_FILES, *LOCKS,
                 "toolkit/pexbuild.py").split("\0")
    files = sorted(f for f in listed if f and (repo / f).is_file())
    return [f for f in files if "__pycache__" not in f]


def source_date_epoch(repo: Path, env: Mapping[str, str] = os.environ) -> int:
    """``SOURCE_DATE_EPOCH`` if set, else the commit time of HEAD."""
    if env.get("SOURCE_DATE_EPOCH"):
        return int(env["SOURCE_DATE_EPOCH"])
    return int(git(repo, "log", "-1", "--format=%ct"))


def commit_id(repo: Path) -> str:
    """HEAD's commit, with ``-dirty`` when tracked build inputs differ from it."""
    commit = git(repo, "rev-parse", "HEAD")
    dirty = git(repo, "status", "--porcelain", "--untracked-files=no", "--",
                *SOURCE_DIRS, *SOURCE_FILES, *LOCKS)
    return f"{commit}-dirty" if dirty else commit


def project_version(repo: Path) -> str:
    import tomllib

    return str(tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"])


def settings() -> dict[str, object]:
    """Everything besides the input files that changes the output."""
    return {"pip": PIP_VERSION, "glibc": list(GLIBC), "targets": [t.name for t in TARGETS],
            "entry_point": ENTRY_POINT, "shebang": SHEBANG, "python": list(sys.version_info[:2])}


def build_key(repo: Path, files: Sequence[str], *, commit: str, epoch: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"settings": settings(), "commit": commit, "epoch": epoch},
                        sort_keys=True).encode())
    for name in files:
        h.update(b"\0" + name.encode() + b"\0" + (repo / name).read_bytes())
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- steps ----------------------------------------------------------------------------


def download_commands(layout: Layout, python: str = sys.executable) -> list[list[str]]:
    """``pip download`` command lines that fill the wheel cache, hash-checked."""
    base = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--require-hashes", "--disable-pip-version-check", "--dest", str(layout.wheels)]
    cmds = []
    for target in TARGETS:
        cmd = [*base, "-r", str(layout.repo / "requirements.lock")]
        for platform in target.manylinux_platforms():
            cmd += ["--platform", platform]
        cmd += ["--python-version", f"{target.python[0]}.{target.python[1]}",
                "--implementation", "cp", "--abi", target.abi]
        cmds.append(cmd)
    cmds.append([*base, "-r", str(layout.repo / "requirements-build.lock")])
    return cmds


def fetch(layout: Layout, *, log=print) -> bool:
    """Fill the wheel cache for the current locks; False when it already was full."""
    targets = {"targets": [t.name for t in TARGETS], "glibc": list(GLIBC)}
    key = hashlib.sha256(json.dumps(targets, sort_keys=True).encode()
                         + (layout.repo / "requirements.lock").read_bytes()
                         + (layout.repo / "requirements-build.lock").read_bytes()).hexdigest()
    stamp = layout.wheels / ".fetched"
    if stamp.exists() and stamp.read_text() == key:
        return False
    layout.wheels.mkdir(parents=True, exist_ok=True)
    for cmd in download_commands(layout):
        log("fetch: " + " ".join(cmd[3:8]) + " ...")
        run(cmd)
    stamp.write_text(key)
    return True


def stage_sources(layout: Layout, files: Sequence[str], stage: Path, *, commit: str,
                  version: str, epoch: int) -> None:
    """``stage/mpi``: the package, its migrations and the build stamp, normalised."""
    for name in files:
        if name.startswith("app/mpi/"):
            dest = stage / "mpi" / name.removeprefix("app/mpi/")
        elif name.startswith("migrations/"):
            dest = stage / "mpi" / "migrations" / name.removeprefix("migrations/")
        else:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(layout.repo / name, dest)
    (stage / "mpi" / "_build_info.py").write_text(
        f'"""Written by the build (toolkit/pexbuild.py)."""\n\n'
        f'VERSION = "{version}"\nCOMMIT = "{commit}"\n')
    for path in sorted(stage.rglob("*"), reverse=True):
        path.chmod(0o755 if path.is_dir() else 0o644)
        os.utime(path, (epoch, epoch))


def deps_key(layout: Layout) -> str:
    return hashlib.sha256(json.dumps(settings(), sort_keys=True).encode()
                          + (layout.repo / "requirements.lock").read_bytes()
                          + (layout.repo / "requirements-build.lock").read_bytes()
                          + (layout.repo / "requirements-tools.lock").read_bytes()).hexdigest()


def deps_command(layout: Layout, *, platforms: Sequence[Path], output: Path,
                 python: str = sys.executable) -> list[str]:
    """Third-party code only, from the local wheel cache, hash-checked."""
    cmd = [python, "-m", "pex", "--pip-version", PIP_VERSION, "--no-pypi",
           "--find-links", str(layout.wheels), "--no-build", "--no-compile",
           "--requirement", str(layout.repo / "requirements.lock"),
           "--output-file", str(output)]
    for platform in platforms:
        cmd += ["--complete-platform", str(platform)]
    return cmd


def pex_command(layout: Layout, *, deps: Path, stage: Path, platforms: Sequence[Path],
                output: Path, python: str = sys.executable) -> list[str]:
    """The final PEX: dependencies from the deps PEX (no resolve), sources from ``stage``."""
    cmd = [python, "-m", "pex", "--pex-repository", str(deps),
           "--requirement", str(layout.repo / "requirements.lock"),
           "--sources-directory", str(stage), "--entry-point", ENTRY_POINT,
           "--inherit-path=false", "--no-compile", "--include-tools", "--venv", "prepend",
           "--sh-boot", "--python-shebang", SHEBANG, "--output-file", str(output)]
    for platform in platforms:
        cmd += ["--complete-platform", str(platform)]
    return cmd


def write_platforms(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for target in TARGETS:
        path = directory / f"{target.name}.json"
        path.write_text(json.dumps(target.complete_platform(), indent=1, sort_keys=True))
        paths.append(path)
    return paths


def build(layout: Layout, *, env: Mapping[str, str] = os.environ, force: bool = False,
          log=print) -> BuildResult:
    """Build ``dist/mpi.pex`` (and ``.sha256``) unless the inputs are unchanged."""
    started = time.monotonic()
    files = tracked_inputs(layout.repo)
    commit = commit_id(layout.repo)
    epoch = source_date_epoch(layout.repo, env)
    key = build_key(layout.repo, files, commit=commit, epoch=epoch)
    if (not force and layout.pex.exists() and layout.key_file.exists()
            and layout.key_file.read_text() == key):
        digest = (layout.dist / f"{PEX_NAME}.sha256").read_text().split()[0]
        return BuildResult(layout.pex, digest, key, skipped=True, fetched=False,
                           seconds=time.monotonic() - started)
    timings: dict[str, float] = {}
    mark = time.monotonic()
    fetched = fetch(layout, log=log)
    timings["fetch"] = time.monotonic() - mark

    build_env = {**env, "SOURCE_DATE_EPOCH": str(epoch), "PEX_ROOT": str(layout.pex_root),
                 "PYTHONHASHSEED": "0", "PIP_CONFIG_FILE": os.devnull}
    layout.dist.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mpi-build-") as tmp:
        work = Path(tmp)
        platforms = write_platforms(work / "platforms")

        mark = time.monotonic()
        deps = layout.cache / "deps" / f"{deps_key(layout)}.pex"
        if not deps.exists():
            deps.parent.mkdir(parents=True, exist_ok=True)
            log("deps: building the third-party PEX from the wheel cache")
            partial_deps = work / "deps.pex"
            run(deps_command(layout, platforms=platforms, output=partial_deps),
                env=build_env, cwd=work)
            shutil.move(partial_deps, deps)
        timings["deps"] = time.monotonic() - mark

        mark = time.monotonic()
        stage = work / "src"
        stage_sources(layout, files, stage, commit=commit,
                      version=project_version(layout.repo), epoch=epoch)
        output = work / PEX_NAME
        run(pex_command(layout, deps=deps, stage=stage, platforms=platforms, output=output),
            env=build_env, cwd=work)
        timings["pex"] = time.monotonic() - mark
        digest = sha256_file(output)
        partial = layout.dist / f".{PEX_NAME}.partial"
        shutil.copyfile(output, partial)
        partial.chmod(0o755)
        partial.replace(layout.pex)
    (layout.dist / f"{PEX_NAME}.sha256").write_text(f"{digest}  {PEX_NAME}\n")
    layout.key_file.write_text(key)
    return BuildResult(layout.pex, digest, key, skipped=False, fetched=fetched,
                       seconds=time.monotonic() - started, timings=timings)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m toolkit.pexbuild",
                                     description="Build dist/mpi.pex reproducibly.")
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--dist", type=Path)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--force", action="store_true", help="rebuild even if inputs match")
    args = parser.parse_args(argv)
    layout = Layout.for_repo(args.repo, dist=args.dist, cache=args.cache)
    result = build(layout, force=args.force)
    if result.skipped:
        print(f"build: inputs unchanged, {result.pex} is current ({result.seconds:.2f}s)")
    else:
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
        print(f"build: wrote {result.pex} in {result.seconds:.1f}s ({steps}; "
              f"{'fetched wheels' if result.fetched else 'wheels from cache'})")
    size = result.pex.stat().st_size
    print(f"build: {result.pex.name} {size / 1e6:.1f} MB sha256 {result.sha256}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
