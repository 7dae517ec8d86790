"""`mnistlab report`: one self-contained report.html, checked as text and in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from mnistlab import cli, report
from test_plots import shared_runs  # the tiny trained runs on synthetic data (tests/ is on sys.path)

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; .ci/run installs it. Never `playwright install`.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CNN_IMAGES = 10  # confusion, reliability, curves, samples, errors, filters x 2 layers, feature maps x 2, weights


class Page(HTMLParser):
    """Collects every tag's attributes and the section ids of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.links: list[str] = []
        self.sections: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return shared_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def cnn_report(runs) -> Path:
    assert cli.main(["report", str(runs["cnn"]), "--index", "2"]) == 0
    return runs["cnn"] / "report.html"


def test_report_is_self_contained(cnn_report, capsys):
    text = cnn_report.read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == ["metrics", "config", "confusion", "reliability", "curves", "samples", "errors",
                             "filters", "feature-maps", "weights"]
    assert len(page.images) == CNN_IMAGES
    for img in page.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix) and img["alt"]
        with Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix):]))) as png:
            assert png.format == "PNG" and png.size[0] > 100
    assert all(link.startswith(("#", "data:")) for link in page.links), page.links  # nothing fetched
    # The config is shown, escaped: a string from config.json cannot inject markup.
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in text
    assert "<script" not in text
    assert "test_accuracy" in text and "train.batch_size" in text and "data.validation_size" in text
    assert "Feature maps of test image #2" in text
    assert not list(cnn_report.parent.glob(".report.html*"))  # atomic write left no temp file


def section(text: str, anchor: str) -> str:
    """The HTML of one section of the report."""
    return re.search(f'<section id="{anchor}">(.*?)</section>', text, re.S).group(1)


def test_report_shows_numbers_for_people(runs, cnn_report):
    text = cnn_report.read_text(encoding="utf-8")
    metrics = json.loads((runs["cnn"] / "metrics.json").read_text())
    shown = section(text, "metrics")
    assert f'<th>test_accuracy</th><td class="num">{metrics["test_accuracy"]:.2%}</td>' in shown
    assert f'<th>test_loss</th><td class="num">{metrics["test_loss"]:.4f}</td>' in shown
    assert ">361 s (6.0 min)<" in shown  # timing.json's train_seconds, 361.055
    assert ">400 s (6.7 min)<" in shown and "181 s mean over 2 epochs (180–181 s)" in shown
    config = section(text, "config")
    assert '<th>data.cache_dir</th><td class="unset">– (default)</td>' in config  # null in config.json
    assert "<th>data.mirrors</th><td>none</td>" in config and "<th>data.download</th><td>no</td>" in config
    assert "null" not in config and "NaN" not in shown
    fitted = section(text, "reliability")  # calibration.json
    for key, value in (("temperature", "1.7"), ("ece_before", "3.12%"), ("ece_after", "0.81%"),
                       ("nll_before", "0.1235"), ("images", "20")):
        assert f'<th>{key}</th><td class="num">{value}</td>' in fitted, key
    assert "<th>fitted_on</th><td>validation</td>" in fitted


def test_report_of_softmax_run_has_weight_images_and_no_conv_sections(runs, tmp_path):
    messages: list[str] = []
    out = report.write_report(report.Run(runs["softmax"]), tmp_path / "softmax.html", log=messages.append)
    page = Page(out.read_text(encoding="utf-8"))
    assert "filters" not in page.sections and "feature-maps" not in page.sections
    assert len(page.images) == CNN_IMAGES - 4
    assert page.images[-1]["alt"] == "weights"
    assert "no calibration.json in the run folder: probabilities are the raw softmax" in out.read_text()
    # it says what it is doing, each slow step once
    assert messages[:3] == ["loading the mnist test split…", f"loading {runs['softmax'] / 'model.keras'}…",
                            "predicting 60 test images…"]
    assert [m for m in messages if m.startswith("drawing")] == [
        "drawing confusion…", "drawing reliability…", "drawing curves…", "drawing samples…", "drawing errors…",
        "drawing weights…"]
    assert messages[-1] == f"writing {out}…"


def test_report_notes_what_is_missing_instead_of_failing(runs, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("config.json", "model.keras"):  # no metrics.json, no history.csv
        (folder / name).write_bytes((runs["softmax"] / name).read_bytes())
    text = report.write_report(report.Run(folder)).read_text(encoding="utf-8")
    assert "no metrics.json in the run folder" in text and "no timing.json in the run folder" in text
    assert "history.csv: missing" in text


def test_report_index_is_validated(runs, capsys):
    assert cli.main(["report", str(runs["cnn"]), "--index", "60"]) == 2
    assert "--index 60: expected 0..59" in capsys.readouterr().err


@pytest.mark.slow
def test_report_renders_in_chromium(cnn_report, tmp_path):
    """Every image decodes in a real browser, nothing logs an error, a screenshot is taken."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} missing (CI=true: .ci/run must install chromium)")
        pytest.skip(f"{CHROMIUM} missing")
    from playwright.sync_api import sync_playwright

    artifacts = Path(os.environ.get("MNISTLAB_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    screenshot = artifacts / "report-chromium.png"
    screenshot.unlink(missing_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
            page.goto(cnn_report.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert len(images) == CNN_IMAGES
    broken = [i["alt"] for i in images if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert not errors, errors
    with Image.open(screenshot) as shot:
        assert shot.size[0] == 1200 and shot.size[1] > 900  # the whole page, longer than the window
