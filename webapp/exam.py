"""Exams: several images of one screening study read together, as a radiologist hangs them.

``POST /api/v1/exam`` takes several files (multipart field ``files``, repeated; a ``.zip`` among them is
opened in memory) and answers one entry per study:

- **Grouping** by the DICOM Study Instance UID, else the Patient ID, else one group of images without
  either. The answer never holds those values: studies are named ``Exam 1, 2, …`` and patients
  ``Patient A, B, …`` in order of upload.
- **Hanging protocol**: ``R-CC | L-CC`` above ``R-MLO | L-MLO``. A view's slot comes from its tags only
  (*Laterality*/*Image Laterality* and *View Position*); an image without them, a second image of a
  filled slot or another view (ML, XCCL, …) is listed under ``extra`` with the reason, and an empty slot
  under ``missing``: views are never guessed.
- **Mirroring**: right-breast views are hung with the chest wall on the right, left-breast views with it on
  the left, so the chest walls meet in the middle; ``mirror`` says whether the page flips the image
  (from *Patient Orientation*, else the pixels; boxes stay in the original image's pixels).
- **Suspicion scores**: a breast's score is the highest finding score over every image of that breast
  (slotted or extra, laterality from tags), at or above the request's threshold; the exam's is the
  highest over both breasts. ``null`` when no image of the breast was read, 0 when none has a finding.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from webapp.app import UploadError

if TYPE_CHECKING:
    import numpy as np

    from webapp.app import ModelService

logger = logging.getLogger(__name__)

PROTOCOL = ("R-CC", "L-CC", "R-MLO", "L-MLO")
ZIP_MAGIC = b"PK\x03\x04"
MAX_EXAM_IMAGES = 16


def expand(
    files: Iterable[tuple[int, bytes]], max_bytes: int, max_images: int = MAX_EXAM_IMAGES
) -> list[tuple[dict[str, int], bytes]]:
    """(source, bytes) per image: each upload as is, a ZIP's members in order (folders, hidden files and
    macOS resource forks skipped). UploadError 400 above `max_images` images, 413 when a ZIP expands to
    more than `max_bytes` bytes (checked before reading), 422 for a broken ZIP."""
    out: list[tuple[dict[str, int], bytes]] = []
    total = 0
    for i, data in files:
        if not data.startswith(ZIP_MAGIC):
            out.append(({"file": i}, data))
            continue
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                members = [m for m in z.infolist() if not m.is_dir() and not _hidden(m.filename)]
                total += sum(m.file_size for m in members)
                if total > max_bytes:
                    raise UploadError(413, f"file {i + 1}: the ZIP expands to more than {max_bytes / 2**20:g} MB")
                if len(out) + len(members) > max_images:
                    raise UploadError(400, f"too many images: at most {max_images} per exam")
                for j, m in enumerate(members):
                    out.append(({"file": i, "member": j}, z.read(m)))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as e:
            raise UploadError(422, f"file {i + 1}: not a readable ZIP archive ({type(e).__name__})") from None
    if len(out) > max_images:
        raise UploadError(400, f"too many images: {len(out)} sent, at most {max_images} per exam")
    return out


def _hidden(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return any(p.startswith(".") for p in parts) or parts[0] == "__MACOSX"


def dicom_keys(data: bytes) -> dict[str, Any]:
    """Grouping and hanging facts from a DICOM upload's header (study, patient, laterality, view,
    orientation); empty for anything else or an unreadable header. The study and patient values are
    only compared, never returned."""
    if data[128:132] != b"DICM":
        return {}
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # a broken header: the prediction reports it
        return {}
    orientation = ds.get("PatientOrientation") or []
    if isinstance(orientation, str):
        orientation = [orientation]
    return {
        "study": str(ds.get("StudyInstanceUID", "") or ""),
        "patient": str(ds.get("PatientID", "") or ""),
        "laterality": str(ds.get("Laterality") or ds.get("ImageLaterality") or "").strip().upper()[:1],
        "view": str(ds.get("ViewPosition", "") or "").strip().upper(),
        "orientation": [str(o) for o in orientation],
    }


def slot_of(keys: dict[str, Any]) -> tuple[str | None, str]:
    """The hanging-protocol slot of an image from its tags, or (None, why not)."""
    side, view = keys.get("laterality", ""), keys.get("view", "")
    if not keys:
        return None, "no DICOM tags (laterality and view unknown)"
    if side not in ("L", "R"):
        return None, "no laterality tag"
    if not view:
        return None, "no view position tag"
    if view not in ("CC", "MLO"):
        return None, f"view {view} is not in the protocol"
    return f"{side}-{view}", ""


def mirror_of(keys: dict[str, Any], image: np.ndarray | None = None) -> bool | None:
    """Whether to flip the image left-right so its chest wall faces the other breast (R: chest wall on
    the right; L: on the left): from Patient Orientation, else the pixels; None when the side is unknown."""
    side = keys.get("laterality", "")
    if side not in ("L", "R"):
        return None
    want = "right" if side == "R" else "left"
    row = (keys.get("orientation") or [""])[0].upper()
    if row.startswith("A"):
        return want != "left"
    if row.startswith("P"):
        return want != "right"
    if image is None:
        return None
    from meddet.io.breast import chest_wall_side

    try:
        return chest_wall_side(image) != want
    except Exception:  # not a greyscale image: leave it as stored
        return None


def _best(dets: list[dict]) -> float:
    return max((float(d["score"]) for d in dets), default=0.0)


def assemble(views: list[dict[str, Any]], errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The exam answer from each read image: `views` entries carry ``source``, ``keys`` (dicom_keys,
    removed here), ``mirror`` and the prediction (``image``, ``detections``, …)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    patients: dict[str, str] = {}
    for v in views:
        keys = v["keys"]
        group = (
            ("study", keys["study"])
            if keys.get("study")
            else (("patient", keys["patient"]) if keys.get("patient") else ("none", ""))
        )
        groups.setdefault(group, []).append(v)
        if keys.get("patient") and keys["patient"] not in patients:
            patients[keys["patient"]] = "Patient " + _letters(len(patients))
    studies = []
    for n, ((kind, _), members) in enumerate(groups.items(), 1):
        slots: dict[str, dict] = {}
        extra = []
        for v in members:
            keys = v.pop("keys")
            slot, why = slot_of(keys)
            v["view"] = slot
            v["laterality"] = keys.get("laterality") or None
            if slot is not None and slot in slots:
                slot, why = None, f"a second {slot} image"
            if slot is None:
                v["reason"] = why
                extra.append(v)
            else:
                slots[slot] = v
        scores: dict[str, float | None] = {}
        for side in ("R", "L"):
            dets = [d for v in members if v["laterality"] == side for d in v["detections"]]
            read = any(v["laterality"] == side for v in members)
            scores[side] = round(_best(dets), 5) if read else None
        known = [s for s in scores.values() if s is not None]
        patient_ids = {m.get("_patient") for m in members}
        studies.append(
            {
                "label": f"Exam {n}" if kind != "none" else "Images without study tags",
                "patient": next((patients[p] for p in patient_ids if p in patients), None),
                "views": {k: slots.get(k) for k in PROTOCOL},
                "missing": [k for k in PROTOCOL if k not in slots],
                "extra": extra,
                "scores": {"exam": max(known) if known else None, "right": scores["R"], "left": scores["L"]},
            }
        )
        for m in members:
            m.pop("_patient", None)
    return {"protocol": [list(PROTOCOL[:2]), list(PROTOCOL[2:])], "studies": studies, "errors": errors}


def _letters(k: int) -> str:
    s = ""
    k += 1
    while k:
        k, r = divmod(k - 1, 26)
        s = chr(65 + r) + s
    return s


def read_exam(
    service: ModelService,
    uploads: list[tuple[int, bytes]],
    max_bytes: int,
    threshold: float | None,
    display: dict[str, Any],
) -> dict[str, Any]:
    """Predict every image of the uploads (see module doc); a file that fails is listed in ``errors``
    (source, status, message) and the rest are still read."""
    images = expand(uploads, max_bytes)
    views, errors = [], []
    for source, data in images:
        keys = dicom_keys(data)
        try:
            result = service.predict_bytes(data, **display)
        except UploadError as e:
            errors.append({"source": source, "status": e.status, "message": e.message})
            continue
        if threshold is not None:
            result["detections"] = [d for d in result["detections"] if d["score"] >= threshold]
        image_id = (result["image"].get("display") or {}).get("id")
        pixels = service.store.get(image_id) if image_id and service.store is not None else None
        result["mirror"] = mirror_of(keys, pixels)
        views.append({"source": source, "keys": keys, "_patient": keys.get("patient"), **result})
    logger.info("read an exam of %d images (%d refused)", len(images), len(errors))
    out = assemble(views, errors)
    out["threshold"] = threshold
    out["scoring"] = (
        "breast: the highest finding score over every image of that breast (laterality from tags), "
        "at or above the threshold; exam: the highest over both breasts; null: no image of it"
    )
    return out
