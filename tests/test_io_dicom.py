"""DICOM and image reading: the display chain (rescale, VOI LUT / window, MONOCHROME1,
normalization, gamma, bit depth), format detection by content, and clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from meddet.config import get_cfg
from meddet.errors import ConfigError, DataError, DicomError
from meddet.io import PixelOptions, dicom_info, quantize, read_dicom, read_image, write_png
from meddet.synth import encode_dicom, save_dicom

MG_ATTRS = {
    "PatientID": "P_00042",
    "PatientName": "Doe^Jane",
    "Laterality": "L",
    "ViewPosition": "MLO",
    "PatientOrientation": ["A", "F"],
}


def phantom(h: int = 64, w: int = 48) -> np.ndarray:
    """Breast-like test image in [0, 1]: zero background on the right, a tissue ramp on the left."""
    img = np.zeros((h, w), np.float32)
    img[:, : w // 2] = np.linspace(0.2, 0.9, h, dtype=np.float32)[:, None]
    return img


def write(tmp_path, name: str, img: np.ndarray | None = None, **kw) -> str:
    path = tmp_path / name
    save_dicom(encode_dicom(phantom() if img is None else img, attributes=MG_ATTRS, **kw), path)
    return str(path)


def test_monochrome1_comes_out_with_bright_tissue(tmp_path):
    mono1 = write(tmp_path, "m1.dcm", photometric="MONOCHROME1", bits_stored=12)
    raw = pydicom.dcmread(mono1).pixel_array
    assert raw[:, :24].mean() < raw[:, 24:].mean(), "fixture: MONOCHROME1 stores tissue dark"
    out = read_dicom(mono1, gamma=1.0)
    assert out[:, :24].mean() > out[:, 24:].mean() + 100
    assert out[:, 24:].max() == 0  # background black
    mono2 = write(tmp_path, "m2.dcm", photometric="MONOCHROME2", bits_stored=12)
    np.testing.assert_array_equal(out, read_dicom(mono2, gamma=1.0))


def test_window_center_width_is_applied_and_selectable(tmp_path):
    img = phantom()
    smax = 4095
    # window 0: the upper half of the stored range; window 1: everything.
    path = write(tmp_path, "w.dcm", img, bits_stored=12, windows=[(3072.5, 2048), (2048.0, 4096)])
    narrow = read_dicom(path, gamma=1.0, normalize="fixed")
    stored = np.rint(img * smax)
    expected = np.clip((stored - 2048.5) / 2047, 0, 1) * 255  # DICOM LINEAR: c - 0.5, w - 1
    np.testing.assert_allclose(narrow.astype(float), expected, atol=0.5)
    assert (narrow[stored <= 2048] == 0).all()  # below the window: black
    full = read_dicom(path, gamma=1.0, normalize="fixed", window_index=1)
    np.testing.assert_allclose(full.astype(float), stored / smax * 255, atol=1.0)
    no_voi = read_dicom(path, gamma=1.0, normalize="fixed", apply_voi=False)
    np.testing.assert_array_equal(no_voi, full)
    with pytest.raises(DicomError, match=r"w\.dcm.*window index 2.*2 VOI window"):
        read_dicom(path, window_index=2)


def test_voi_lut_sequence_is_applied(tmp_path):
    img = phantom()
    lut = np.where(np.arange(4096) >= 2048, 65535, 0).astype(np.uint16)  # a hard threshold
    path = write(tmp_path, "lut.dcm", img, bits_stored=12, voi_lut=lut)
    out = read_dicom(path, gamma=1.0)
    tissue = img[:, :24]
    assert set(np.unique(out)) == {0, 255}
    np.testing.assert_array_equal(out[:, :24] == 255, np.rint(tissue * 4095) >= 2048)
    assert len(np.unique(read_dicom(path, apply_voi=False))) > 20  # without the LUT: the ramp
    assert dicom_info(path)["has_voi_lut"]


def test_rescale_slope_intercept_is_applied_before_the_window(tmp_path):
    img = phantom()
    slope, intercept = 2.0, -1000.0
    # The window is given in rescaled units: it only makes sense once slope/intercept are applied.
    center, width = 3000.0, 2000.0
    path = write(tmp_path, "r.dcm", img, bits_stored=12, rescale=(slope, intercept), windows=[(center, width)])
    out = read_dicom(path, gamma=1.0, normalize="minmax")
    m = np.rint(img * 4095) * slope + intercept
    c, w = center - 0.5, width - 1  # DICOM LINEAR window
    y = np.clip((m - c) / w + 0.5, 0, 1)
    expected = (y - y.min()) / (y.max() - y.min()) * 255
    np.testing.assert_allclose(out.astype(float), expected, atol=1.0)
    assert dicom_info(path)["has_rescale"]


def test_16_bit_output_and_gamma_convention(tmp_path):
    path = write(tmp_path, "g.dcm", bits_stored=16)
    out16 = read_dicom(path, bit_depth=16, gamma=1.0)
    out8 = read_dicom(path, bit_depth=8, gamma=1.0)
    assert out16.dtype == np.uint16 and out8.dtype == np.uint8
    assert out16.max() == 65535 and out16.min() == 0
    assert np.abs(out16 / 257.0 - out8).max() <= 1.0
    # out = max * (x / max) ** gamma
    x = np.array([0.0, 0.25, 1.0])
    np.testing.assert_array_equal(quantize(x, gamma=0.5, bit_depth=8), [0, 128, 255])
    bright = read_dicom(path, gamma=0.5)
    tissue = out8 > 0
    assert (bright[tissue] >= out8[tissue]).all() and bright.mean() > out8.mean()


def test_normalizations(tmp_path):
    img = phantom() * 0.5  # uses only the lower half of the stored range
    img[0, 0] = 1.0  # one outlier pixel
    path = write(tmp_path, "n.dcm", img, bits_stored=12)
    minmax = read_dicom(path, gamma=1.0)
    fixed = read_dicom(path, gamma=1.0, normalize="fixed")
    pct = read_dicom(path, gamma=1.0, normalize="percentile", percentiles=(1.0, 99.0))
    z = read_dicom(path, gamma=1.0, normalize="zscore")
    tissue = (slice(1, None), slice(0, 24))
    assert minmax[tissue].max() <= 116  # the outlier squashes min-max
    assert fixed[0, 0] == 255 and fixed[tissue].max() <= 116  # fixed: the file's full range
    assert pct[tissue].max() == 255  # percentiles ignore the outlier
    assert z[0, 0] == 255 and abs(z.astype(float).mean() - 127.5) < 5  # mean -> mid-grey
    with pytest.raises(ConfigError, match="NORMALIZE"):
        read_dicom(path, normalize="histogram")
    with pytest.raises(ConfigError, match="BIT_DEPTH"):
        read_dicom(path, bit_depth=12)


def test_pixel_options_from_config():
    cfg = get_cfg()
    assert PixelOptions.from_cfg(cfg) == PixelOptions()  # the config and the library agree on defaults
    assert PixelOptions().percentiles == (1.0, 99.0)
    cfg.DICOM.BIT_DEPTH = 16
    cfg.DICOM.NORMALIZE = "fixed"
    cfg.DICOM.FIXED_RANGE = (100.0, 4000.0)
    opts = PixelOptions.from_cfg(cfg)
    assert opts.bit_depth == 16 and opts.normalize == "fixed" and opts.fixed_range == (100.0, 4000.0)
    assert opts.as_kwargs()["percentiles"] == tuple(cfg.DICOM.PERCENTILES)
    cfg.DICOM.FIXED_RANGE = (1.0,)
    with pytest.raises(ConfigError, match="FIXED_RANGE"):
        PixelOptions.from_cfg(cfg)


def test_compressed_transfer_syntaxes_decode_like_uncompressed(tmp_path):
    img = np.random.default_rng(0).random((64, 48)).astype(np.float32)
    ref = read_dicom(write(tmp_path, "u.dcm", img, bits_stored=12))
    for i, ts in enumerate((RLELossless, JPEG2000Lossless)):
        ds = encode_dicom(img, bits_stored=12, attributes=MG_ATTRS)
        ds.compress(ts)
        save_dicom(ds, tmp_path / f"c{i}.dcm")
        np.testing.assert_array_equal(read_dicom(tmp_path / f"c{i}.dcm"), ref)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DicomError, match=r"missing\.dcm: file not found"):
        read_dicom(tmp_path / "missing.dcm")
    text = tmp_path / "notes.dcm"
    text.write_text("patient had a biopsy\n" * 20)
    with pytest.raises(DicomError, match=r"notes\.dcm: not a DICOM file \(expected"):
        read_dicom(text)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(DicomError, match=r"empty\.dcm: not a DICOM file"):
        read_dicom(empty)
    ds = encode_dicom(phantom(), attributes=MG_ATTRS)
    del ds.PixelData
    save_dicom(ds, tmp_path / "nopix.dcm")
    with pytest.raises(DicomError, match=r"nopix\.dcm: DICOM file has no pixel data"):
        read_dicom(tmp_path / "nopix.dcm")
    ds = encode_dicom(np.zeros((2 * 16, 8)), attributes=MG_ATTRS)
    ds.Rows, ds.NumberOfFrames = 16, 2
    save_dicom(ds, tmp_path / "multi.dcm")
    with pytest.raises(DicomError, match=r"multi\.dcm: multi-frame DICOM with 2 frames"):
        read_dicom(tmp_path / "multi.dcm")
    good = tmp_path / "trunc.dcm"
    save_dicom(encode_dicom(phantom(), attributes=MG_ATTRS), good)
    good.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(DicomError, match=r"trunc\.dcm: truncated file"):
        read_dicom(good)
    # RLE (encapsulated, undefined length): pydicom reads nothing, which must not read as "no pixel data"
    from pydicom.uid import RLELossless

    ds = encode_dicom(phantom(), attributes=MG_ATTRS)
    ds.compress(RLELossless)
    save_dicom(ds, tmp_path / "rle.dcm")
    (tmp_path / "rle.dcm").write_bytes((tmp_path / "rle.dcm").read_bytes()[:-200])
    with (
        pytest.warns(UserWarning),
        pytest.raises(DicomError, match=r"rle\.dcm: truncated file: the pixel data ends early"),
    ):
        read_dicom(tmp_path / "rle.dcm")


def test_read_image_decides_by_content(tmp_path):
    grey8 = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(64, 48)
    grey16 = (np.arange(64 * 48) * 20).astype(np.uint16).reshape(64, 48)
    colour = np.dstack([grey8, 255 - grey8, grey8 // 2])
    write_png(tmp_path / "a.png", grey8)
    write_png(tmp_path / "b.png", grey16)
    cv2.imwrite(str(tmp_path / "c.jpg"), colour)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), grey8)
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), grey16)
    jpg = read_image(tmp_path / "c.jpg")
    assert jpg.shape == (64, 48, 3) and jpg.dtype == np.uint8
    # A DICOM with a misleading name, and one without the Part-10 preamble, are still DICOMs.
    save_dicom(encode_dicom(phantom(), attributes=MG_ATTRS), tmp_path / "scan.png")
    ref = read_dicom(tmp_path / "scan.png", bit_depth=16)
    np.testing.assert_array_equal(read_image(tmp_path / "scan.png", bit_depth=16), ref)
    raw = encode_dicom(phantom(), attributes=MG_ATTRS)
    del raw.file_meta
    raw.save_as(tmp_path / "raw", implicit_vr=True, little_endian=True)
    np.testing.assert_array_equal(read_image(tmp_path / "raw", bit_depth=16), ref)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    with pytest.raises(DataError, match=r"junk\.png: cannot decode"):
        read_image(tmp_path / "junk.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: not a readable image"):
        read_image(tmp_path / "notes.txt")


def test_write_png_is_atomic_and_lossless(tmp_path):
    arr = (np.arange(30 * 20) * 97 % 65536).astype(np.uint16).reshape(30, 20)
    write_png(tmp_path / "sub" / "x.png", arr)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "sub" / "x.png"), cv2.IMREAD_UNCHANGED), arr)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]  # no temporary left behind
    with pytest.raises(DataError, match=r"x\.png: cannot write a float64"):
        write_png(tmp_path / "x.png", arr.astype(float))


def test_dicom_info_is_non_identifying(tmp_path):
    path = write(tmp_path, "i.dcm", bits_stored=12, photometric="MONOCHROME1", windows=[(2048, 4096)])
    info = dicom_info(path)
    assert info["laterality"] == "L" and info["view"] == "MLO" and info["patient_orientation"] == "A\\F"
    assert (info["rows"], info["columns"], info["bits_stored"]) == (64, 48, 12)
    assert info["photometric"] == "MONOCHROME1" and info["modality"] == "MG" and info["has_window"]
    values = " ".join(str(v) for v in info.values())
    assert "P_00042" not in values and "Doe" not in values


@pytest.mark.parametrize("bits", [10, 12, 14, 15, 16])
@pytest.mark.parametrize("signed", [False, True])
def test_bits_stored_10_to_16_signed_and_unsigned(tmp_path, bits, signed):
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    values = np.linspace(lo, hi, 64 * 48).round().astype(np.int64).reshape(64, 48)
    values[0, :3] = [lo, hi, 0]
    ds = encode_dicom(np.zeros((64, 48)), bits_stored=bits, attributes=MG_ATTRS)
    ds.PixelRepresentation = int(signed)
    ds.PixelData = values.astype("<i2" if signed else "<u2").tobytes()
    save_dicom(ds, tmp_path / "b.dcm")
    v = values.astype(float)
    out = read_dicom(tmp_path / "b.dcm", gamma=1.0, bit_depth=16)
    np.testing.assert_array_equal(out, np.rint((v - v.min()) / (v.max() - v.min()) * 65535))
    fixed = read_dicom(tmp_path / "b.dcm", gamma=1.0, bit_depth=16, normalize="fixed")
    np.testing.assert_array_equal(fixed, np.rint((v - lo) / (hi - lo) * 65535))  # the stored range
    half = read_dicom(tmp_path / "b.dcm", gamma=1.0, normalize="fixed", fixed_range=(lo / 2, hi / 2))
    np.testing.assert_array_equal(half, np.rint(np.clip((v - lo / 2) / ((hi - lo) / 2), 0, 1) * 255))
    with pytest.raises(ConfigError, match="FIXED_RANGE"):
        read_dicom(tmp_path / "b.dcm", normalize="fixed", fixed_range=(5.0, 1.0))
