"""The variables the code reads, the env templates and DEPLOY.md's reference are one set."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mpi import config

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = sorted((ROOT / "envs").glob("*.env"))


def _template_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=", line)
        if match:
            name = match[1]
            # NAME_FILE reads NAME from a file, unless NAME_FILE is itself a setting
            # (TLS_CERT_FILE, AUTH_JWKS_FILE: paths by name).
            names.add(name if name in config.ENV_NAMES else name.removesuffix("_FILE"))
    return names


def _deploy_reference() -> set[str]:
    text = (ROOT / "DEPLOY.md").read_text()
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, flags=re.MULTILINE))


def test_there_are_templates():
    assert {p.name for p in TEMPLATES} >= {"development.env", "production.env"}


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_lists_exactly_the_variables_read(template):
    assert _template_names(template) == set(config.ENV_NAMES)


def test_deploy_reference_lists_exactly_the_variables_read():
    assert _deploy_reference() == set(config.ENV_NAMES)


def test_code_reads_no_variable_outside_the_settings():
    """No os.environ / getenv look-ups of names that are not declared settings."""
    pattern = re.compile(r"""(?:environ(?:\.get)?\(|environ\[|getenv\()\s*["']([A-Z_]+)["']""")
    found = set()
    for path in (ROOT / "app" / "mpi").rglob("*.py"):
        found.update(pattern.findall(path.read_text()))
    assert found <= set(config.ENV_NAMES)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_config_check_accepts_the_template(template):
    result = subprocess.run([sys.executable, "-m", "mpi", "config", "check", "--env-file",
                             str(template)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "change-me" not in result.stdout  # the password is masked
