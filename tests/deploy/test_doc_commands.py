"""Every command in DEPLOY.md and BUILD.md is run, mapped, or explained.

The commands are the lines of the documents' code blocks (fenced ```sh blocks and
indented blocks; ``# comments`` and blank lines dropped, ``\\`` continuations joined).
Each must appear in exactly one of the tables below:

``RUN``
    run by a test in this file, where that is safe and quick (temporary directories, a
    free port, the session's throwaway PostgreSQL). The value names the test.
``MAPPED``
    exercised elsewhere: by a named test (``tests/...py::test_name``, which must exist)
    or by a step of ``.ci/run`` (``ci: <the exact line>``, which must be there).
``NOT_RUNNABLE``
    cannot run on a build machine (it needs a Kubernetes cluster, a Docker engine,
    systemd as PID 1, or changes this host's users and /etc); the reason is given, and
    where a test validates what the command consumes, it is named (and must exist).

A command added to the documents without an entry fails
``test_every_command_is_accounted_for``; so does an entry whose command left them.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from mpi import cli, config
from tests.helpers import free_port, http_json, patient

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("DEPLOY.md", "BUILD.md")
CI_SCRIPT = ROOT / ".ci" / "run"
COMMAND_LANGUAGES = {"", "sh", "bash", "shell", "console"}
OTHER_LANGUAGES = {"text", "json", "yaml", "ini", "nginx", "systemd", "python"}

# --------------------------------------------------------------------------- the tables

RUN: dict[str, str] = {
    # DEPLOY.md
    'curl -s localhost:8080/fhir/metadata':
        "test_fhir_curl_examples",
    "curl -s -X POST localhost:8080/fhir/Patient -H 'Content-Type: application/fhir+j"
    "son' -H 'If-None-Exist: identifier=urn:mpi:source:ehr|A-1' --data @patient.json":
        "test_fhir_curl_examples",
    "curl -s 'localhost:8080/fhir/Patient?identifier=urn:mpi:source:ehr|A-1'":
        "test_fhir_curl_examples",
    "curl -s 'localhost:8080/fhir/Patient?family=smi&birthdate=ge1980&_count=20'":
        "test_fhir_curl_examples",
    "curl -s -X POST localhost:8080/fhir/Patient/_search -d 'family=smith&gender=male"
    "'":
        "test_fhir_curl_examples",
    "curl -s -X PUT 'localhost:8080/fhir/Patient?identifier=urn:mpi:source:ehr|A-1' -"
    "H 'Content-Type: application/fhir+json' --data @patient.json":
        "test_fhir_curl_examples",
    'curl -s "localhost:8080/fhir/Patient/$(curl -s \'localhost:8080/fhir/Patient?iden'
    "tifier=urn:mpi:source:ehr|A-1' | python3 -c 'import json, sys; print(json.load(s"
    'ys.stdin)["entry"][0]["resource"]["id"])\')/_history"':
        "test_fhir_curl_examples",
    "curl -s -X POST 'localhost:8080/fhir/Patient/$match' -H 'Content-Type: applicati"
    "on/fhir+json' --data @match.json":
        "test_fhir_curl_examples",
    "curl -s 'localhost:8080/fhir/Patient/$ihe-pix?sourceIdentifier=urn:oid:2.16.840."
    "1.113883.4.1|123-45-6789'":
        "test_fhir_curl_examples",
    "curl -s -H 'Accept: application/fhir+xml' 'localhost:8080/fhir/Patient?family=sm"
    "ith'":
        "test_fhir_curl_examples",
    "curl -s -X DELETE 'localhost:8080/fhir/Patient?identifier=urn:mpi:source:ehr|A-1"
    "'":
        "test_fhir_curl_examples",
    "mpi config check --env-file envs/production.env": "test_config_and_version_commands",
    "mpi config check": "test_config_and_version_commands",
    "mpi version": "test_config_and_version_commands",
    "mpi migrate --status": "test_migration_commands",
    "mpi migrate --status --check": "test_migration_commands",
    "mpi migrate": "test_migration_commands",
    "mpi token create --name lab-system --scopes system/Patient.crus --sources lab":
        "test_token_commands",
    "mpi token list": "test_token_commands",
    "mpi token create --name prometheus --scopes mpi:metrics": "test_token_commands",
    "mpi token revoke lab-system": "test_token_commands",
    "mpi serve": "test_serve_probe_backup_and_restore_on_sqlite",
    "mpi healthcheck": "test_serve_probe_backup_and_restore_on_sqlite",
    "mpi healthcheck --ready": "test_serve_probe_backup_and_restore_on_sqlite",
    "mpi healthcheck --ready --timeout 5": "test_serve_probe_backup_and_restore_on_sqlite",
    "curl -s localhost:8080/api/v1/health/ready": "test_serve_probe_backup_and_restore_on_sqlite",
    "sqlite3 data/mpi.db \".backup 'mpi-backup.db'\"":
        "test_serve_probe_backup_and_restore_on_sqlite",
    "python3 -c 'import sqlite3, sys; src = sqlite3.connect(sys.argv[1]); dst = "
    "sqlite3.connect(sys.argv[2]); src.backup(dst); dst.close(); src.close()' data/mpi.db "
    "mpi-backup.db": "test_serve_probe_backup_and_restore_on_sqlite",
    "sqlite3 mpi-backup.db 'PRAGMA integrity_check'":
        "test_serve_probe_backup_and_restore_on_sqlite",
    "cp mpi-backup.db data/mpi.db && rm -f data/mpi.db-wal data/mpi.db-shm":
        "test_serve_probe_backup_and_restore_on_sqlite",
    "mkdir -m 0700 compose/secrets": "test_compose_secret_commands",
    "python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "
    "compose/secrets/postgres-password": "test_compose_secret_commands",
    "printf 'postgresql://mpi:%s@db:5432/mpi\\n' \"$(cat compose/secrets/postgres-password)\" > "
    "compose/secrets/mpi-database-url": "test_compose_secret_commands",
    "chmod 0644 compose/secrets/postgres-password compose/secrets/mpi-database-url":
        "test_compose_secret_commands",
    "pg_dump --format=custom --file=mpi.dump mpi": "test_postgresql_backup_and_restore",
    "pg_restore --list mpi.dump": "test_postgresql_backup_and_restore",
    "createdb --owner=mpi mpi_restored": "test_postgresql_backup_and_restore",
    "pg_restore --exit-on-error --no-owner --dbname=mpi_restored mpi.dump":
        "test_postgresql_backup_and_restore",
    "psql --dbname=mpi_restored --command='SELECT version, name FROM schema_migration'":
        "test_postgresql_backup_and_restore",
    "psql --command='SHOW max_connections'": "test_postgresql_backup_and_restore",
    "psql --command=\"SELECT application_name, state, count(*) FROM pg_stat_activity WHERE "
    "datname = 'mpi' GROUP BY 1, 2\"": "test_postgresql_backup_and_restore",
    "kubectl kustomize deploy/kubernetes": "test_kustomize_renders_every_manifest",
    'mpi domain add urn:oid:1.2.840.114350.1.13.99.2 --name "St Mary\'s MRN" --sources '
    "st-marys --namespace STMARYS": "test_hl7_examples",
    "mpi hl7 sender add st-marys-adt --application ADT1 --facility STMARYS --sources "
    "st-marys": "test_hl7_examples",
    "mpi hl7 sender list": "test_hl7_examples",
    "mllp_send --loose --file adt-a01.hl7 --port 2575 localhost": "test_hl7_examples",
    "mllp_send --loose --file pix-query.hl7 --port 2575 localhost": "test_hl7_examples",
    # BUILD.md
    "nox -l": "test_nox_lists_the_sessions",
    "skopeo inspect oci-archive:dist/mpi-image.tar": "test_skopeo_reads_the_image_archive",
}

COMPOSE_TEST = "tests/deploy/test_compose.py"
CONTAINER_TEST = "tests/images/test_containers.py"
IMAGE_LOAD_STEP = "ci: python3 -m nox -s image -- --load"

IDENTITY_CLI = "tests/commands/test_registry.py"
MAPPED: dict[str, tuple[str, str]] = {
    "mpi reindex": (
        "tests/commands/test_search.py::test_reindex_builds_beside_and_swaps",
        "the same command on a registry: a new generation is built beside the current one "
        "and readers switch to it"),
    # DEPLOY.md, enterprise identity: run verbatim on a small registry
    "mpi import patients.csv --source lab-system": (

        f"{IDENTITY_CLI}::test_import_and_export",
        "imported, then re-run to show it is idempotent"),
    "mpi import legacy.csv --source legacy --map given_name=first,family_name=surname": (

        f"{IDENTITY_CLI}::test_import_and_export",
        "a mapped layout with bad values: dropped and reported, a record with nothing "
        "left rejected (exit 1)"),
    "mpi rekey": (

        f"{IDENTITY_CLI}::test_import_and_export",
        "run on the imported registry: every record checked, none needed new keys"),
    "mpi relink --dry-run --sample 20": (
        f"{IDENTITY_CLI}::test_relink_merges_fragments_stored_before_auto_merge",
        "a dry run on a registry holding two fragments of one man: reported, nothing "
        "written"),
    "mpi relink": (
        f"{IDENTITY_CLI}::test_relink_merges_fragments_stored_before_auto_merge",
        "the real run merges them; a second run finds nothing to change"),
    "mpi export --clusters clusters.csv": (

        f"{IDENTITY_CLI}::test_import_and_export",
        "clusters checked against the registry"),
    "mpi train --output model.json": (

        f"{IDENTITY_CLI}::test_train_from_the_database_and_from_a_file",
        "from the database"),
    "mpi train --from-csv patients.csv --output model.json": (

        f"{IDENTITY_CLI}::test_train_from_the_database_and_from_a_file",
        "from a CSV"),
    "mpi dedupe patients.csv --output clusters.csv": (

        f"{IDENTITY_CLI}::test_offline_dedupe_link_and_blocking_report",
        "clusters checked"),
    "mpi link patients.csv lab.csv --output pairs.csv": (

        f"{IDENTITY_CLI}::test_offline_dedupe_link_and_blocking_report",
        "pairs checked"),
    "mpi blocking report patients.csv --labels person": (

        f"{IDENTITY_CLI}::test_offline_dedupe_link_and_blocking_report",
        "pair completeness printed"),
    # DEPLOY.md
    "pip install nox && nox -s serve": (
        "tests/integration/test_serve.py::test_lifecycle_over_http",
        "`nox -s serve` runs `mpi serve` from source on the default SQLite file; the test "
        "runs exactly that and drives it over HTTP (nox itself is installed by CI from the "
        "hash-pinned tools lock, not from PyPI)"),
    "nox -s image -- --load": (IMAGE_LOAD_STEP, "CI builds and loads the image"),
    "podman load -i dist/mpi-image.tar": (
        IMAGE_LOAD_STEP, "--load runs `podman load -i dist/mpi-image.tar`"),
    "python -m images.postgres_image": (
        "ci: python3 -m images.postgres_image", "CI builds the PostgreSQL image"),
    "podman load -i dist/postgres-image.tar": (
        "ci: python3 -m toolkit.engine load dist/postgres-image.tar",
        "toolkit.engine.load runs `podman load -i` on the archive"),
    "podman run -d --name mpi --read-only --tmpfs /tmp --cap-drop ALL -p "
    "127.0.0.1:8080:8080 -v mpi-data:/data mpi:0.1.0": (
        f"{CONTAINER_TEST}::test_hardened_container_on_a_sqlite_volume",
        "the same options (read-only, tmpfs /tmp, no capabilities, published on 127.0.0.1, "
        "a named volume on /data), then a patient written, read back and kept across a restart"),
    "docker compose -f compose/docker-compose.yml up -d": (
        f"{COMPOSE_TEST}::test_development_stack_serves_patients",
        "brought up with podman-compose (staged, as compose/README.md says for podman 4.3)"),
    "docker compose -f compose/docker-compose.prod.yml up -d": (
        f"{COMPOSE_TEST}::test_production_stack_runs_hardened_replicas",
        "brought up with podman-compose with secret files written as DEPLOY.md says"),
    "docker compose -f compose/docker-compose.prod.yml up -d --scale mpi=4": (
        f"{COMPOSE_TEST}::test_production_stack_runs_hardened_replicas",
        "the test scales with `up -d --scale mpi=2` and checks every replica"),
    "systemd-analyze security mpi.service": (
        "tests/deploy/test_systemd.py::test_systemd_analyze_security",
        "run offline on the unit file (--offline=yes): there is no systemd here"),
    "nox -s test": ("ci: python3 -m nox -s test", "the README's and CI's test command"),
    "nox -s test -- -q tests/deploy tests/test_env_templates.py": (
        "ci: python3 -m nox -s test", "CI runs the whole suite, a superset"),
    # BUILD.md
    "python3 dist/mpi.pex serve": (
        "tests/build/test_bare_host.py::test_pex_serves_the_api_on_sqlite",
        "the built PEX serves the API in a chroot holding only Debian's CPython"),
    "pip install --require-hashes -r requirements-tools.lock": (
        "ci: python3 -m pip install -q --require-hashes --no-deps -r requirements-tools.lock",
        "CI installs the tools lock the same way (quietly, and --no-deps: the lock is complete)"),
    "python3 dist/mpi.pex version": (
        "tests/build/test_pex.py::test_version_names_the_commit", ""),
    "git clone <repo> a && git clone <repo> b": (
        "tests/build/test_pex.py::test_two_builds_of_one_commit_are_byte_identical",
        "tests/pexbuilds.py clones the repository twice"),
    "(cd a && nox -s build) && (cd b && nox -s build)": (
        "tests/build/test_pex.py::test_two_builds_of_one_commit_are_byte_identical",
        "builds in each clone with toolkit.pexbuild, what `nox -s build` runs"),
    "cmp a/dist/mpi.pex b/dist/mpi.pex && cat a/dist/mpi.pex.sha256": (
        "tests/build/test_pex.py::test_two_builds_of_one_commit_are_byte_identical",
        "byte-for-byte comparison; the .sha256 file by test_sha256_file_names_the_pex"),
}

NO_CLUSTER = "needs a Kubernetes cluster"
NO_SYSTEMD = "needs systemd as PID 1 (the build machines are containers without it)"
HOST_CHANGE = "changes this host's users, /etc, /opt or systemd units"
NO_DOCKER = "needs Docker (the build machines have podman only) and images from Docker Hub"
K8S_TEST = "tests/deploy/test_kubernetes.py"
SYSTEMD_TEST = "tests/deploy/test_systemd.py"

NOT_RUNNABLE: dict[str, tuple[str, str | None]] = {
    # DEPLOY.md
    "docker compose -f compose/docker-compose.yml --profile tools up -d pgadmin": (
        "pgAdmin's image comes from Docker Hub, which the build machines cannot reach",
        f"{COMPOSE_TEST}::test_files_are_complete_stacks"),
    "docker compose -f compose/docker-compose.yml --profile monitoring up -d": (
        "the Prometheus and Grafana images come from Docker Hub, which the build machines "
        "cannot reach", "tests/deploy/test_monitoring.py::"
        "test_every_query_names_metrics_the_service_exposes"),
    "systemd-sysusers deploy/systemd/mpi.sysusers.conf": (
        HOST_CHANGE, f"{SYSTEMD_TEST}::test_sysusers_creates_the_user"),
    "install -D -m 0644 dist/mpi.pex /opt/mpi/mpi.pex": (
        HOST_CHANGE, f"{SYSTEMD_TEST}::test_runs_the_pex_as_user_mpi"),
    "install -D -m 0640 -g mpi deploy/systemd/mpi.env.example /etc/mpi/mpi.env": (
        HOST_CHANGE, f"{SYSTEMD_TEST}::test_config_check_accepts_the_env_example"),
    "install -D -m 0600 /dev/stdin /etc/mpi/database-url <<< "
    "'postgresql://mpi:CHANGE-ME@db.internal:5432/mpi?sslmode=verify-full'": (
        HOST_CHANGE, f"{SYSTEMD_TEST}::test_database_url_is_a_credential"),
    "install -m 0644 deploy/systemd/mpi.service /etc/systemd/system/": (
        HOST_CHANGE, f"{SYSTEMD_TEST}::test_systemd_analyze_verify"),
    "systemctl daemon-reload && systemctl enable --now mpi": (
        NO_SYSTEMD, f"{SYSTEMD_TEST}::test_systemd_analyze_verify"),
    "systemd-run -P --wait -p User=mpi -p EnvironmentFile=/etc/mpi/mpi.env -p "
    "LoadCredential=database-url:/etc/mpi/database-url -p "
    "'Environment=DATABASE_URL_FILE=%d/database-url' /usr/bin/python3 /opt/mpi/mpi.pex "
    "config check": (
        NO_SYSTEMD + "; the same env file and credential go through `mpi config check` in",
        f"{SYSTEMD_TEST}::test_config_check_accepts_the_env_example"),
    "install -m 0644 dist/mpi.pex /opt/mpi/mpi.pex && systemctl restart mpi": (
        NO_SYSTEMD, f"{SYSTEMD_TEST}::test_migrates_before_serving"),
    "kubectl apply -f deploy/kubernetes/namespace.yaml": (
        NO_CLUSTER, f"{K8S_TEST}::test_namespace_enforces_restricted_pod_security"),
    "kubectl -n mpi create secret generic mpi-database "
    "--from-literal=database-url='postgresql://mpi:CHANGE-ME@db.internal:5432/mpi?"
    "sslmode=verify-full'": (
        NO_CLUSTER, f"{K8S_TEST}::test_database_url_comes_from_the_mounted_secret"),
    "kubectl apply -k deploy/kubernetes": (
        NO_CLUSTER, f"{K8S_TEST}::test_manifest_matches_the_kubernetes_schema"),
    "kubectl -n mpi wait --for=condition=complete job/mpi-migrate-0-1-0 --timeout=15m": (
        NO_CLUSTER, f"{K8S_TEST}::test_job_and_deployment_run_the_same_image"),
    "kubectl -n mpi rollout status deployment/mpi": (
        NO_CLUSTER, f"{K8S_TEST}::test_deployment_shape"),
    "kubectl -n mpi scale deployment/mpi --replicas=4": (
        NO_CLUSTER, f"{K8S_TEST}::test_service_and_pdb"),
    "kubectl -n mpi logs -f deployment/mpi": (NO_CLUSTER, None),
    "journalctl -u mpi -f": (NO_SYSTEMD, None),
    "docker compose -f compose/docker-compose.prod.yml logs --follow mpi": (NO_DOCKER, None),
    "docker compose -f compose/docker-compose.prod.yml restart proxy": (
        NO_DOCKER + " (nginx); the proxy's configuration is run by nginx itself in",
        "tests/deploy/test_nginx.py::test_nginx_proxies_to_the_service"),
    # BUILD.md
    "pip install nox": (
        "installs an unpinned nox from PyPI; CI installs the hash-pinned one instead",
        "ci: python3 -m pip install -q --require-hashes --no-deps -r requirements-tools.lock"),
    "./dist/mpi.pex serve": (
        "needs dist/mpi.pex (minutes to build); the tests run the PEX with an explicit "
        "interpreter only, so its --sh-boot launcher is not exercised; the same PEX's "
        "`serve` runs in", "tests/build/test_bare_host.py::test_pex_serves_the_api_on_sqlite"),
    "docker load -i dist/mpi-image.tar": (
        "no Docker engine here; the archive's Docker manifest.json is checked in",
        "tests/images/test_oci.py::test_archive_is_an_oci_layout_and_a_docker_archive"),
}

# Documented ahead of the sub-command (built on another branch): command -> sub-command.

# --------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    language: str
    text: str


_FENCE = re.compile(r"^ {0,3}(```+|~~~+)\s*([\w+-]*)")
_LIST_ITEM = re.compile(r"^ {0,3}([-*+]|\d+[.)])\s")
_COMMENT = re.compile(r"(^|\s)#(\s.*)?$")
_ALTERNATIVE = re.compile(r"\s*#\s*or:?\s+(\S.*)$")


def _logical_lines(lines: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Join ``\\`` continuations; drop blank lines and comments, except that an
    alternative offered in a comment (``cmd   # or: other cmd``) is a command too."""
    pending: tuple[int, str] | None = None
    for number, raw in lines:
        text = raw.rstrip()
        if pending is not None:
            number, text = pending[0], pending[1] + " " + text.strip()
            pending = None
        if text.endswith("\\"):
            pending = (number, text[:-1].rstrip())
            continue
        comment = _COMMENT.search(text)
        alternative = _ALTERNATIVE.match(comment.group(0)) if comment else None
        text = _COMMENT.sub("", text).strip()
        if text:
            yield number, " ".join(text.split())
        if alternative:
            yield number, " ".join(alternative[1].split())
    if pending is not None:
        yield pending


def extract(text: str, doc: str = "<doc>") -> list[Command]:
    """The commands of a Markdown document's code blocks (CommonMark's rules, simplified:
    no code blocks nested in list items, which these documents do not use)."""
    found: list[Command] = []
    lines = text.splitlines()
    i, in_list, previous_blank = 0, False, True
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            marker, language = fence[1], fence[2].lower()
            block: list[tuple[int, str]] = []
            start = i + 1
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith(marker):
                block.append((i + 1, lines[i]))
                i += 1
            i += 1  # the closing fence
            if language in COMMAND_LANGUAGES:
                found.extend(Command(doc, n, language, t) for n, t in _logical_lines(block))
            elif language not in OTHER_LANGUAGES:
                found.append(Command(doc, start, language, f"<unknown fence language "
                                                          f"{language!r}>"))
            previous_blank, in_list = False, False
            continue
        if (line.startswith("    ") and line.strip() and previous_blank and not in_list):
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append((i + 1, lines[i][4:]))
                i += 1
            found.extend(Command(doc, n, "indented", t) for n, t in _logical_lines(block))
            previous_blank = False
            continue
        if line.strip():
            if _LIST_ITEM.match(line):
                in_list = True
            elif not line.startswith(" "):
                in_list = False
        previous_blank = not line.strip()
        i += 1
    return found


def doc_commands() -> list[Command]:
    return [c for doc in DOCS for c in extract((ROOT / doc).read_text(encoding="utf-8"), doc)]


DOC_COMMANDS = {c.text for c in doc_commands()}


def test_extractor_follows_markdown():
    sample = "\n".join([
        "Intro:", "", "    pip install nox          # or: pip install other", "    nox -l",
        "", "- a list item", "", "    a list paragraph, not code", "",
        "1. step", "   continued", "", "Paragraph.", "",
        "```sh", "# a comment", "mpi migrate \\", "    --status", "", "mpi version", "```",
        "", "```json", "{\"not\": \"a command\"}", "```", "",
        "Inline `mpi serve` is prose.", "",
    ])
    assert [c.text for c in extract(sample)] == [
        "pip install nox", "pip install other", "nox -l", "mpi migrate --status", "mpi version"]
    unknown = extract("```bogus\nrm -rf /\n```\n")
    assert [c.language for c in unknown] == ["bogus"]


def test_the_documents_have_commands():
    commands = doc_commands()
    assert not [c for c in commands if c.text.startswith("<unknown fence")], (
        f"code blocks must be ```sh (commands) or one of {sorted(OTHER_LANGUAGES)}")
    per_doc = {doc: sum(c.doc == doc for c in commands) for doc in DOCS}
    assert per_doc["DEPLOY.md"] >= 40 and per_doc["BUILD.md"] >= 8, per_doc


def test_every_command_is_accounted_for():
    tables = {"RUN": set(RUN), "MAPPED": set(MAPPED), "NOT_RUNNABLE": set(NOT_RUNNABLE)}
    problems = []
    for command in doc_commands():
        homes = [name for name, table in tables.items() if command.text in table]
        if not homes:
            problems.append(f"{command.doc}:{command.line}: no entry in RUN, MAPPED, "
                            f"NOT_RUNNABLE: {command.text!r}")
        elif len(homes) > 1:
            problems.append(f"{command.doc}:{command.line}: in several tables {homes}: "
                            f"{command.text!r}")
    for name, table in tables.items():
        for text in sorted(table - DOC_COMMANDS):
            problems.append(f"{name} lists a command no longer in {' or '.join(DOCS)}: {text!r}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- mapped targets


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def _ci_lines() -> set[str]:
    return {line.strip() for line in CI_SCRIPT.read_text(encoding="utf-8").splitlines()}


def _check_target(target: str) -> str | None:
    """None when ``target`` exists, else what is wrong."""
    if target.startswith("ci: "):
        step = target.removeprefix("ci: ")
        return None if step in _ci_lines() else f".ci/run has no line {step!r}"
    path, sep, name = target.partition("::")
    if not sep or not (ROOT / path).is_file():
        return f"no test file {path!r}"
    return None if name in _test_functions(ROOT / path) else f"{path} has no {name}()"


def test_mapped_and_validating_targets_exist():
    targets = [target for target, _ in MAPPED.values()]
    targets += [target for _, target in NOT_RUNNABLE.values() if target]
    problems = sorted({p for t in targets if (p := _check_target(t))})
    assert not problems, "\n".join(problems)
    assert all(reason for reason, _ in NOT_RUNNABLE.values())


def test_run_entries_name_tests_of_this_file():
    mine = _test_functions(Path(__file__))
    assert not {name for name in RUN.values() if name not in mine}


def _sub_commands() -> set[str]:
    parser = cli.build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


# --------------------------------------------------------------------------- running them


def _clean_environment() -> dict[str, str]:
    """This process's environment without any setting, setting file or libpq variable."""
    names = set(config.ENV_NAMES) | {f"{n}_FILE" for n in config.ENV_NAMES}
    env = {k: v for k, v in os.environ.items()
           if k not in names and not k.startswith("PG")}
    # The test's interpreter, its console scripts (`mpi`, `python3`) first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["LOG_FORMAT"] = "text"
    return env


@dataclass
class Shell:
    """Runs documented commands (under bash, as an operator would type them)."""

    test: str
    cwd: Path
    env: dict[str, str] = field(default_factory=_clean_environment)
    ran: set[str] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)

    def _check(self, command: str) -> None:
        assert command in DOC_COMMANDS, f"not a documented command: {command!r}"
        assert RUN.get(command) == self.test, (
            f"RUN maps {command!r} to {RUN.get(command)}, not {self.test}")

    def available(self, command: str) -> bool:
        tool = command.split()[0].lstrip("(")
        if shutil.which(tool, path=self.env["PATH"]):
            return True
        self.skipped[command] = f"{tool} is not installed"
        warnings.warn(f"DOCUMENTED COMMAND NOT RUN: {command!r}: {tool} is not installed",
                      stacklevel=3)
        return False

    def run(self, command: str, *, expect: int = 0, replace: dict[str, str] | None = None,
            timeout: float = 120) -> str | None:
        """Run ``command`` (with ``replace`` applied); return stdout, None if skipped."""
        self._check(command)
        if not self.available(command):
            return None
        actual = command
        for old, new in (replace or {}).items():
            assert old in actual, (old, actual)
            actual = actual.replace(old, new)
        proc = subprocess.run(["bash", "-c", actual], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert proc.returncode == expect, (
            f"{actual!r} exited {proc.returncode}, expected {expect}:\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        self.ran.add(command)
        return proc.stdout

    def start(self, command: str) -> subprocess.Popen[bytes]:
        self._check(command)
        self.ran.add(command)
        log = (self.cwd / "server.log").open("wb")
        return subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.cwd, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)

    def done(self) -> None:
        """Every command RUN assigns to this test was run (or its tool was missing)."""
        expected = {c for c, t in RUN.items() if t == self.test}
        missing = expected - self.ran - set(self.skipped)
        assert not missing, f"{self.test} did not run {sorted(missing)}"


@pytest.fixture
def shell(request: pytest.FixtureRequest, tmp_path: Path) -> Shell:
    return Shell(request.node.originalname, tmp_path)


def test_config_and_version_commands(shell: Shell):
    shell.cwd = ROOT  # the command names envs/production.env relative to the checkout
    out = shell.run("mpi config check --env-file envs/production.env")
    assert out is not None and "is valid" in out
    assert "change-me" not in out  # the template's placeholder password is masked
    out = shell.run("mpi config check")  # nothing set: the embedded defaults
    assert out is not None and "sqlite:///data/mpi.db  (default)" in out
    out = shell.run("mpi version")
    assert out is not None and out.startswith("mpi ")
    # And what DEPLOY.md says about exit status 2, with the same command.
    shell.env.update({"SERVER_PORT": "x", "WORKERS": "0"})
    shell.run("mpi config check", expect=2)
    shell.done()


def test_migration_commands(shell: Shell):
    # No DATABASE_URL: the default sqlite:///data/mpi.db, relative to the working directory.
    out = shell.run("mpi migrate --status --check", expect=1)
    assert out is not None and "0001_initial: pending" in out
    out = shell.run("mpi migrate")
    from mpi.storage import migrate

    shipped = ", ".join(f"{m.version}_{m.name}" for m in migrate.discover())
    assert out is not None and out.startswith(
        f"applied {len(migrate.discover())} migration(s): {shipped}")
    out = shell.run("mpi migrate --status")
    assert out is not None and "0001_initial: applied" in out
    shell.run("mpi migrate --status --check")
    assert (shell.cwd / "data" / "mpi.db").is_file()
    shell.done()


def test_token_commands(shell: Shell):
    shell.env["AUTH_MODE"] = "token"
    secret = shell.run(
        "mpi token create --name lab-system --scopes system/Patient.crus --sources lab")
    assert secret is not None and secret.strip().startswith("mpi_")
    scraper = shell.run("mpi token create --name prometheus --scopes mpi:metrics")
    assert scraper is not None and scraper.strip().startswith("mpi_")
    listed = shell.run("mpi token list")
    assert listed is not None and listed.startswith("lab-system\tactive\t")
    assert "prometheus\tactive\t" in listed and "mpi:metrics" in listed
    assert secret.strip() not in listed
    shell.run("mpi token revoke lab-system")
    listed = shell.run("mpi token list")
    assert listed is not None and "\trevoked " in listed
    shell.done()


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mpi serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            if http_json(port, "GET", "/api/v1/health/ready", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"mpi serve not ready on {port}:\n{log.read_text()}")


def _patients(path: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM patient").fetchone()[0])
    finally:
        conn.close()


def test_serve_probe_backup_and_restore_on_sqlite(shell: Shell):
    port = free_port()
    shell.env.update({"SERVER_PORT": str(port), "WORKERS": "1", "GRACEFUL_TIMEOUT": "5"})
    server = shell.start("mpi serve")
    try:
        _wait_ready(port, server, shell.cwd / "server.log")
        shell.run("mpi healthcheck")
        shell.run("mpi healthcheck --ready")
        shell.run("mpi healthcheck --ready --timeout 5")
        out = shell.run("curl -s localhost:8080/api/v1/health/ready",
                        replace={":8080": f":{port}"})
        if out is not None:
            body = json.loads(out)
            assert body["status"] == "ok" and body["checks"] == {
                "database": "ok", "migrations": "ok", "search": "ok"}
        status, _, created = http_json(port, "POST", "/api/v1/patients",
                                       patient(source_id="doc-backup"),
                                       headers={"X-User-ID": "doc-test"})
        assert status == 201, created

        # Online backups, while the service runs (WAL mode).
        backup = shell.cwd / "mpi-backup.db"
        shell.run("python3 -c 'import sqlite3, sys; src = sqlite3.connect(sys.argv[1]); dst = "
                  "sqlite3.connect(sys.argv[2]); src.backup(dst); dst.close(); src.close()' "
                  "data/mpi.db mpi-backup.db")
        assert _patients(backup) == 1
        backup.unlink()
        if shell.run("sqlite3 data/mpi.db \".backup 'mpi-backup.db'\"") is None:
            shutil.copy(shell.cwd / "data" / "mpi.db", backup)  # the service is idle
        assert _patients(backup) == 1
        out = shell.run("sqlite3 mpi-backup.db 'PRAGMA integrity_check'")
        assert out is None or out.strip() == "ok"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert server.returncode == 0, (shell.cwd / "server.log").read_text()

    # Disaster: the database file is gone to garbage; restore from the backup.
    (shell.cwd / "data" / "mpi.db").write_bytes(b"not a database")
    shell.run("cp mpi-backup.db data/mpi.db && rm -f data/mpi.db-wal data/mpi.db-shm")
    assert not (shell.cwd / "data" / "mpi.db-wal").exists()
    assert _patients(shell.cwd / "data" / "mpi.db") == 1
    shell.done()


FHIR_CURL = [c for c, t in RUN.items() if t == "test_fhir_curl_examples"]


def test_fhir_curl_examples(shell: Shell):
    """DEPLOY.md's FHIR examples, in their order, against ``mpi serve`` (curl, JSON files
    as documented): each answers what the text says it does."""
    port = free_port()
    shell.env.update({"SERVER_PORT": str(port), "WORKERS": "1", "GRACEFUL_TIMEOUT": "5"})
    (shell.cwd / "patient.json").write_text(json.dumps({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:mpi:source:ehr", "value": "A-1"},
                       {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "123-45-6789"}],
        "name": [{"family": "Smith", "given": ["John"]}], "gender": "male",
        "birthDate": "1980-05-17"}))
    (shell.cwd / "match.json").write_text(json.dumps({
        "resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": {
                "resourceType": "Patient", "name": [{"family": "Smith", "given": ["John"]}],
                "birthDate": "1980-05-17"}},
            {"name": "onlyCertainMatches", "valueBoolean": True}]}))
    log = (shell.cwd / "server.log").open("wb")
    server = subprocess.Popen(["bash", "-c", "exec mpi serve"], cwd=shell.cwd, env=shell.env,
                              stdout=log, stderr=subprocess.STDOUT)
    outputs = []
    try:
        _wait_ready(port, server, shell.cwd / "server.log")
        for command in FHIR_CURL:
            outputs.append(shell.run(command, replace={"localhost:8080": f"localhost:{port}"}))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    if any(out is None for out in outputs):
        return  # curl is not installed (warned)
    texts = [str(out) for out in outputs]
    (metadata, created, read, search, posted, updated, history, matched, pix, xml,
     deleted) = texts
    assert json.loads(metadata)["resourceType"] == "CapabilityStatement"
    assert json.loads(created)["identifier"][0]["value"] == "A-1"
    assert json.loads(read)["total"] == 1 and json.loads(search)["total"] == 1
    assert json.loads(posted)["total"] == 1
    assert json.loads(updated)["meta"]["versionId"] == "2"
    assert [e["request"]["method"] for e in json.loads(history)["entry"]] == ["PUT", "POST"]
    assert json.loads(matched)["entry"][0]["search"]["extension"][0]["valueCode"] == "certain"
    assert any(p["name"] == "targetId" for p in json.loads(pix)["parameter"])
    assert xml.startswith("<?xml") and "<Bundle" in xml
    assert deleted == ""
    shell.done()


HL7_EXAMPLES = [c for c, t in RUN.items() if t == "test_hl7_examples"]


def _text_blocks(doc: str, heading: str) -> list[str]:
    """The ```text blocks of one section of a document, in order."""
    text = (ROOT / doc).read_text()
    section = text[text.index(heading):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```text\n(.*?)```", section, flags=re.S)


def test_hl7_examples(shell: Shell):
    """DEPLOY.md's HL7 v2 set-up and its two example messages, sent with python-hl7's
    stock ``mllp_send`` to ``mpi serve``: the feed is acknowledged AA and the PIX query
    answers with the person's identifiers."""
    port, mllp = free_port(), free_port()
    shell.env.update({"SERVER_PORT": str(port), "WORKERS": "1", "GRACEFUL_TIMEOUT": "5",
                      "HL7_MLLP_PORT": str(mllp)})
    adt, query = _text_blocks("DEPLOY.md", "## HL7 v2 over MLLP")
    (shell.cwd / "adt-a01.hl7").write_text(adt)
    (shell.cwd / "pix-query.hl7").write_text(query)
    shell.run("mpi domain add urn:oid:1.2.840.114350.1.13.99.2 --name \"St Mary's MRN\" "
              "--sources st-marys --namespace STMARYS")
    shell.run("mpi hl7 sender add st-marys-adt --application ADT1 --facility STMARYS "
              "--sources st-marys")
    listed = shell.run("mpi hl7 sender list")
    assert listed is None or "ADT1^STMARYS" in listed
    log = (shell.cwd / "server.log").open("wb")
    server = subprocess.Popen(["bash", "-c", "exec mpi serve"], cwd=shell.cwd, env=shell.env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(port, server, shell.cwd / "server.log")
        replace = {"--port 2575": f"--port {mllp}"}
        acked = shell.run("mllp_send --loose --file adt-a01.hl7 --port 2575 localhost",
                          replace=replace)
        answered = shell.run("mllp_send --loose --file pix-query.hl7 --port 2575 localhost",
                             replace=replace)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    if acked is None or answered is None:
        return  # mllp_send is not installed (warned)
    assert "MSA|AA|MSG-0001" in acked, acked
    assert "MSA|AA|Q-0001" in answered and "urn:mpi:person" in answered, answered
    shell.done()


def test_compose_secret_commands(shell: Shell):
    (shell.cwd / "compose").mkdir()  # a checkout's compose/ (run from the checkout's top)
    shell.run("mkdir -m 0700 compose/secrets")
    shell.run("python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "
              "compose/secrets/postgres-password")
    shell.run("printf 'postgresql://mpi:%s@db:5432/mpi\\n' "
              "\"$(cat compose/secrets/postgres-password)\" > compose/secrets/mpi-database-url")
    shell.run("chmod 0644 compose/secrets/postgres-password compose/secrets/mpi-database-url")
    secrets_dir = shell.cwd / "compose" / "secrets"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    password = (secrets_dir / "postgres-password").read_text().strip()
    assert len(password) >= 32
    url_file = secrets_dir / "mpi-database-url"
    for path in (secrets_dir / "postgres-password", url_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # read by uids 999 and 65532
    # The URL file is what the production compose file hands the service.
    settings = config.load({"DATABASE_URL_FILE": str(url_file)})
    target = settings.database
    assert (target.host, target.port, target.user, target.password, target.dbname) == (
        "db", 5432, "mpi", password, "mpi")
    shell.done()


def _libpq_environment(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    return {"PGHOST": parts.hostname or "", "PGPORT": str(parts.port or 5432),
            "PGUSER": unquote(parts.username or ""), "PGPASSWORD": unquote(parts.password or ""),
            "PGCONNECT_TIMEOUT": "10"}


def test_postgresql_backup_and_restore(shell: Shell, postgres_url: str):
    import psycopg

    from toolkit.postgres import PostgresUnavailable, find_postgres_bindir

    if urlsplit(postgres_url).path.lstrip("/") != "mpi":
        pytest.skip(f"the commands name the database mpi; this run's is {postgres_url!r}")
    try:
        bindir = find_postgres_bindir()
    except PostgresUnavailable as exc:
        pytest.fail(f"the PostgreSQL client tools are needed: {exc}")
    shell.env.update(_libpq_environment(postgres_url))
    shell.env["PATH"] = os.pathsep.join([str(bindir), shell.env["PATH"]])
    admin = postgres_url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS mpi_restored")
    try:
        shell.run("pg_dump --format=custom --file=mpi.dump mpi")
        listing = shell.run("pg_restore --list mpi.dump")
        assert listing is not None and "TABLE public schema_migration" in listing
        shell.run("createdb --owner=mpi mpi_restored")
        shell.run("pg_restore --exit-on-error --no-owner --dbname=mpi_restored mpi.dump")
        out = shell.run(
            "psql --dbname=mpi_restored --command='SELECT version, name FROM schema_migration'")
        assert out is not None and "0001" in out and "initial" in out
        out = shell.run("psql --command='SHOW max_connections'")
        assert out is not None and "max_connections" in out
        shell.run("psql --command=\"SELECT application_name, state, count(*) FROM "
                  "pg_stat_activity WHERE datname = 'mpi' GROUP BY 1, 2\"")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS mpi_restored")
    shell.done()


def test_kustomize_renders_every_manifest(shell: Shell):
    shell.cwd = ROOT
    out = shell.run("kubectl kustomize deploy/kubernetes")
    if out is None:
        pytest.skip("kubectl is not installed; the manifests are validated by schema in "
                    "tests/deploy/test_kubernetes.py")
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(out) if doc)
    assert kinds == sorted(["ConfigMap", "Deployment", "Job", "Namespace", "NetworkPolicy",
                            "PodDisruptionBudget", "Secret", "Service"])
    shell.done()


def test_nox_lists_the_sessions(shell: Shell):
    shell.cwd = ROOT
    out = shell.run("nox -l")
    if out is None:
        pytest.skip("nox is not on PATH (CI installs it from requirements-tools.lock)")
    for session in ("test", "serve", "lint", "build", "image", "lock", "bench"):
        assert re.search(rf"^[*-] {session} -> ", out, flags=re.MULTILINE), out
    shell.done()


def test_skopeo_reads_the_image_archive(shell: Shell):
    """The documented command on an archive from the writer `nox -s image` uses (images/oci.py),
    holding a tiny image: the real one takes minutes to build and is loaded by CI."""
    from images import oci
    from tests.images.test_oci import EPOCH, tiny_image

    image = tiny_image()
    (shell.cwd / "dist").mkdir()
    (shell.cwd / "dist" / "mpi-image.tar").write_bytes(
        oci.archive(image, reference="mpi:0.1.0", mtime=EPOCH))
    out = shell.run("skopeo inspect oci-archive:dist/mpi-image.tar")
    if out is None:
        pytest.skip("skopeo is not installed (toolkit.engine install brings it)")
    info = json.loads(out)
    assert info["Digest"] == image.digest()
    assert info["Os"] == "linux" and len(info["Layers"]) == len(image.layers)
    shell.done()
