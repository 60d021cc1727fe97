"""A person's path through the pages, in a real headless Chromium driven by Playwright.

Uses Debian's chromium (`make test-deps` installs it as root); Playwright's own
browser downloads are never used. Screenshots go to tests/artifacts/ for a person to
look at after the run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp.test_utils import TestClient

from . import projects
from .conftest import GATE, gate_of, open_gate, require, wait_for_message

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

try:
    import playwright.async_api as playwright_api
except ImportError:
    playwright_api = None
require(playwright_api is not None, "Playwright is not installed: pip install -e '.[test]'")
require(os.access(CHROMIUM, os.X_OK),
        f"{CHROMIUM} is missing: `make test-deps` as root installs Debian's chromium")


@pytest.fixture
async def browser_page() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1200, "height": 900})
            page = await context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            await browser.close()


async def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# The build of a commit holding `gate` prints tick 1, waits until the test opens the
# gate, prints tick 2, then waits again until the test touches /build/end: the page is
# seen following a log that is, for certain, still being written, both before and
# after new lines reach it (the page reloads itself, by design, once the build ends).
END = "for i in $(seq 1200); do [ -e /build/end ] && break; sleep 0.1; done"
GATED = f"if [ -e gate ]; then echo tick 1; {GATE}; echo tick 2; {END}; fi"


async def test_search_browse_and_request_a_build(client: TestClient, make_repo: Any,
                                                 browser_page: Any) -> None:
    page = browser_page
    expect = playwright_api.expect
    url = make_repo("hello", projects.enot_project("hello", prebuild=[GATED]), tag="1.0.0")
    projects.add_commit(url, {"gate": "the build of 1.1.0 waits for the test\n"}, "1.1.0",
                        projects.AUTHOR_EMAIL)
    r = await client.post("/buildSync", json={"full_name": "tester/hello", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 200, await r.text()
    base = str(client.make_url("")).rstrip("/")

    # Home: the search box and the last build.
    await page.goto(base + "/")
    await expect(page.locator("main")).to_contain_text("tester/hello")
    await shot(page, "1-home")

    # Search, then open the package.
    await page.fill("#q", "hell")
    await page.press("#q", "Enter")
    await page.wait_for_url("**/ui/packages?q=hell")
    await expect(page.locator("main table.packages")).to_contain_text("1.0.0")
    await shot(page, "2-search")
    await page.click("main >> text=tester/hello")
    await page.wait_for_url("**/ui/packages/tester/hello")
    await expect(page.locator("table.matrix")).to_contain_text("enot fetch tester/hello 1.0.0")
    await expect(page.locator("table.matrix a.status-succeeded")).to_have_count(1)
    badge_width = await page.eval_on_selector("img.badge", "img => img.naturalWidth")
    assert badge_width > 50  # the SVG badge loaded and was drawn
    await shot(page, "3-package")

    # Ask for another tag through the form (prefilled from the package page).
    await page.click("text=Build another tag")
    await page.wait_for_url("**/ui/request?**")
    await expect(page.locator("#full_name")).to_have_value("tester/hello")
    await expect(page.locator("#clone_url")).to_have_value(url)
    # Every field's error next to its field, as the page without JavaScript shows them.
    await page.fill("#full_name", "no-slash")
    await page.fill("#refs", "bad..tag")
    await page.click("button[type=submit]")
    await expect(page.locator("#refs + #refs-error")).to_contain_text(
        "Tag is not a valid git tag")
    await expect(page.locator("#full_name + #full_name-error")).to_contain_text(
        "Field 'full_name' must be 'namespace/name'")
    assert await page.get_attribute("#refs", "aria-invalid") == "true"
    await expect(page.locator("#form-error")).to_be_hidden()
    await expect(page.locator("#notify_email")).not_to_be_checked()  # no mail server here
    await shot(page, "4-request-errors")
    await page.fill("#full_name", "tester/hello")
    await page.fill("#refs", "1.1.0")
    await page.select_option("#erl_version", "25")
    await shot(page, "4-request")
    await page.click("button[type=submit]")
    await page.wait_for_url("**/ui/builds/*")
    await expect(page.locator(".field-error")).to_have_count(0)

    # The build page follows the log live, then shows the result.
    await expect(page.locator("#log")).to_contain_text("tick 1", timeout=60_000)
    await expect(page.locator("#status")).to_have_text("running")
    assert "tick 2" not in await page.locator("#log").inner_text()
    await shot(page, "5-build-running")
    build_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    # A mark on this document: the new lines must reach it by streaming, not by the
    # no-JavaScript fallback reloading the page.
    await page.evaluate("window.sameDocument = true")
    await open_gate(client, build_id)
    await expect(page.locator("#log")).to_contain_text("tick 2", timeout=60_000)
    assert await page.evaluate("window.sameDocument === true"), "the page was reloaded"
    (gate_of(client, build_id) / "end").touch()
    await expect(page.locator("#status")).to_have_text("succeeded", timeout=120_000)
    await expect(page.locator("#log")).to_contain_text("SUCCESS")
    await expect(page.locator("#download")).to_have_text("hello.ep")
    await shot(page, "6-build-succeeded")

    await page.goto(base + "/ui/packages/tester/hello")
    await expect(page.locator("table.matrix a.status-succeeded")).to_have_count(2)
    await page.goto(base + "/ui/queue")
    await expect(page.locator("main")).to_contain_text("The queue is empty")
    response = await page.goto(base + "/ui/builds/00000000-0000-0000-0000-000000000000")
    assert response.status == 404
    await expect(page.locator("h1")).to_have_text("Not found")
    await shot(page, "7-not-found")


async def test_failed_build_page(client: TestClient, make_repo: Any, browser_page: Any) -> None:
    """A failed build: its long log lines wrap at spaces, and Rebuild queues it again."""
    page = browser_page
    expect = playwright_api.expect
    words = " ".join(f"word{i}" for i in range(60))
    files = projects.broken_project("broken")
    files["enot_config.json"] = files["enot_config.json"].replace(
        '"deps"', f'"prebuild": [{{"shell": "echo {words}"}}], "deps"')
    url = make_repo("broken", files)
    r = await client.post("/buildSync", json={"full_name": "tester/broken", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 422, await r.text()
    build_id = (await r.json())["builds"][0]["build_id"]
    base = str(client.make_url("")).rstrip("/")

    await page.goto(f"{base}/ui/builds/{build_id}")
    await expect(page.locator("#status")).to_have_text("failed")
    log = page.locator("#log")
    await expect(log).to_contain_text("word59")
    # No horizontal scrolling; the echoed line (about 500 characters) takes several
    # lines, broken between words: no word of it is drawn on two lines.
    layout = await log.evaluate("""e => {
        const text = [...e.childNodes].find(n => n.data && n.data.includes("word0 "));
        const range = document.createRange(), tops = new Set(), cut = [];
        const start = text.data.indexOf("word0 "), end = text.data.indexOf("word59") + 6;
        for (let i = start; i < end;) {
            const space = text.data.indexOf(" ", i), stop = space < 0 ? end : Math.min(space, end);
            range.setStart(text, i); range.setEnd(text, stop);
            const rects = range.getClientRects();
            if (rects.length > 1) cut.push(text.data.slice(i, stop));
            tops.add(Math.round(rects[0].top));
            i = stop + 1;
        }
        return {lines: tops.size, cut: cut, scrolls: e.scrollWidth > e.clientWidth};
    }""")
    assert layout["lines"] > 1 and layout["cut"] == [] and not layout["scrolls"], layout
    await shot(page, "8-build-failed")

    await page.click("#rebuild")
    # The new build's page (this page's own URL matches the pattern too).
    await page.wait_for_url(lambda url: "/ui/builds/" in url and build_id not in url)
    await expect(page.locator("#status")).to_have_text("failed", timeout=120_000)

    await page.goto(f"{base}/ui/packages?q=broken")
    widths = await page.eval_on_selector_all(
        "form.filters input", "inputs => inputs.map(i => i.getBoundingClientRect().width)")
    assert len(widths) == 4 and len(set(widths)) == 1, widths  # the Erlang box as wide
    await shot(page, "9-search-filters")


async def test_a_build_waiting_for_its_retry(make_client: Any, browser_page: Any) -> None:
    """Its page says it is queued again and when the next attempt is due, and the live
    log (the failed attempt's) does not make it look running."""
    page = browser_page
    expect = playwright_api.expect
    client = await make_client(builds__retry_delay=600, git__allowed_hosts=["nonexistent.invalid"])
    r = await client.post("/buildAsync", json={
        "full_name": "tester/offline", "clone_url": "https://nonexistent.invalid/tester/offline",
        "versions": [{"ref": "1.0.0"}]})
    build_id = (await r.json())["response"][0]["build_id"]
    await wait_for_message(client, build_id, "attempt 1 of 3 failed")
    base = str(client.make_url("")).rstrip("/")
    await page.goto(f"{base}/ui/builds/{build_id}")
    await expect(page.locator("#retry")).to_contain_text("attempt 2 of 3, at ")
    await expect(page.locator("#message")).to_contain_text(
        "attempt 1 of 3 failed: git clone of https://nonexistent.invalid/tester/offline "
        "failed: cannot resolve host nonexistent.invalid (DNS)")
    await expect(page.locator("#log")).to_contain_text("FAILED, retrying in 600 s")
    await expect(page.locator("#status")).to_have_text("queued")
    await shot(page, "10-build-retry")
