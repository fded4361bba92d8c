"""DICOM decoding on real files shipped by pydicom and pydicom-data (not files meddet writes):
compressed transfer syntaxes against their uncompressed twins, MONOCHROME1, rescale, LUT
sequences, padding, and the fast lookup-table display chain against a plain full-array one."""

from __future__ import annotations

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import JPEGBaseline8Bit

from meddet.errors import DicomError
from meddet.io import dicom_info, read_dicom, stored_pixels
from meddet.io.dicom import load_dicom
from meddet.synth import encode_dicom, save_dicom


def real(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"{name} missing: pydicom-data is a dev dependency (pip install pydicom-data)"
    return path


def reference(
    path: str,
    normalize: str = "minmax",
    percentiles=(1.0, 99.0),
    gamma: float = 0.8,
    bit_depth: int = 8,
    apply_voi: bool = True,
) -> np.ndarray:
    """The display chain done the plain way: every step on the full float array."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    x = apply_modality_lut(arr, ds)
    if apply_voi and ("VOILUTSequence" in ds or "WindowCenter" in ds):
        if "VOILUTSequence" in ds and not np.issubdtype(x.dtype, np.integer):
            x = np.rint(x).astype(np.int64)
        x = apply_voi_lut(x, ds, prefer_lut=True)
    x = np.asarray(x, dtype=np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        x = -x  # any constant minus x: the normalizations below do not depend on it
    pad = np.zeros(arr.shape, bool)
    if "PixelPaddingValue" in ds:
        pad = arr == ds.PixelPaddingValue
    v = x[~pad]
    if normalize == "minmax":
        lo, hi = v.min(), v.max()
    elif normalize == "percentile":
        lo, hi = np.percentile(v, percentiles)
    else:
        lo, hi = v.mean() - 3 * v.std(), v.mean() + 3 * v.std()
    y = np.clip((x - lo) / (hi - lo), 0, 1) ** gamma
    out = np.rint(y * (255 if bit_depth == 8 else 65535)).astype(np.uint8 if bit_depth == 8 else np.uint16)
    out[pad] = 0
    return out


# (compressed, uncompressed twin): RLE, JPEG-LS lossless, JPEG 2000 lossless, on MR, CR
# (MONOCHROME1, 10/15-bit), rescaled MR and CT (signed, intercept -1024, padding)
LOSSLESS_TWINS = [
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
    ("RG3_J2KR.dcm", "RG3_UNCR.dcm"),
    ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
    ("693_J2KR.dcm", "693_UNCR.dcm"),
]


@pytest.mark.parametrize("compressed,plain", LOSSLESS_TWINS)
def test_lossless_compressed_files_decode_bit_exact_to_their_twins(compressed, plain):
    a, b = load_dicom(real(compressed), headers_only=True), load_dicom(real(plain), headers_only=True)
    assert a.file_meta.TransferSyntaxUID.is_compressed and not b.file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(stored_pixels(load_dicom(real(compressed))), stored_pixels(load_dicom(real(plain))))
    np.testing.assert_array_equal(read_dicom(real(compressed), bit_depth=16), read_dicom(real(plain), bit_depth=16))


def test_jpeg_lossless_and_lossy_extended_agree():
    """JPEG lossless (process 14) and JPEG extended (lossy, 12-bit) copies of one image."""
    lossless = stored_pixels(load_dicom(real("JPEG-LL.dcm"))).astype(float)
    lossy = stored_pixels(load_dicom(real("JPGExtended.dcm"))).astype(float)
    assert lossless.shape == lossy.shape == (1024, 256)
    assert 0 < np.abs(lossless - lossy).mean() < 3.0  # lossy: close (values up to ~280), not equal
    assert np.corrcoef(lossless.ravel(), lossy.ravel())[0, 1] > 0.98
    assert read_dicom(real("JPGExtended.dcm")).shape == (1024, 256)


def test_jpeg_baseline_greyscale_decodes_within_jpeg_error(tmp_path):
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur((rng.random((64, 48)) * 255).astype(np.uint8), (0, 0), 2)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])  # a real libjpeg bitstream
    ds = encode_dicom(img / 255.0, bits_stored=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([jpeg.tobytes()])
    ds["PixelData"].VR = "OB"
    save_dicom(ds, tmp_path / "baseline.dcm")
    out = stored_pixels(load_dicom(tmp_path / "baseline.dcm"))
    assert out.dtype == np.uint8 and np.abs(out.astype(int) - img).max() <= 4


@pytest.mark.parametrize(
    "name",
    [
        "MR_small.dcm",
        "RG3_UNCR.dcm",
        "MR2_UNCR.dcm",
        "693_UNCR.dcm",
        "vlut_04.dcm",
        "mlut_18.dcm",
        "JPGLosslessP14SV1_1s_1f_8b.dcm",
        "J2K_pixelrep_mismatch.dcm",
    ],
)
@pytest.mark.parametrize("normalize", ["minmax", "percentile", "zscore"])
def test_lookup_table_chain_equals_the_plain_full_array_chain(name, normalize):
    """The per-value lookup table gives the same image as applying each step to every pixel."""
    for bit_depth in (8, 16):
        got = read_dicom(real(name), normalize=normalize, bit_depth=bit_depth)
        want = reference(real(name), normalize=normalize, bit_depth=bit_depth)
        diff = np.abs(got.astype(int) - want.astype(int))
        if normalize == "zscore":  # mean/std summed in another order: rounding may move a level
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
        else:
            assert diff.max() == 0


def test_monochrome1_cr_is_inverted_so_dense_tissue_is_bright():
    path = real("RG1_UNCR.dcm")  # computed radiography, MONOCHROME1, 15 bits
    raw = pydicom.dcmread(path).pixel_array.astype(float)
    out = read_dicom(path, gamma=1.0).astype(float)
    assert np.corrcoef(raw.ravel()[::7], out.ravel()[::7])[0, 1] < -0.95
    assert dicom_info(path)["photometric"] == "MONOCHROME1"


def test_modality_lut_sequence_is_used():
    assert dicom_info(real("vlut_04.dcm"))["has_voi_lut"]  # its output is checked against pydicom above
    ds = pydicom.dcmread(real("mlut_18.dcm"))
    assert "ModalityLUTSequence" in ds and "RescaleSlope" not in ds
    modality = apply_modality_lut(ds.pixel_array, ds).astype(float)
    out = read_dicom(real("mlut_18.dcm"), gamma=1.0).astype(float)
    assert np.corrcoef(modality.ravel(), out.ravel())[0, 1] > 0.99


def test_pixel_padding_is_black_and_left_out_of_the_statistics():
    path = real("693_UNCR.dcm")  # CT, padding value -2000 around the round field of view
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array
    pad = raw == ds.PixelPaddingValue
    assert pad.mean() > 0.1
    out = read_dicom(path, gamma=1.0, apply_voi=False)
    assert (out[pad] == 0).all()
    hu = raw[~pad].astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # min-max over the field of view only: its darkest pixel is 0, its brightest 255
    assert out[~pad].min() == 0 and out[~pad].max() == 255
    darkest = out[~pad][hu == hu.min()]
    assert (darkest == 0).all()


def test_fixed_range_is_an_explicit_window_in_modality_units():
    path = real("693_UNCR.dcm")
    ds = pydicom.dcmread(path)
    hu = apply_modality_lut(ds.pixel_array, ds)
    out = read_dicom(path, normalize="fixed", fixed_range=(-100.0, 300.0), gamma=1.0, apply_voi=False)
    pad = ds.pixel_array == ds.PixelPaddingValue
    expected = np.rint(np.clip((hu + 100.0) / 400.0, 0, 1) * 255)
    np.testing.assert_array_equal(out[~pad], expected[~pad])


@pytest.mark.parametrize(
    "name,reason",
    [("emri_small.dcm", "multi-frame DICOM with 10 frames"), ("US1_UNCR.dcm", "photometric interpretation 'RGB'")],
)
def test_unsupported_real_files_are_refused_by_name(name, reason):
    with pytest.raises(DicomError, match=rf"{name}: {reason}"):
        read_dicom(real(name))
