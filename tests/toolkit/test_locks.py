"""Lock helpers: the resolver command line and the install stamp."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from toolkit import locks, venv

ROOT = Path(__file__).resolve().parents[2]


def test_runtime_lock_command():
    cmd = locks.compile_command(locks.RUNTIME)
    assert cmd[:4] == ["uv", "pip", "compile", "pyproject.toml"]
    assert "--generate-hashes" in cmd and "--universal" in cmd
    assert cmd[cmd.index("--output-file") + 1] == "requirements.lock"
    assert "--upgrade" not in cmd


def test_dev_lock_is_held_to_runtime_versions():
    cmd = locks.compile_command(locks.DEV, upgrade=True)
    assert cmd[cmd.index("--extra") + 1] == "dev"
    assert cmd[cmd.index("--constraint") + 1] == "requirements.lock"
    assert cmd[-1] == "--upgrade"


@pytest.mark.parametrize("lock", locks.ALL, ids=lambda lock: lock.output)
def test_every_pin_in_every_lock_carries_hashes(lock):
    text = (ROOT / lock.output).read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.strip())
    pins = [b for b in blocks if "==" in b.splitlines()[0]]
    assert pins
    for block in pins:
        assert "--hash=sha256:" in block, block.splitlines()[0]


def test_dev_lock_agrees_with_runtime_lock():
    def pins(name: str) -> dict[str, str]:
        found = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", (ROOT / name).read_text(), re.M)
        return {k.lower(): v for k, v in found}

    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert {k: dev.get(k) for k in runtime} == runtime


def test_digest_changes_with_content(tmp_path):
    a = tmp_path / "a.lock"
    a.write_text("x==1\n")
    first = locks.digest(a)
    a.write_text("x==2\n")
    assert locks.digest(a) != first


class FakeSession:
    def __init__(self, location: Path):
        self.virtualenv = type("V", (), {"location": str(location)})()
        self.installs: list[tuple[str, ...]] = []
        self.logs: list[str] = []

    def install(self, *args: str) -> None:
        self.installs.append(args)

    def log(self, message: str) -> None:
        self.logs.append(message)


def test_install_locked_runs_once_per_lock_content(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    (tmp_path / "r.lock").write_text("x==1 --hash=sha256:00\n")
    session = FakeSession(tmp_path / "venv")
    (tmp_path / "venv").mkdir()
    venv.install_locked(session, "r.lock")
    assert session.installs == [("--require-hashes", "--no-deps", "-r", "r.lock"),
                                ("--no-deps", "--no-build-isolation", "-e", ".")]
    venv.install_locked(session, "r.lock")
    assert len(session.installs) == 2 and session.logs
    (tmp_path / "r.lock").write_text("x==2 --hash=sha256:11\n")
    venv.install_locked(session, "r.lock")
    assert len(session.installs) == 4
