"""OpenAPI 3.1 description of the JSON API (served at /api/v1/openapi.json)."""
from __future__ import annotations

from typing import Any

from meddet.xai.cam import METHODS


def openapi_spec(max_upload_mb: float, max_pixels: int, explain_timeout_s: float = 30.0,
                 explain_max_detections: int = 5, explain_max_side: int = 2048) -> dict[str, Any]:
    """The API description, with this server's upload, pixel and explanation limits."""
    error = {"$ref": "#/components/schemas/Error"}

    def err(desc: str) -> dict:
        return {"description": desc, "content": {"application/json": {"schema": error}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": "meddet detection API", "version": "1",
                 "description": "Object detection on medical images (DICOM, PNG, JPEG). Research use only; "
                                "not a medical device. Uploads are not stored."},
        "paths": {
            "/api/v1/predict": {"post": {
                "summary": "Detect findings in one image",
                "parameters": [
                    {"name": "include_image", "in": "query", "required": False, "schema": {"type": "boolean"},
                     "description": "Also return the decoded image as an 8-bit PNG (base64)."},
                    {"name": "explain", "in": "query", "required": False, "schema": {"type": "boolean"},
                     "description": "Also return heat maps of what the model looked at (class activation maps, "
                                    "meddet.xai) for the findings scoring at least `explain_threshold`, highest "
                                    f"first: at most {explain_max_detections} findings, "
                                    f"none started after {explain_timeout_s:g} s, at most {explain_max_side} pixels "
                                    "on the longer side (lay them over the image stretched to its size). Also "
                                    "accepted as a form field. 1/true or 0/false."},
                    {"name": "explain_threshold", "in": "query", "required": False,
                     "schema": {"type": "number", "minimum": 0, "maximum": 1},
                     "description": "With explain: explain the findings scoring at least this (default: "
                                    "`threshold`, else each class's threshold); 0 explains the highest-scoring "
                                    "findings whatever their score. Also accepted as a form field."},
                    {"name": "explain_method", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": list(METHODS), "default": "hirescam"},
                     "description": "hirescam (what the box score used), gradcam, gradcam++ (box-specific, "
                                    "gradient-based) or eigencam (gradient-free, the same map for every finding). "
                                    "Also accepted as a form field."},
                ],
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": f"DICOM (Part-10), PNG or JPEG; at most {max_upload_mb:g} MB "
                                                f"and {max_pixels:,} pixels. The type is read from the content."},
                        "threshold": {"type": "number", "minimum": 0, "maximum": 1,
                                      "description": "Drop detections scoring below this (default: return all)."},
                    }}}}},
                "responses": {
                    "200": {"description": "Detections", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Prediction"}}}},
                    "400": err("No file, empty file, or a bad threshold, explain, explain_method or "
                               "explain_threshold"),
                    "413": err("Upload, form fields or image too large (pixels, or decoded memory over the budget)"),
                    "415": err("Not a PNG, JPEG or DICOM file"),
                    "422": err("File cannot be decoded (truncated, no pixel data, unsupported encoding), "
                               "or the model cannot be explained"),
                    "503": err("Server busy: the queue or the memory budget is full; retry after Retry-After seconds"),
                },
            }},
            "/api/v1/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "OK"}}}},
            "/api/v1/model": {"get": {"summary": "Classes, thresholds, metrics of the served model",
                                      "responses": {"200": {"description": "Model information"}}}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "status": {"type": "integer"}, "message": {"type": "string"}}}}},
            "Detection": {"type": "object", "properties": {
                "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                        "description": "x1, y1, x2, y2 in the original image's pixels"},
                "score": {"type": "number"}, "class": {"type": "integer"}, "label": {"type": "string"},
                "color": {"type": "string", "description": "#rrggbb of the class"},
                "heatmap": {"type": "string", "description": "With explain: this finding's heat map, a PNG data "
                            "URL (RGBA: JET colours, opacity rising with the map; the explanation's width x "
                            "height), present for the findings explained"},
                "heatmap_layer": {"type": "string", "description": "Feature map the heat map was taken at"}}},
            "Explanation": {"type": "object", "properties": {
                "method": {"type": "string", "enum": list(METHODS)},
                "width": {"type": "integer"}, "height": {"type": "integer"},
                "overlay": {"type": "string", "description": "The explained findings' heat maps combined "
                            "(pixel-wise maximum) as one RGBA PNG data URL for the whole image"},
                "explained": {"type": "integer", "description": "Findings with a heat map"},
                "candidates": {"type": "integer", "description": "Findings at or above the threshold"},
                "limited_by": {"type": ["string", "null"], "enum": ["time", "max_detections", None],
                               "description": "Why fewer findings than candidates were explained"},
                "empty_maps": {"type": "integer", "description": "Explained findings whose map is zero "
                               "everywhere: nothing at that layer raised their score"},
                "explain_ms": {"type": "number"}}},
            "Prediction": {"type": "object", "properties": {
                "image": {"type": "object", "properties": {
                    "format": {"type": "string", "enum": ["png", "jpeg", "dicom"]},
                    "width": {"type": "integer"}, "height": {"type": "integer"},
                    "png_base64": {"type": "string"}}},
                "dicom": {"type": ["object", "null"], "description": "Non-identifying DICOM facts"},
                "detections": {"type": "array", "items": {"$ref": "#/components/schemas/Detection"}},
                "threshold": {"type": ["number", "null"]},
                "inference_ms": {"type": "number"},
                "explanation": {"$ref": "#/components/schemas/Explanation"}}},
        }},
    }
