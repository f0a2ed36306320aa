"""The PostgreSQL image: reproducible, the official image's contract, and it really runs.

The unit tests read the built layer and config. The run tests (root only) unpack the
layer and start its entrypoint in a chroot with its own mount and PID namespaces, as a
container engine would (uid 999, the image's environment, the server as PID 1), then
wait for it exactly as testcontainers' ``PostgresContainer`` does and connect from here.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import psycopg
import pytest

from images import oci, postgres_image
from images.postgres_image import BINDIR, PGDATA

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "debian"
EPOCH = 1_700_000_000
PASSWORD = "secret"


@pytest.fixture(scope="module")
def image() -> oci.Image:
    return postgres_image.build_postgres_image(cache=CACHE, epoch=EPOCH)


@pytest.fixture(scope="module")
def members(image: oci.Image) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(image.layers[0].tar)) as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


@pytest.fixture(scope="module")
def config(image: oci.Image) -> dict:
    import json

    return json.loads(image.config_blob())


def read_member(image: oci.Image, name: str) -> str:
    with tarfile.open(fileobj=io.BytesIO(image.layers[0].tar)) as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read().decode()


# --- reproducibility --------------------------------------------------------------------


def test_two_builds_give_the_same_digest(image: oci.Image, tmp_path: Path):
    """A second build from a copy of the cache (other path, other file times) is identical."""
    cache = tmp_path / "debs"
    shutil.copytree(CACHE, cache, ignore=shutil.ignore_patterns(".apt", "*.partial"))
    for deb in cache.iterdir():
        os.utime(deb, (EPOCH, EPOCH))
    again = postgres_image.build_postgres_image(cache=cache, epoch=EPOCH)
    if again.layers[0].tar != image.layers[0].tar:
        pytest.fail(f"layers differ, first at {first_difference(image, again)}")
    assert again.config_blob() == image.config_blob()
    assert again.digest() == image.digest()


def first_difference(a: oci.Image, b: oci.Image) -> str:
    def listing(image: oci.Image) -> list[tuple]:
        with tarfile.open(fileobj=io.BytesIO(image.layers[0].tar)) as tar:
            return [(m.name, m.mode, m.uid, m.size, m.linkname, m.mtime) for m in tar]

    for x, y in zip(listing(a), listing(b), strict=False):
        if x != y:
            return f"{x} != {y}"
    return "(same members; contents differ)"


# --- the layer --------------------------------------------------------------------------


def test_layer_has_a_shell_and_the_postgresql_binaries(members: dict[str, tarfile.TarInfo]):
    assert members["bin"].issym() and members["bin"].linkname == "usr/bin"
    assert members["usr/bin/sh"].issym() and members["usr/bin/sh"].linkname == "dash"
    assert members["usr/bin/dash"].isfile()
    for name in ("postgres", "initdb", "pg_ctl", "psql", "pg_isready", "pg_dump"):
        member = members[f"{BINDIR[1:]}/{name}"]
        assert member.isfile() and member.mode & 0o111, name
    # Debian's Perl wrappers (postgresql-common) are not there: PATH finds the real psql.
    assert "usr/bin/psql" not in members


def test_layer_is_trimmed_but_keeps_what_postgresql_reads(members: dict[str, tarfile.TarInfo]):
    names = set(members)
    for gone in ("usr/share/man", "usr/share/locale", "usr/lib/postgresql/15/lib/llvmjit.so",
                 "usr/lib/postgresql/15/lib/bitcode", "usr/lib/postgresql/15/lib/sepgsql.so",
                 "usr/share/doc/libc6/NEWS.gz"):
        assert gone not in names
    for kept in ("usr/share/doc/postgresql-15/copyright", "usr/lib/locale/C.utf8/LC_CTYPE",
                 "usr/share/zoneinfo/Etc/UTC", "usr/share/postgresql/15/postgres.bki",
                 "usr/share/postgresql/15/extension/pg_trgm.control",
                 "usr/lib/postgresql/15/lib/pg_trgm.so", "usr/lib/postgresql/15/lib/plpgsql.so"):
        assert kept in names


def test_every_symlink_resolves_inside_the_layer(members: dict[str, tarfile.TarInfo]):
    for name, member in members.items():
        if member.issym():
            assert resolve(name, members) in members, f"{name} -> {member.linkname} dangles"


def resolve(name: str, members: Mapping[str, tarfile.TarInfo], depth: int = 0) -> str:
    """``name`` with every symlink in it followed, as a layer path."""
    assert depth < 40, f"symlink loop at {name}"
    done: list[str] = []
    for part in PurePosixPath(name).parts:
        path = str(PurePosixPath(*done, part))
        member = members.get(path)
        if member is not None and member.issym():
            base = PurePosixPath("/") if member.linkname.startswith("/") \
                else PurePosixPath("/", *done)
            target = os.path.normpath(str(base / member.linkname)).lstrip("/")
            done = list(PurePosixPath(resolve(target, members, depth + 1)).parts)
        else:
            done.append(part)
    return str(PurePosixPath(*done)) if done else ""


def test_users_directories_and_package_status(image: oci.Image,
                                              members: dict[str, tarfile.TarInfo]):
    assert "postgres:x:999:999:" in read_member(image, "etc/passwd")
    assert "postgres:x:999:" in read_member(image, "etc/group")
    for path, mode in ((PGDATA[1:], 0o700), ("run/postgresql", 0o3777),
                       ("var/lib/postgresql", 0o755)):
        assert (members[path].uid, members[path].gid, members[path].mode) == (999, 999, mode)
    assert members["var/run"].linkname == "/run"
    assert members["tmp"].mode == 0o1777
    assert members["usr/local/bin/docker-entrypoint.sh"].mode == 0o755
    assert members["docker-entrypoint-initdb.d"].isdir()
    status = read_member(image, "var/lib/dpkg/status.d/postgresql-15")
    assert status.startswith("Package: postgresql-15\n") and "\nVersion: 15." in status
    sample = read_member(image, "usr/share/postgresql/15/postgresql.conf.sample")
    assert "\nlisten_addresses = '*'" in sample


def test_config_follows_the_official_image(config: dict):
    runtime = config["config"]
    assert runtime["Entrypoint"] == ["/usr/local/bin/docker-entrypoint.sh"]
    assert runtime["Cmd"] == ["postgres"]
    assert runtime["User"] == "999:999"
    assert runtime["ExposedPorts"] == {"5432/tcp": {}}
    assert runtime["Volumes"] == {PGDATA: {}}
    assert runtime["StopSignal"] == "SIGINT"
    env = dict(item.split("=", 1) for item in runtime["Env"])
    assert env["PGDATA"] == PGDATA and env["LANG"] == "C.UTF-8"
    assert BINDIR in env["PATH"].split(":")
    labels = runtime["Labels"]
    assert labels["org.opencontainers.image.version"].startswith("15.")
    assert labels["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert labels["org.opencontainers.image.title"] == "mpi-postgres"


def test_entrypoint_is_posix_sh():
    shell = shutil.which("dash") or shutil.which("sh")
    assert shell is not None
    script = postgres_image.DEFINITION / "docker-entrypoint.sh"
    result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_trimming_rules():
    assert postgres_image.trimmed("usr/share/doc/libc6/NEWS.gz")
    assert not postgres_image.trimmed("usr/share/doc/libc6/copyright")
    assert postgres_image.trimmed("usr/lib/postgresql/15/lib/bitcode/postgres/x.bc")
    assert not postgres_image.trimmed("usr/lib/postgresql/15/lib/pg_trgm.so")


# --- running it without a container engine (root only) ----------------------------------

TOOLS = ("unshare", "nsenter", "chroot", "mount")
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in TOOLS),
    reason="running the image without an engine needs root (chroot, mount and PID "
           f"namespaces) and {', '.join(TOOLS)}")


@pytest.fixture(scope="module")
def rootfs(image: oci.Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's file system, unpacked with its owners and modes."""
    root = tmp_path_factory.mktemp("rootfs")
    root.chmod(0o755)  # "/" as an engine makes it (mktemp's 0700 would lock uid 999 out)
    with tarfile.open(fileobj=io.BytesIO(image.layers[0].tar)) as tar:
        if hasattr(tarfile, "fully_trusted_filter"):
            tar.extractall(root, numeric_owner=True, filter="fully_trusted")
        else:  # pragma: no cover - Python without extraction filters
            tar.extractall(root, numeric_owner=True)
    return root


@pytest.fixture(scope="module")
def image_env(config: dict) -> dict[str, str]:
    env = dict(item.split("=", 1) for item in config["config"]["Env"])
    return {**env, "HOME": "/var/lib/postgresql"}


# Inside fresh mount and PID namespaces: /dev from the host, then chroot as user $1.
ENTER = ('user=$1; shift; mount --rbind /dev "$0/dev" && '
         'exec chroot --userspec="$user" --groups="${user#*:}" "$0" "$@"')


@dataclass
class Container:
    """The entrypoint running in ``root`` as PID 1 of its own namespaces."""

    root: Path
    env: dict[str, str]
    process: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, root: Path, env: Mapping[str, str], argv: Sequence[str], log: Path,
              *, user: str = "999:999") -> Container:
        command = ["unshare", "--mount", "--pid", "--fork", f"--mount-proc={root}/proc",
                   "/bin/sh", "-c", ENTER, str(root), user, *argv]
        with log.open("ab") as out:
            process = subprocess.Popen(command, env=dict(env), stdout=out,
                                       stderr=subprocess.STDOUT)
        return cls(root, dict(env), process, log)

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except FileNotFoundError:
            return []

    def pid1(self) -> int:
        """The host's pid of the namespace's PID 1 (the entrypoint, then postgres)."""
        deadline = time.monotonic() + 10
        while not self.children():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"no PID 1 under unshare:\n{self.output()}")
            time.sleep(0.02)
        return self.children()[0]

    def exec(self, command: Sequence[str], env: Mapping[str, str] | None = None
             ) -> SimpleNamespace:
        """Like ``docker exec``: a command in the container's namespaces, as uid 999."""
        if self.process.poll() is not None:
            pytest.fail(f"the container exited ({self.process.returncode}):\n{self.output()}")
        result = subprocess.run(
            ["nsenter", f"--target={self.pid1()}", "--mount", "--pid", "chroot",
             "--userspec=999:999", "--groups=999", str(self.root), *command],
            env={**self.env, **(env or {})}, capture_output=True, check=False, timeout=30)
        return SimpleNamespace(exit_code=result.returncode, output=result.stdout + result.stderr)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGINT to PID 1 (the image's StopSignal), then wait for the namespace to end."""
        os.kill(self.pid1(), signal.SIGINT)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL to PID 1 ends the whole namespace; then unshare exits."""
        for pid in self.children():
            os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)


@pytest.fixture
def started() -> Iterator[list[Container]]:
    """Containers a test starts; any left running are killed."""
    containers: list[Container] = []
    yield containers
    for container in containers:
        container.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_like_testcontainers(container: Container, port: int, *, user: str, password: str,
                             dbname: str) -> None:
    """testcontainers' own PostgresContainer readiness check, run through ``container``."""
    from testcontainers.community.postgres import PostgresContainer

    probe = SimpleNamespace(username=user, password=password, dbname=dbname,
                            exec=lambda cmd: container.exec(cmd, {"PGPORT": str(port)}))
    PostgresContainer._connect(probe)  # type: ignore[arg-type]


@needs_root
def test_shared_libraries_all_resolve(rootfs: Path):
    """Every ELF file's libraries are found in the image by its own dynamic loader."""
    missing = []
    for path in sorted(rootfs.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.read_bytes()[:4] != b"\x7fELF":
            continue
        inside = "/" + str(path.relative_to(rootfs))
        result = subprocess.run(["chroot", str(rootfs), "/lib64/ld-linux-x86-64.so.2",
                                 "--list", inside], capture_output=True, text=True, check=False)
        missing += [f"{inside}: {line.strip()}" for line in result.stdout.splitlines()
                    if "not found" in line]
    assert not missing


INIT_SQL = """\
CREATE TABLE seeded (source text);
INSERT INTO seeded VALUES ('sql');
DO $$ BEGIN
  IF current_setting('cluster_name') <> 'o''brien x' THEN
    RAISE 'temporary server did not get the command line: %', current_setting('cluster_name');
  END IF;
END $$;
"""
INIT_SH = """\
#!/bin/sh
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<-EOSQL
	INSERT INTO seeded VALUES ('sh');
EOSQL
"""


@needs_root
def test_first_start_restart_and_stop(rootfs: Path, image_env: dict[str, str],
                                      started: list[Container], tmp_path: Path):
    (rootfs / "docker-entrypoint-initdb.d/10-seed.sql").write_text(INIT_SQL)
    script = rootfs / "docker-entrypoint-initdb.d/20-seed.sh"
    script.write_text(INIT_SH)
    script.chmod(0o755)
    secrets = rootfs / "run/secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "postgres-password").write_text(PASSWORD + "\n")  # as compose mounts secrets
    port = free_port()
    env = {**image_env, "POSTGRES_PASSWORD_FILE": "/run/secrets/postgres-password",
           "POSTGRES_DB": "app"}
    argv = ["/usr/local/bin/docker-entrypoint.sh", "postgres", "-c", f"port={port}",
            "-c", "listen_addresses=127.0.0.1", "-c", "cluster_name=o'brien x"]
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/app"
    log = tmp_path / "container.log"

    first = Container.start(rootfs, env, argv, log)
    started.append(first)
    wait_like_testcontainers(first, port, user="postgres", password=PASSWORD, dbname="app")
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("select source from seeded order by 1").fetchall() == [("sh",),
                                                                                  ("sql",)]
        assert conn.execute("show lc_collate").fetchone() == ("C.UTF-8",)
        assert conn.execute("show server_encoding").fetchone() == ("UTF8",)
    assert first.stop() == 0
    text = first.output()
    assert text.count("database system is ready to accept connections") == 2, text
    assert "PostgreSQL init process complete; ready for start up." in text
    assert "received fast shutdown request" in text.split("init process complete")[1]

    second = Container.start(rootfs, env, argv, log)
    started.append(second)
    wait_like_testcontainers(second, port, user="postgres", password=PASSWORD, dbname="app")
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("select count(*) from seeded").fetchone() == (2,)
    assert second.stop() == 0
    assert "Skipping initialization" in second.output()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


@needs_root
def test_a_password_is_required(rootfs: Path, image_env: dict[str, str],
                                started: list[Container], tmp_path: Path):
    env = {**image_env, "PGDATA": "/tmp/fresh"}
    container = Container.start(rootfs, env, ["/usr/local/bin/docker-entrypoint.sh", "postgres"],
                                tmp_path / "container.log")
    started.append(container)
    assert container.process.wait(30) == 1
    assert "superuser password is not specified" in container.output()
    assert not (rootfs / "tmp/fresh").exists()


@needs_root
def test_root_is_refused_with_a_reason(rootfs: Path, image_env: dict[str, str],
                                       started: list[Container], tmp_path: Path):
    env = {**image_env, "PGDATA": "/tmp/fresh", "POSTGRES_PASSWORD": PASSWORD}
    container = Container.start(rootfs, env, ["/usr/local/bin/docker-entrypoint.sh", "postgres"],
                                tmp_path / "container.log", user="0:0")
    started.append(container)
    assert container.process.wait(30) == 1
    assert "run this image as its default user 999" in container.output()
