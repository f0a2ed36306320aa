"""A steward's day in Chromium: sign in, work the queue, resolve a review and see the person
gain the record, merge and undo, search; and what the pages promise (no caching of patient
data, a form from elsewhere refused, a decision someone else just made not overwritten,
labelled controls, usable at 1280x800 and on a tablet)."""

from __future__ import annotations

import re
import time

import pytest

from tests.ui.conftest import STEWARD_TOKEN_NAME, Site, keep_screenshot, sign_in

pytestmark = pytest.mark.integration

#: Every visible text's contrast against its background (WCAG 2.x relative luminance):
#: what falls below 4.5:1 (3:1 for large text), as [text, ratio].
CONTRAST_JS = """() => {
  const lum = (rgb) => {
    const [r, g, b] = rgb.map(v => { v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const parse = (c) => (c.match(/[0-9.]+/g) || []).map(Number);
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255]; };
  const low = [];
  for (const el of document.querySelectorAll('body *')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    const box = el.getBoundingClientRect();
    if (!own || el.closest('svg') || box.width === 0 || box.height === 0) continue;
    const style = getComputedStyle(el);
    const fg = lum(parse(style.color).slice(0, 3)), bg = lum(background(el));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight) >= 700;
    const large = size >= 24 || (bold && size >= 18.66);
    if (ratio < (large ? 3 : 4.5)) low.push([el.textContent.trim().slice(0, 40), ratio]);
  }
  return low; }"""


def test_resolve_a_review_as_the_same_person(page, site: Site):
    a, b, review_id = site.twin_pair()
    sign_in(page, site)
    assert page.get_by_role("heading", name="Review queue").is_visible()
    assert re.search(r"\b1\s+open review\b", page.locator("#count").inner_text())
    page.get_by_role("link", name=re.compile("^Open review")).first.click()
    page.wait_for_url(f"**/ui/reviews/{review_id}")
    # Side by side: the differing given name is marked, the agreeing birth date too.
    given = page.locator("table.compare tr", has_text="Given names")
    assert given.locator("td.differs").count() == 1
    birth = page.locator("table.compare tr", has_text="Birth date")
    assert birth.locator("td.same").count() == 1
    # The match-weight chart: a bar per comparison, from the prior to the final weight.
    chart = page.locator("svg.waterfall")
    assert chart.is_visible()
    assert chart.locator("rect.prior").count() == 1 and chart.locator("rect.total").count() == 1
    assert chart.locator("rect.up, rect.down").count() >= 3
    shot = keep_screenshot(page, "steward-review.png")
    assert shot.stat().st_size > 10_000

    page.get_by_label("Comment (optional)").fill("Same address and phone; confirmed by phone")
    page.get_by_role("button", name="Same person", exact=True).click()
    page.wait_for_url(f"**/ui/persons/{a['person_id']}?resolved={review_id}")
    records = page.locator("table.records tbody tr")
    assert records.count() == 2
    assert "walk-in" in page.locator("table.records").inner_text()

    # The API agrees, and the steward is the actor of the audit row, with the comment.
    status, person = site.call("GET", f"/api/v1/persons/{a['person_id']}")
    assert status == 200 and {r["patient"]["id"] for r in person["records"]} == {a["id"], b["id"]}
    status, trail = site.call("GET", "/api/v1/audit/recent?limit=50")
    resolved = [row for row in trail["items"] if row["action"] == "identity:review:resolve"]
    assert resolved and resolved[0]["actor"] == STEWARD_TOKEN_NAME
    assert resolved[0]["new_value"]["comment"] == "Same address and phone; confirmed by phone"
    page.get_by_role("link", name="Review queue").first.click()
    assert re.search(r"\b0\s+open reviews\b", page.locator("#count").inner_text())


def test_merge_two_persons_and_undo_it(page, site: Site):
    a = site.create()
    c = site.create(source="lab", source_id="L-9", identifiers=[], birth_date="1944-02-29",
                    names=[{"family": "Okonkwo", "given": ["Mary"]}], gender="female",
                    addresses=[], telecom=[])
    assert a["person_id"] != c["person_id"]
    sign_in(page, site, f"/ui/persons/{a['person_id']}")
    page.get_by_label("Person id to merge in").fill(c["person_id"])
    page.get_by_role("button", name="Merge", exact=True).click()
    page.wait_for_selector("text=Merged 1 record(s) into this person.")
    assert page.locator("table.records tbody tr").count() == 2
    page.get_by_role("button", name="Undo merge").click()
    page.wait_for_selector("text=The merge was undone")
    assert page.locator("table.records tbody tr").count() == 1
    status, other = site.call("GET", f"/api/v1/persons/{c['person_id']}")
    assert status == 200 and other["status"] == "active" and len(other["records"]) == 1


def test_search_and_open_a_person(page, site: Site):
    a = site.create(names=[{"family": "Quagmirewicz", "given": ["Ada"]}])
    sign_in(page, site, "/ui/search")
    deadline = time.monotonic() + 20
    while True:  # the indexer process makes the new record searchable within moments
        page.get_by_label("Name").fill("quagmirewicz")
        page.get_by_role("button", name="Search").click()
        if page.locator("table.results tbody tr").count() == 1:
            break
        assert time.monotonic() < deadline, page.content()
        time.sleep(0.5)
    page.get_by_role("link", name="Open person").click()
    page.wait_for_url(f"**/ui/persons/{a['person_id']}")
    assert "Quagmirewicz" in page.locator("table.records").inner_text()


def test_a_review_resolved_meanwhile_is_not_overwritten(page, site: Site):
    _, _, review_id = site.twin_pair()
    sign_in(page, site, f"/ui/reviews/{review_id}")
    # Another steward decides first, through the API.
    status, _ = site.call("POST", f"/api/v1/reviews/{review_id}/resolve",
                          {"resolution": "not_a_match"})
    assert status == 200
    page.get_by_role("button", name="Same person", exact=True).click()
    alert = page.get_by_role("alert")
    assert "Nothing was changed" in alert.inner_text()
    assert "already resolved (not_a_match)" in alert.inner_text()
    status, review = site.call("GET", f"/api/v1/reviews/{review_id}")
    assert review["resolution"] == "not_a_match"


def test_the_pages_keep_no_copy_and_refuse_forms_from_elsewhere(page, site: Site):
    _, _, review_id = site.twin_pair()
    sign_in(page, site)
    response = page.goto(f"{site.base}/ui/reviews/{review_id}")
    headers = response.headers
    assert headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    cookie = next(c for c in page.context.cookies() if c["name"] == "mpi_ui")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    # A form posted without the page's CSRF token (another site's) changes nothing.
    forged = page.request.post(f"{site.base}/ui/reviews/{review_id}",
                               form={"resolution": "link", "csrf": "forged"})
    assert forged.status == 403
    _status, review = site.call("GET", f"/api/v1/reviews/{review_id}")
    assert review["status"] == "open"


def test_signing_in_needs_a_steward_token(page, site: Site):
    page.goto(site.base + "/ui/reviews")
    page.get_by_label("Your steward token").fill("mpi_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    assert "was not accepted" in page.get_by_role("alert").inner_text()
    reader = site.token("reader", "system/Patient.rs")
    page.get_by_label("Your steward token").fill(reader)
    page.get_by_role("button", name="Sign in").click()
    assert "does not grant mpi:steward" in page.get_by_role("alert").inner_text()
    assert "/ui/signin" in page.url
    sign_in(page, site)
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/ui/signin")
    page.goto(site.base + "/ui/reviews")
    assert "/ui/signin" in page.url


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 800},
                                      {"width": 768, "height": 1024}], ids=["desktop", "tablet"])
def test_every_page_is_labelled_legible_keyboard_reachable_and_fits(browser, site: Site,
                                                                   viewport):
    a, _, review_id = site.twin_pair()
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    try:
        sign_in(page, site)
        for path in ("/ui/reviews", f"/ui/reviews/{review_id}", f"/ui/persons/{a['person_id']}",
                     "/ui/search", "/ui/model"):
            page.goto(site.base + path)
            unlabelled = page.evaluate("""() => [...document.querySelectorAll(
                'input:not([type=hidden]), select, textarea')].filter(
                el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
                .map(el => el.name)""")
            assert unlabelled == [], (path, unlabelled)
            assert page.evaluate("document.documentElement.lang") == "en"
            low = page.evaluate(CONTRAST_JS)
            assert low == [], (path, low[:5])
            wide = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
            assert not wide, f"{path} scrolls sideways at {viewport}"
            # The first Tab lands on the skip link, the second on the navigation.
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.className") == "skip"
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.textContent") == "Review queue"
    finally:
        context.close()


def test_sign_in_through_the_identity_provider(page, tmp_path):
    """AUTH_MODE=jwt: Chromium follows the authorization code flow with PKCE through an
    OpenID Connect provider on 127.0.0.1 and lands on the page it asked for."""
    from tests.integration.test_serve import Server
    from tests.ui.idp import CLIENT_ID, Provider

    provider = Provider(user="bo.steward")
    server = Server({"DATABASE_URL": "sqlite:///data/mpi.db", "AUTH_MODE": "jwt",
                     "AUTH_ISSUER": provider.issuer, "AUTH_AUDIENCE": "mpi",
                     "AUTH_JWKS_URL": f"{provider.issuer}/certs",
                     "UI_OIDC_CLIENT_ID": CLIENT_ID}, tmp_path)
    try:
        base = f"http://127.0.0.1:{server.port}"
        page.goto(f"{base}/ui/model")
        page.wait_for_url(f"{base}/ui/model")
        assert page.get_by_role("heading", name="Matching model").is_visible()
        assert "bo.steward" in page.locator("header").inner_text()
        (asked,) = provider.authorizations
        assert asked["code_challenge_method"] == "S256"
        assert len(provider.token_requests) == 1
        cookie = next(c for c in page.context.cookies() if c["name"] == "mpi_ui")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    finally:
        server.stop()
        provider.close()
