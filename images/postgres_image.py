"""The PostgreSQL 15 image: Debian 12's packages, the official ``postgres`` image's contract.

For sites that cannot pull ``postgres:15`` from Docker Hub, and for testcontainers'
``PostgresContainer``: the same environment variables (``POSTGRES_PASSWORD``,
``POSTGRES_USER``, ``POSTGRES_DB``, ``POSTGRES_INITDB_ARGS``, ...), the same data
directory, port, volume, stop signal and ``/docker-entrypoint-initdb.d``. Differences:
it runs as uid 999 from the start (no root, no gosu), the database locale is C.UTF-8
(not en_US.utf8), and there is no JIT (LLVM), SELinux module or Perl tooling.

One layer: the locked packages (``images/postgres/packages.lock``) without docs, man
pages and message catalogues, plus users, directories, dpkg status entries (for image
scanners) and the entrypoint script (``images/postgres/docker-entrypoint.sh``).
``python -m images.postgres_image`` writes ``dist/postgres-image.tar`` and its digest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from images import debian, oci

DEFINITION = Path(__file__).parent / "postgres"
REFERENCE = "mpi-postgres:15"
PG_MAJOR = "15"
SERVER_PACKAGE = f"postgresql-{PG_MAJOR}"
BINDIR = f"/usr/lib/postgresql/{PG_MAJOR}/bin"
PGDATA = "/var/lib/postgresql/data"
ENTRYPOINT = "/usr/local/bin/docker-entrypoint.sh"
UID = GID = 999  # the official image's postgres user
ENV = {
    "PATH": f"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{BINDIR}",
    "PGDATA": PGDATA,
    "LANG": "C.UTF-8",
    "PG_MAJOR": PG_MAJOR,
}

# Package paths left out (fnmatch patterns on merged-/usr paths; a directory pattern
# covers everything below it). Copyright files stay: the image redistributes the packages.
TRIMMED = (
    "usr/share/doc/*",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/locale",  # message catalogues: the image speaks English (LANG=C.UTF-8)
    "usr/share/menu",
    "usr/share/gdb",
    "usr/share/gcc",
    "usr/share/debianutils",
    f"usr/share/postgresql/{PG_MAJOR}/man",
    # JIT needs libLLVM (not installed); the server runs without it as with jit = off.
    f"usr/lib/postgresql/{PG_MAJOR}/lib/bitcode",
    f"usr/lib/postgresql/{PG_MAJOR}/lib/llvmjit*",
    # SELinux labels (libselinux is not installed) and the extension build system.
    f"usr/lib/postgresql/{PG_MAJOR}/lib/sepgsql.so",
    f"usr/lib/postgresql/{PG_MAJOR}/lib/pgxs",
    # glibc's iconv modules: PostgreSQL converts encodings itself.
    "usr/lib/x86_64-linux-gnu/gconv",
)
KEPT = ("usr/share/doc/*/copyright",)


def trimmed(path: str) -> bool:
    """Whether a package path is left out of the image."""
    if any(fnmatchcase(path, pattern) for pattern in KEPT) or path == "usr/share/doc":
        return False
    return any(fnmatchcase(path, pattern) or fnmatchcase(path, pattern + "/*")
               for pattern in TRIMMED)


def status_entries(debs: Iterable[Path]) -> Iterator[oci.Entry]:
    """dpkg status entries (``/var/lib/dpkg/status.d/<name>``), as distroless images have."""
    for deb in debs:
        control = debian.control_fields(deb)
        match = re.search(r"^Package: (\S+)$", control, re.M)
        if match is None:
            raise debian.DebianError(f"{deb.name}: control file names no package")
        yield oci.file(f"var/lib/dpkg/status.d/{match[1]}", control)


def listen_everywhere(sample: bytes) -> bytes:
    """``postgresql.conf.sample`` with ``listen_addresses = '*'``, as the official image sets it."""
    text, count = re.subn(r"^#?listen_addresses\s*=\s*\S+", "listen_addresses = '*'",
                          sample.decode(), count=1, flags=re.M)
    if count != 1:
        raise ValueError("postgresql.conf.sample has no listen_addresses line")
    return text.encode()


def system_entries(entrypoint: bytes) -> list[oci.Entry]:
    """Users, merged-/usr links, runtime directories and the entrypoint."""
    home = "/var/lib/postgresql"
    return [
        *(oci.symlink(top, f"usr/{top}") for top in debian.MERGED_USR),
        oci.file("etc/passwd", f"root:x:0:0:root:/root:/bin/sh\n"
                               f"postgres:x:{UID}:{GID}:PostgreSQL administrator:{home}:/bin/sh\n"),
        oci.file("etc/group", f"root:x:0:\npostgres:x:{GID}:\n"),
        oci.file("etc/nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\n"
                                      "hosts: files dns\n"),
        oci.symlink("etc/localtime", "/usr/share/zoneinfo/Etc/UTC"),
        oci.directory("root", 0o700),
        oci.directory("tmp", 0o1777),
        oci.directory("var/tmp", 0o1777),
        oci.directory("proc"),
        oci.directory("sys"),
        oci.directory("dev"),
        oci.directory("run"),
        oci.symlink("var/run", "/run"),
        oci.directory("run/postgresql", 0o3777, uid=UID, gid=GID),
        oci.directory(home[1:], 0o755, uid=UID, gid=GID),
        oci.directory(PGDATA[1:], 0o700, uid=UID, gid=GID),
        oci.directory("docker-entrypoint-initdb.d"),
        oci.file(ENTRYPOINT[1:], entrypoint, 0o755),
    ]


def image_entries(debs: Sequence[Path], entrypoint: bytes) -> list[oci.Entry]:
    """Every entry of the image's one layer."""
    entries = [*debian.package_entries(debs, trimmed), *status_entries(debs),
               *system_entries(entrypoint)]
    sample = f"usr/share/postgresql/{PG_MAJOR}/postgresql.conf.sample"
    for index, entry in enumerate(entries):
        if entry.path == sample:
            entries[index] = oci.file(sample, listen_everywhere(entry.data), entry.mode)
    return entries


def build_postgres_image(*, cache: Path, epoch: int,
                         definition: Path = DEFINITION) -> oci.Image:
    """The image from the locked packages (fetched into ``cache``), timestamped ``epoch``."""
    packages = debian.read_lock(definition / "packages.lock")
    server = next((p for p in packages if p.name == SERVER_PACKAGE), None)
    if server is None:
        raise debian.DebianError(f"{SERVER_PACKAGE} is not in {definition / 'packages.lock'}")
    debs = debian.fetch(packages, cache)
    entrypoint = (definition / "docker-entrypoint.sh").read_bytes()
    layer = oci.make_layer(image_entries(debs, entrypoint), mtime=epoch,
                           comment=f"Debian 12 packages: {', '.join(p.name for p in packages)}")
    created = oci.rfc3339(epoch)
    config = oci.ImageConfig(
        entrypoint=[ENTRYPOINT],
        cmd=["postgres"],
        env=ENV,
        user=f"{UID}:{GID}",
        exposed_ports=["5432/tcp"],
        volumes=[PGDATA],
        stop_signal="SIGINT",
        labels={
            "org.opencontainers.image.title": "mpi-postgres",
            "org.opencontainers.image.description":
                f"PostgreSQL {PG_MAJOR} from Debian 12 packages, with the official postgres "
                "image's entrypoint contract",
            "org.opencontainers.image.version": server.version,
            "org.opencontainers.image.created": created,
        },
    )
    return oci.Image([layer], config, created=created)


def source_date_epoch(env: Mapping[str, str] = os.environ) -> int:
    """``SOURCE_DATE_EPOCH`` if set, else the commit time of HEAD."""
    from toolkit.pexbuild import source_date_epoch as from_git

    return from_git(Path(__file__).resolve().parents[1], env)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m images.postgres_image``: write dist/postgres-image.tar and its digest."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m images.postgres_image")
    parser.add_argument("--cache", type=Path, default=Path(".cache/debian"))
    parser.add_argument("--dist", type=Path, default=Path("dist"))
    args = parser.parse_args(argv)
    epoch = source_date_epoch()
    image = build_postgres_image(cache=args.cache, epoch=epoch)
    args.dist.mkdir(parents=True, exist_ok=True)
    target = args.dist / "postgres-image.tar"
    partial = target.with_suffix(".partial")
    partial.write_bytes(oci.archive(image, reference=REFERENCE, mtime=epoch))
    partial.replace(target)
    digest = image.digest()
    (args.dist / "postgres-image.digest").write_text(digest + "\n")
    print(f"{target}: {REFERENCE} {digest} ({target.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
