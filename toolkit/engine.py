"""Podman as this project's container engine: install it, serve its Docker API, run it.

CI machines have no Docker engine (see ``../shared/MACHINE-NOTES.md``). There podman
and runc come from Debian, every podman call reads ``CONTAINERS_CONF`` (runtime runc,
explicit ulimits: crun cannot run here), and ``podman system service`` answers the
Docker API on a unix socket for testcontainers, which also needs Ryuk disabled and
``docker_host`` connection mode.

Command line (what ``.ci/run`` calls; standard library only, so any python3 runs it)::

    python -m toolkit.engine install              apt-get install podman & co (if missing)
    python -m toolkit.engine setup --socket PATH  start the API service in the background,
                                                  wait until it answers, print `export` lines
    python -m toolkit.engine stop --pid PID       stop that service
    python -m toolkit.engine load ARCHIVE...      podman load each archive

Nothing happens at import.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from toolkit import commands
from toolkit.commands import CommandError
from toolkit.procs import docker_ping, log_tail

__all__ = [
    "PACKAGES",
    "CommandError",
    "EngineError",
    "containers_conf",
    "engine_env",
    "image_exists",
    "install_podman_command",
    "load",
    "main",
    "ping",
    "podman",
    "podman_command",
    "podman_env",
    "podman_unavailable",
    "service_command",
    "start_podman_service",
    "stop_podman_service",
]

#: Debian packages for podman on these machines. netavark and iptables are named
#: explicitly, else apt picks the old CNI plugins and port mapping fails.
PACKAGES = ("podman", "runc", "skopeo", "umoci", "netavark", "aardvark-dns", "iptables",
            "catatonit")
#: Seconds the API service gets to answer its first ``/_ping``.
SERVICE_TIMEOUT = 30.0
PING_TIMEOUT = 1.5
#: testcontainers settings for podman's API here (the Ryuk image is on Docker Hub;
#: ``/.dockerenv`` exists, so testcontainers would otherwise guess it runs in a container).
TESTCONTAINERS_ENV = {
    "TESTCONTAINERS_RYUK_DISABLED": "true",
    "TESTCONTAINERS_CONNECTION_MODE": "docker_host",
}


class EngineError(RuntimeError):
    """The engine's set-up is wrong (a missing ``CONTAINERS_CONF``, say).

    A podman or apt command that fails raises :class:`toolkit.commands.CommandError`
    (argv, exit code, output), as every command the toolkit runs does.
    """


# --------------------------------------------------------------------------- settings


def install_podman_command() -> list[str]:
    """The apt-get command line that installs podman, runc and their networking."""
    return ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]


def containers_conf(repo: Path, env: Mapping[str, str] = os.environ) -> Path | None:
    """The containers.conf to use: ``CONTAINERS_CONF`` if set, else ``<repo>/../shared/``'s,
    else the copy in ``<repo>/toolkit/`` (a clone checked out anywhere still gets runc and
    ulimits this machine accepts).

    ``None`` when none exists (podman then uses its own defaults). A
    ``CONTAINERS_CONF`` naming a missing file is an error, not silently ignored.
    """
    named = env.get("CONTAINERS_CONF", "").strip()
    if named:
        path = Path(named)
        if not path.is_file():
            raise EngineError(f"CONTAINERS_CONF={named}: no such file")
        return path.resolve()
    shared = Path(repo).resolve().parent / "shared" / "containers.conf"
    if shared.is_file():
        return shared
    own = Path(repo).resolve() / "toolkit" / "containers.conf"
    return own if own.is_file() else None


def podman_env(repo: Path, base: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``base`` plus ``CONTAINERS_CONF`` when :func:`containers_conf` finds one."""
    env = dict(base)
    conf = containers_conf(repo, base)
    if conf is not None:
        env["CONTAINERS_CONF"] = str(conf)
    return env


def engine_env(socket_path: Path | str, conf: Path | None = None) -> dict[str, str]:
    """The variables that point Docker clients and testcontainers at podman's API socket."""
    env = {"DOCKER_HOST": f"unix://{Path(socket_path).resolve()}", **TESTCONTAINERS_ENV}
    if conf is not None:
        env["CONTAINERS_CONF"] = str(conf)
    return env


# --------------------------------------------------------------------------- podman CLI


def podman_command(*args: str) -> list[str]:
    """The argv of ``podman ARGS``."""
    return ["podman", *args]


def podman(*args: str, env: Mapping[str, str] | None = None, timeout: float = 300.0,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS``; raise :class:`CommandError` (argv, exit code, output) on failure."""
    return commands.run(podman_command(*args), env=env, timeout=timeout, check=check)


def podman_unavailable(env: Mapping[str, str] | None = None) -> str | None:
    """Why podman cannot be used here, or ``None`` when ``podman info`` works."""
    path = (env if env is not None else os.environ).get("PATH")
    if shutil.which("podman", path=path) is None:
        return "podman is not installed"
    try:
        podman("info", "--format", "{{.Host.OCIRuntime.Name}}", env=env, timeout=60)
    except CommandError as exc:
        return f"podman is installed but does not work: {exc}"
    return None


def load(archive: Path, *, env: Mapping[str, str] | None = None) -> list[str]:
    """``podman load -i ARCHIVE``; return the references it reports loading."""
    out = podman("load", "-i", str(archive), env=env, timeout=600).stdout
    # "Loaded image: REF" (podman 4) or "Loaded image(s): REF,REF" (older)
    return [ref.strip() for line in out.splitlines() if line.startswith("Loaded image")
            for ref in line.split(":", 1)[1].split(",") if ref.strip()]


def image_exists(reference: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``reference`` is in podman's local storage (exit 1 = no; other = error)."""
    proc = podman("image", "exists", reference, env=env, check=False, timeout=60)
    if proc.returncode in (0, 1):
        return proc.returncode == 0
    raise CommandError(proc.args, proc.returncode, stdout=proc.stdout, stderr=proc.stderr)


# --------------------------------------------------------------------------- API service


def ping(socket_path: Path | str, timeout: float = PING_TIMEOUT) -> bool:
    """Whether a Docker-compatible API answers ``GET /_ping`` with ``OK`` on ``socket_path``."""
    return docker_ping(f"unix://{socket_path}", timeout)


def service_command(socket_path: Path) -> list[str]:
    """The argv of podman's Docker-compatible API service on ``socket_path``."""
    return podman_command("system", "service", "--time=0", f"unix://{socket_path}")


def start_podman_service(socket_path: Path, env: Mapping[str, str], *,
                         log: Path | None = None,
                         timeout: float = SERVICE_TIMEOUT) -> subprocess.Popen[bytes]:
    """Start ``podman system service`` on ``socket_path`` and wait until it answers.

    The service runs in its own session (it outlives a ``setup`` command line) and
    writes to ``log`` (default: ``<socket>.log``). If it does not answer ``/_ping``
    within ``timeout`` seconds it is stopped and :class:`CommandError` carries its log.
    """
    socket_path = Path(socket_path).resolve()
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    log = log or socket_path.with_name(socket_path.name + ".log")
    cmd = service_command(socket_path)
    with log.open("ab") as out:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    env=dict(env), start_new_session=True)
        except OSError as exc:
            raise CommandError(cmd, None, stderr=str(exc), reason="could not start") from exc
    deadline = time.monotonic() + timeout
    while not ping(socket_path):
        code = proc.poll()
        if code is not None or time.monotonic() >= deadline:
            if code is None:
                stop_podman_service(proc.pid)
            what = (f"exited with code {code}" if code is not None
                    else f"did not answer /_ping within {timeout:g} s")
            raise CommandError(cmd, code, stderr=log_tail(log), reason=what,
                               note=f"the podman API service's log {log}")
        time.sleep(0.05)
    return proc


def stop_podman_service(pid: int, *, timeout: float = 10.0) -> bool:
    """SIGTERM the service ``pid`` (SIGKILL after ``timeout`` s); False if it was not running.

    Only a process whose command line runs ``podman system service`` is signalled, so a
    stale or reused pid is left alone.
    """
    if not _is_podman_service(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    return True


def _is_podman_service(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(argv[i:i + 2] == [b"system", b"service"] and Path(os.fsdecode(argv[i - 1])).name
               == "podman" for i in range(1, len(argv) - 1))


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child, now reaped
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


# --------------------------------------------------------------------------- command line


def install(run: Callable[[list[str]], int] | None = None,
            which: Callable[[str], str | None] = shutil.which,
            log: Callable[[str], None] = print) -> None:
    """Install :data:`PACKAGES` with apt-get unless podman is on PATH.

    If apt cannot find them (empty package lists on a fresh machine), ``apt-get update``
    runs once and the install is retried. Raises :class:`CommandError` on failure (apt's
    output went to the terminal, not into the error).
    """
    def default_run(cmd: list[str]) -> int:
        return subprocess.run(cmd, check=False).returncode

    run = run or default_run
    if which("podman"):
        log("podman is already installed")
        return
    cmd = install_podman_command()
    log(f"installing: {shlex.join(cmd)}")
    if run(cmd) == 0:
        return
    log("apt-get install failed; updating the package lists and retrying")
    update = ["apt-get", "update", "-q"]
    for attempt in (update, cmd):
        code = run(attempt)
        if code != 0:
            raise CommandError(attempt, code, note="its output is above")


def export_lines(env: Mapping[str, str]) -> list[str]:
    """``export NAME=VALUE`` lines for a POSIX shell's ``eval``, in a stable order."""
    return [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]


def setup(socket_path: Path, repo: Path, env: Mapping[str, str] = os.environ) -> list[str]:
    """Start (or reuse) the API service on ``socket_path``; return the lines to export.

    ``MPI_PODMAN_SERVICE_PID`` is exported only when this call started the service.
    """
    conf = containers_conf(repo, env)
    if conf is None:
        print("engine: no containers.conf found (CONTAINERS_CONF or ../shared/); "
              "podman uses its defaults", file=sys.stderr)
    exported = engine_env(socket_path, conf)
    if ping(socket_path):
        print(f"engine: an API already answers on {socket_path}; reusing it", file=sys.stderr)
        return export_lines(exported)
    service_env = {**env, **({"CONTAINERS_CONF": str(conf)} if conf else {})}
    proc = start_podman_service(socket_path, service_env)
    print(f"engine: podman API service (pid {proc.pid}) answers on {socket_path}",
          file=sys.stderr)
    return export_lines({**exported, "MPI_PODMAN_SERVICE_PID": str(proc.pid)})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="apt-get install podman & co unless podman is present")
    start = commands.add_parser("setup", help="start the Docker-compatible API service")
    start.add_argument("--socket", type=Path, required=True, help="unix socket path to serve")
    start.add_argument("--repo", type=Path, default=Path.cwd(),
                       help="repository whose ../shared/containers.conf to use")
    stop = commands.add_parser("stop", help="stop a service started by setup")
    stop.add_argument("--pid", type=int, required=True)
    load_ = commands.add_parser("load", help="podman load image archives")
    load_.add_argument("archives", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(log=lambda m: print(f"engine: {m}", file=sys.stderr))
        elif args.command == "setup":
            print("\n".join(setup(args.socket, args.repo)))
        elif args.command == "stop":
            stopped = stop_podman_service(args.pid)
            print(f"engine: {'stopped' if stopped else 'no'} podman API service "
                  f"(pid {args.pid})", file=sys.stderr)
        else:
            env = podman_env(Path.cwd())
            for archive in args.archives:
                for reference in load(archive, env=env):
                    print(f"engine: loaded {reference} from {archive}", file=sys.stderr)
    except (EngineError, CommandError) as exc:
        print(f"engine: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
