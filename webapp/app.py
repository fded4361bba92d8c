"""Flask app factory: upload page, result view, model page and a JSON API over one shared Predictor.

Safety: uploads are size-limited, typed by content (PNG, JPEG, DICOM), refused above a pixel limit and a
decoded-memory limit from their header before decoding, decoded from memory (never written to disk); no
file name or DICOM value that could identify a patient is logged or returned; CORS is closed unless origins
are listed; requests are admitted by a memory budget (each reserves its estimated decoded size and working
set; 503 with Retry-After when the budget is spent) and one predictor runs one image at a time behind a
bounded queue that answers 503 when full. Explanations
(``explain=1``: class activation maps from meddet.xai) run inside the same slot and lock, for at most
`explain_max_detections` findings, stop starting new ones after `explain_timeout_s`, and are made at
most `explain_max_side` pixels on the longer side.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import cv2
import numpy as np
from flask import Flask, Request, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from meddet.errors import DataError, DicomError, ImageTooLargeError, MeddetError, ModelError
from meddet.xai.cam import METHODS

if TYPE_CHECKING:
    from flask.typing import ResponseReturnValue

    from meddet.inference.base import DetectorLike
    from meddet.inference.predictor import Predictor
    from meddet.io import ImageHeader
    from webapp.display import ImageStore

logger = logging.getLogger(__name__)

API = "/api/v1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_OFFSET, DICOM_MAGIC = 128, b"DICM"
MAX_FORM_FIELDS = 100  # multipart parts per request (a flood of fields answers 413 naming the fields)
RETRY_AFTER_S = 2
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
# DICOM facts shown to users: nothing that names or dates a patient, study or device.
DICOM_FACTS = (
    "modality",
    "view",
    "laterality",
    "patient_orientation",
    "rows",
    "columns",
    "bits_stored",
    "photometric",
    "transfer_syntax",
    "pixel_spacing",
)


class UploadError(Exception):
    """A request the app refuses, with the HTTP status, a message for the user and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def machine_memory_bytes() -> int:
    """Physical memory of this machine (psutil when installed, else sysconf), bounded by a cgroup limit."""
    total = 0
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except Exception:
        try:
            total = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            total = 8 * 1024**3
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def default_max_memory_bytes() -> int:
    """The default request memory budget: half of the machine's memory (the rest for the model, the OS
    and the other processes), at least 256 MiB."""
    return max(256 * 1024**2, machine_memory_bytes() // 2)


class MemoryBudget:
    """A counter of bytes reserved by requests in flight; a request that does not fit now is refused
    (503, retry later), one that can never fit is refused for good (413)."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> None:
        nbytes = int(nbytes)
        if nbytes > self.capacity:
            raise UploadError(
                413,
                f"the image needs about {_mib(nbytes)} to process, more than the server's "
                f"memory budget of {_mib(self.capacity)}",
            )
        with self._lock:
            if self.used + nbytes > self.capacity:
                raise UploadError(
                    503,
                    "server busy: the memory budget is in use by other images; retry in a moment",
                    {"Retry-After": str(RETRY_AFTER_S)},
                )
            self.used += nbytes
            self.peak = max(self.peak, self.used)

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.used = max(0, self.used - int(nbytes))


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


class InMemoryRequest(Request):
    """Uploaded files stay in memory (werkzeug spools files over 500 KB to a temporary file on disk);
    the body is bounded by MAX_CONTENT_LENGTH, the number of parts by MAX_FORM_PARTS."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        import io

        return io.BytesIO()


def sniff_format(data: bytes) -> str:
    """'png', 'jpeg' or 'dicom' from the file's bytes (never its name); UploadError 415 otherwise."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[DICOM_OFFSET : DICOM_OFFSET + 4] == DICOM_MAGIC:
        return "dicom"
    raise UploadError(415, "unsupported file type: expected a PNG, JPEG or DICOM (Part-10, 'DICM' at byte 128) image")


class ModelService:
    """One shared predictor: one image at a time (lock), at most `max_queue` requests waiting or running.

    Explanations: at most `explain_max_detections` findings per image (highest scores first), none
    started after `explain_timeout_s` seconds, maps at most `explain_max_side` pixels on the longer side
    (drawn stretched over the image by clients)."""

    def __init__(
        self,
        predictor: DetectorLike,
        max_queue: int = 4,
        max_pixels: int = 80_000_000,
        explain_timeout_s: float = 30.0,
        explain_max_detections: int = 5,
        explain_max_side: int = 2048,
        max_memory: int | None = None,
        model_memory: int | None = None,
    ) -> None:
        self.predictor = predictor
        self.max_pixels = int(max_pixels)
        self.budget = MemoryBudget(default_max_memory_bytes() if max_memory is None else int(max_memory))
        self.model_memory = model_working_set(predictor) if model_memory is None else int(model_memory)
        self.explain_timeout_s = float(explain_timeout_s)
        self.explain_max_detections = int(explain_max_detections)
        self.explain_max_side = int(explain_max_side)
        self._slots = threading.BoundedSemaphore(max(1, int(max_queue)))
        self._lock = threading.Lock()
        self.started = time.time()
        self.served = 0
        self.store: ImageStore | None = (
            None  # webapp.display.ImageStore: decoded images kept in memory for crops (create_app)
        )

    def _check_pixels(self, h: int, w: int) -> None:
        if h <= 0 or w <= 0:
            raise UploadError(422, f"image declares an empty size ({w}x{h} pixels)")
        if h * w > self.max_pixels:
            raise UploadError(413, f"image of {w}x{h} pixels is larger than the limit of {self.max_pixels:,} pixels")

    def predict_bytes(
        self,
        data: bytes,
        include_image: bool = False,
        explain: str | None = None,
        explain_threshold: float | None = None,
        display_max_side: int | None = None,
        display_format: str = "jpeg",
    ) -> dict[str, Any]:
        """Check, decode and predict one uploaded file; raises UploadError for anything refused.

        `explain`: a meddet.xai method name to add heat maps of the findings scoring at least
        `explain_threshold` (default: each class's threshold), or None for none. `display_max_side`:
        also answer a display image of at most that many pixels (webapp.display), the decoded image kept
        in `store` for crops."""
        if not data:
            raise UploadError(400, "empty upload: the file has no bytes")
        fmt = sniff_format(data)
        from meddet.io import image_header

        try:
            header = image_header(data)
        except DataError as e:
            raise UploadError(
                422, f"{'DICOM' if fmt == 'dicom' else 'image'} cannot be decoded: {_strip_name(str(e))}"
            ) from None
        self._check_pixels(header.height, header.width)
        need = self.estimate_bytes(header, len(data), include_image=include_image, explain=explain is not None)
        self.budget.reserve(need)
        try:
            if not self._slots.acquire(blocking=False):
                raise UploadError(
                    503, "server busy: too many images waiting; retry in a moment", {"Retry-After": str(RETRY_AFTER_S)}
                )
            try:
                # Decoded from memory: the upload is never written to disk.
                facts = None
                if fmt == "dicom":
                    from meddet.io import dicom_info

                    info = dicom_info(data)
                    facts = {k: info.get(k) for k in DICOM_FACTS}
                try:
                    decoded = self.predictor.read(data, max_bytes=self.budget.capacity)
                except ImageTooLargeError as e:
                    raise UploadError(413, _strip_name(str(e))) from None
                except DicomError as e:
                    raise UploadError(422, f"DICOM cannot be decoded: {_strip_name(str(e))}") from None
                except DataError as e:
                    raise UploadError(422, f"image cannot be decoded: {_strip_name(str(e))}") from None
                h, w = decoded.shape[:2]
                self._check_pixels(h, w)
                t0 = time.perf_counter()
                explanation = None
                with self._lock:
                    out = self.predictor(decoded)
                    elapsed = time.perf_counter() - t0
                    if explain is not None:
                        explanation = self._explain(decoded, out, explain, explain_threshold)
                    self.served += 1
                # kept only when answered or stored for crops; otherwise released here
                image = decoded if include_image or display_max_side is not None else None
                del decoded
            finally:
                self._slots.release()
        finally:
            self.budget.release(need)
        logger.info("predicted a %s image of %dx%d: %d detections in %.3f s", fmt, w, h, len(out["scores"]), elapsed)
        resp = self._response(out, fmt, h, w, facts, elapsed, image if include_image else None, explanation)
        if display_max_side is not None and image is not None:
            from webapp.display import display_entry

            image_id = self.store.put(image) if self.store is not None else None
            resp["image"]["display"] = display_entry(image, display_max_side, display_format, image_id)
        return resp

    def estimate_bytes(
        self, header: ImageHeader, upload_bytes: int, include_image: bool = False, explain: bool = False
    ) -> int:
        """Memory one request may take, from the image's header: the upload and its parsed copy; the
        decoder (OpenCV's and pydicom's decoders peak at twice their output, measured) and then its output
        with the display array made from it; then the display array with the model's input (one float32
        channel at a time at full size); plus the model's working set."""
        px = header.height * header.width * header.frames
        out_bpp = 3 if header.channels >= 3 else min(2, header.bytes_per_sample)
        if header.format == "dicom":
            out_bpp = 2  # up to 16-bit output; the value table is small
        decode = max(2 * header.decoded_bytes, header.decoded_bytes + px * out_bpp)
        prepare = px * out_bpp + px * 4
        need = 2 * upload_bytes + max(decode, prepare) + self.model_memory
        if include_image:
            need += px * (4 + 3 + 3)  # 16-to-8-bit step, display copy and its PNG
        if explain:
            side = self.explain_max_side
            need += side * side * 4 * (self.explain_max_detections + 2)
        return need

    def _explain(self, image: np.ndarray, out: dict, method: str, threshold: float | None) -> dict[str, Any]:
        """Heat maps of the top findings: {"summary": response entry, "maps": {detection index: (png, layer)}}."""
        from meddet.inference.base import score_thresholds
        from meddet.xai import explain_detections, heatmap_rgba

        if not hasattr(self.predictor, "model") or not hasattr(self.predictor, "prepare"):
            raise UploadError(
                422,
                "explain: this model cannot be explained (an ensemble: explanations need one "
                "model's layers; explain a member's bundle instead)",
            )
        scores, classes = np.asarray(out["scores"]), np.asarray(out["classes"], dtype=np.int64)
        thr = score_thresholds(self.predictor.cfg, self.predictor.class_names, threshold)
        order = np.argsort(-scores, kind="stable")
        candidates = order[scores[order] >= thr[classes[order]]]
        chosen = candidates[: self.explain_max_detections]
        t0 = time.perf_counter()
        try:
            cams = explain_detections(
                cast("Predictor", self.predictor),  # a single model (checked above)
                image,
                np.asarray(out["boxes"])[chosen],
                classes[chosen],
                method=method,
                max_side=self.explain_max_side,
                deadline=time.monotonic() + self.explain_timeout_s,
            )
        except ModelError as e:
            raise UploadError(422, f"explain: this model cannot be explained ({e})") from None
        h, w = image.shape[:2]
        scale = min(1.0, self.explain_max_side / max(h, w))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        combined = np.zeros(size, dtype=np.float32)
        maps: dict[int, tuple[str, str]] = {}
        for i, cam in zip(chosen.tolist(), cams):
            np.maximum(combined, cam.heatmap, out=combined)
            maps[i] = (_png_data_url(heatmap_rgba(cam.heatmap)), cam.layer)
        limited_by = None
        if len(cams) < len(chosen):
            limited_by = "time"
        elif len(chosen) < len(candidates):
            limited_by = "max_detections"
        elapsed = time.perf_counter() - t0
        logger.info("explained %d of %d findings with %s in %.3f s", len(cams), len(candidates), method, elapsed)
        summary = {
            "method": method,
            "width": size[1],
            "height": size[0],
            "overlay": _png_data_url(heatmap_rgba(combined)),
            "explained": len(cams),
            "candidates": int(len(candidates)),
            "limited_by": limited_by,
            "empty_maps": sum(1 for c in cams if not c.heatmap.any()),
            "explain_ms": round(elapsed * 1000, 1),
        }
        return {"summary": summary, "maps": maps}

    def _response(
        self,
        out: dict,
        fmt: str,
        h: int,
        w: int,
        facts: dict[str, Any] | None,
        elapsed: float,
        image: np.ndarray | None,
        explanation: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        from meddet.visualize import class_color

        names = self.predictor.class_names
        dets: list[dict[str, Any]] = []
        for i, (b, s, c) in enumerate(zip(out["boxes"], out["scores"], out["classes"])):
            d: dict[str, Any] = {
                "box": [round(float(v), 2) for v in b],
                "score": round(float(s), 5),
                "class": int(c),
                "label": names[int(c)],
                "color": _hex(class_color(int(c))),
            }
            if explanation is not None and i in explanation["maps"]:
                d["heatmap"], d["heatmap_layer"] = explanation["maps"][i]
            dets.append(d)
        dets.sort(key=lambda d: -d["score"])
        resp: dict[str, Any] = {
            "image": {"format": fmt, "width": int(w), "height": int(h)},
            "dicom": facts,
            "detections": dets,
            "inference_ms": round(elapsed * 1000, 1),
        }
        if explanation is not None:
            resp["explanation"] = explanation["summary"]
        if image is not None:
            from meddet.visualize import to_display_bgr

            ok, png = cv2.imencode(".png", to_display_bgr(image))
            resp["image"]["png_base64"] = base64.b64encode(png.tobytes()).decode("ascii") if ok else None
        return resp


def _strip_name(message: str, name: str = "upload") -> str:
    """Error text without the "upload: " prefix naming the in-memory file."""
    return message[len(name) + 2 :] if message.startswith(f"{name}: ") else message


def model_working_set(predictor: DetectorLike) -> int:
    """A rough estimate of the memory one prediction takes beyond its image: the activations of a
    Faster R-CNN with FPN on the largest test input (about 600 bytes per input pixel), at least 64 MiB."""
    try:
        cfg = predictor.cfg
        px = int(cfg.INPUT.MIN_SIZE_TEST) * int(cfg.INPUT.MAX_SIZE_TEST)
        if bool(cfg.TILING.ENABLED):
            px = max(px, int(cfg.TILING.SIZE) ** 2 * max(1, int(cfg.TILING.BATCH_SIZE)))
    except Exception:
        px = 800 * 1333
    return max(64 * 1024**2, px * 600)


def _png_data_url(image: np.ndarray) -> str:
    """A PNG data URL of an 8-bit image (grey, BGR or BGRA)."""
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise UploadError(500, "the heat map could not be encoded as PNG")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def _hex(bgr: Sequence[int]) -> str:
    b, g, r = (int(v) for v in bgr)
    return f"#{r:02x}{g:02x}{b:02x}"


def model_info(predictor: DetectorLike) -> dict[str, Any]:
    """Classes (name, colour, default threshold: the tuned one when the bundle was tuned), engine, input
    and metrics of the served model (any meddet.inference.DetectorLike); for an ensemble, its fusion
    settings and members."""
    from meddet.inference.base import score_thresholds
    from meddet.visualize import class_color

    meta = getattr(predictor, "bundle", None) or {}
    cfg = predictor.cfg
    thr = score_thresholds(cfg, predictor.class_names)
    members = getattr(predictor, "members", None)
    extra: dict[str, Any] = {}
    if members is not None:
        ensemble: Any = predictor  # an EnsemblePredictor (it has members)
        extra["ensemble"] = meta.get("ensemble") or {
            "method": ensemble.method,
            "iou_thresh": ensemble.iou_thresh,
            "weights": ensemble.weights or [],
            "skip_box_thresh": ensemble.skip_box_thresh,
        }
        extra["members"] = [
            {
                "classes": list(m.class_names),
                "engine": (getattr(m, "bundle", None) or {}).get("engine", str(m.cfg.MODEL.ENGINE)),
            }
            for m in members
        ]
    return {
        "classes": [
            {"index": i, "name": n, "color": _hex(class_color(i)), "score_thresh": float(thr[i])}
            for i, n in enumerate(predictor.class_names)
        ],
        "score_thresh": float(cfg.TEST.SCORE_THRESH),
        # the engine actually serving (a bundle's weights may have been converted for the engine available here)
        "engine": (
            meta.get("engine", "ensemble")
            if members is not None
            else getattr(getattr(predictor, "model", None), "engine", None) or meta.get("engine", str(cfg.MODEL.ENGINE))
        ),
        "input": meta.get(
            "input", {"min_size_test": int(cfg.INPUT.MIN_SIZE_TEST), "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST)}
        ),
        "metrics": meta.get("metrics", {}),
        "training_data": meta.get("training_data", {}),
        "tuned": (meta.get("thresholds") or {}).get("tuned"),
        **extra,
    }


def _score(name: str, value: str | None) -> float | None:
    """An optional score parameter in [0, 1]; UploadError 400 otherwise."""
    if value is None:
        return None
    try:
        score = float(value)
    except ValueError:
        raise UploadError(400, f"{name}: expected a number between 0 and 1, found {value!r}") from None
    if not 0.0 <= score <= 1.0:
        raise UploadError(400, f"{name}: expected a number between 0 and 1, found {score}")
    return score


def _flag(name: str, value: str) -> bool:
    """A boolean request parameter: 1/true/yes or 0/false/no; UploadError 400 otherwise."""
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise UploadError(400, f"{name}: expected 1 or 0 (true or false), found {value!r}")


def _load_model(model: DetectorLike | str | os.PathLike) -> DetectorLike:
    if hasattr(model, "predict_batch") and hasattr(model, "class_names"):
        return cast("DetectorLike", model)
    from meddet.hub import load_predictor

    return load_predictor(model)


def create_app(
    model: DetectorLike | str | os.PathLike,
    max_upload_mb: float = 64,
    max_pixels: int = 80_000_000,
    max_queue: int = 4,
    cors_origins: Sequence[str] = (),
    explain_timeout_s: float = 30.0,
    explain_max_detections: int = 5,
    explain_max_side: int = 2048,
    max_memory_mb: float | None = None,
    model_memory_mb: float | None = None,
    image_store_items: int = 16,
    image_store_mb: float = 256,
    image_store_ttl_s: float = 600.0,
) -> Flask:
    """The web app over `model` (any meddet.inference.DetectorLike: a Predictor, a tiled one, an
    EnsemblePredictor; or a bundle folder, an ensemble bundle or a Hub repo id).

    `max_upload_mb` bounds the request body (413 above), `max_pixels` the decoded image, `max_queue`
    the requests waiting or running (503 above); `cors_origins` lists origins allowed to call the API
    (none by default). Explanations (``explain=1``) cover at most `explain_max_detections` findings,
    start none after `explain_timeout_s` seconds and are at most `explain_max_side` pixels wide or high.
    `max_memory_mb` is the memory budget of the requests in flight (default: half the machine's memory):
    each reserves its estimated decoded size plus the model's working set (`model_memory_mb`, default
    estimated from the test input size) before decoding, and is answered 503 with Retry-After when the
    budget is in use, 413 when it could never fit.
    Decoded images for the page's zoom are kept in memory only, at most `image_store_items` images and
    `image_store_mb` MB, each for `image_store_ttl_s` seconds (webapp.display.ImageStore; 0 items: none);
    that memory comes on top of `max_memory_mb`.
    """
    predictor = _load_model(model)
    service = ModelService(
        predictor,
        max_queue=max_queue,
        max_pixels=max_pixels,
        explain_timeout_s=explain_timeout_s,
        explain_max_detections=explain_max_detections,
        explain_max_side=explain_max_side,
        max_memory=None if max_memory_mb is None else int(max_memory_mb * 2**20),
        model_memory=None if model_memory_mb is None else int(model_memory_mb * 2**20),
    )
    info = model_info(predictor)
    card = ""
    bundle_dir = getattr(predictor, "bundle_dir", None)
    if bundle_dir is not None and (Path(bundle_dir) / "README.md").is_file():
        card = (Path(bundle_dir) / "README.md").read_text(encoding="utf-8")
    allowed = set(cors_origins)

    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    app.config["MAX_FORM_PARTS"] = MAX_FORM_FIELDS
    app.config["MEDDET_SERVICE"] = service
    from webapp.display import ImageStore
    from webapp.jsonsafe import FiniteJSONProvider

    service.store = ImageStore(image_store_items, int(image_store_mb * 1024 * 1024), image_store_ttl_s)
    app.json = FiniteJSONProvider(app)
    app.json.sort_keys = False

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        resp = jsonify({"error": {"status": status, "message": message}})
        resp.status_code = status
        resp.headers.update(headers or {})
        return resp

    @app.after_request
    def headers(resp: Response) -> Response:
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        if request.path.startswith(API):
            resp.headers["Cache-Control"] = "no-store"
        origin = request.headers.get("Origin")
        if origin and origin in allowed:
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"
        return resp

    @app.errorhandler(UploadError)
    def upload_error(e: UploadError) -> Response:
        logger.info("refused an upload (%d): %s", e.status, e.message)
        return error(e.status, e.message, e.headers)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Response:
        if e.code == 413:
            length = request.content_length
            if length is not None and length <= app.config["MAX_CONTENT_LENGTH"]:
                # the body is within the limit: werkzeug stopped on the form's parts
                return error(
                    413,
                    f"too many form fields or a text field too large: at most {MAX_FORM_FIELDS} "
                    "fields per request and 500 KB per text field (send the image as field 'file')",
                )
            return error(413, f"upload too large: the limit is {max_upload_mb:g} MB")
        if (e.code or 500) >= 500:
            logger.error(
                "internal error answering %s %s",
                request.method,
                request.path,
                exc_info=getattr(e, "original_exception", None) is not None,
            )
            return error(e.code or 500, "internal server error")
        return error(e.code or 500, e.description or e.name)

    @app.errorhandler(MeddetError)
    def meddet_error(e: MeddetError) -> Response:
        logger.warning("prediction failed: %s", type(e).__name__)
        return error(422, "the image cannot be processed by the model")

    @app.get("/")
    def index() -> ResponseReturnValue:
        return render_template("index.html", info=info)

    @app.get("/model")
    def model_page() -> ResponseReturnValue:
        return render_template("model.html", info=info, card=card)

    @app.get(f"{API}/health")
    def health() -> ResponseReturnValue:
        return jsonify({"status": "ok", "served": service.served, "uptime_s": round(time.time() - service.started, 1)})

    @app.get(f"{API}/model")
    def model_api() -> ResponseReturnValue:
        return jsonify(info)

    @app.get(f"{API}/openapi.json")
    def openapi() -> ResponseReturnValue:
        from webapp.openapi import openapi_spec

        return jsonify(
            openapi_spec(
                max_upload_mb,
                max_pixels,
                explain_timeout_s=service.explain_timeout_s,
                explain_max_detections=service.explain_max_detections,
                explain_max_side=service.explain_max_side,
            )
        )

    @app.post(f"{API}/predict")
    def predict() -> ResponseReturnValue:
        f = request.files.get("file")
        if f is None:
            raise UploadError(400, "no file: send the image as multipart/form-data field 'file'")
        threshold = _score("threshold", request.form.get("threshold", request.args.get("threshold")))
        include_image = request.args.get("include_image", "0") in ("1", "true")
        explain = _flag("explain", request.form.get("explain", request.args.get("explain", "0")))
        method = request.form.get("explain_method", request.args.get("explain_method", "hirescam"))
        if method not in METHODS:
            raise UploadError(400, f"explain_method: expected one of {', '.join(METHODS)}, found {method!r}")
        explain_threshold = _score(
            "explain_threshold", request.form.get("explain_threshold", request.args.get("explain_threshold"))
        )
        from webapp.views import display_options

        result = service.predict_bytes(
            f.read(),
            include_image=include_image,
            explain=method if explain else None,
            explain_threshold=threshold if explain_threshold is None else explain_threshold,
            **display_options(request),
        )
        if threshold is not None:
            result["detections"] = [d for d in result["detections"] if d["score"] >= threshold]
        result["threshold"] = threshold
        return jsonify(result)

    from webapp.views import register_views

    register_views(app, service, API)
    return app
