"""The drawing page in a real browser: headless Chromium (Debian's, driven by Playwright) draws
digits stroke by stroke with the mouse, and the page must show the trained model's right answer,
the bars and the 28 x 28 image the model saw. Screenshots go to $MNISTLAB_TEST_ARTIFACTS.

Skipped when Chromium or Playwright is missing, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

import _models
from mnistlab import preprocess, serve
from mnistlab.runs import load_predictor

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# Strokes in canvas pixels (the pad is 280 x 280), as a person would draw them.
DIGITS = {
    "7": [[(80, 70), (200, 70), (120, 220)]],
    "4": [[(170, 50), (80, 160), (200, 160)], [(170, 50), (170, 230)]],
    "0": [[(140, 50), (190, 80), (200, 140), (190, 200), (140, 230), (90, 200), (80, 140), (90, 80), (140, 50)]],
}
# The page marks <body> settled when no prediction is pending; CSS selectors need no eval(),
# which the page's Content-Security-Policy forbids.
SETTLED = "body[data-settled='true']:is([data-state='shown'], [data-state='error'])"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true, so this is a failure, not a skip)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def stroke(page, box: dict, points: list[tuple[int, int]]) -> None:
    scale = box["width"] / 280
    x0, y0 = box["x"], box["y"]
    page.mouse.move(x0 + points[0][0] * scale, y0 + points[0][1] * scale)
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x0 + x * scale, y0 + y * scale, steps=12)
    page.mouse.up()


def test_drawing_on_the_page_shows_the_right_digit(browser, real_mnist, tmp_path_factory, monkeypatch):
    predictor = load_predictor(_models.trained_run(real_mnist, tmp_path_factory))
    sent_sizes: set[tuple[int, int]] = set()
    original = preprocess.preprocess

    def recording(picture, *args, **kwargs):  # the server runs in this process: see what the page sends
        sent_sizes.add(Image.open(io.BytesIO(picture)).size)
        return original(picture, *args, **kwargs)

    monkeypatch.setattr(preprocess, "preprocess", recording)
    artifacts = _models.artifacts_dir(tmp_path_factory)
    with _models.RunningServer(serve.create_app(predictor)) as running:
        page = browser.new_page(viewport={"width": 900, "height": 700})
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        console_errors: list[str] = []
        # 422 is the server's "no digit found" for a first, still tiny stroke: expected, not an error.
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" and "422" not in m.text
                else None)
        page.goto(running.url + "/")
        page.locator("#model", has_text="small-cnn").wait_for()
        box = page.locator("#pad").bounding_box()
        for digit, strokes in DIGITS.items():
            page.click("#clear")
            for points in strokes:
                stroke(page, box, points)
            page.locator(SETTLED).wait_for(timeout=30_000)
            page.screenshot(path=str(artifacts / f"browser-draw-{digit}.png"))
            shown = page.locator("#prediction").get_attribute("data-digit")
            assert shown == digit, f"drew {digit}, the page says {shown}: {page.locator('#status').text_content()}"
            best = page.locator(f"#bars li[data-digit='{digit}']")
            assert "best" in best.get_attribute("class")
            assert float(best.locator(".pct").text_content().rstrip("%")) > 50
            seen_ink = page.evaluate("""() => {
                const d = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data;
                let lit = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 127) lit++; return lit; }""")
            assert 40 < seen_ink < 400  # a digit's worth of bright pixels in the 28 x 28 view
        page.click("#clear")
        assert page.locator("#prediction").text_content() == "?"
        assert page.evaluate("document.body.dataset.state") == "idle"
        page.close()
    assert requested and all(url.startswith(running.url + "/") for url in requested), requested
    assert sent_sizes == {(56, 56)}  # the page sends its drawing downscaled, as bench_serve.py's "png" payload
    assert not console_errors, console_errors


def test_a_dot_is_not_a_digit(browser, real_mnist, tmp_path_factory):
    predictor = load_predictor(_models.trained_run(real_mnist, tmp_path_factory))
    with _models.RunningServer(serve.create_app(predictor)) as running:
        page = browser.new_page()
        page.goto(running.url + "/")
        box = page.locator("#pad").bounding_box()
        page.mouse.click(box["x"] + 20, box["y"] + 20)  # one tap in a corner: a speck
        page.locator(SETTLED).wait_for(timeout=30_000)
        state = page.evaluate("document.body.dataset.state")
        status = page.locator("#status").text_content()
        page.close()
    assert state == "error" and "no digit found" in status


def test_an_unsure_model_says_4_or_9(browser):
    """A model torn between 4 and 9: the page says "4 or 9?" and shows both percentages."""
    from mnistlab.inference import Predictor
    import numpy as np

    torn = np.array([0, 0, 0, 0, 3.0, 0, 0, 0, 0, 2.8], np.float32)
    predictor = Predictor("torn", "keras", Path("torn"), 0, {}, call=lambda x: np.tile(torn, (len(x), 1)))
    with _models.RunningServer(serve.create_app(predictor)) as running:
        page = browser.new_page()
        page.goto(running.url + "/")
        box = page.locator("#pad").bounding_box()
        for points in DIGITS["4"]:
            stroke(page, box, points)
        page.locator(SETTLED).wait_for(timeout=30_000)
        shown = page.locator("#prediction").text_content()
        confidence = page.locator("#confidence").text_content()
        unsure = page.locator("#prediction").get_attribute("data-unsure")
        page.close()
    assert shown == "4 or 9?" and unsure == "true"
    assert confidence.startswith("4: ") and ", 9: " in confidence
