"""OpenAPI 3.1 description of the JSON API (served at /api/v1/openapi.json)."""
from __future__ import annotations

from typing import Any


def openapi_spec(max_upload_mb: float, max_pixels: int) -> dict[str, Any]:
    """The API description, with this server's upload and pixel limits."""
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
                "parameters": [{"name": "include_image", "in": "query", "required": False,
                                "schema": {"type": "boolean"},
                                "description": "Also return the decoded image as an 8-bit PNG (base64)."}],
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
                    "400": err("No file, empty file or bad threshold"),
                    "413": err("Upload or image too large"),
                    "415": err("Not a PNG, JPEG or DICOM file"),
                    "422": err("File cannot be decoded (truncated, no pixel data, unsupported encoding)"),
                    "503": err("Server busy: the queue is full; retry later"),
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
                "color": {"type": "string", "description": "#rrggbb of the class"}}},
            "Prediction": {"type": "object", "properties": {
                "image": {"type": "object", "properties": {
                    "format": {"type": "string", "enum": ["png", "jpeg", "dicom"]},
                    "width": {"type": "integer"}, "height": {"type": "integer"},
                    "png_base64": {"type": "string"}}},
                "dicom": {"type": ["object", "null"], "description": "Non-identifying DICOM facts"},
                "detections": {"type": "array", "items": {"$ref": "#/components/schemas/Detection"}},
                "threshold": {"type": ["number", "null"]},
                "inference_ms": {"type": "number"}}},
        }},
    }
