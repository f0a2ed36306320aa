"""The steward's pages in a real browser: Debian's Chromium (``/usr/bin/chromium``, from
``apt-get install chromium``) driven by Playwright's driver, nothing downloaded, against a
real ``mpi serve`` with two workers.

Without Chromium these tests are skipped, loudly; with ``MPI_TEST_BROWSER=required`` (set
by ``.ci/run``, which installs it) they fail instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import http_json, patient
from tests.integration.test_serve import Server, database_url_for

CHROMIUM = os.environ.get("MPI_TEST_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
#: Screenshots are kept with the test output (and the one in the docs is made from here).
OUTPUT = Path(os.environ.get("MPI_TEST_OUTPUT", ROOT / "dist" / "test-output"))
STEWARD_TOKEN_NAME = "steward-ann"


def _required() -> bool:
    return os.environ.get("MPI_TEST_BROWSER", "").strip().lower() == "required"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if _required():
            pytest.fail(f"MPI_TEST_BROWSER=required, but {reason}", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    yield opened
    context.close()


class Site:
    """A running ``mpi serve`` (AUTH_MODE=token) with a steward's token and an API client's."""

    def __init__(self, server: Server, cwd: Path, env: dict[str, str]):
        self.server = server
        self.base = f"http://127.0.0.1:{server.port}"
        self._cwd, self._env = cwd, env
        self.steward = self.token(STEWARD_TOKEN_NAME, "mpi:steward")
        self.api = {"Authorization": "Bearer " + self.token(
            "ehr", "system/*.cruds", "mpi:steward", "mpi:audit", sources="*")}

    def token(self, name: str, *scopes: str, sources: str | None = None) -> str:
        argv = [sys.executable, "-m", "mpi", "token", "create", "--name", name,
                "--scopes", *scopes]
        if sources:
            argv += ["--sources", sources]
        done = subprocess.run(argv, cwd=self._cwd, env=self._env, capture_output=True,
                              text=True, timeout=60, check=True)
        return done.stdout.strip()

    def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        status, _, parsed = http_json(self.server.port, method, path, body, headers=self.api)
        return status, parsed

    def create(self, **changes: Any) -> dict[str, Any]:
        status, body = self.call("POST", "/api/v1/patients", patient(**changes))
        assert status == 201, body
        return body

    def twin_pair(self) -> tuple[dict[str, Any], dict[str, Any], str]:
        """Two records the engine sends to review (a twin-like pair); the review's id."""
        a = self.create()
        b = self.create(source="walk-in", source_id="W-1", identifiers=[],
                        names=[{"family": "Smith", "given": ["Peter"]}])
        status, page = self.call("GET", "/api/v1/reviews")
        assert status == 200 and page["items"], page
        return a, b, page["items"][0]["id"]


@pytest.fixture(params=["postgresql", "sqlite"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    env = {**os.environ, "DATABASE_URL": database_url_for(request), "AUTH_MODE": "token",
           "LOG_FORMAT": "text", "LOG_LEVEL": "WARNING"}
    env.pop("MATCHING_MODEL_PATH", None)
    subprocess.run([sys.executable, "-m", "mpi", "migrate"], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=120)
    server = Server({k: env[k] for k in ("DATABASE_URL", "AUTH_MODE")}, tmp_path)
    try:
        yield Site(server, tmp_path, env)
    finally:
        server.stop()


def keep_screenshot(page: Any, name: str) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / name
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Any, site: Site, path: str = "/ui/reviews") -> None:
    page.goto(site.base + path)
    assert "/ui/signin" in page.url
    page.get_by_label("Your steward token").fill(site.steward)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path}")

