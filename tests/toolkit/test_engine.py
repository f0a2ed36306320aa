"""toolkit.engine: settings, the podman runner and the API service, with a fake podman."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from toolkit import engine
from toolkit.commands import CommandError

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for podman: `system service unix://PATH` answers /_ping on PATH until
# SIGTERM (or fails, as FAKE_SERVICE says); every other command prints its arguments
# and exits with FAKE_EXIT, writing FAKE_STDERR to stderr.
FAKE_PODMAN = textwrap.dedent("""\
    #!{python}
    import http.server, os, signal, socketserver, sys, time
    args = sys.argv[1:]
    if args[:2] == ["system", "service"]:
        mode = os.environ.get("FAKE_SERVICE", "ok")
        print("fake service starting", mode, file=sys.stderr, flush=True)
        if mode == "exit":
            print("Error: boom", file=sys.stderr)
            sys.exit(125)
        if mode == "silent":
            time.sleep(60)
            sys.exit(0)

        class Ping(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def address_string(self):
                return "client"

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        server = Server(args[-1].removeprefix("unix://"), Ping)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        server.serve_forever()
    print(" ".join(args))
    sys.stderr.write(os.environ.get("FAKE_STDERR", ""))
    sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
""")


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH finds the fake podman first."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "podman"
    script.write_text(FAKE_PODMAN.format(python=sys.executable))
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}


# --------------------------------------------------------------------------- settings


def test_install_command_names_netavark_and_iptables_explicitly():
    cmd = engine.install_podman_command()
    assert cmd[:2] == ["apt-get", "install"] and "-y" in cmd
    assert "--no-install-recommends" in cmd
    assert cmd[-len(engine.PACKAGES):] == list(engine.PACKAGES)
    for name in ("podman", "runc", "netavark", "aardvark-dns", "iptables", "catatonit"):
        assert name in cmd


def test_containers_conf_from_the_shared_sibling(tmp_path):
    repo = tmp_path / "clone"
    repo.mkdir()
    assert engine.containers_conf(repo, env={}) is None
    (tmp_path / "shared").mkdir()
    conf = tmp_path / "shared" / "containers.conf"
    conf.write_text('[engine]\nruntime = "runc"\n')
    assert engine.containers_conf(repo, env={}) == conf.resolve()


def test_containers_conf_falls_back_to_the_repository_copy(tmp_path):
    repo = tmp_path / "clone"
    (repo / "toolkit").mkdir(parents=True)
    own = repo / "toolkit" / "containers.conf"
    own.write_text('[engine]\nruntime = "runc"\n')
    assert engine.containers_conf(repo, env={}) == own.resolve()
    shipped = engine.containers_conf(engine.ROOT if hasattr(engine, "ROOT") else
                                     Path(engine.__file__).resolve().parents[1], env={})
    assert shipped is not None and "runc" in shipped.read_text()


def test_containers_conf_variable_wins_and_must_exist(tmp_path):
    named = tmp_path / "mine.conf"
    named.write_text("")
    assert engine.containers_conf(tmp_path, env={"CONTAINERS_CONF": str(named)}) == named
    with pytest.raises(engine.EngineError, match="no such file"):
        engine.containers_conf(tmp_path, env={"CONTAINERS_CONF": str(tmp_path / "missing")})


def test_podman_env_adds_containers_conf(tmp_path):
    repo = tmp_path / "clone"
    repo.mkdir()
    assert "CONTAINERS_CONF" not in engine.podman_env(repo, {"PATH": "/usr/bin"})
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "containers.conf").write_text("")
    env = engine.podman_env(repo, {"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin",
                   "CONTAINERS_CONF": str(tmp_path / "shared" / "containers.conf")}


def test_engine_env_points_clients_at_the_socket(tmp_path):
    env = engine.engine_env(tmp_path / "podman.sock")
    assert env == {"DOCKER_HOST": f"unix://{tmp_path.resolve() / 'podman.sock'}",
                   "TESTCONTAINERS_RYUK_DISABLED": "true",
                   "TESTCONTAINERS_CONNECTION_MODE": "docker_host"}
    conf = tmp_path / "containers.conf"
    assert engine.engine_env("/run/p.sock", conf)["CONTAINERS_CONF"] == str(conf)


def test_export_lines_are_quoted_and_sorted():
    assert engine.export_lines({"B": "two words", "A": "x'y"}) == [
        "export A='x'\"'\"'y'", "export B='two words'"]


# --------------------------------------------------------------------------- podman runner


def test_podman_runs_with_the_given_environment(fake_env):
    proc = engine.podman("image", "ls", env=fake_env)
    assert proc.stdout.strip() == "image ls"


def test_podman_failure_names_command_exit_code_and_stderr(fake_env):
    env = {**fake_env, "FAKE_EXIT": "125", "FAKE_STDERR": "Error: no such image"}
    with pytest.raises(CommandError) as caught:
        engine.podman("run", "--rm", "missing:1", env=env)
    error = caught.value
    assert error.argv == ["podman", "run", "--rm", "missing:1"]
    assert error.returncode == 125 and "no such image" in error.stderr
    assert "podman run --rm missing:1" in str(error) and "exit code 125" in str(error)


def test_podman_missing_binary_is_a_command_error(tmp_path):
    with pytest.raises(CommandError, match="could not start") as caught:
        engine.podman("info", env={"PATH": str(tmp_path)})
    assert caught.value.returncode is None and caught.value.argv == ["podman", "info"]


def test_podman_unavailable_reasons(fake_env, tmp_path):
    assert engine.podman_unavailable({"PATH": str(tmp_path)}) == "podman is not installed"
    broken = {**fake_env, "FAKE_EXIT": "1", "FAKE_STDERR": "crun: cannot set limits"}
    reason = engine.podman_unavailable(broken)
    assert reason is not None and "does not work" in reason and "crun" in reason
    assert engine.podman_unavailable(fake_env) is None


def test_image_exists_maps_exit_codes(fake_env):
    assert engine.image_exists("mpi:0.1.0", env=fake_env) is True
    assert engine.image_exists("mpi:0.1.0", env={**fake_env, "FAKE_EXIT": "1"}) is False
    with pytest.raises(CommandError, match="exit code 125"):
        engine.image_exists("mpi:0.1.0", env={**fake_env, "FAKE_EXIT": "125"})


def test_load_returns_the_loaded_references(tmp_path, monkeypatch):
    outputs = iter(["Getting image source signatures\nLoaded image: localhost/mpi:0.1.0\n",
                    "Loaded image(s): localhost/a:1,localhost/b:2\n"])

    def fake(*args, **kwargs):
        assert args[:2] == ("load", "-i")
        return subprocess.CompletedProcess(["podman", *args], 0, next(outputs), "")

    monkeypatch.setattr(engine, "podman", fake)
    assert engine.load(tmp_path / "image.tar") == ["localhost/mpi:0.1.0"]
    assert engine.load(tmp_path / "image.tar") == ["localhost/a:1", "localhost/b:2"]


# --------------------------------------------------------------------------- API service


def test_ping(serve_unix, tmp_path):
    assert engine.ping(serve_unix()) is True
    assert engine.ping(serve_unix(status=500, body=b"no")) is False
    assert engine.ping(tmp_path / "nothing.sock") is False


def test_start_and_stop_the_service(fake_env, tmp_path):
    sock = tmp_path / "run" / "podman.sock"
    proc = engine.start_podman_service(sock, fake_env)
    try:
        assert engine.ping(sock)
        assert "fake service starting ok" in (tmp_path / "run" / "podman.sock.log").read_text()
    finally:
        assert engine.stop_podman_service(proc.pid) is True
    assert proc.wait(timeout=5) == 0
    assert engine.stop_podman_service(proc.pid) is False  # gone: nothing to stop


def test_a_service_that_exits_reports_its_log(fake_env, tmp_path):
    with pytest.raises(CommandError, match=r"exited with code 125[\s\S]*boom") as caught:
        engine.start_podman_service(tmp_path / "p.sock", {**fake_env, "FAKE_SERVICE": "exit"})
    assert caught.value.returncode == 125
    assert caught.value.argv == engine.service_command(tmp_path / "p.sock")


def test_a_service_that_never_answers_is_stopped(fake_env, tmp_path):
    started = time.monotonic()
    with pytest.raises(CommandError, match=r"did not answer /_ping within 0\.5 s") as caught:
        engine.start_podman_service(tmp_path / "p.sock", {**fake_env, "FAKE_SERVICE": "silent"},
                                    timeout=0.5)
    assert time.monotonic() - started < 10
    assert "fake service starting silent" in str(caught.value)


def test_stop_leaves_other_processes_alone():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert engine.stop_podman_service(sleeper.pid) is False
        assert sleeper.poll() is None
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()


def test_setup_starts_once_then_reuses(fake_env, tmp_path, capsys):
    repo = tmp_path / "clone"
    repo.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "containers.conf").write_text("")
    sock = tmp_path / "podman.sock"
    env = {k: v for k, v in fake_env.items() if k != "CONTAINERS_CONF"}
    lines = engine.setup(sock, repo, env)
    exported = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    pid = int(exported.pop("MPI_PODMAN_SERVICE_PID"))
    try:
        assert exported == {
            "CONTAINERS_CONF": str(tmp_path / "shared" / "containers.conf"),
            "DOCKER_HOST": f"unix://{sock}",
            "TESTCONTAINERS_CONNECTION_MODE": "docker_host",
            "TESTCONTAINERS_RYUK_DISABLED": "true",
        }
        again = engine.setup(sock, repo, env)
        assert not any("MPI_PODMAN_SERVICE_PID" in line for line in again)
        assert "reusing it" in capsys.readouterr().err
    finally:
        assert engine.stop_podman_service(pid)


def test_install_only_when_podman_is_missing():
    calls: list[list[str]] = []

    def run(cmd: list[str]) -> int:
        calls.append(cmd)
        return 0

    engine.install(run=run, which=lambda _name: "/usr/bin/podman", log=lambda _m: None)
    assert calls == []
    engine.install(run=run, which=lambda _name: None, log=lambda _m: None)
    assert calls == [engine.install_podman_command()]


def test_install_updates_package_lists_once_on_failure():
    calls: list[list[str]] = []
    results = iter([100, 0, 0])

    def run(cmd: list[str]) -> int:
        calls.append(cmd)
        return next(results)

    engine.install(run=run, which=lambda _name: None, log=lambda _m: None)
    assert calls == [engine.install_podman_command(), ["apt-get", "update", "-q"],
                     engine.install_podman_command()]
    with pytest.raises(CommandError, match="exit code 100") as caught:
        engine.install(run=lambda _cmd: 100 if _cmd[1] == "install" else 0,
                       which=lambda _name: None, log=lambda _m: None)
    assert caught.value.argv == engine.install_podman_command()


def test_argv_builders():
    assert engine.podman_command("load", "-i", "x.tar") == ["podman", "load", "-i", "x.tar"]
    assert engine.service_command(Path("/run/p.sock")) == [
        "podman", "system", "service", "--time=0", "unix:///run/p.sock"]
    install = engine.install_podman_command()
    assert install[:5] == ["apt-get", "install", "-y", "-q", "--no-install-recommends"]
    assert {"podman", "runc", "netavark", "iptables"} <= set(install[5:])


# --------------------------------------------------------------------------- module


def test_cli_stop_refuses_a_foreign_pid(capsys):
    assert engine.main(["stop", "--pid", str(os.getpid())]) == 0
    assert "no podman API service" in capsys.readouterr().err


def test_importable_from_the_standard_library_alone_without_side_effects():
    # .ci/run calls it with the machine's python3, before any venv exists (-S: no site-packages).
    proc = subprocess.run([sys.executable, "-S", "-c", "import toolkit.engine"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
