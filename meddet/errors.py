"""Exceptions of meddet.

Every message names the file or field at fault, what was found and what was expected,
so the CLI can print it as one readable line.
"""

from __future__ import annotations


class MeddetError(Exception):
    """Base class of every error meddet raises on purpose (bad input, bad config)."""


class ConfigError(MeddetError):
    """A config file or override is wrong (unknown key, wrong type, bad value)."""


class DataError(MeddetError):
    """An input data file (image, DICOM, CSV, COCO JSON) is missing or malformed."""


class DicomError(DataError):
    """A DICOM file cannot be read or decoded."""


class ImageTooLargeError(DataError):
    """An image would need more memory to decode than the budget allows (checked from its header,
    before decoding)."""


class ModelError(MeddetError):
    """A model cannot be built, or a checkpoint does not fit the model."""


class EngineUnavailableError(ModelError):
    """The requested engine (e.g. detectron2) is not installed."""
