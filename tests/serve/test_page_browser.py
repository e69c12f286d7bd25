"""The web page in a real headless Chromium, driven as a person would use it, against a real
`glossrec serve` on a LIS run of the Beauty sample.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); skipped, saying so,
only when they are absent. To refresh the screenshot in the docs (docs/img/page.png), run them
with GLOSSREC_PAGE_SCREENSHOTS=docs/img; each test always saves its screenshots in its
temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import FakeGenerator, Server, running, scored_run, serving_app

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
KEY = "page-test-key"
NEW_ID = "PAGE-NEW-1"
SCREENSHOTS_ENV = "GLOSSREC_PAGE_SCREENSHOTS"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="no headless browser: install Debian's chromium and chromium-driver "
           "(apt-get install -y chromium chromium-driver; .ci/run does)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from glossrec.serve import make_index_run

    run = make_index_run(ROOT / "data" / "beauty-sample", "bm25", tmp_path_factory.mktemp("page") / "run")
    with running(run, env={"GLOSSREC_API_KEY": KEY}) as srv:
        yield srv


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM  # type: ignore[assignment]
    # No network on CI machines: without these Chromium waits on connections it cannot make.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1060",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver, path: Path, docs: bool = False) -> None:
    """Save one into the test's folder; with `docs`, also into $GLOSSREC_PAGE_SCREENSHOTS if set
    (the docs show the Beauty walkthrough, not the test doubles' made-up data)."""
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    if docs and os.environ.get(SCREENSHOTS_ENV):
        out = Path(os.environ[SCREENSHOTS_ENV])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / path.name)


class Page:
    """The page's controls, by the ids index.html gives them."""

    def __init__(self, driver, url: str) -> None:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        self.d = driver
        # An element read while the page re-renders is stale: look again.
        self.wait = WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,))
        driver.get(url + "/")

    def el(self, id_: str):
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.ID, id_)

    def all(self, css: str) -> list:
        from selenium.webdriver.common.by import By

        return [e for e in self.d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]

    def type(self, id_: str, text: str) -> None:
        box = self.el(id_)
        box.clear()
        box.send_keys(text)

    def pick(self, query: str) -> str:
        """Type part of a title, click the first suggestion; its item id."""
        self.type("search", query)
        first = self.wait.until(lambda _: self.all("#suggestions li"))[0]
        item_id = first.get_attribute("data-item-id")
        first.click()
        return item_id

    def result_ids(self) -> list[str]:
        return [r.get_attribute("data-item-id") for r in self.all("#results tbody tr")]

    def wait_results(self, until) -> list[str]:
        """The rendered recommendations, once `until(ids)` holds and no request is running."""
        def ready(_):
            ids = self.result_ids()
            return ids if self.el("busy").get_attribute("hidden") is not None and until(ids) else False
        return self.wait.until(ready)

    def message(self, id_: str, part: str) -> str:
        """The text of a message box once it shows `part`."""
        return self.wait.until(lambda _: self.el(id_).text if self.el(id_).is_displayed()
                               and part in self.el(id_).text else False)


def test_walkthrough_in_a_real_browser(server: Server, browser, tmp_path: Path) -> None:
    items = httpx.get(server.url + "/health").json()["items"]
    page = Page(browser, server.url)
    page.wait.until(lambda _: f"{items:,} items" in page.el("run-info").text)
    assert "LIS" in page.el("run-info").text

    # Type part of a title, pick two items: the history shows them, oldest first.
    first = page.pick("argan sham")
    second = page.pick("argan cond")
    history = page.all("#history li")
    assert len(history) == 2 and "Shampoo" in history[0].text and "Conditioner" in history[1].text

    # k recommendations, rendered: the very items, scores and order the API gives.
    page.type("k", "5")
    page.el("recommend").click()
    shown = page.wait_results(lambda ids: len(ids) == 5)
    with httpx.Client(base_url=server.url) as api:
        want = api.post("/recommend", json={"history": [first, second], "k": 5}).json()
        assert shown == [i["item_id"] for i in want["items"]]
        rows = page.all("#results tbody tr")
        for row, item in zip(rows, want["items"]):
            assert item["title"][:30] in row.text and f"{item['score']:.4f}" in row.text
            assert "LIS" in row.find_element("css selector", ".from").text
        assert not {first, second} & set(shown)  # history excluded by default

        # Add an item with the key: recommended at once, with no reload of the page or service.
        last_title = api.get(f"/items/{second}").json()["title"]
        page.type("api-key", KEY)
        page.el("use-key").click()
        assert page.el("api-key").get_attribute("value") == ""  # the key is not left in the field
        page.type("new-id", NEW_ID)
        page.type("new-title", last_title + " travel size")
        page.el("add-item").click()
        assert f"{items + 1:,} items" in page.message("catalog-msg", f"Added {NEW_ID}.")
        shown = page.wait_results(lambda ids: NEW_ID in ids)
        assert shown[0] == NEW_ID and len(shown) == 5
        _screenshot(browser, tmp_path / "page.png", docs=True)

        # Remove it: gone from the recommendations and from the catalog.
        page.type("remove-id", NEW_ID)
        page.el("remove-item").click()
        page.message("catalog-msg", f"Removed {NEW_ID}.")
        shown = page.wait_results(lambda ids: NEW_ID not in ids and len(ids) == 5)
        assert api.get(f"/items/{NEW_ID}").status_code == 404

        # A wrong key is refused on the page, and nothing is written.
        page.type("api-key", "not-the-key")
        page.el("use-key").click()
        page.type("new-id", "PAGE-BAD-1")
        page.type("new-title", "Should never be added")
        page.el("add-item").click()
        assert "wrong API key" in page.message("catalog-msg", "403")
        assert api.get("/items/PAGE-BAD-1").status_code == 404

    # Markup in a title is shown as text, never run as HTML.
    page.type("free-title", "<i>argan</i> <img src=x>")
    page.el("add-free").click()
    chip = page.all("#history li")[-1]
    assert "<i>argan</i> <img src=x>" in chip.text and not chip.find_elements("css selector", "i, img")

    # The API's validation, as a readable message: k over the limit.
    page.type("k", "1000")
    page.el("recommend").click()
    text = page.message("rec-error", "422")
    assert "k" in text and "less than or equal to 100" in text

    # The second view: this run was never scored, and the page says so.
    page.el("tab-report").click()
    page.wait.until(lambda _: page.el("report-empty").is_displayed())
    assert "not been scored" in page.el("report-empty").text
    # No script error (the refused requests above are logged by the browser as network errors).
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
    assert not errors, errors


def test_lm_mode_shows_progress_the_texts_and_the_report(word_catalog, browser, tmp_path: Path) -> None:
    """LM mode with a slow test double for the model: the page shows it is busy (with the time
    elapsed), then the texts the model wrote and the items each found; the report view shows
    the scored run's table with intervals and report.png."""
    from glossrec.config import RunConfig
    from glossrec.serve import Recommender
    from glossrec.serve.app import create_app

    texts = ["Title: Argan oil shampoo for dry hair", "Title: Matte red lipstick"]
    rec = Recommender(word_catalog, RunConfig(), generator=FakeGenerator(texts, delay_s=1.5), mode="lm")
    rec.run_dir = tmp_path / "scored"
    scored_run(rec.run_dir)
    with serving_app(create_app(rec)) as url:
        page = Page(browser, url)
        page.wait.until(lambda _: "LM (GLoSS)" in page.el("run-info").text)
        page.type("free-title", "argan oil hair mask")  # a cold start: a title the catalog lacks
        page.el("add-free").click()
        assert "free text" in page.all("#history li")[0].text
        page.type("k", "3")
        page.el("recommend").click()
        busy = page.wait.until(lambda _: page.el("busy-text").text if page.el("busy").is_displayed() else False)
        assert re.fullmatch(r"The model is writing titles… \d+\.\d s", busy), busy
        page.wait.until(lambda _: page.el("busy-text").text != busy)  # the clock runs
        assert page.el("recommend").get_attribute("disabled") is not None
        shown = page.wait_results(lambda ids: len(ids) == 3)
        assert [li.text for li in page.all("#lm-texts-list li")] == texts
        rows = page.all("#results tbody tr")
        assert shown[0] == "A2" and "found by: Title: Argan oil shampoo for dry hair" in rows[0].text
        assert all("LM text" in r.find_element("css selector", ".from").text for r in rows)
        _screenshot(browser, tmp_path / "page-lm.png")

        page.el("tab-report").click()
        page.wait.until(lambda _: page.all("#report-tables table"))
        table = page.all("#report-tables table")[0].text
        assert "GLoSS-bm25" in table and "LIS-bm25" in table and "recall@5" in table.lower()
        assert re.search(r"\[\d\.\d{4}, \d\.\d{4}\]", table)  # the intervals
        img = page.el("report-png")
        page.wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img))
        _screenshot(browser, tmp_path / "page-report.png")
