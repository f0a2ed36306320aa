"""The MPI runtime image: Debian's CPython, then third-party packages, then the app.

Layers, in order (so that a change to app code changes only the last one):
  1. base      the locked Debian packages (CPython 3.11 and the libraries it links,
               CA bundle, time zones), trimmed of docs; users, /tmp, /home/nonroot,
               /data, dpkg status entries for scanners. No shell, no apt, no dpkg.
  2. deps      the PEX's third-party code installed as a venv at /opt/mpi, byte code
               compiled at its final paths (inside a chroot of the staged tree) with
               ``--invalidation-mode unchecked-hash``
  3. app       the ``mpi`` package, its byte code and the ``mpi`` launcher

The venv is created at build time, so nothing is unpacked when a container
starts and the root filesystem can be read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from images import debian, oci
from toolkit import commands

DEFINITION = Path(__file__).resolve().parent / "runtime"
VENV = "/opt/mpi"
UID = GID = 65532
PYTHON = "/usr/bin/python3.11"
REFERENCE = "mpi"
SOURCE_URL = "https://example.invalid/mpi"  # replaced by MPI_SOURCE_URL when set
TRIM_PREFIXES = ("usr/share/doc/", "usr/share/man/", "usr/share/info/", "usr/share/lintian/",
                 "usr/share/locale/", "usr/share/bug/", "usr/share/doc-base/",
                 # glibc's iconv modules (CPython has its own codecs) and the leap-second
                 # duplicate of the time zone database.
                 "usr/lib/x86_64-linux-gnu/gconv/", "usr/lib/aarch64-linux-gnu/gconv/",
                 "usr/share/zoneinfo/right/")
# Swagger UI assets the service never serves (source maps, ES-module and standalone builds).
VENV_TRIM = re.compile(r"site-packages/swagger_ui_bundle/vendor/[^/]+/"
                       r"(.*\.map|swagger-ui-es-bundle.*|swagger-ui-standalone-preset\.js|"
                       r"swagger-ui\.js)$")

PASSWD = ("root:x:0:0:root:/root:/sbin/nologin\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
          f"nonroot:x:{UID}:{GID}:nonroot:/home/nonroot:/sbin/nologin\n")
GROUP = f"root:x:0:\nnobody:x:65534:\nnonroot:x:{GID}:\n"
OS_RELEASE = ('PRETTY_NAME="Distroless-style MPI runtime (Debian GNU/Linux 12)"\n'
              'NAME="Debian GNU/Linux"\nVERSION_ID="12"\nVERSION="12 (bookworm)"\n'
              'VERSION_CODENAME=bookworm\nID=debian\nHOME_URL="https://www.debian.org/"\n')


@dataclass(frozen=True)
class BuiltImage:
    image: oci.Image
    reference: str
    packages: list[debian.Package]
    wheels: list[tuple[str, str]]  # (name, version) of third-party distributions


# --- layer 1: Debian packages -----------------------------------------------------------


def trimmed(path: str) -> bool:
    """Whether a package path is left out of the base layer (docs, iconv modules, ...)."""
    return any((path + "/").startswith(prefix) for prefix in TRIM_PREFIXES)


def ca_bundle(entries: Iterable[oci.Entry]) -> bytes:
    """What update-ca-certificates would write: every shipped certificate, sorted."""
    certs = sorted((e.path, e.data) for e in entries if e.kind == "file"
                   and e.path.startswith("usr/share/ca-certificates/") and e.path.endswith(".crt"))
    return b"".join(data if data.endswith(b"\n") else data + b"\n" for _, data in certs)


def status_entry(deb: Path) -> str:
    """A dpkg status paragraph, as distroless images keep them in /var/lib/dpkg/status.d."""
    control = debian.control_fields(deb).rstrip("\n")
    lines = control.splitlines()
    lines.insert(1, "Status: install ok installed")
    return "\n".join(lines) + "\n"


def base_entries(packages: Sequence[debian.Package], debs: Sequence[Path]) -> list[oci.Entry]:
    entries = list(debian.package_entries(debs, trimmed))
    extra = [
        *(oci.symlink(top, f"usr/{top}") for top in debian.MERGED_USR),
        oci.file("etc/passwd", PASSWD),
        oci.file("etc/group", GROUP),
        oci.file("etc/os-release", OS_RELEASE),
        oci.file("etc/ssl/certs/ca-certificates.crt", ca_bundle(entries)),
        oci.directory("tmp", 0o1777),
        oci.directory("root", 0o700),
        oci.directory("home/nonroot", 0o700, uid=UID, gid=GID),
        oci.directory("data", 0o755, uid=UID, gid=GID),
        *(oci.file(f"var/lib/dpkg/status.d/{p.name}", status_entry(deb))
          for p, deb in zip(packages, debs, strict=True)),
    ]
    return entries + extra


# --- layers 2 and 3: the PEX as a venv ---------------------------------------------------


def _snapshot(root: Path, top: str) -> dict[str, oci.Entry]:
    """Entries for everything under ``root/top``, keyed by path."""
    found: dict[str, oci.Entry] = {}
    base = root / top.lstrip("/")
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in [*dirnames, *sorted(filenames)]:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            if VENV_TRIM.search(rel):
                continue
            if full.is_symlink():
                found[rel] = oci.symlink(rel, os.readlink(full))
            elif full.is_dir():
                found[rel] = oci.directory(rel)
            else:
                executable = os.stat(full).st_mode & 0o111
                found[rel] = oci.file(rel, full.read_bytes(), 0o755 if executable else 0o644)
    found[str(base.relative_to(root))] = oci.directory(str(base.relative_to(root)))
    return found


#: The whole environment of a command run inside the staged tree (nothing inherited).
CHROOT_ENV = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "PEX_ROOT": "/tmp/pex", "HOME": "/tmp",
              "PYTHONHASHSEED": "0"}


def chroot_command(root: Path, *args: str, extra_env: Mapping[str, str] | None = None,
                   chroot: str = "/usr/sbin/chroot") -> list[str]:
    """The argv that runs ``args`` inside ``root`` with exactly :data:`CHROOT_ENV` (plus
    ``extra_env``), so the host's variables never reach what gets compiled."""
    env = {**CHROOT_ENV, **(extra_env or {})}
    return ["env", "-i", *(f"{k}={v}" for k, v in env.items()), chroot, str(root), *args]


def _chroot(root: Path, *args: str, extra_env: Mapping[str, str] | None = None) -> None:
    commands.run(chroot_command(root, *args, extra_env=extra_env,
                                chroot=shutil.which("chroot") or "/usr/sbin/chroot"))


LAUNCHER = f"""#!{VENV}/bin/python3.11
# The mpi command (image entry point and health check).
import sys

from mpi.cli import main

sys.exit(main())
"""


def venv_layers(debs: Sequence[Path], pex: Path) -> tuple[list[oci.Entry], list[oci.Entry]]:
    """(third-party entries, app entries): the PEX installed as a venv in a staged chroot."""
    with tempfile.TemporaryDirectory(prefix="mpi-image-") as tmp:
        root = Path(tmp) / "root"
        debian.extract(debs, root)
        (root / "tmp").mkdir(exist_ok=True)
        (root / "tmp").chmod(0o1777)
        shutil.copyfile(pex, root / "tmp" / "mpi.pex")
        compile_ = [PYTHON, "-m", "compileall", "-q", "-j", "1", "--invalidation-mode",
                    "unchecked-hash"]
        venv = [PYTHON, "/tmp/mpi.pex", "venv", "--site-packages-copies", "--pex-root",
                "/tmp/pex", "--scope"]
        tools = {"PEX_TOOLS": "1"}
        _chroot(root, *venv, "deps", VENV, extra_env=tools)
        _chroot(root, *compile_, f"{VENV}/lib")
        deps = _snapshot(root, VENV)
        _chroot(root, *venv, "srcs", VENV, extra_env=tools)
        site = f"{VENV}/lib/python3.11/site-packages/mpi"
        _chroot(root, *compile_, site)
        (root / VENV.lstrip("/") / "bin" / "mpi").write_text(LAUNCHER)
        (root / VENV.lstrip("/") / "bin" / "mpi").chmod(0o755)
        after = _snapshot(root, VENV)
    venv_root = VENV.lstrip("/")

    def root_metadata(path: str, entry: oci.Entry) -> bool:
        # PEX-INFO, __main__.py, pex, ... at the venv root describe the whole PEX (its code
        # hash included): they belong with the app, never in the third-party layer.
        return (entry.kind != "dir" and str(Path(path).parent) == venv_root
                and not path.endswith("/pyvenv.cfg"))

    app = {path: entry for path, entry in after.items()
           if deps.get(path) != entry or root_metadata(path, entry)}
    third_party = [entry for path, entry in deps.items()
                   if path not in app and not root_metadata(path, entry)]
    return third_party, list(app.values())


# --- the image -------------------------------------------------------------------------


def pex_distributions(pex: Path) -> list[tuple[str, str]]:
    """(name, version) of every third-party distribution the PEX carries (for the SBOM)."""
    import zipfile

    with zipfile.ZipFile(pex) as z:
        info = json.loads(z.read("PEX-INFO"))
    found = set()
    for wheel in info["distributions"]:
        name, version = wheel.split("-")[:2]
        found.add((name.replace("_", "-").lower(), version))
    return sorted(found)


def image_config(*, version: str, revision: str, epoch: int,
                 source: str = SOURCE_URL) -> oci.ImageConfig:
    return oci.ImageConfig(
        entrypoint=[f"{VENV}/bin/mpi"],
        cmd=["serve"],
        env={
            "PATH": f"{VENV}/bin:/usr/bin",
            "LANG": "C.UTF-8",
            "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
            "PYTHONDONTWRITEBYTECODE": "1",
            "SERVER_HOST": "0.0.0.0",  # noqa: S104 - a container listens on its own interface
            "SERVER_PORT": "8080",
            # DATABASE_URL and SEARCH_INDEX_PATH are deliberately not set: their relative
            # defaults (data/mpi.db, data/search-index) resolve under the working directory
            # "/" to the /data volume, and a deployment can still pass DATABASE_URL_FILE
            # (setting both NAME and NAME_FILE is refused at start-up).
        },
        user=f"{UID}:{GID}",
        working_dir="/",
        exposed_ports=["8080/tcp"],
        volumes=["/data"],
        stop_signal="SIGTERM",
        healthcheck={"Test": ["CMD", f"{VENV}/bin/mpi", "healthcheck", "--quiet"],
                     "Interval": 10_000_000_000, "Timeout": 3_000_000_000,
                     "StartPeriod": 10_000_000_000, "Retries": 3},
        labels={
            "org.opencontainers.image.title": "mpi",
            "org.opencontainers.image.description": "Master Patient Index service",
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.revision": revision,
            "org.opencontainers.image.created": oci.rfc3339(epoch),
            "org.opencontainers.image.source": source,
            "org.opencontainers.image.licenses": "Apache-2.0",
            "org.opencontainers.image.base.name": "debian:12 packages (distroless-style)",
        },
    )


def build_image(pex: Path, *, packages: Sequence[debian.Package], debs: Sequence[Path],
                version: str, revision: str, epoch: int,
                source: str = SOURCE_URL) -> BuiltImage:
    base = base_entries(packages, debs)
    deps, app = venv_layers(debs, pex)
    layers = [
        oci.make_layer(base, mtime=epoch, comment="base: Debian 12 CPython 3.11 and libraries"),
        oci.make_layer(deps, mtime=epoch, comment="deps: third-party packages (venv)"),
        oci.make_layer(app, mtime=epoch, comment="app: the mpi package"),
    ]
    image = oci.Image(layers, image_config(version=version, revision=revision, epoch=epoch,
                                           source=source), created=oci.rfc3339(epoch))
    return BuiltImage(image, f"{REFERENCE}:{version}", list(packages), pex_distributions(pex))


def sbom(built: BuiltImage, *, version: str, epoch: int) -> bytes:
    """CycloneDX 1.5 JSON listing every Debian package and every wheel, with purls."""
    components = [
        {"type": "library", "name": p.name, "version": p.version, "purl": p.purl(),
         "hashes": [{"alg": "SHA-256", "content": p.sha256}],
         "properties": [{"name": "debian:architecture", "value": p.architecture}]}
        for p in sorted(built.packages, key=lambda p: p.name)
    ] + [
        {"type": "library", "name": name, "version": ver, "purl": f"pkg:pypi/{name}@{ver}"}
        for name, ver in built.wheels
    ]
    serial = hashlib.sha256(built.image.digest().encode()).hexdigest()
    doc = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{serial[:8]}-{serial[8:12]}-{serial[12:16]}-"
                        f"{serial[16:20]}-{serial[20:32]}",
        "version": 1,
        "metadata": {
            "timestamp": oci.rfc3339(epoch),
            "component": {"type": "container", "name": REFERENCE, "version": version,
                          "purl": f"pkg:oci/{REFERENCE}@{built.image.digest()}"},
        },
        "components": components,
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def write(built: BuiltImage, dist: Path, *, epoch: int, version: str) -> Path:
    """dist/mpi-image.tar, .digest and .sbom.json, each written then renamed into place."""
    dist.mkdir(parents=True, exist_ok=True)
    outputs = {
        "mpi-image.tar": oci.archive(built.image, reference=built.reference, mtime=epoch),
        "mpi-image.digest": (built.image.digest() + "\n").encode(),
        "mpi-image.sbom.json": sbom(built, version=version, epoch=epoch),
    }
    for name, data in outputs.items():
        partial = dist / f".{name}.partial"
        partial.write_bytes(data)
        partial.replace(dist / name)
    return dist / "mpi-image.tar"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from toolkit import pexbuild

    parser = argparse.ArgumentParser(prog="python -m images.runtime_image")
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--load", action="store_true", help="load into podman or docker")
    args = parser.parse_args(argv)
    layout = pexbuild.Layout.for_repo(args.repo)
    built_pex = pexbuild.build(layout)
    epoch = pexbuild.source_date_epoch(layout.repo)
    version = pexbuild.project_version(layout.repo)
    revision = pexbuild.commit_id(layout.repo)
    packages = debian.read_lock(DEFINITION / "packages.lock")
    debs = debian.fetch(packages, layout.repo / ".cache" / "debian")
    built = build_image(built_pex.pex, packages=packages, debs=debs, version=version,
                        revision=revision, epoch=epoch,
                        source=os.environ.get("MPI_SOURCE_URL", SOURCE_URL))
    path = write(built, layout.dist, epoch=epoch, version=version)
    print(f"image: {path} {built.reference} {built.image.digest()}")
    for layer in built.image.layers:
        print(f"  layer {layer.digest[:19]} {len(layer.blob) / 1e6:6.1f} MB compressed, "
              f"{len(layer.tar) / 1e6:6.1f} MB unpacked  {layer.comment}")
    if args.load:
        load(path)
    return 0


def load_command(path: Path, *, which: Callable[[str], str | None] = shutil.which
                 ) -> list[str]:
    """``podman load -i PATH`` (or docker's, when only docker is installed)."""
    for engine in ("podman", "docker"):
        if which(engine):
            return [engine, "load", "-i", str(path)]
    raise SystemExit("--load: neither podman nor docker is installed")


def load(path: Path) -> None:
    """Load the archive into podman or docker, whichever is present."""
    print(commands.run(load_command(path)).stdout.strip())


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
