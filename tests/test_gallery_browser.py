"""The gallery in a real browser: headless Chromium opens it from disk, thumbnails render, the filters work.

Drives a Chromium through Playwright: ``$COCU_CHROMIUM``, one on the PATH (Debian's ``chromium``, which ``make test``
installs as root), or Playwright's own (``python -m playwright install chromium``, which ``make test`` tries next).
Without one the tests are skipped, with the reason, except under ``CI=true``, where they fail: a CI machine that
cannot open a page must not pass. Screenshots go to ``.pytest_cache/cocu-screenshots/`` for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from test_gallery import ROWS, corpus, curated_rows, truth_of  # noqa: F401  (corpus is a fixture)

from cocu.benchmarks.gallery_throughput import ARGS  # Chromium's flags: headless, no network of its own
from cocu.curation.show.gallery import write_gallery

SCREENSHOTS = Path(__file__).resolve().parents[1] / ".pytest_cache" / "cocu-screenshots"


def chromium_path() -> str | None:
    """The Chromium to drive: $COCU_CHROMIUM, one on the PATH, or one Playwright downloaded; None when none."""
    found = os.environ.get("COCU_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    downloads = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or Path.home() / ".cache" / "ms-playwright")
    for pattern in ("chromium-*/chrome-linux*/chrome", "chromium_headless_shell-*/chrome-linux*/headless_shell"):
        for candidate in sorted(downloads.glob(pattern)):
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def _no_browser(reason: str) -> None:
    """Skip, or fail under CI=true: there a test that never opens a page must not count as passed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the browser test fails rather than skips)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module", autouse=True)  # autouse: set up first, before the corpus is built
def browser():
    try:
        from playwright import sync_api
    except ImportError:
        _no_browser("playwright is not installed (it is in the test extra)")
    executable = chromium_path()
    if executable is None:
        _no_browser(
            "no Chromium: install Debian's chromium (make test does, as root), run `python -m playwright install "
            "chromium`, or set COCU_CHROMIUM"
        )
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("requestfailed", lambda request: errors.append(f"failed to load {request.url}"))
    yield page
    page.close()
    assert not errors, errors


def rendered_thumbnails(page) -> list[int]:
    """Bring every thumbnail of the page into view (they load lazily), wait for them, return their natural widths."""
    for image in page.locator("#grid img.thumb").all():
        image.scroll_into_view_if_needed()
    page.wait_for_function("[...document.querySelectorAll('#grid img.thumb')].every(i => i.complete)")
    page.evaluate("window.scrollTo(0, 0)")
    return page.eval_on_selector_all("#grid img.thumb", "images => images.map(i => i.naturalWidth)")


def shown_count(page) -> int:
    return int(page.inner_text("#count").split(" of ")[0].replace(",", ""))


@pytest.mark.slow
def test_gallery_renders_thumbnails_and_filters_by_concept_origin_and_error(corpus, page, tmp_path):  # noqa: F811
    out = tmp_path / "gallery"
    write_gallery(corpus["curated"], out, corpus["truth"])
    rows, truth = curated_rows(corpus["curated"]), truth_of(corpus["truth"])
    page.goto((out / "index.html").as_uri())
    assert page.locator("#grid .card").count() == 60 and shown_count(page) == ROWS
    widths = rendered_thumbnails(page)
    assert len(widths) == 60 and all(w == 64 for w in widths)  # rendered, not broken
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "gallery.png"))

    # a concept curation added to some images but not all: the filter shows exactly those
    counts = Counter(c for r in rows for c in r["cocu_concepts"])
    concept = min((c for c, n in counts.items() if 1 < n < ROWS - 2), key=lambda c: abs(counts[c] - 40))
    page.fill("#concept", concept)
    page.press("#concept", "Tab")
    assert shown_count(page) == counts[concept]
    focused = page.locator("#grid .card .chip.focus")
    assert page.locator("#grid .card").count() == focused.count() == min(counts[concept], 60)
    assert all(text.startswith(concept) for text in focused.all_inner_texts())
    assert len(rendered_thumbnails(page)) == min(counts[concept], 60)
    page.screenshot(path=str(SCREENSHOTS / "gallery-concept.png"))
    added = [r for r in rows if concept in r["cocu_concepts"] and concept not in r["caption_concepts"]]
    page.select_option("#origin", "added")
    assert shown_count(page) == len(added)
    page.select_option("#truth", "wrong")
    assert shown_count(page) == sum(concept not in truth[r["key"]] for r in added)
    page.select_option("#truth", "all")
    page.select_option("#sort", "desc")
    scores = [float(t) for t in page.locator(".chip.focus .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)

    page.fill("#concept", "")
    page.press("#concept", "Tab")
    page.select_option("#origin", "all")
    page.select_option("#error", "only")
    cards = page.locator("#grid .card")
    assert cards.count() == 2 and page.locator("#grid img.thumb").count() == 0
    assert all("image not decodable" in t and "cocu_error: " in t for t in cards.all_inner_texts())


@pytest.mark.slow
def test_summary_links_open_the_gallery_filtered(corpus, page, tmp_path):  # noqa: F811
    out = tmp_path / "gallery"
    write_gallery(corpus["curated"], out, corpus["truth"])
    page.goto((out / "summary.html").as_uri())
    for image in page.locator("img").all():
        image.scroll_into_view_if_needed()
    assert all(w > 300 for w in page.eval_on_selector_all("img", "images => images.map(i => i.naturalWidth)"))
    page.screenshot(path=str(SCREENSHOTS / "summary.png"), full_page=True)
    link = page.locator("table a").first
    concept = link.inner_text()
    link.click()
    page.wait_for_selector("#grid .card")
    assert page.input_value("#concept") == concept and page.input_value("#origin") == "added"
    rows = curated_rows(corpus["curated"])
    added = [r for r in rows if concept in r["cocu_concepts"] and concept not in r["caption_concepts"]]
    assert shown_count(page) == len(added)
    assert not page.locator(".chip.focus.named").count()
