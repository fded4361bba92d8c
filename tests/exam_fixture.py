"""Synthetic screening exams (four 16-bit DICOM views of one study, with identifying tags a server must never
echo) and a PNG with one bright disc at a known place, for the web app's exam and viewer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SECRETS = ("P_SECRET_042", "Doe^Jane", "Doe", "19600101")
STUDY_UID = "1.2.826.0.1.3680043.8.498.4242"
# Each view has its own size, so a test can tell them apart on the page; every image is stored with the chest
# wall on the left (Patient Orientation row "A"), as many detectors' training images are: the right views must
# be mirrored to hang.
VIEWS = {"R-CC": (200, 150), "L-CC": (192, 144), "R-MLO": (208, 156), "L-MLO": (184, 138)}


def view_dicom(
    path: Path,
    view: str,
    seed: int = 0,
    study: str = STUDY_UID,
    patient: str = "P_SECRET_042",
    tags: bool = True,
    size: tuple[int, int] | None = None,
    transfer_syntax: str | None = None,
) -> Path:
    """One synthetic view (``"R-CC"``, ``"L-MLO"``, …); ``tags=False`` leaves out Laterality and
    ViewPosition; ``transfer_syntax="rle"`` stores the pixels RLE-compressed."""
    from meddet.synth.mammo import encode_dicom, render_mammogram, save_dicom

    side, pos = view.split("-")
    h, w = size or VIEWS[view]
    img01, _ = render_mammogram(np.random.default_rng(seed), h, w, "LEFT", pos, 2, [("mass_high", 1)])
    attrs = {
        "PatientID": patient,
        "PatientName": "Doe^Jane",
        "PatientBirthDate": "19600101",
        "StudyInstanceUID": study,
        "PatientOrientation": ["A", "F" if pos == "MLO" else "R"],
    }
    if tags:
        attrs.update(Laterality=side, ViewPosition=pos)
    ds = encode_dicom(img01, attributes=attrs, uid_entropy=(view, str(seed), study))
    if transfer_syntax == "rle":
        from pydicom.uid import RLELossless

        ds.compress(RLELossless)
    save_dicom(ds, path)
    return path


def exam_files(folder: Path, views=tuple(VIEWS), **kw) -> list[Path]:
    """The given views of one study as DICOM files in `folder` (named by their view)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [view_dicom(folder / f"{v}.dcm", v, seed=i, **kw) for i, v in enumerate(views)]


def disc_png(
    path: Path, size: tuple[int, int] = (128, 96), center: tuple[int, int] = (50, 80), radius: int = 12
) -> Path:
    """A dark 8-bit PNG (height, width = `size`) with one bright disc at `center` (x, y): the blob detector's
    one sure finding (a box over the disc scoring ~1)."""
    import cv2

    img = np.random.default_rng(0).integers(0, 40, size, dtype=np.uint8)
    cv2.circle(img, center, radius, 160, -1)
    cv2.imwrite(str(path), img)
    return path
