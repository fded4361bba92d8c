"""Memory budgets: every decoder checks the decoded size from the header before decoding; 16-bit colour is
converted without full-size float copies; the web app admits requests by a memory budget."""

from __future__ import annotations

import io
import struct
import threading
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest

from meddet.errors import DataError, DicomError, ImageTooLargeError
from meddet.io import image_header, read_image


def _png_header(w: int, h: int, depth: int = 16, colour: int = 2) -> bytes:
    """A PNG that declares w x h pixels (its IDAT holds a few zero rows only: it never has to be decoded)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + chunk(b"IEND", b"")
    )


def test_8900_square_16bit_rgb_png_is_refused_from_its_header():
    # the case: 8900x8900 16-bit RGB decodes to 475 MB (and cost 4 GB with float64 copies)
    data = _png_header(8900, 8900)
    h = image_header(data)
    assert (h.height, h.width, h.channels, h.bytes_per_sample) == (8900, 8900, 3, 2)
    assert h.decoded_bytes == 8900 * 8900 * 3 * 2
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match=r"8900x8900 pixels, 3 channel\(s\) of 16 bits.*budget of 256 MiB"):
            read_image(data, max_bytes=256 * 2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20  # refused without decoding


def test_16bit_colour_is_converted_without_float_copies():
    # same shape as the image, smaller: the peak is the decoded image + the 8-bit result + a band
    rng = np.random.default_rng(0)
    img = rng.integers(0, 65536, (1200, 1100, 3), dtype=np.uint16)
    data = cv2.imencode(".png", img)[1].tobytes()
    tracemalloc.start()
    try:
        out = read_image(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(out, np.rint(img / 257.0).astype(np.uint8))  # same values as before
    px = img.shape[0] * img.shape[1]
    # 6 bytes a pixel decoded + 3 for the result + a band of at most 3 MiB; float64 copies took > 30 a pixel
    assert peak < 9 * px + 4 * 2**20, f"{peak / px:.1f} bytes per pixel"


def _encoded(fmt: str) -> tuple[bytes, int]:
    rng = np.random.default_rng(1)
    if fmt == "pgm16":
        img = rng.integers(0, 65536, (40, 50), dtype=np.uint16)
        return cv2.imencode(".pgm", img)[1].tobytes(), img.nbytes
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    if fmt == "tiff16":
        img16 = img.astype(np.uint16) * 257
        return cv2.imencode(".tiff", img16)[1].tobytes(), img16.nbytes
    return cv2.imencode("." + fmt, img)[1].tobytes(), img.nbytes


@pytest.mark.parametrize("fmt", ["png", "jpg", "tiff", "tiff16", "bmp", "pgm16"])
def test_each_raster_format_checks_the_budget_before_decoding(fmt, tmp_path):
    data, nbytes = _encoded(fmt)
    assert image_header(data).decoded_bytes == nbytes
    path = tmp_path / f"x.{fmt}"
    path.write_bytes(data)
    for src in (data, path):
        assert read_image(src, max_bytes=nbytes).shape[:2] == (40, 50)
        with pytest.raises(ImageTooLargeError, match="more than the budget"):
            read_image(src, max_bytes=nbytes - 1)


@pytest.mark.parametrize(
    "name",
    ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm"],
)
def test_dicom_checks_rows_columns_bits_before_decoding(name, tmp_path):
    from pydicom.data import get_testdata_file

    from meddet.io import load_dicom

    src = get_testdata_file(name)
    ds = load_dicom(src, headers_only=True)
    need = int(ds.Rows) * int(ds.Columns) * ((int(ds.BitsAllocated) + 7) // 8)
    data = open(src, "rb").read()
    assert image_header(data).decoded_bytes == need
    assert read_image(data, max_bytes=need).shape == (int(ds.Rows), int(ds.Columns))
    with pytest.raises(ImageTooLargeError, match="more than the budget"):
        read_image(data, max_bytes=need - 1)


def test_dicom_whose_codestream_lies_about_its_size_is_refused(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    ds.Rows = ds.Columns = 8  # the J2K codestream still says 64x64
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(DicomError, match="declares 64x64 pixels but Rows/Columns say 8x8"):
        read_image(buf.getvalue())


def test_truncated_headers_are_data_errors():
    png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes()
    for data in (png[:20], b"\xff\xd8\xff\xe0\x00", b"II*\x00\x08\x00\x00\x00", b"BM\x00\x00"):
        with pytest.raises(DataError):
            read_image(data)


# ----------------------------------------------------------------------------------------- web app
@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from bundle_fixture import shared_run

    from meddet.hub import load_predictor

    return load_predictor(shared_run(tmp_path_factory)[1], device="cpu")


def _post(client, data: bytes):
    return client.post(
        "/api/v1/predict", data={"file": (io.BytesIO(data), "x.png")}, content_type="multipart/form-data"
    )


def test_web_refuses_an_image_larger_than_the_memory_budget(predictor):
    from webapp import create_app

    client = create_app(predictor, max_memory_mb=256, model_memory_mb=16).test_client()
    r = _post(client, _png_header(8900, 8900))
    assert r.status_code == 413
    assert "memory budget of 256 MiB" in r.get_json()["error"]["message"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_web_answers_503_with_retry_after_while_the_budget_is_in_use(predictor):
    from webapp import create_app

    app = create_app(predictor, max_queue=8, max_memory_mb=40, model_memory_mb=20)
    service = app.config["MEDDET_SERVICE"]
    entered, release = threading.Event(), threading.Event()
    real = service.predictor

    class Slow:
        class_names = real.class_names

        def read(self, data, **kwargs):
            return real.read(data, **kwargs)

        def __call__(self, image):
            entered.set()
            release.wait(10)
            return real(image)

    service.predictor = Slow()
    data = cv2.imencode(".png", np.zeros((96, 120), np.uint8))[1].tobytes()
    first: list = []
    t = threading.Thread(target=lambda: first.append(_post(app.test_client(), data).status_code))
    t.start()
    try:
        assert entered.wait(10)
        assert service.budget.used > 20 * 2**20
        r = _post(app.test_client(), data)
        assert r.status_code == 503 and r.headers["Retry-After"].isdigit()
        assert "memory budget" in r.get_json()["error"]["message"]
    finally:
        release.set()
        t.join(10)
    assert first == [200] and service.budget.used == 0
    assert _post(app.test_client(), data).status_code == 200
