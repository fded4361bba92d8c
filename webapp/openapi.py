"""OpenAPI 3.1 description of the JSON API (served at /api/v1/openapi.json)."""

from __future__ import annotations

from typing import Any

from meddet.xai.cam import METHODS

DISPLAY_PARAMS = [
    {
        "name": "display",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean"},
        "description": "Also return a display picture (image.display: a JPEG/WebP data URL at most display_max_side "
        "pixels long; boxes stay in the original image's pixels) and keep the decoded image in memory "
        "for /api/v1/images/{id}/crop. Also accepted as a form field.",
    },
    {
        "name": "display_max_side",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 64, "maximum": 4096, "default": 2048},
        "description": "Longer side of the display picture in pixels (never enlarged).",
    },
    {
        "name": "display_format",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["jpeg", "webp"], "default": "jpeg"},
    },
]


def _exam_doc() -> str:
    from webapp import exam

    return (exam.__doc__ or "").split("\n\n", 1)[-1].strip()


EXAM_DOC = _exam_doc()


def openapi_spec(
    max_upload_mb: float,
    max_pixels: int,
    explain_timeout_s: float = 30.0,
    explain_max_detections: int = 5,
    explain_max_side: int = 2048,
) -> dict[str, Any]:
    """The API description, with this server's upload, pixel and explanation limits."""
    error = {"$ref": "#/components/schemas/Error"}

    def err(desc: str) -> dict:
        return {"description": desc, "content": {"application/json": {"schema": error}}}

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "meddet detection API",
            "version": "1",
            "description": "Object detection on medical images (DICOM, PNG, JPEG). Research use only; "
            "not a medical device. Uploads are not stored.",
        },
        "paths": {
            "/api/v1/predict": {
                "post": {
                    "summary": "Detect findings in one image",
                    "parameters": [
                        {
                            "name": "include_image",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean"},
                            "description": "Also return the decoded image as an 8-bit PNG (base64).",
                        },
                        {
                            "name": "explain",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean"},
                            "description": "Also return heat maps of what the model looked at (class activation maps, "
                            "meddet.xai) for the findings scoring at least `explain_threshold`, highest "
                            f"first: at most {explain_max_detections} findings, "
                            f"none started after {explain_timeout_s:g} s, at most {explain_max_side} pixels "
                            "on the longer side (lay them over the image stretched to its size). Also "
                            "accepted as a form field. 1/true or 0/false.",
                        },
                        {
                            "name": "explain_threshold",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "number", "minimum": 0, "maximum": 1},
                            "description": "With explain: explain the findings scoring at least this (default: "
                            "`threshold`, else each class's threshold); 0 explains the highest-scoring "
                            "findings whatever their score. Also accepted as a form field.",
                        },
                        {
                            "name": "explain_method",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": list(METHODS), "default": "hirescam"},
                            "description": "hirescam (what the box score used), gradcam, gradcam++ (box-specific, "
                            "gradient-based) or eigencam (gradient-free, the same map for every finding). "
                            "Also accepted as a form field.",
                        },
                        *DISPLAY_PARAMS,
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["file"],
                                    "properties": {
                                        "file": {
                                            "type": "string",
                                            "format": "binary",
                                            "description": f"DICOM (Part-10), PNG or JPEG; "
                                            f"at most {max_upload_mb:g} MB "
                                            f"and {max_pixels:,} pixels. The type is read from the content.",
                                        },
                                        "threshold": {
                                            "type": "number",
                                            "minimum": 0,
                                            "maximum": 1,
                                            "description": "Drop detections scoring below this (default: return all).",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Detections",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Prediction"}}},
                        },
                        "400": err(
                            "No file, empty file, or a bad threshold, explain, explain_method or explain_threshold"
                        ),
                        "413": err(
                            "Upload, form fields or image too large (pixels, or decoded memory over the budget)"
                        ),
                        "415": err("Not a PNG, JPEG or DICOM file"),
                        "422": err(
                            "File cannot be decoded (truncated, no pixel data, unsupported encoding), "
                            "or the model cannot be explained"
                        ),
                        "503": err(
                            "Server busy: the queue or the memory budget is full; retry after Retry-After seconds"
                        ),
                    },
                }
            },
            "/api/v1/exam": {
                "post": {
                    "summary": "Read several images as screening exams (hanging protocol, per-breast scores)",
                    "description": EXAM_DOC,
                    "parameters": DISPLAY_PARAMS,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["files"],
                                    "properties": {
                                        "files": {
                                            "type": "array",
                                            "items": {"type": "string", "format": "binary"},
                                            "description": "DICOM, PNG or JPEG images, or ZIP archives of them; "
                                            "at most "
                                            f"16 images and {max_upload_mb:g} MB in all",
                                        },
                                        "threshold": {
                                            "type": "number",
                                            "minimum": 0,
                                            "maximum": 1,
                                            "description": "Drop detections scoring below this; the suspicion "
                                            "scores use the rest",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "One entry per study",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Exam"}}},
                        },
                        "400": err("No files, too many images, or a bad threshold or display parameter"),
                        "413": err("Upload too large, or a ZIP that expands beyond the limit"),
                        "422": err("A ZIP that cannot be read (files that cannot be decoded are listed in errors)"),
                    },
                }
            },
            "/api/v1/images/{image_id}/crop": {
                "get": {
                    "summary": "A region of a kept image at full resolution (for zooming)",
                    "description": "The decoded image of a prediction made with display=1 is kept in memory only "
                    "(never on disk), for a bounded time and count; an expired id answers 404.",
                    "parameters": [
                        {
                            "name": "image_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": "image.display.id of the prediction",
                        },
                        *[
                            {
                                "name": k,
                                "in": "query",
                                "required": True,
                                "schema": {"type": "number"},
                                "description": f"{k} of the region in the original image's pixels",
                            }
                            for k in "xywh"
                        ],
                        {
                            "name": "max_side",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 16, "maximum": 4096, "default": 1024},
                            "description": "Shrink the crop to at most this many pixels on its longer side",
                        },
                        {
                            "name": "format",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["jpeg", "webp"], "default": "jpeg"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The region as an image; header X-Crop-Region: x,y,w,h actually "
                            "covered (whole pixels, clipped to the image)",
                            "content": {"image/jpeg": {}, "image/webp": {}},
                        },
                        "400": err("A region that is empty, not finite or outside the image"),
                        "404": err("No such image: expired, dropped or never kept"),
                    },
                }
            },
            "/api/v1/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "OK"}}}},
            "/api/v1/model": {
                "get": {
                    "summary": "Classes, thresholds, metrics of the served model",
                    "responses": {"200": {"description": "Model information"}},
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
                        }
                    },
                },
                "Detection": {
                    "type": "object",
                    "properties": {
                        "box": {
                            "type": "array",
                            "items": {"type": "number"},
                            "minItems": 4,
                            "maxItems": 4,
                            "description": "x1, y1, x2, y2 in the original image's pixels",
                        },
                        "score": {"type": "number"},
                        "class": {"type": "integer"},
                        "label": {"type": "string"},
                        "color": {"type": "string", "description": "#rrggbb of the class"},
                        "heatmap": {
                            "type": "string",
                            "description": "With explain: this finding's heat map, a PNG data "
                            "URL (RGBA: JET colours, opacity rising with the map; the explanation's width x "
                            "height), present for the findings explained",
                        },
                        "heatmap_layer": {"type": "string", "description": "Feature map the heat map was taken at"},
                    },
                },
                "Explanation": {
                    "type": "object",
                    "properties": {
                        "method": {"type": "string", "enum": list(METHODS)},
                        "width": {"type": "integer"},
                        "height": {"type": "integer"},
                        "overlay": {
                            "type": "string",
                            "description": "The explained findings' heat maps combined "
                            "(pixel-wise maximum) as one RGBA PNG data URL for the whole image",
                        },
                        "explained": {"type": "integer", "description": "Findings with a heat map"},
                        "candidates": {"type": "integer", "description": "Findings at or above the threshold"},
                        "limited_by": {
                            "type": ["string", "null"],
                            "enum": ["time", "max_detections", None],
                            "description": "Why fewer findings than candidates were explained",
                        },
                        "empty_maps": {
                            "type": "integer",
                            "description": "Explained findings whose map is zero "
                            "everywhere: nothing at that layer raised their score",
                        },
                        "explain_ms": {"type": "number"},
                    },
                },
                "Display": {
                    "type": "object",
                    "description": "With display=1 (inside image)",
                    "properties": {
                        "url": {"type": "string", "description": "Data URL of the display picture (JPEG or WebP)"},
                        "format": {"type": "string", "enum": ["jpeg", "webp"]},
                        "width": {"type": "integer"},
                        "height": {"type": "integer"},
                        "scale": {"type": "number", "description": "display pixels per original pixel"},
                        "bytes": {"type": "integer"},
                        "id": {
                            "type": ["string", "null"],
                            "description": "For /api/v1/images/{id}/crop; null when the image could not be kept",
                        },
                    },
                },
                "ExamView": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Prediction"},
                        {
                            "type": "object",
                            "properties": {
                                "source": {
                                    "type": "object",
                                    "description": "{file: index of the upload, member: index in its "
                                    "ZIP}; names are never echoed",
                                },
                                "view": {"type": ["string", "null"]},
                                "laterality": {"type": ["string", "null"]},
                                "mirror": {
                                    "type": ["boolean", "null"],
                                    "description": "Flip left-right to hang (chest wall "
                                    "of right views on the right, of left views on the left); null: side unknown",
                                },
                                "reason": {"type": "string", "description": "Extra views only: why it has no slot"},
                            },
                        },
                    ]
                },
                "Exam": {
                    "type": "object",
                    "properties": {
                        "protocol": {"type": "array", "description": "Rows of the hanging protocol"},
                        "studies": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "label": {"type": "string", "description": "Exam 1, 2, ... (no UIDs)"},
                                    "patient": {
                                        "type": ["string", "null"],
                                        "description": "Patient A, B, ... (no IDs)",
                                    },
                                    "views": {
                                        "type": "object",
                                        "description": "R-CC, L-CC, R-MLO, L-MLO: an ExamView or null",
                                    },
                                    "missing": {"type": "array", "items": {"type": "string"}},
                                    "extra": {"type": "array", "items": {"$ref": "#/components/schemas/ExamView"}},
                                    "scores": {
                                        "type": "object",
                                        "properties": {
                                            "exam": {"type": ["number", "null"]},
                                            "right": {"type": ["number", "null"]},
                                            "left": {"type": ["number", "null"]},
                                        },
                                    },
                                },
                            },
                        },
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "source": {"type": "object"},
                                    "status": {"type": "integer"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                        "threshold": {"type": ["number", "null"]},
                        "scoring": {"type": "string"},
                    },
                },
                "Prediction": {
                    "type": "object",
                    "properties": {
                        "image": {
                            "type": "object",
                            "properties": {
                                "format": {"type": "string", "enum": ["png", "jpeg", "dicom"]},
                                "width": {"type": "integer"},
                                "height": {"type": "integer"},
                                "png_base64": {"type": "string"},
                            },
                        },
                        "dicom": {"type": ["object", "null"], "description": "Non-identifying DICOM facts"},
                        "display": {"$ref": "#/components/schemas/Display"},
                        "detections": {"type": "array", "items": {"$ref": "#/components/schemas/Detection"}},
                        "threshold": {"type": ["number", "null"]},
                        "inference_ms": {"type": "number"},
                        "explanation": {"$ref": "#/components/schemas/Explanation"},
                    },
                },
            }
        },
    }
