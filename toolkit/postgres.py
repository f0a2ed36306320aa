"""Throwaway PostgreSQL servers for tests and benchmarks.

``start_postgres()`` picks, in order:

1. ``external``: the server named by ``MPI_TEST_DATABASE_URL`` (only checked to connect).
2. ``testcontainers``: a ``PostgresContainer`` (image ``MPI_TEST_POSTGRES_IMAGE``,
   default ``postgres:15``) when a Docker-compatible API answers.
3. ``local``: a private cluster made with the PostgreSQL server binaries found on
   this machine, in a temporary directory, on a free port of 127.0.0.1.

``MPI_TEST_POSTGRES`` overrides the choice: ``local``, ``container`` or ``external``
force that path (and fail if it is unusable); ``auto`` or unset keeps the order above.

Every server is reachable at ``server.url``, a plain ``postgresql://mpi:mpi@host:port/mpi``
URL for psycopg 3. ``server.stop()`` is idempotent; the server is also a context manager.

The module has no import-time side effects. testcontainers is imported only on the
container path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

from toolkit import commands
from toolkit.commands import CommandError
from toolkit.procs import docker_ping, free_port, log_tail

__all__ = [
    "CommandError",
    "PostgresServer",
    "PostgresUnavailable",
    "container_engine_available",
    "find_postgres_bindir",
    "start_postgres",
]

USER = PASSWORD = DATABASE = "mpi"  # noqa: S105 - throwaway test credentials
DEFAULT_IMAGE = "postgres:15"
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
START_TIMEOUT = 30.0
ENGINE_TIMEOUT = 1.5
#: Unprivileged account that runs the local server when we are root.
LOCAL_OS_USER = "postgres"
#: testcontainers settings this machine needs (see MACHINE-NOTES); applied only if unset.
TESTCONTAINERS_DEFAULTS = {
    "TESTCONTAINERS_RYUK_DISABLED": "true",
    "TESTCONTAINERS_CONNECTION_MODE": "docker_host",
}
#: Settings for speed, not durability: the cluster is thrown away.
LOCAL_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
}
#: Settings with PostgreSQL's crash-safety defaults kept (``start_postgres(durable=True)``).
DURABLE_SETTINGS = {
    **LOCAL_SETTINGS,
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}
_UNIX_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be provided (the message says why)."""


@dataclass
class PostgresServer:
    """A running PostgreSQL server; ``stop()`` (or leaving the ``with`` block) ends it."""

    url: str
    kind: str
    description: str
    #: Temporary directory holding the cluster (``local`` only); removed by ``stop()``.
    tempdir: Path | None = None
    _stopper: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def stop(self) -> None:
        """Stop the server and remove its temporary data; calling it again does nothing."""
        stopper, self._stopper = self._stopper, None
        if stopper is not None:
            stopper()

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_postgres(
    *, workdir: Path | None = None, env: Mapping[str, str] = os.environ, durable: bool = False
) -> PostgresServer:
    """Provide a PostgreSQL server (see the module docstring for the selection order).

    ``workdir`` is the parent of the temporary directory of a ``local`` server
    (default: the system temporary directory). A ``local`` server runs with fsync,
    synchronous_commit and full_page_writes off for speed, unless ``durable`` keeps
    them on (for benchmarks); container and external servers are used as configured.
    Raises ``PostgresUnavailable`` when no server can be provided, and
    :class:`~toolkit.commands.CommandError` when ``initdb`` or ``pg_ctl`` fails.
    """
    mode = (env.get("MPI_TEST_POSTGRES") or "auto").strip().lower()
    external_url = env.get("MPI_TEST_DATABASE_URL", "").strip()
    if mode not in {"auto", "external", "container", "local"}:
        raise ValueError(f"MPI_TEST_POSTGRES={mode!r}: expected auto, external, container or local")
    if mode == "external" or (mode == "auto" and external_url):
        if not external_url:
            raise PostgresUnavailable(
                "MPI_TEST_POSTGRES=external but MPI_TEST_DATABASE_URL is not set"
            )
        return _start_external(external_url)
    if mode == "container" or (mode == "auto" and container_engine_available(env)):
        if mode == "container" and not container_engine_available(env):
            raise PostgresUnavailable(
                "MPI_TEST_POSTGRES=container but no container engine answers at "
                f"{_docker_host(env)} (set DOCKER_HOST to a Docker-compatible API socket)"
            )
        return _start_container(env)
    return _start_local(env, workdir, durable)


# --------------------------------------------------------------------------- engine probe


def container_engine_available(env: Mapping[str, str] = os.environ) -> bool:
    """Tell whether a Docker-compatible API answers ``GET /_ping`` at ``DOCKER_HOST``.

    Without ``DOCKER_HOST`` the default socket ``/var/run/docker.sock`` is tried.
    Supports ``unix://`` and plain-HTTP ``tcp://``/``http://`` hosts; anything else
    (ssh, TLS, npipe) counts as unavailable. Never raises; gives up after ~1.5 s.
    """
    return docker_ping(_docker_host(env), ENGINE_TIMEOUT)


def _docker_host(env: Mapping[str, str]) -> str:
    return env.get("DOCKER_HOST", "").strip() or f"unix://{DEFAULT_DOCKER_SOCKET}"


# --------------------------------------------------------------------------- external


def _start_external(url: str) -> PostgresServer:
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise PostgresUnavailable(f"MPI_TEST_DATABASE_URL is not a valid conninfo: {exc}") from exc
    where = (
        f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
    )
    try:
        version = _server_version(url, connect_timeout=5)
    except psycopg.Error as exc:
        raise PostgresUnavailable(
            f"cannot connect to MPI_TEST_DATABASE_URL ({where}): {exc}"
        ) from exc
    return PostgresServer(
        url=url,
        kind="external",
        description=f"external PostgreSQL {version} at {where} (MPI_TEST_DATABASE_URL)",
    )


def _server_version(conninfo: str, *, connect_timeout: int) -> str:
    with psycopg.connect(conninfo, connect_timeout=connect_timeout) as conn:
        number = conn.info.server_version
    major, minor = divmod(number, 10000)
    return f"{major}.{minor}"


def _wait_connectable(conninfo: str, deadline: float) -> str:
    """Poll until ``conninfo`` accepts connections; return the server version."""
    while True:
        try:
            return _server_version(conninfo, connect_timeout=2)
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


# --------------------------------------------------------------------------- container


def _start_container(env: Mapping[str, str]) -> PostgresServer:
    image = env.get("MPI_TEST_POSTGRES_IMAGE", "").strip() or DEFAULT_IMAGE
    docker_host = _docker_host(env)
    _configure_testcontainers(env)
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        try:
            from testcontainers.postgres import PostgresContainer
        except ImportError as exc:
            raise PostgresUnavailable(
                f"a container engine answers but testcontainers is missing: {exc}"
            ) from exc

    container: Any = None
    try:
        container = PostgresContainer(
            image, username=USER, password=PASSWORD, dbname=DATABASE, driver=None
        )
        container.start()
        url = container.get_connection_url(driver=None)
        version = _wait_connectable(url, time.monotonic() + START_TIMEOUT)
        host = container.get_container_host_ip()
        port = container.get_exposed_port(5432)
        short_id = container.get_wrapped_container().short_id
    except Exception as exc:
        if container is not None:
            with contextlib.suppress(Exception):  # best effort; report the start error
                container.stop()
        raise PostgresUnavailable(
            f"container engine at {docker_host} answers but PostgreSQL container {image} "
            f"did not start: {type(exc).__name__}: {exc}"
        ) from exc
    return PostgresServer(
        url=url,
        kind="testcontainers",
        description=(
            f"PostgreSQL {version} in container {image} ({short_id}) via {docker_host}"
            f" on {host}:{port}"
        ),
        _stopper=container.stop,
    )


def _configure_testcontainers(env: Mapping[str, str]) -> None:
    """Apply the settings testcontainers needs here, without overriding the user's.

    testcontainers reads ``os.environ`` (partly at import time), so ``DOCKER_HOST`` and
    the ``TESTCONTAINERS_*`` defaults are copied there when missing, and the already
    imported configuration object is synchronised.
    """
    if "DOCKER_HOST" in env:
        os.environ.setdefault("DOCKER_HOST", env["DOCKER_HOST"])
    for key, default in TESTCONTAINERS_DEFAULTS.items():
        os.environ.setdefault(key, env.get(key, default))
    try:
        from testcontainers.core.config import ConnectionMode, testcontainers_config
    except ImportError:
        return  # reported by the caller's import
    try:
        mode = ConnectionMode(os.environ["TESTCONTAINERS_CONNECTION_MODE"])
    except ValueError as exc:
        raise PostgresUnavailable(f"TESTCONTAINERS_CONNECTION_MODE: {exc}") from exc
    testcontainers_config.connection_mode_override = mode
    disabled = os.environ["TESTCONTAINERS_RYUK_DISABLED"].lower() in {"yes", "true", "t", "y", "1"}
    testcontainers_config.ryuk_disabled = disabled


# --------------------------------------------------------------------------- local


def find_postgres_bindir(env: Mapping[str, str] = os.environ) -> Path:
    """Locate the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Order: ``MPI_TEST_POSTGRES_BIN``; the highest ``/usr/lib/postgresql/*/bin``;
    ``pg_config --bindir``. Raises ``PostgresUnavailable``.
    """
    override = env.get("MPI_TEST_POSTGRES_BIN", "").strip()
    if override:
        bindir = Path(override)
        if not _has_server_binaries(bindir):
            raise PostgresUnavailable(
                f"MPI_TEST_POSTGRES_BIN={override}: no initdb, pg_ctl and postgres there"
            )
        return bindir

    def version_key(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True):
        if _has_server_binaries(bindir):
            return bindir

    pg_config = shutil.which("pg_config", path=env.get("PATH"))
    if pg_config:
        bindir = Path(_run([pg_config, "--bindir"]).stdout.strip())
        if _has_server_binaries(bindir):
            return bindir
    raise PostgresUnavailable(
        "no PostgreSQL server binaries found (looked at MPI_TEST_POSTGRES_BIN, "
        "/usr/lib/postgresql/*/bin, pg_config --bindir); "
        "install the PostgreSQL server or set MPI_TEST_POSTGRES_BIN"
    )


def _has_server_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


@dataclass(frozen=True)
class _RunAs:
    """An OS account to drop to (PostgreSQL refuses to run as root)."""

    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _local_os_user() -> _RunAs | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(LOCAL_OS_USER)
    except KeyError as exc:
        raise PostgresUnavailable(
            "running as root, and PostgreSQL refuses to run as root, "
            f"but the unprivileged user {LOCAL_OS_USER!r} is missing"
        ) from exc
    return _RunAs(LOCAL_OS_USER, entry.pw_uid, entry.pw_gid)


def _run(
    cmd: Sequence[str],
    *,
    run_as: _RunAs | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``, as ``run_as`` when given; :class:`CommandError` names that user."""
    if run_as is None:
        return commands.run(cmd, cwd=cwd, timeout=timeout)
    return commands.run(cmd, cwd=cwd, timeout=timeout, note=f"as user {run_as.name}",
                        **run_as.popen_kwargs())


def _make_traversable(directory: Path, run_as: _RunAs) -> None:
    """Give ``run_as`` search (x) permission on ``directory`` and its parents.

    Only the "others may traverse" bit is added, and only where the account lacks it
    (e.g. pytest's 0700 ``/tmp/pytest-of-root``); nothing becomes listable.
    """
    groups = {run_as.gid, *(g for g in os.getgrouplist(run_as.name, run_as.gid))}
    for path in [directory, *directory.parents]:
        st = path.stat()
        if st.st_uid == run_as.uid:
            allowed = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            allowed = bool(st.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(st.st_mode & stat.S_IXOTH)
        if not allowed:
            path.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _log_tail(log: Path) -> str:
    return log_tail(log, 25, missing="(no server log)", empty="(server log is empty)")


def _start_local(
    env: Mapping[str, str], workdir: Path | None, durable: bool = False
) -> PostgresServer:
    bindir = find_postgres_bindir(env)
    version_out = _run([str(bindir / "postgres"), "--version"]).stdout
    match = re.search(r"\(PostgreSQL\)\s+(\S+)", version_out)
    version = match.group(1) if match else version_out.strip()
    run_as = _local_os_user()

    parent = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    tempdir = Path(tempfile.mkdtemp(prefix="mpi-pg-", dir=parent)).resolve()
    data = tempdir / "data"
    log = tempdir / "postgres.log"
    pg_ctl = str(bindir / "pg_ctl")
    started = False

    def stop() -> None:
        try:
            if started:
                _run(pg_ctl_stop_command(pg_ctl, data), run_as=run_as, cwd=tempdir)
        finally:
            shutil.rmtree(tempdir, ignore_errors=True)

    try:
        if run_as is not None:
            os.chown(tempdir, run_as.uid, run_as.gid)
            _make_traversable(tempdir, run_as)
        _initdb(bindir, data, tempdir, run_as)
        socket_dir = (
            str(tempdir) if len(f"{tempdir}/.s.PGSQL.65535") <= _UNIX_SOCKET_PATH_MAX else ""
        )
        quoted_dir = "'" + socket_dir.replace("'", "''") + "'"
        base = DURABLE_SETTINGS if durable else LOCAL_SETTINGS
        settings = {**base, "unix_socket_directories": quoted_dir}
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# added by toolkit.postgres (throwaway test cluster)\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

        deadline = time.monotonic() + START_TIMEOUT
        port = _pg_ctl_start(pg_ctl, data, log, tempdir, run_as, deadline)
        started = True
        admin_url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres"
        try:
            _wait_connectable(admin_url, deadline)
        except psycopg.OperationalError as exc:
            raise PostgresUnavailable(
                f"local PostgreSQL on 127.0.0.1:{port} did not accept connections within "
                f"{START_TIMEOUT:g} s: {exc}\n--- server log tail ({log}) ---\n{_log_tail(log)}"
            ) from exc
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error
            stop()
        raise
    return PostgresServer(
        url=f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}",
        kind="local",
        description=(
            f"local PostgreSQL {version} from {bindir} on 127.0.0.1:{port} (data in {tempdir})"
        ),
        tempdir=tempdir,
        _stopper=stop,
    )


def initdb_command(bindir: Path, data: Path, pwfile: Path) -> list[str]:
    """``initdb``: superuser ``mpi`` (password from ``pwfile``), SCRAM over TCP, trust on
    the socket, UTF-8, the C.UTF-8 locale, no fsync while creating (a throwaway cluster)."""
    return [
        str(bindir / "initdb"),
        "-D",
        str(data),
        "--username",
        USER,
        f"--pwfile={pwfile}",
        "--auth-host=scram-sha-256",
        "--auth-local=trust",
        "--encoding=UTF8",
        "--locale=C.UTF-8",
        "--no-sync",
        "--no-instructions",
    ]


def pg_ctl_start_command(pg_ctl: str, data: Path, log: Path, *, port: int, wait: int) -> list[str]:
    """``pg_ctl start`` on ``port``, logging to ``log``, waiting up to ``wait`` seconds."""
    return [pg_ctl, "start", "-D", str(data), "-l", str(log), "-w", "-t", str(wait),
            "-o", f"-p {port}"]


def pg_ctl_stop_command(pg_ctl: str, data: Path) -> list[str]:
    """``pg_ctl stop``, fast mode (roll back open sessions), waiting up to 30 s."""
    return [pg_ctl, "stop", "-D", str(data), "-m", "fast", "-w", "-t", "30"]


def _initdb(bindir: Path, data: Path, tempdir: Path, run_as: _RunAs | None) -> None:
    """Create the cluster: superuser ``mpi``, SCRAM password auth over TCP, trust on the socket."""
    pwfile = tempdir / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    try:
        if run_as is not None:
            os.chown(pwfile, run_as.uid, run_as.gid)
        _run(initdb_command(bindir, data, pwfile), run_as=run_as, cwd=tempdir)
    finally:
        pwfile.unlink(missing_ok=True)


def _pg_ctl_start(
    pg_ctl: str,
    data: Path,
    log: Path,
    tempdir: Path,
    run_as: _RunAs | None,
    deadline: float,
    attempts: int = 3,
) -> int:
    """Start the server on a free port (retrying if another process grabs it); return the port."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        wait = max(1, int(deadline - time.monotonic()))
        cmd = pg_ctl_start_command(pg_ctl, data, log, port=port, wait=wait)
        try:
            _run(cmd, run_as=run_as, cwd=tempdir, timeout=wait + 10)
        except CommandError as exc:
            tail = _log_tail(log)
            if attempt < attempts and (
                "could not bind" in tail or os.strerror(errno.EADDRINUSE) in tail
            ):
                log.unlink(missing_ok=True)
                continue
            raise exc.with_note(f"server log {log}, last lines:\n{tail}") from exc
        return port
    raise AssertionError("unreachable")
