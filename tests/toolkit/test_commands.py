"""toolkit.commands: the one runner and its error, and the argv builders that feed it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from images import debian, runtime_image
from toolkit import commands, pexbuild
from toolkit.commands import CommandError

PY = sys.executable


def test_run_returns_the_completed_process_with_text_output():
    proc = commands.run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    assert proc.returncode == 0 and proc.stdout == "out\n" and proc.stderr == "err\n"


def test_run_passes_cwd_env_and_path_arguments(tmp_path: Path):
    proc = commands.run([PY, "-c", "import os; print(os.getcwd(), os.environ['ONLY'])"],
                        cwd=tmp_path, env={"ONLY": "this"})
    assert proc.stdout.split() == [str(tmp_path), "this"]
    assert commands.run([PY, "-c", "import sys; print(sys.argv[1])", tmp_path]).stdout.strip() \
        == str(tmp_path)


def test_a_failure_carries_argv_exit_code_and_output():
    argv = [PY, "-c", "import sys; print('partial'); sys.exit('no such thing')"]
    with pytest.raises(CommandError) as caught:
        commands.run(argv, note="as user nobody")
    error = caught.value
    assert error.argv == argv and error.returncode == 1
    assert error.stdout == "partial\n" and error.stderr == "no such thing\n"
    assert error.output == "no such thing\npartial"
    message = str(error)
    assert message.splitlines()[0].endswith("failed with exit code 1 (as user nobody):")
    assert "no such thing" in message and "partial" in message


def test_check_false_returns_the_failure():
    proc = commands.run([PY, "-c", "raise SystemExit(3)"], check=False)
    assert proc.returncode == 3


def test_a_command_that_cannot_start_has_no_exit_code(tmp_path: Path):
    with pytest.raises(CommandError, match="could not start") as caught:
        commands.run([str(tmp_path / "missing")])
    assert caught.value.returncode is None and caught.value.argv == [str(tmp_path / "missing")]


def test_a_command_past_its_timeout_is_killed_and_reported():
    with pytest.raises(CommandError, match=r"timed out after 0\.2 s") as caught:
        commands.run([PY, "-c", "import sys, time; print('begun', flush=True); time.sleep(30)"],
                     timeout=0.2)
    assert caught.value.returncode is None


def test_long_output_is_cut_in_the_message_but_kept_on_the_error():
    with pytest.raises(CommandError) as caught:
        commands.run([PY, "-c", "import sys; sys.stderr.write('x' * 10000 + 'END'); sys.exit(2)"])
    assert len(caught.value.stderr) == 10003
    assert len(str(caught.value)) < commands.OUTPUT_TAIL + 300
    assert str(caught.value).endswith("END")


def test_with_note_keeps_everything_and_adds_the_note():
    error = CommandError(["pg_ctl", "start"], 1, stderr="boom", note="as user postgres")
    noted = error.with_note("server log L, last lines:\nFATAL: could not bind")
    assert (noted.argv, noted.returncode, noted.stderr) == (["pg_ctl", "start"], 1, "boom")
    assert "as user postgres; server log L" in str(noted) and "could not bind" in str(noted)


# --------------------------------------------------------------------------- argv builders


def test_pex_build_commands(tmp_path: Path):
    layout = pexbuild.Layout.for_repo(tmp_path)
    downloads = pexbuild.download_commands(layout, python="py")
    assert len(downloads) == len(pexbuild.TARGETS) + 1
    for cmd in downloads:
        assert cmd[:4] == ["py", "-m", "pip", "download"]
        assert {"--no-deps", "--only-binary=:all:", "--require-hashes"} <= set(cmd)
        assert cmd[cmd.index("--dest") + 1] == str(layout.wheels)
    first = downloads[0]
    assert first[first.index("-r") + 1] == str(layout.repo / "requirements.lock")
    assert first[first.index("--abi") + 1] == pexbuild.TARGETS[0].abi
    assert downloads[-1][-1] == str(layout.repo / "requirements-build.lock")

    platforms = [tmp_path / "a.json", tmp_path / "b.json"]
    deps = pexbuild.deps_command(layout, platforms=platforms, output=tmp_path / "deps.pex",
                                 python="py")
    assert deps[:3] == ["py", "-m", "pex"] and "--no-pypi" in deps and "--no-build" in deps
    assert deps[deps.index("--find-links") + 1] == str(layout.wheels)
    assert [deps[i + 1] for i, a in enumerate(deps) if a == "--complete-platform"] == \
        [str(p) for p in platforms]
    final = pexbuild.pex_command(layout, deps=tmp_path / "deps.pex", stage=tmp_path / "stage",
                                 platforms=platforms, output=tmp_path / "mpi.pex", python="py")
    assert final[final.index("--pex-repository") + 1] == str(tmp_path / "deps.pex")
    assert final[final.index("--entry-point") + 1] == pexbuild.ENTRY_POINT
    assert final[final.index("--output-file") + 1] == str(tmp_path / "mpi.pex")
    assert "--inherit-path=false" in final and "--no-compile" in final


def test_pexbuild_run_returns_stdout_and_raises_the_shared_error():
    assert pexbuild.run([PY, "-c", "print('built')"]) == "built\n"
    with pytest.raises(CommandError):
        pexbuild.run([PY, "-c", "raise SystemExit(4)"])


def test_apt_commands():
    package = debian.Package("libc6", "2.36-9+deb12u9", "amd64", 1, "0" * 64, "http://x/y.deb")
    assert debian.show_command("libc6") == ["apt-cache", "show", "--no-all-versions", "libc6"]
    assert debian.uri_command("libc6", "2.36") == ["apt-get", "download", "--print-uris",
                                                   "libc6=2.36"]
    assert debian.download_command(package) == ["apt-get", "download", "-q",
                                                "libc6=2.36-9+deb12u9"]


def test_chroot_command_runs_with_exactly_the_fixed_environment(tmp_path: Path):
    cmd = runtime_image.chroot_command(tmp_path, "python3.11", "-V", extra_env={"PEX_TOOLS": "1"})
    assert cmd[:2] == ["env", "-i"]
    at = cmd.index("/usr/sbin/chroot")
    assert dict(a.split("=", 1) for a in cmd[2:at]) == {**runtime_image.CHROOT_ENV,
                                                         "PEX_TOOLS": "1"}
    assert cmd[at + 1:] == [str(tmp_path), "python3.11", "-V"]


def test_load_command_prefers_podman(tmp_path: Path):
    archive = tmp_path / "mpi-image.tar"
    found = {"podman": "/usr/bin/podman", "docker": "/usr/bin/docker"}
    assert runtime_image.load_command(archive, which=found.get) == [
        "podman", "load", "-i", str(archive)]
    assert runtime_image.load_command(archive, which={"docker": "/usr/bin/docker"}.get)[0] == \
        "docker"
    with pytest.raises(SystemExit, match="neither podman nor docker"):
        runtime_image.load_command(archive, which=lambda _name: None)
