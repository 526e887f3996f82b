"""End to end in a real headless browser: Debian's chromium driven by Playwright.

The browser comes from ``scripts/install_browser.sh`` (apt's chromium; Playwright's own browser
download is never used). Without a browser or Playwright the test skips and says why.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from rtseg.data.io import read_mask
from rtseg.labeling.layout import DatasetLayout, read_queue

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("no chromium browser: run scripts/install_browser.sh (apt-get install chromium, needs root)")


@pytest.fixture
def page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) is not installed")
    executable = _chromium()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            pg = browser.new_page(viewport={"width": 1200, "height": 800})
            pg.set_default_timeout(20_000)
            yield pg
        finally:
            browser.close()


def _wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _decisions(dataset):
    p = dataset / "review.json"
    return json.loads(p.read_text())["decisions"] if p.exists() else {}


def test_review_by_keyboard_in_chromium(page, server, dataset, tmp_path):
    names = [it["name"] for it in read_queue(dataset)["items"]]
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url)
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function(f"document.body.dataset.shown === {json.dumps(names[0])}")
    assert page.inner_text("#counter").startswith("4 left of 4")
    assert page.inner_text("#name") == names[0]
    assert float(page.inner_text("#confidence")) == pytest.approx(read_queue(dataset)["items"][0]["confidence"], abs=1e-3)
    # the canvas shows the image at its size, with the overlay drawn
    assert page.evaluate("document.getElementById('view').width") == read_queue(dataset)["items"][0]["size"][0]
    page.screenshot(path=str(tmp_path / "review.png"))

    page.keyboard.press("a")  # accept the first (lowest confidence) sample
    page.keyboard.press("r")  # ... which moves on: reject the second
    page.wait_for_function("document.body.dataset.saved === '2'")
    assert _decisions(dataset)[names[0]]["decision"] == "accept"
    assert _decisions(dataset)[names[1]]["decision"] == "reject"
    assert page.inner_text("#counter").startswith("2 left of 4 · 1 accepted · 1 rejected")
    assert page.inner_text("#name") == names[2]

    # f: use the other teacher's mask; the sample's mask file is rewritten
    layout = DatasetLayout(dataset)
    item = read_queue(dataset)["items"][2]
    page.keyboard.press("f")
    page.wait_for_function("document.body.dataset.saved === '3'")
    assert _decisions(dataset)[names[2]] == {**_decisions(dataset)[names[2]], "decision": "flip", "teacher": "wide"}
    assert (read_mask(layout.resolve(item["mask"])) == read_mask(layout.resolve(item["teacher_masks"]["wide"]))).all()
    assert "teacher wide" in page.inner_text("#shown")

    # arrows move without deciding; the buttons work like the keys
    page.keyboard.press("ArrowLeft")
    assert page.inner_text("#name") == names[1]
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.inner_text("#name") == names[3]
    page.click("#accept")
    page.wait_for_function("document.body.dataset.saved === '4'")
    assert _decisions(dataset)[names[3]]["decision"] == "accept"
    _wait_for(lambda: page.inner_text("#counter").startswith("0 left of 4"))
    assert "all samples reviewed" in page.inner_text("#status")
    assert errors == []
