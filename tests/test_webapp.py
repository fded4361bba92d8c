"""Web app through Flask's test client: API, safety (bad input, limits, privacy, CORS, queue) and exactness."""

from __future__ import annotations

import io
import logging
import struct
import threading
import zlib

import cv2
import numpy as np
import pytest
from bundle_fixture import METRICS, shared_run, synthetic_dicom

SECRETS = ("P_SECRET_042", "Doe^Jane", "Doe", "19600101", "secret-name")


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    return shared_run(tmp_path_factory)[1]


@pytest.fixture(scope="session")
def predictor(bundle):
    from meddet.hub import load_predictor

    return load_predictor(bundle, device="cpu")


@pytest.fixture
def client(predictor):
    from webapp import create_app

    app = create_app(predictor, max_upload_mb=1, max_pixels=4_000_000)
    return app.test_client()


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def _image(seed: int, shape=(96, 120)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, shape, dtype=np.uint8)
    y, x = rng.integers(0, 40, 2)
    img[y : y + 30, x : x + 30] = 220
    return img


def _post(client, data: bytes, name: str = "x.png", **query):
    return client.post(
        "/api/v1/predict",
        query_string=query,
        data={"file": (io.BytesIO(data), name)},
        content_type="multipart/form-data",
    )


def _healthy(client) -> None:
    r = client.get("/api/v1/health")
    assert r.status_code == 200 and r.get_json()["status"] == "ok"


def test_each_image_gets_its_own_predictions(client, predictor):
    a, b = _image(1), _image(2, (110, 90))
    ra, rb = _post(client, _png(a)).get_json(), _post(client, _png(b)).get_json()
    for img, r in ((a, ra), (b, rb)):
        want = predictor(img)
        assert r["image"] == {"format": "png", "width": img.shape[1], "height": img.shape[0]}
        got = sorted((d["score"], d["box"], d["label"]) for d in r["detections"])
        exp = sorted(
            (round(float(s), 5), [round(float(v), 2) for v in bx], lab)
            for s, bx, lab in zip(want["scores"], want["boxes"], want["labels"])
        )
        assert got == exp and len(got) > 0
    assert ra["detections"] != rb["detections"]


def test_threshold_filters_and_is_validated(client):
    data = _png(_image(1))
    all_dets = _post(client, data).get_json()["detections"]
    t = sorted(d["score"] for d in all_dets)[len(all_dets) // 2]
    r = client.post("/api/v1/predict", data={"file": (io.BytesIO(data), "a.png"), "threshold": str(t)})
    kept = r.get_json()["detections"]
    assert kept == [d for d in all_dets if d["score"] >= t] and 0 < len(kept) < len(all_dets)
    r = client.post("/api/v1/predict", data={"file": (io.BytesIO(data), "a.png"), "threshold": "2"})
    assert r.status_code == 400 and "threshold" in r.get_json()["error"]["message"]


def _png_header_only(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


@pytest.mark.parametrize(
    "case,status,words",
    [
        ("random", 415, "unsupported file type"),
        ("truncated_png", 422, "cannot be decoded"),
        ("bomb_png", 413, "100000x100000"),
        ("bomb_jpeg", 413, "60000x50000"),
        ("dicom_no_pixels", 422, "no pixel data"),
        ("empty", 400, "empty upload"),
        ("huge", 413, "upload too large"),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_the_server_stays_up(client, tmp_path, case, status, words):
    if case == "random":
        data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    elif case == "truncated_png":
        data = _png(_image(3))[:200]
    elif case == "bomb_png":
        data = _png_header_only(100_000, 100_000) + b"\x00" * 64
    elif case == "bomb_jpeg":
        jpg = bytearray(cv2.imencode(".jpg", _image(3))[1].tobytes())
        sof = jpg.index(b"\xff\xc0")
        jpg[sof + 5 : sof + 9] = struct.pack(">HH", 50_000, 60_000)  # height, width in the frame header
        data = bytes(jpg)
    elif case == "dicom_no_pixels":
        data = synthetic_dicom(tmp_path / "n.dcm", pixels=False).read_bytes()
    elif case == "empty":
        data = b""
    else:
        data = b"\x89PNG\r\n\x1a\n" + b"\x00" * (2 * 1024 * 1024)
    r = _post(client, data)
    assert r.status_code == status
    assert words in r.get_json()["error"]["message"]
    _healthy(client)


def test_missing_file_field(client):
    r = client.post("/api/v1/predict", data={})
    assert r.status_code == 400 and "'file'" in r.get_json()["error"]["message"]


def test_dicom_facts_without_identifying_values(client, tmp_path, caplog, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    dcm = synthetic_dicom(tmp_path / "d.dcm")
    with caplog.at_level(logging.DEBUG):
        r = _post(client, dcm.read_bytes(), name="secret-name.dcm")
    assert r.status_code == 200
    body = r.get_data(as_text=True)
    facts = r.get_json()["dicom"]
    assert facts["modality"] == "MG" and facts["laterality"] == "L" and facts["view"] == "CC"
    assert (facts["rows"], facts["columns"]) == (160, 128)
    for s in SECRETS:
        assert s not in body and s not in caplog.text
    assert list((tmp_path / "tmp").iterdir()) == []  # nothing left behind


def test_security_headers_and_closed_cors(client, predictor):
    r = client.get("/api/v1/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["Cache-Control"] == "no-store"
    from webapp import create_app

    open_app = create_app(predictor, cors_origins=["https://ok.example"]).test_client()
    r = open_app.get("/api/v1/health", headers={"Origin": "https://ok.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://ok.example"


def test_model_page_api_and_openapi(client):
    info = client.get("/api/v1/model").get_json()
    assert [c["name"] for c in info["classes"]] == ["square", "disc"]
    assert [c["score_thresh"] for c in info["classes"]] == [0.3, 0.4]
    assert info["metrics"] == METRICS
    page = client.get("/model").get_data(as_text=True)
    assert "disc" in page and "bbox/AP50" in page and "Not a medical device" in page
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.") and "post" in spec["paths"]["/api/v1/predict"]
    assert {"400", "413", "415", "422", "503"} <= set(spec["paths"]["/api/v1/predict"]["post"]["responses"])
    assert "dropzone" in client.get("/").get_data(as_text=True)


def test_full_queue_answers_503(predictor):
    from webapp import create_app

    app = create_app(predictor, max_queue=1)
    service = app.config["MEDDET_SERVICE"]
    entered, release = threading.Event(), threading.Event()
    real = service.predictor

    class Slow:
        class_names = real.class_names

        def read(self, path, **kwargs):
            return real.read(path, **kwargs)

        def __call__(self, image):
            entered.set()
            release.wait(10)
            return real(image)

    service.predictor = Slow()
    data = _png(_image(1))
    first: list = []
    t = threading.Thread(target=lambda: first.append(_post(app.test_client(), data).status_code))
    t.start()
    assert entered.wait(10)
    r = _post(app.test_client(), data)
    assert r.status_code == 503 and "busy" in r.get_json()["error"]["message"]
    _healthy(app.test_client())
    release.set()
    t.join(10)
    assert first == [200]


def _decode_data_url(url: str) -> np.ndarray:
    import base64

    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    raw = base64.b64decode(url[len(prefix) :])
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    return cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)


def test_explain_returns_png_heat_maps_of_the_image_size(client):
    img = _image(1)  # 96 x 120
    plain = _post(client, _png(img)).get_json()
    r = client.post(
        "/api/v1/predict", data={"file": (io.BytesIO(_png(img)), "a.png"), "explain": "1", "threshold": "0"}
    )
    assert r.status_code == 200
    body = r.get_json()
    strip = [{k: v for k, v in d.items() if not k.startswith("heatmap")} for d in body["detections"]]
    assert strip == plain["detections"], "explaining must not change the predictions"
    e = body["explanation"]
    assert (e["method"], e["width"], e["height"]) == ("hirescam", 120, 96)
    assert e["candidates"] == len(plain["detections"]) and e["explained"] == min(5, e["candidates"]) > 0
    assert e["limited_by"] == ("max_detections" if e["candidates"] > 5 else None)
    assert _decode_data_url(e["overlay"]).shape == (96, 120, 4)
    explained = [d for d in body["detections"] if "heatmap" in d]
    assert explained == body["detections"][: e["explained"]], "the highest-scoring findings are explained"
    empty = 0
    for d in explained:
        heat = _decode_data_url(d["heatmap"])
        assert heat.shape == (96, 120, 4) and d["heatmap_layer"] == "p2"
        empty += int(heat[..., 3].max() == 0)
    assert e["empty_maps"] == empty  # the 4-iteration model's boxes are junk: their HiResCAM may be all zero


def test_explain_overlay_combines_the_findings_maps(client):
    """Grad-CAM++ (weights from the box's gradients, applied to the whole map) lights every finding."""
    body = _post(client, _png(_image(3)), explain="1", explain_method="gradcam++", threshold="0").get_json()
    e = body["explanation"]
    overlay = _decode_data_url(e["overlay"])
    maps = [_decode_data_url(d["heatmap"]) for d in body["detections"] if "heatmap" in d]
    assert e["method"] == "gradcam++" and len(maps) == e["explained"] > 0 and e["empty_maps"] == 0
    for m in maps:
        assert m[..., 3].max() > 0 and m[..., 3].min() == 0  # transparent where cold, opaque-ish where hot
    np.testing.assert_allclose(overlay[..., 3], np.max([m[..., 3] for m in maps], axis=0), atol=1)


def test_explain_is_validated_and_bounded(predictor):
    from webapp import create_app

    data = _png(_image(2))
    bounded = create_app(predictor, explain_timeout_s=0, explain_max_side=48).test_client()
    r = _post(bounded, data, explain="1", explain_method="eigencam", threshold="0")
    e = r.get_json()["explanation"]
    assert r.status_code == 200 and e["method"] == "eigencam" and e["candidates"] > 0
    assert e["explained"] == 0 and e["limited_by"] == "time"  # the time limit stops explanations, not the answer
    assert (e["width"], e["height"]) == (48, 38) and _decode_data_url(e["overlay"]).shape == (38, 48, 4)
    r = _post(bounded, data, explain="1", explain_threshold="1")
    assert r.get_json()["explanation"]["candidates"] == 0 and len(r.get_json()["detections"]) > 0
    r = _post(bounded, data, explain="1", explain_threshold="-1")
    assert r.status_code == 400 and "explain_threshold" in r.get_json()["error"]["message"]
    r = _post(bounded, data, explain="1", explain_method="scorecam")
    assert r.status_code == 400 and "explain_method" in r.get_json()["error"]["message"]
    r = _post(bounded, data, explain="maybe")
    assert r.status_code == 400 and "explain" in r.get_json()["error"]["message"]
    spec = bounded.get("/api/v1/openapi.json").get_json()
    params = {p["name"]: p for p in spec["paths"]["/api/v1/predict"]["post"]["parameters"]}
    assert "48 pixels" in params["explain"]["description"] and "0 s" in params["explain"]["description"]
    assert params["explain_method"]["schema"]["enum"] == ["hirescam", "gradcam", "gradcam++", "eigencam"]
    assert "overlay" in spec["components"]["schemas"]["Explanation"]["properties"]


def test_large_uploads_are_never_spooled_to_disk(client, monkeypatch):
    # werkzeug spools file parts over 500 KB to a temporary file: the app keeps them in memory
    import tempfile

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was written to a temporary file")

    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", no_disk)
    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_disk)
    import werkzeug.formparser

    monkeypatch.setattr(werkzeug.formparser, "SpooledTemporaryFile", no_disk)
    img = np.random.default_rng(5).integers(0, 256, (400, 600, 3), dtype=np.uint8)
    data = _png(img)
    assert 500_000 < len(data) < 1_000_000
    r = _post(client, data)
    assert r.status_code == 200 and r.get_json()["image"]["width"] == 600


# ---------------------------------------------------------------- issue 14: correct, lean, exams
def _strict_json(raw: bytes):
    import json

    def refuse(name):
        raise AssertionError(f"not JSON: bare {name}")

    return json.loads(raw, parse_constant=refuse)


def test_undefined_metrics_are_null_in_json_and_undefined_on_the_page(predictor, monkeypatch):
    from webapp import create_app

    meta = dict(getattr(predictor, "bundle", None) or {})
    meta["metrics"] = {"bbox/AP": float("nan"), "bbox/AP50": 0.25, "froc/sens@inf": float("inf")}
    monkeypatch.setattr(predictor, "bundle", meta, raising=False)
    c = create_app(predictor).test_client()
    info = _strict_json(c.get("/api/v1/model").data)
    assert info["metrics"] == {"bbox/AP": None, "bbox/AP50": 0.25, "froc/sens@inf": None}
    page = c.get("/model").get_data(as_text=True)
    assert "nan" not in page.lower().replace("nan-", "") and "undefined" in page and "0.2500" in page


@pytest.mark.parametrize("rle", [False, True])
def test_truncated_dicom_is_reported_as_truncated(client, tmp_path, rle):
    from exam_fixture import view_dicom

    dcm = view_dicom(tmp_path / "t.dcm", "L-CC", transfer_syntax="rle" if rle else None).read_bytes()
    r = _post(client, dcm[: len(dcm) * 2 // 3])
    assert r.status_code == 422
    msg = r.get_json()["error"]["message"]
    assert "truncated file" in msg and "no pixel data" not in msg and str(tmp_path) not in msg


def test_favicon(client):
    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.mimetype == "image/svg+xml" and b"<svg" in r.data
    assert 'rel="icon"' in client.get("/").get_data(as_text=True)


def test_display_image_is_small_and_boxes_stay_in_original_pixels(predictor):
    from webapp import create_app

    c = create_app(predictor).test_client()
    big = cv2.resize(_image(1), (1200, 960), interpolation=cv2.INTER_NEAREST)  # 1200 x 960
    plain = _post(c, _png(big)).get_json()
    r = _post(c, _png(big), display="1", display_max_side="600")
    body = _strict_json(r.data)
    disp = body["image"]["display"]
    assert (disp["width"], disp["height"], disp["format"]) == (600, 480, "jpeg") and disp["scale"] == 0.5
    assert disp["url"].startswith("data:image/jpeg;base64,") and disp["bytes"] < 200_000
    assert body["detections"] == plain["detections"], "boxes stay in the original image's pixels"
    import base64

    pic = cv2.imdecode(np.frombuffer(base64.b64decode(disp["url"].split(",", 1)[1]), np.uint8), cv2.IMREAD_GRAYSCALE)
    want = cv2.resize(big, (600, 480), interpolation=cv2.INTER_AREA)
    assert pic.shape == (480, 600) and np.abs(pic.astype(int) - want).mean() < 3
    webp = _post(c, _png(big), display="1", display_format="webp").get_json()["image"]["display"]
    assert webp["url"].startswith("data:image/webp;base64,") and webp["width"] == 1200  # never enlarged
    assert _post(c, _png(big), display="1", display_format="gif").status_code == 400


def test_crops_are_full_resolution_bounded_and_expire(predictor):
    import time

    from webapp import create_app

    app = create_app(predictor, image_store_items=2, image_store_ttl_s=30)
    c = app.test_client()
    big = cv2.resize(_image(2), (1200, 960), interpolation=cv2.INTER_NEAREST)
    ids = [
        _post(c, _png(big), display="1", display_max_side="300").get_json()["image"]["display"]["id"] for _ in range(3)
    ]
    crop = c.get(f"/api/v1/images/{ids[2]}/crop?x=100.5&y=200&w=150&h=120")
    assert crop.status_code == 200 and crop.mimetype == "image/jpeg"
    assert crop.headers["X-Crop-Region"] == "100,200,151,120" and crop.headers["Cache-Control"] == "no-store"
    got = cv2.imdecode(np.frombuffer(crop.data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert got.shape == (120, 151) and np.abs(got.astype(int) - big[200:320, 100:251]).mean() < 3
    small = c.get(f"/api/v1/images/{ids[2]}/crop?x=0&y=0&w=1200&h=960&max_side=100")
    assert cv2.imdecode(np.frombuffer(small.data, np.uint8), cv2.IMREAD_GRAYSCALE).shape == (80, 100)
    # bounded in count: the oldest image is gone; a bad region is refused
    assert c.get(f"/api/v1/images/{ids[0]}/crop?x=0&y=0&w=10&h=10").status_code == 404
    assert c.get(f"/api/v1/images/{ids[1]}/crop?x=0&y=0&w=10&h=10").status_code == 200
    r = c.get(f"/api/v1/images/{ids[1]}/crop?x=5000&y=0&w=10&h=10")
    assert r.status_code == 400 and "outside" in r.get_json()["error"]["message"]
    assert c.get(f"/api/v1/images/{ids[1]}/crop?x=0&y=0&w=-1&h=10").status_code == 400
    # without display=1 nothing is kept; bounded in time
    store = app.config["MEDDET_SERVICE"].store
    before = len(store)
    _post(c, _png(big))
    assert len(store) == before
    store.ttl_s = 0.05
    time.sleep(0.1)
    assert c.get(f"/api/v1/images/{ids[2]}/crop?x=0&y=0&w=10&h=10").status_code == 404 and len(store) == 0


def _exam_post(client, paths, **form):
    files = [
        (
            io.BytesIO(p.read_bytes()) if hasattr(p, "read_bytes") else io.BytesIO(p[1]),
            p.name if hasattr(p, "name") else p[0],
        )
        for p in paths
    ]
    return client.post("/api/v1/exam", data={"files": files, **form}, content_type="multipart/form-data")


def test_exam_hangs_views_by_tags_and_scores_each_breast(client, tmp_path):
    from exam_fixture import SECRETS, disc_png, exam_files, view_dicom

    files = exam_files(tmp_path / "exam")
    untagged = view_dicom(tmp_path / "untagged.dcm", "L-CC", seed=7, tags=False)
    other = view_dicom(tmp_path / "other.dcm", "R-CC", seed=8, study="1.2.3.999", patient="P_OTHER_777")
    png = disc_png(tmp_path / "disc.png")
    r = _exam_post(client, [*files, untagged, other, png], display="1", display_max_side="128")
    assert r.status_code == 200
    body = r.get_data(as_text=True)
    for s in (*SECRETS, "P_OTHER_777", "1.2.3.999", "1.2.826.0.1.3680043.8.498.4242", "R-CC.dcm"):
        assert s not in body
    exam = _strict_json(r.data)
    assert exam["protocol"] == [["R-CC", "L-CC"], ["R-MLO", "L-MLO"]] and exam["errors"] == []
    first, second, loose = exam["studies"]
    assert [first["label"], first["patient"]] == ["Exam 1", "Patient A"]
    assert [second["label"], second["patient"]] == ["Exam 2", "Patient B"]
    assert first["missing"] == [] and second["missing"] == ["L-CC", "R-MLO", "L-MLO"]
    from exam_fixture import VIEWS

    for name, (h, w) in VIEWS.items():
        v = first["views"][name]
        assert (v["image"]["height"], v["image"]["width"]) == (h, w) and v["view"] == name
        assert v["mirror"] is (name[0] == "R"), "stored with the chest wall on the left: right views mirrored"
        assert (
            v["image"]["display"]["id"] and max(v["image"]["display"]["width"], v["image"]["display"]["height"]) <= 128
        )
    # the untagged view is listed as extra, never guessed into the empty slot
    assert [e["reason"] for e in first["extra"]] == ["no laterality tag"] and first["extra"][0]["source"] == {"file": 4}
    assert loose["label"] == "Images without study tags" and loose["extra"][0]["reason"].startswith("no DICOM tags")
    best = {
        side: max(d["score"] for k, v in first["views"].items() if k[0] == side for d in v["detections"])
        for side in "RL"
    }
    assert first["scores"] == {"exam": max(best.values()), "right": best["R"], "left": best["L"]}
    assert second["scores"]["left"] is None and loose["scores"] == {"exam": None, "right": None, "left": None}
    # one shared threshold
    t = 0.5
    high = _strict_json(_exam_post(client, files, threshold=str(t)).data)["studies"][0]
    assert all(d["score"] >= t for v in high["views"].values() for d in v["detections"])
    assert "display" not in high["views"]["R-CC"]["image"]


def test_exam_from_a_zip_with_a_broken_file_and_a_duplicate(client, tmp_path):
    import zipfile

    from exam_fixture import exam_files, view_dicom

    files = exam_files(tmp_path / "exam", views=("R-CC", "L-CC", "L-MLO"))
    dup = view_dicom(tmp_path / "dup.dcm", "L-CC", seed=5)
    zpath = tmp_path / "exam.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in (*files, dup):
            z.write(f, f"study/{f.name}")
        z.writestr("study/.DS_Store", b"junk")
        z.writestr("__MACOSX/study/._R-CC.dcm", b"junk")
    broken = ("broken.dcm", files[0].read_bytes()[:400])
    r = _exam_post(client, [zpath, broken])
    exam = _strict_json(r.data)
    (study,) = exam["studies"]
    assert study["missing"] == ["R-MLO"] and study["views"]["R-MLO"] is None
    assert [e["reason"] for e in study["extra"]] == ["a second L-CC image"]
    assert study["views"]["R-CC"]["source"] == {"file": 0, "member": 0}
    (err,) = exam["errors"]
    assert err["source"] == {"file": 1} and err["status"] == 422
    r = client.post("/api/v1/exam", data={})
    assert r.status_code == 400 and "'files'" in r.get_json()["error"]["message"]
    spec = client.get("/api/v1/openapi.json").get_json()
    post = spec["paths"]["/api/v1/exam"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"] and "Exam" in spec["components"]["schemas"]
    assert "/api/v1/images/{image_id}/crop" in spec["paths"]
