"""The real app in headless Chromium (Debian's chromium, Playwright) at phone, tablet and desktop sizes: the
image is shown whole and first, a known finding's box lies over it, the threshold and explain work on a
re-upload of the same file, zoom fetches full-resolution detail of the visible region only, an exam is hung
R-CC | L-CC above R-MLO | L-MLO; downloads; screenshots are kept under output/test-artifacts/."""

from __future__ import annotations

import json
import math
import re
import shutil
import threading
from pathlib import Path

import pytest
from bundle_fixture import shared_run, synthetic_dicom
from exam_fixture import SECRETS, VIEWS, disc_png, exam_files, view_dicom

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "output" / "test-artifacts"
SIZES = [(390, 844), (768, 1024), (1280, 800)]
SQUARE_RGB = (0xE6, 0x9F, 0x00)  # class 0's colour (Okabe-Ito orange)

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


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser_files")
    import cv2
    import numpy as np

    big = np.random.default_rng(1).integers(0, 60, (2400, 1600), dtype=np.uint8)
    for i in range(12):  # a grid of discs, so any zoomed region shows structure
        cv2.circle(big, (200 + (i % 3) * 600, 250 + (i // 3) * 600), 120, 200, -1)
    cv2.imwrite(str(root / "big.png"), big)
    return {
        "disc": disc_png(root / "disc.png"),
        "dicom": synthetic_dicom(root / "mammo.dcm", size=(192, 144)),
        "big": root / "big.png",
        "exam": exam_files(root / "exam"),
        "untagged": view_dicom(root / "untagged.dcm", "L-CC", seed=9, tags=False),
    }


class Page:
    """One page at one viewport, with the helpers the tests share."""

    def __init__(self, browser, server, size, **kw):
        self.ctx = browser.new_context(viewport={"width": size[0], "height": size[1]}, **kw)
        self.page = self.ctx.new_page()
        self.size = size
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(server + "/")

    def upload(self, *paths, selector="#file"):
        self.page.evaluate("delete document.body.dataset.ready")
        self.page.set_input_files(selector, [str(p) for p in paths])
        self.page.wait_for_selector("body[data-ready='1']", timeout=60_000)

    def threshold(self, value: float):
        self.page.fill("#threshold", f"{value:.2f}")
        self.page.dispatch_event("#threshold", "input")

    def view(self, selector="#canvas") -> dict:
        return json.loads(self.page.get_attribute(selector, "data-view"))

    def pixels(self, x: float, y: float, r: int = 2, selector="#canvas") -> list[tuple[int, int, int]]:
        """RGB of the canvas backing pixels in a (2r+1)² square around (x, y)."""
        flat = self.page.evaluate(
            """([sel, x, y, r]) => { const c = document.querySelector(sel);
                 return Array.from(c.getContext('2d').getImageData(x - r, y - r, 2 * r + 1, 2 * r + 1).data); }""",
            [selector, round(x), round(y), r],
        )
        return [tuple(flat[i : i + 3]) for i in range(0, len(flat), 4)]

    def shot(self, name: str):
        self.page.screenshot(path=str(ARTIFACTS / name))

    def close(self):
        self.ctx.close()
        assert not self.errors, self.errors


def _wait(page, predicate: str, timeout_s: float = 10.0) -> None:
    """Poll a JS function (the page's CSP forbids the eval that wait_for_function uses)."""
    import time

    end = time.monotonic() + timeout_s
    while not page.evaluate(predicate):
        assert time.monotonic() < end, f"timed out waiting for {predicate}"
        page.wait_for_timeout(50)


def _within(box: dict, width: int, height: int) -> bool:
    return (
        box["x"] >= -0.5
        and box["y"] >= -0.5
        and box["x"] + box["width"] <= width + 0.5
        and box["y"] + box["height"] <= height + 0.5
    )


def _findings(page) -> list[tuple[str, float, list[int]]]:
    out = []
    for text in page.locator("#findings li").all_inner_texts():
        m = re.match(r"(\w+) — ([\d.]+) at \((-?\d+), (-?\d+), (-?\d+), (-?\d+)\)", text)
        out.append((m.group(1), float(m.group(2)), [int(m.group(i)) for i in range(3, 7)]))
    return out


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_whole_image_shown_first_and_the_box_lies_over_the_finding(server, browser, files, size):
    p = Page(browser, server, size)
    page = p.page
    p.upload(files["disc"])
    p.threshold(0.5)  # the slider may lie below the image (narrow screens): moving it scrolls the page
    page.evaluate("window.scrollTo(0, 0)")
    vw, vh = size
    canvas = page.locator("#canvas").bounding_box()
    assert canvas["width"] > 0 and canvas["height"] > 0 and _within(canvas, vw, vh)
    v = p.view()
    img = {
        "x": canvas["x"] + v["tx"],
        "y": canvas["y"] + v["ty"],
        "width": v["width"] * v["s"],
        "height": v["height"] * v["s"],
    }
    assert (v["width"], v["height"]) == (96, 128)
    assert img["width"] * img["height"] > 0.2 * canvas["width"] * canvas["height"], "the image fills its box"
    assert _within(img, vw, vh), f"the whole image is on screen without scrolling: {img}"
    # the panel: beside the image on a wide screen, below it on a narrow one
    panel = page.locator("#result").bounding_box()
    if vw >= 1000:
        assert panel["x"] >= canvas["x"] + canvas["width"] - 1
    else:
        assert panel["y"] >= canvas["y"] + canvas["height"] - 1
    # the known finding (the bright disc at (50, 80), radius 12) and its box on the canvas
    found = _findings(page)
    count = page.inner_text("#count")
    assert count == f"{len(found)} finding{'s' if len(found) != 1 else ''} above 0.50 ({count.split('(')[1]}"
    assert re.fullmatch(r"\d+ findings? above 0\.50 \(\d+ in all\)", count)
    label, score, (x1, y1, x2, y2) = found[0]
    assert label == "square" and score > 0.9 and x1 <= 50 <= x2 and y1 <= 80 <= y2
    s, tx, ty = v["s"], v["tx"], v["ty"]
    edge = p.pixels(tx + x1 * s, ty + (y1 + y2) / 2 * s)  # the middle of the box's left side
    assert any(sum(abs(a - b) for a, b in zip(px, SQUARE_RGB)) < 60 for px in edge), edge
    inside = p.pixels(tx + (x1 + x2) / 2 * s, ty + (y1 + y2) / 2 * s, r=1)
    assert min(sum(px) / 3 for px in inside) > 110, "the box's centre lies on the bright disc"
    outside = p.pixels(tx + 85 * s, ty + 10 * s, r=1)
    assert max(sum(px) / 3 for px in outside) < 60, "away from the disc the image is dark"
    p.shot(f"webapp_{vw}x{vh}.png")
    p.close()


def test_threshold_and_explain_on_a_reupload_of_the_same_file(server, browser, files):
    p = Page(browser, server, (1280, 800))
    page = p.page
    assert page.is_hidden("#heatmap-controls")
    assert page.evaluate("fetch('/favicon.ico').then(r => r.status)") == 200
    p.upload(files["dicom"])
    p.threshold(0)
    n_all = int(page.get_attribute("#canvas", "data-visible"))
    assert n_all > 0 and page.locator("#findings li").count() == n_all
    assert page.inner_text("#count") == f"{n_all} findings above 0.00 ({n_all} in all)"
    facts = page.inner_text("#facts")
    assert "MG" in facts and "CC" in facts and not any(s in page.content() for s in SECRETS)
    # slider up: boxes disappear on the client, and the page says so
    before = len(p.requests)
    p.threshold(1)
    assert page.get_attribute("#canvas", "data-visible") == "0" and page.locator("#findings li").count() == 0
    assert page.inner_text("#count") == f"No findings above 1.00 ({n_all} in all)"
    p.threshold(0)
    page.uncheck(".class-toggle[data-index='0']")
    left = int(page.get_attribute("#canvas", "data-visible"))
    assert left < n_all and all("square" not in t for t in page.locator("#findings li").all_inner_texts())
    assert len(p.requests) == before, "filtering sends nothing"
    page.check(".class-toggle[data-index='0']")
    # explain, then choose the same file again: it is sent again, and the previous result stays meanwhile
    page.check("#explain")
    page.select_option("#explain-method", "gradcam++")  # lights every box of the blob detector
    page.evaluate("delete document.body.dataset.ready")
    page.set_input_files("#file", str(files["dicom"]))
    assert page.is_visible("#viewer") and page.get_attribute("#canvas", "data-visible") == str(n_all)
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    assert sum("/api/v1/predict" in u for u in p.requests) == 2
    assert page.is_visible("#heatmap-controls") and "gradcam++" in page.inner_text("#explain-note")
    n_maps = int(page.get_attribute("#canvas", "data-heatmaps"))
    assert n_maps == page.locator("#findings li.explained").count() > 0
    canvas_png = "document.getElementById('canvas').toDataURL('image/png')"
    with_heat = page.evaluate(canvas_png)
    page.uncheck("#show-heatmap")
    assert page.get_attribute("#canvas", "data-heatmaps") == "0" and page.evaluate(canvas_png) != with_heat
    page.check("#show-heatmap")
    page.locator("#findings li.explained").first.click()  # one finding's map alone
    assert page.get_attribute("#canvas", "data-heatmaps") == "1"
    page.locator("#findings li.explained").first.press("Enter")  # keyboard too
    assert page.get_attribute("#canvas", "data-heatmaps") == str(n_maps)
    lowest = float(page.locator("#findings li.explained").last.inner_text().split("—")[1].split()[0])
    p.threshold(math.floor(lowest * 100 - 1) / 100)
    p.shot("webapp_explain.png")
    # "Run again" without explain: a third request, no heat maps
    page.uncheck("#explain")
    page.evaluate("delete document.body.dataset.ready")
    page.click("#rerun")
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    assert sum("/api/v1/predict" in u for u in p.requests) == 3 and page.is_hidden("#heatmap-controls")
    # downloads
    with page.expect_download() as dl:
        page.click("#download-json")
    data = json.loads(Path(dl.value.path()).read_text())
    assert data["image"]["format"] == "dicom" and data["dicom"]["laterality"] == "L"
    assert "url" not in data["image"]["display"] and "png_base64" not in data["image"]
    with page.expect_download() as dl:
        page.click("#download-png")
    assert dl.value.suggested_filename == "detections.png"
    p.close()


def test_zoom_fetches_full_resolution_detail_of_the_visible_region(server, browser, files):
    p = Page(browser, server, (1280, 800))
    page = p.page
    p.upload(files["big"])
    fit = p.view()
    assert (fit["width"], fit["height"]) == (1600, 2400)
    crops: list[str] = []
    page.on("request", lambda r: crops.append(r.url) if "/crop?" in r.url else None)
    for _ in range(3):
        page.click("#zoom-in")
    _wait(page, "() => Number(document.getElementById('canvas').dataset.crops) >= 1")
    v = p.view()
    assert v["s"] > 3 * fit["s"] and crops
    q = dict(kv.split("=") for kv in crops[-1].split("?")[1].split("&"))
    x, y, w, h = (int(q[k]) for k in "xywh")
    canvas = page.locator("#canvas").bounding_box()
    # only the visible region, at screen resolution
    assert w <= canvas["width"] / v["s"] + 2 and h <= canvas["height"] / v["s"] + 2
    assert 0 <= x and x + w <= 1601 and 0 <= y and y + h <= 2401 and w * h < 0.2 * 1600 * 2400
    assert int(q["max_side"]) <= 2048
    p.shot("webapp_zoomed.png")
    # "Zoom" on a finding centres it
    page.click("#zoom-fit")
    label, score, (x1, y1, x2, y2) = _findings(page)[0]
    page.locator("#findings li .zoom-to").first.click()
    z = p.view()
    assert z["s"] > fit["s"] * 1.5
    on_canvas = [z["tx"] + x1 * z["s"], z["ty"] + y1 * z["s"], z["tx"] + x2 * z["s"], z["ty"] + y2 * z["s"]]
    assert 0 <= on_canvas[0] < on_canvas[2] <= z["canvas"][0] and 0 <= on_canvas[1] < on_canvas[3] <= z["canvas"][1]
    # keyboard: fit, zoom, pan; wheel zooms at the pointer
    page.focus("#viewer")
    page.keyboard.press("0")
    assert p.view()["s"] == pytest.approx(fit["s"])
    page.keyboard.press("+")
    zoomed = p.view()
    assert zoomed["s"] > fit["s"]
    page.keyboard.press("ArrowDown")  # the zoomed image is taller than the canvas: it pans up
    assert p.view()["ty"] < zoomed["ty"]
    page.keyboard.press("0")
    page.mouse.move(canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2)
    page.mouse.wheel(0, -400)
    _wait(page, f"() => JSON.parse(document.getElementById('canvas').dataset.view).s > {fit['s'] * 1.2}")
    focus = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert focus != "none", "visible focus"
    p.close()


@pytest.mark.parametrize("size", [(390, 844), (1280, 800)], ids=["390x844", "1280x800"])
def test_exam_is_hung_in_protocol_order(server, browser, files, size):
    p = Page(browser, server, size)
    page = p.page
    exam = files["exam"]
    by_name = {f.stem: f for f in exam}
    # chosen in a scrambled order, with a view that has no laterality tag
    p.upload(by_name["L-MLO"], by_name["R-CC"], files["untagged"], by_name["L-CC"], by_name["R-MLO"])
    figs = page.locator(".hanging figure")
    assert [figs.nth(i).get_attribute("data-view") for i in range(4)] == ["R-CC", "L-CC", "R-MLO", "L-MLO"]
    boxes = {figs.nth(i).get_attribute("data-view"): figs.nth(i).bounding_box() for i in range(4)}
    assert boxes["R-CC"]["x"] < boxes["L-CC"]["x"] and boxes["R-MLO"]["x"] < boxes["L-MLO"]["x"]
    assert boxes["R-CC"]["y"] < boxes["R-MLO"]["y"] and boxes["L-CC"]["y"] == boxes["R-CC"]["y"]
    for name, b in boxes.items():
        assert b["width"] > 0 and b["height"] > 0 and _within(b, *size), name
        v = p.view(f".hanging figure[data-view='{name}'] canvas")
        assert (v["height"], v["width"]) == VIEWS[name] and v["mirror"] is (name[0] == "R")
        # the chest walls meet: right views against their cell's right edge, left views against the left
        right_edge = v["tx"] + v["width"] * v["s"]
        assert (right_edge == pytest.approx(v["canvas"][0], abs=1)) if name[0] == "R" else v["tx"] == 0
    extra = page.locator(".extras figure")
    assert extra.count() == 1 and "no laterality tag" in extra.inner_text()
    assert "Exam 1 · Patient A" in page.inner_text("#exam")
    scores = page.inner_text(".study .scores")
    assert re.search(r"right \d\.\d\d · left \d\.\d\d · exam \d\.\d\d", scores)
    content = page.content()
    assert not any(s in content for s in SECRETS) and "1.2.826.0.1.3680043.8.498.4242" not in content
    # one threshold and class filter for the whole exam
    p.threshold(0)
    every = page.inner_text("#count")
    total = int(every.split()[0])
    assert every == f"{total} findings above 0.00 ({total} in all in 5 images)"
    p.threshold(0.99)
    assert int(page.inner_text("#count").split()[0]) < total
    for i in (0, 1):
        page.uncheck(f".class-toggle[data-index='{i}']")
    assert page.inner_text("#count") == f"No findings above 0.99 ({total} in all in 5 images)"
    assert "right 0.00 · left 0.00" in page.inner_text(".study .scores")
    for i in (0, 1):
        page.check(f".class-toggle[data-index='{i}']")
    p.threshold(0.5)
    page.evaluate("window.scrollTo(0, 0)")
    p.shot(f"webapp_exam_{size[0]}x{size[1]}.png")
    # a view opens in the zoomable viewer and back
    page.click(".hanging figure[data-view='R-CC'] canvas")
    assert page.is_visible("#viewer") and p.view()["mirror"] is True
    page.click("#back-to-exam")
    assert page.is_visible("#exam") and page.is_hidden("#viewer")
    p.close()


def test_exam_from_a_zip_with_a_missing_view_says_so(server, browser, files, tmp_path):
    import zipfile

    archive = tmp_path / "exam.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in files["exam"]:
            if f.stem != "R-MLO":
                z.write(f, f"exam/{f.name}")
    p = Page(browser, server, (1280, 800))
    p.upload(archive)  # one .zip is read as an exam
    assert sum("/api/v1/exam" in u for u in p.requests) == 1
    missing = p.page.locator(".hanging figure.missing")
    assert missing.count() == 1 and missing.get_attribute("data-view") == "R-MLO"
    assert "R-MLO: missing" in missing.inner_text() and "missing: R-MLO" in p.page.inner_text(".study h3")
    # a finding of the exam's list opens its view zoomed in on it
    first = p.page.locator("#exam-findings li").first
    first.locator(".zoom-to").click()
    assert p.page.is_visible("#viewer") and not p.view()["s"] == pytest.approx(
        p.view()["canvas"][1] / p.view()["height"]
    )
    p.close()
