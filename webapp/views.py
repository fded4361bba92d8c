"""Routes of the viewer beyond one prediction: crops for zoom, exams of several images, the favicon."""

from __future__ import annotations

from typing import Any, cast

from flask import Flask, Request, Response, jsonify, request, send_from_directory

from webapp.app import ModelService, UploadError, _flag, _score
from webapp.display import DEFAULT_MAX_SIDE, FORMATS, MAX_CROP_SIDE, crop_region, encode


def _int(name: str, value: str | None, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    try:
        v = int(float(value))
    except ValueError:
        raise UploadError(400, f"{name}: expected a whole number from {lo} to {hi}, found {value!r}") from None
    if not lo <= v <= hi:
        raise UploadError(400, f"{name}: expected a whole number from {lo} to {hi}, found {v}")
    return v


def _param(name: str, default: str | None = None) -> str | None:
    return request.form.get(name, request.args.get(name, default))


def display_options(req: Request | None = None) -> dict[str, Any]:
    """predict_bytes keywords from ``display`` (1: answer a display image, keep the image for crops),
    ``display_max_side`` (pixels, default 2048) and ``display_format`` (jpeg or webp)."""
    if not _flag("display", _param("display", "0") or "0"):
        return {}
    fmt = (_param("display_format", "jpeg") or "jpeg").lower()
    if fmt not in FORMATS:
        raise UploadError(400, f"display_format: expected one of {', '.join(FORMATS)}, found {fmt!r}")
    side = _int("display_max_side", _param("display_max_side"), DEFAULT_MAX_SIDE, 64, MAX_CROP_SIDE)
    return {"display_max_side": side, "display_format": fmt}


def register_views(app: Flask, service: ModelService, api: str) -> None:
    """Add the crop, exam and favicon routes to `app` (made by webapp.app.create_app)."""

    @app.context_processor
    def zoom_keep() -> dict[str, str]:
        ttl = service.store.ttl_s if service.store is not None and service.store.max_items else 0
        return {"zoom_keep_minutes": f"{ttl / 60:g}"}

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return send_from_directory(cast(str, app.static_folder), "favicon.svg", mimetype="image/svg+xml", max_age=86400)

    @app.get(f"{api}/images/<image_id>/crop")
    def crop(image_id: str) -> Response:
        image = service.store.get(image_id) if service.store is not None else None
        if image is None:
            raise UploadError(404, "image not found: it expired or was never kept (upload it again)")
        try:
            x, y, w, h = (float(request.args.get(k, "nan")) for k in ("x", "y", "w", "h"))
            x0, y0, x1, y1 = crop_region(image.shape, x, y, w, h)
        except ValueError as e:
            raise UploadError(400, f"crop region (x, y, w, h in the original image's pixels): {e}") from None
        side = _int("max_side", request.args.get("max_side"), 1024, 16, MAX_CROP_SIDE)
        fmt = (request.args.get("format") or "jpeg").lower()
        if fmt not in FORMATS:
            raise UploadError(400, f"format: expected one of {', '.join(FORMATS)}, found {fmt!r}")
        data, cw, ch = encode(image[y0:y1, x0:x1], side, fmt, quality=90)
        resp = Response(data, mimetype=FORMATS[fmt][1])
        resp.headers["X-Crop-Region"] = f"{x0},{y0},{x1 - x0},{y1 - y0}"
        resp.headers["Access-Control-Expose-Headers"] = "X-Crop-Region"
        return resp

    @app.post(f"{api}/exam")
    def exam() -> Response:
        from webapp.exam import read_exam

        files = request.files.getlist("files") or request.files.getlist("file")
        if not files:
            raise UploadError(400, "no files: send the images as multipart/form-data fields 'files' (repeat it)")
        threshold = _score("threshold", _param("threshold"))
        uploads = [(i, f.read()) for i, f in enumerate(files)]
        out = read_exam(service, uploads, int(app.config["MAX_CONTENT_LENGTH"]) * 4, threshold, display_options())
        return jsonify(out)
