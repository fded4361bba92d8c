"""The real app in headless Chromium (Debian's chromium, Playwright): upload a DICOM, see boxes and
findings, filter with the slider and class toggles, download the JSON; explain findings and toggle the
heat map; screenshots are kept."""
from __future__ import annotations

import json
import math
import shutil
import threading
from pathlib import Path

import pytest

from bundle_fixture import shared_run, synthetic_dicom

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "output" / "test-artifacts"

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="Debian chromium not installed (scripts/ensure_chromium.sh installs it)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from waitress import create_server

    from meddet.hub import load_predictor
    from webapp import create_app

    bundle = shared_run(tmp_path_factory)[1]
    app = create_app(load_predictor(bundle, device="cpu"))
    srv = create_server(app, host="127.0.0.1", port=0, threads=2)
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.effective_port}"
    srv.close()


def _launch(pw):
    return pw.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run"],
    )


def test_upload_view_filter_download(server, tmp_path):
    from playwright.sync_api import sync_playwright

    dcm = synthetic_dicom(tmp_path / "mammo.dcm", size=(192, 144))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = _launch(pw)
        try:
            page = browser.new_page(accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            page.set_input_files("#file", str(dcm))
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            page.fill("#threshold", "0")
            page.dispatch_event("#threshold", "input")
            n_all = int(page.get_attribute("#canvas", "data-visible"))
            assert n_all > 0 and page.locator("#findings li").count() == n_all
            facts = page.inner_text("#facts")
            assert "MG" in facts and "CC" in facts and "Doe" not in page.content()
            page.screenshot(path=str(ARTIFACTS / "webapp_result.png"), full_page=True)
            # Slider up: boxes disappear, on the client (no new request).
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.fill("#threshold", "1")
            page.dispatch_event("#threshold", "input")
            assert page.get_attribute("#canvas", "data-visible") == "0"
            assert page.locator("#findings li").count() == 0
            page.fill("#threshold", "0")
            page.dispatch_event("#threshold", "input")
            page.uncheck(".class-toggle[data-index='0']")
            left = int(page.get_attribute("#canvas", "data-visible"))
            assert left < n_all and all("square" not in t for t in page.locator("#findings li").all_inner_texts())
            assert not any("/api/" in u for u in requests)
            with page.expect_download() as dl:
                page.click("#download-json")
            saved = tmp_path / "detections.json"
            dl.value.save_as(saved)
            data = json.loads(saved.read_text())
            assert len(data["detections"]) == left and data["image"]["format"] == "dicom"
            assert data["dicom"]["laterality"] == "L" and "png_base64" not in data["image"]
            with page.expect_download() as dl:
                page.click("#download-png")
            assert dl.value.suggested_filename == "detections.png"
            assert not errors, errors
        finally:
            browser.close()


def test_explain_toggle_shows_the_heat_map(server, tmp_path):
    from playwright.sync_api import sync_playwright

    dcm = synthetic_dicom(tmp_path / "mammo.dcm", size=(192, 144))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    canvas_png = "document.getElementById('canvas').toDataURL('image/png')"
    with sync_playwright() as pw:
        browser = _launch(pw)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(server + "/")
            assert page.is_hidden("#heatmap-controls")
            page.check("#explain")
            # The tiny 4-iteration model's boxes are junk; Grad-CAM++ lights them all (HiResCAM may be empty).
            page.select_option("#explain-method", "gradcam++")
            page.set_input_files("#file", str(dcm))
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            page.fill("#threshold", "0")
            page.dispatch_event("#threshold", "input")
            assert page.is_visible("#heatmap-controls") and "gradcam++" in page.inner_text("#explain-note")
            n_maps = int(page.get_attribute("#canvas", "data-heatmaps"))
            assert n_maps == page.locator("#findings li.explained").count() > 0
            with_heat = page.evaluate(canvas_png)
            page.uncheck("#show-heatmap")
            assert page.get_attribute("#canvas", "data-heatmaps") == "0"
            without = page.evaluate(canvas_png)
            assert without != with_heat, "the heat map must change the picture"
            page.screenshot(path=str(ARTIFACTS / "webapp_explain_off.png"), full_page=True)
            page.check("#show-heatmap")
            assert page.evaluate(canvas_png) == with_heat
            page.locator("#findings li.explained").first.click()  # one finding's map alone
            assert page.get_attribute("#canvas", "data-heatmaps") == "1"
            assert page.locator("#findings li.selected").count() == 1
            page.locator("#findings li.explained").first.click()
            assert page.get_attribute("#canvas", "data-heatmaps") == str(n_maps)
            # Screenshot with few findings besides the explained ones (slider just below the lowest explained score).
            lowest = float(page.locator("#findings li.explained").last.inner_text().split("—")[1].split()[0])
            page.fill("#threshold", f"{math.floor(lowest * 100 - 1) / 100:.2f}")
            page.dispatch_event("#threshold", "input")
            assert page.get_attribute("#canvas", "data-heatmaps") == str(n_maps)
            page.screenshot(path=str(ARTIFACTS / "webapp_explain.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
