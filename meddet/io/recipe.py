"""One preprocessing recipe from the file to the model input, recorded and replayed.

A :class:`PreprocessRecipe` names every pixel and geometry step between an image file and the
model: the DICOM display chain (VOI LUT / window choice, normalization and its parameters, gamma,
bit depth; :class:`~meddet.io.dicom.PixelOptions`), mirroring every breast so the chest wall is on
the left (side from the tags or from the pixels), cropping to the breast, and the resize policy
of the model input. It is

- written by the converters into the COCO ``info["preprocess"]`` (and each converted image record
  says what was done to it: ``flipped``, ``crop``, ``original_size``);
- carried into the run's ``config.yaml`` (``DICOM.*`` and ``PREPROCESS.*``; the trainer adopts the
  recipe of its training data) and into a bundle's ``meddet.json`` (``"preprocess"``);
- replayed by everything that reads an original file (the training / test loader for records that
  were not converted, the :class:`~meddet.inference.Predictor` and so ``-c predict``, ``-c
  evaluate``, the web app), which report boxes in the ORIGINAL file's pixels (crop and flip undone).

Arrays read by :func:`read_for_recipe` are :class:`TaggedImage` s: plain numpy arrays that also
carry the header facts the flip needs (``Laterality``, ``PatientOrientation``) and the file name,
so ``predictor(predictor.read(path))`` flips by the tags just as the converter did.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from meddet.errors import ConfigError, DataError
from meddet.io.breast import Geometry, boxes_to_original, orient_and_crop
from meddet.io.dicom import (
    DEFAULT_MAX_DECODED_BYTES,
    DICM_MAGIC,
    DICM_OFFSET,
    PixelOptions,
    dicom_to_array,
    is_dicom_file,
    load_dicom,
)
from meddet.io.image import read_image_bits

logger = logging.getLogger(__name__)

__all__ = [
    "RECIPE_NAME",
    "PreprocessRecipe",
    "TaggedImage",
    "boxes_to_original",
    "geometry_from_record",
    "read_for_recipe",
]

RECIPE_NAME = "meddet.preprocess/1"
FLIP_MODES = ("", "tags", "pixels")
# COCO image-record keys saying an image was already flipped / cropped by a converter.
GEOMETRY_KEYS = ("flipped", "crop", "original_size")


@dataclass(frozen=True)
class PreprocessRecipe:
    """Every step from a file to the model input (see the module doc).

    ``pixels``: the DICOM display chain (``DICOM.*``); ``flip_left``: ``""`` (never), ``"tags"``
    (PatientOrientation, else Laterality, else the pixels) or ``"pixels"``; ``crop_breast`` and
    ``crop_margin`` (fraction of the image size kept around the breast); ``resize``: ``(min_size_test,
    max_size_test)`` of the model input (``INPUT.*``), None when not decided (a converter's recipe).
    """

    pixels: PixelOptions = field(default_factory=PixelOptions)
    flip_left: str = ""
    crop_breast: bool = False
    crop_margin: float = 0.02
    resize: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.flip_left not in FLIP_MODES:
            raise ConfigError(f"PREPROCESS.FLIP_LEFT: expected one of {list(FLIP_MODES)}, found {self.flip_left!r}")
        if not 0.0 <= float(self.crop_margin) < 0.5:
            raise ConfigError(f"PREPROCESS.CROP_MARGIN: expected 0 <= margin < 0.5, found {self.crop_margin!r}")

    @property
    def geometric(self) -> bool:
        """True when the recipe flips or crops (boxes must then be mapped back)."""
        return bool(self.flip_left) or bool(self.crop_breast)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (COCO ``info["preprocess"]``, meddet.json ``"preprocess"``)."""
        p = self.pixels
        return {
            "recipe": RECIPE_NAME,
            "apply_voi": bool(p.apply_voi),
            "window_index": int(p.window_index),
            "normalize": str(p.normalize),
            "percentiles": [float(v) for v in p.percentiles],
            "fixed_range": [float(v) for v in p.fixed_range] if p.fixed_range is not None else None,
            "gamma": float(p.gamma),
            "bit_depth": int(p.bit_depth),
            "flip_left": self.flip_left,
            "crop_breast": bool(self.crop_breast),
            "crop_margin": float(self.crop_margin),
            "resize": None
            if self.resize is None
            else {"min_size_test": int(self.resize[0]), "max_size_test": int(self.resize[1])},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "preprocess") -> PreprocessRecipe:
        """The recipe of :meth:`to_dict`'s dict; a ConfigError naming ``source`` when it is not one."""
        if not isinstance(data, dict) or data.get("recipe") != RECIPE_NAME:
            raise ConfigError(
                f'{source}: not a preprocessing recipe (expected a dict with "recipe": '
                f"{RECIPE_NAME!r}, found {data!r:.200})"
            )
        try:
            fixed = data.get("fixed_range")
            pixels = PixelOptions(
                apply_voi=bool(data["apply_voi"]),
                window_index=int(data["window_index"]),
                normalize=str(data["normalize"]),
                # lengths are checked by PixelOptions (a ConfigError naming the field)
                percentiles=cast("tuple[float, float]", tuple(float(v) for v in data["percentiles"])),
                fixed_range=cast("tuple[float, float]", tuple(float(v) for v in fixed)) if fixed else None,
                gamma=float(data["gamma"]),
                bit_depth=int(data["bit_depth"]),
            )
            resize = data.get("resize")
            return cls(
                pixels=pixels,
                flip_left=str(data["flip_left"]),
                crop_breast=bool(data["crop_breast"]),
                crop_margin=float(data["crop_margin"]),
                resize=None if not resize else (int(resize["min_size_test"]), int(resize["max_size_test"])),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{source}: incomplete preprocessing recipe ({type(e).__name__}: {e})") from None

    @classmethod
    def from_cfg(cls, cfg: Any) -> PreprocessRecipe:
        """The recipe of a config: ``DICOM.*``, ``PREPROCESS.*`` and ``INPUT.MIN/MAX_SIZE_TEST``."""
        pre = cfg.PREPROCESS
        return cls(
            pixels=PixelOptions.from_cfg(cfg),
            flip_left=str(pre.FLIP_LEFT),
            crop_breast=bool(pre.CROP_BREAST),
            crop_margin=float(pre.CROP_MARGIN),
            resize=(int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST)),
        )

    def config_opts(self) -> list[Any]:
        """``DICOM.*`` / ``PREPROCESS.*`` overrides (``cfg.merge_from_list``) that give a config this
        recipe's pixel and geometry steps (the resize policy stays the config's own)."""
        p = self.pixels
        return [
            "DICOM.APPLY_VOI",
            bool(p.apply_voi),
            "DICOM.WINDOW_INDEX",
            int(p.window_index),
            "DICOM.NORMALIZE",
            str(p.normalize),
            "DICOM.PERCENTILES",
            tuple(float(v) for v in p.percentiles),
            "DICOM.FIXED_RANGE",
            tuple(float(v) for v in p.fixed_range) if p.fixed_range else (),
            "DICOM.GAMMA",
            float(p.gamma),
            "DICOM.BIT_DEPTH",
            int(p.bit_depth),
            "PREPROCESS.FLIP_LEFT",
            self.flip_left,
            "PREPROCESS.CROP_BREAST",
            bool(self.crop_breast),
            "PREPROCESS.CROP_MARGIN",
            float(self.crop_margin),
        ]

    def same_steps(self, other: PreprocessRecipe) -> bool:
        """True when both recipes make the same image from a file (the resize policy aside)."""
        return self.to_dict() | {"resize": None} == other.to_dict() | {"resize": None}

    # ------------------------------------------------------------------ replay
    def read(self, path: str | os.PathLike) -> TaggedImage:
        """The file's pixels through the display chain (see :func:`read_for_recipe`)."""
        return read_for_recipe(path, self.pixels)

    def apply(
        self, image: np.ndarray, boxes: Sequence[Sequence[float]] = (), hints: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, list[list[float]], Geometry]:
        """Flip and crop ``image`` (and COCO ``boxes``) as the recipe says; ``hints`` (default: the
        array's own, for a :class:`TaggedImage`) give the tags the flip by ``"tags"`` uses. Returns
        the image, the boxes and the :class:`Geometry` applied (``to_original`` maps back)."""
        hints = dict(getattr(image, "hints", None) or {}) if hints is None else hints
        orientation = laterality = None
        if self.flip_left == "tags":
            orientation, laterality = hints.get("patient_orientation") or None, hints.get("laterality") or None
        out, new_boxes, geometry = orient_and_crop(
            np.asarray(image),
            boxes,
            flip_left=bool(self.flip_left),
            crop=self.crop_breast,
            patient_orientation=orientation,
            laterality=laterality,
            margin=self.crop_margin,
            source=str(hints.get("source") or ""),
        )
        return out, new_boxes, geometry


class TaggedImage(np.ndarray):
    """A numpy array that also carries ``hints``: header facts of the file it was read from
    (``laterality``, ``patient_orientation``, ``source``). Views keep them; computations give
    plain results wherever numpy makes new arrays."""

    hints: dict[str, Any]

    def __new__(cls, array: np.ndarray, hints: dict[str, Any] | None = None) -> TaggedImage:
        obj = np.asarray(array).view(cls)
        obj.hints = dict(hints or {})
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        self.hints = dict(getattr(obj, "hints", None) or {})

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (data loader workers) as a plain array plus its hints
        return (TaggedImage, (np.asarray(self), self.hints))


def read_for_recipe(
    source: str | os.PathLike | bytes,
    pixels: PixelOptions | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
    name: str = "upload",
) -> TaggedImage:
    """Read any image (:func:`meddet.io.read_image`; DICOM through the display chain with
    ``pixels``) as a :class:`TaggedImage` whose hints hold the DICOM's ``Laterality`` (else *Image
    Laterality*) and ``PatientOrientation``, and the file name. ``source`` is a path or the file's bytes
    (decoded from memory; ``name`` stands for the file in messages); ``max_bytes`` is the decoding budget."""
    pixels = pixels or PixelOptions()
    if isinstance(source, (bytes, bytearray, memoryview)):
        src: Any = bytes(source)
        label = name
        dicom = src[DICM_OFFSET : DICM_OFFSET + 4] == DICM_MAGIC
    else:
        src = Path(source)
        label = str(src)
        dicom = is_dicom_file(src)
    hints: dict[str, Any] = {"source": label}
    if dicom:
        ds = load_dicom(src, name=label)
        array = dicom_to_array(ds, source=label, max_bytes=max_bytes, **pixels.as_kwargs())
        laterality = ds.get("Laterality") or ds.get("ImageLaterality") or ""
        orientation = ds.get("PatientOrientation") or []
        orientation = [orientation] if isinstance(orientation, str) else [str(o) for o in orientation]
        hints.update(laterality=str(laterality), patient_orientation=orientation)
    else:
        array, bits = read_image_bits(src, max_bytes=max_bytes, name=label, **pixels.as_kwargs())
        if bits:
            hints["effective_bit_depth"] = bits
    return TaggedImage(array, hints)


def geometry_from_record(record: dict[str, Any]) -> Geometry | None:
    """The :class:`Geometry` a converter applied to a COCO image record (None when it applied none)."""
    if not any(k in record for k in GEOMETRY_KEYS):
        return None
    size = record.get("original_size") or [record["height"], record["width"]]
    crop = record.get("crop")
    return Geometry(bool(record.get("flipped", False)), list(crop) if crop else None, (int(size[0]), int(size[1])))


def dataset_recipe(coco_path: str | os.PathLike) -> PreprocessRecipe | None:
    """The recipe a converter recorded in a COCO file's ``info["preprocess"]`` (None when none)."""
    import json

    try:
        with open(coco_path, encoding="utf-8") as f:
            info = (json.load(f) or {}).get("info") or {}
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{coco_path}: cannot read the COCO file ({type(e).__name__}: {e})") from None
    data = info.get("preprocess") if isinstance(info, dict) else None
    return PreprocessRecipe.from_dict(data, f"{coco_path}: info.preprocess") if data else None


def adopt_dataset_recipe(cfg: Any, coco_paths: Sequence[str | os.PathLike]) -> PreprocessRecipe | None:
    """Give a (defrosted) config the recipe its training data were converted with, so the run's
    config.yaml, its bundle and every reader of original files replay it. The first file with a recipe
    decides; a different recipe in another file is an error (the images would not be alike); a config
    whose own DICOM.* / PREPROCESS.* differ is overridden with a warning. Returns the recipe adopted."""
    found: PreprocessRecipe | None = None
    first = ""
    for p in coco_paths:
        r = dataset_recipe(p)
        if r is None:
            continue
        if found is None:
            found, first = r, str(p)
        elif not found.same_steps(r):
            raise ConfigError(
                f"{p}: converted with another preprocessing recipe than {first} "
                f"({r.to_dict()} vs {found.to_dict()}); convert both the same way"
            )
    if found is None:
        return None
    own = PreprocessRecipe.from_cfg(cfg)
    if not own.same_steps(found) and not own.same_steps(PreprocessRecipe()):
        logger.warning(
            "the config's DICOM.* / PREPROCESS.* differ from the recipe %s was converted with; "
            "using the data's recipe (%s)",
            first,
            found.to_dict(),
        )
    cfg.merge_from_list(found.config_opts())
    logger.info("preprocessing recipe of %s: %s", first, {k: v for k, v in found.to_dict().items() if k != "resize"})
    return found


def boxes_from_original(boxes_xyxy: np.ndarray, geometry: Geometry | None) -> np.ndarray:
    """Boxes ``(N, 4)`` xyxy in the original file's pixels -> the preprocessed image's (the inverse of
    :func:`boxes_to_original`)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4).copy()
    if geometry is None:
        return boxes
    if geometry.flipped:
        w = float(geometry.original_size[1])
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    if geometry.crop:
        boxes[:, [0, 2]] -= float(geometry.crop[0])
        boxes[:, [1, 3]] -= float(geometry.crop[1])
    return boxes


def map_to_original(values: np.ndarray, geometry: Geometry | None, size: tuple[int, int]) -> np.ndarray:
    """A per-pixel map (e.g. a class activation map) of the preprocessed image -> the original image's
    frame of ``size`` ``(rows, columns)`` (the original size, or a scaled copy of it): resized into the
    crop's place, zero outside it, flipped back."""
    if geometry is None:
        return values
    oh, ow = geometry.original_size
    sy, sx = size[0] / oh, size[1] / ow
    x, y, cw, ch = geometry.crop or [0, 0, ow, oh]
    x0, y0 = int(round(x * sx)), int(round(y * sy))
    x1, y1 = min(size[1], max(x0 + 1, int(round((x + cw) * sx)))), min(size[0], max(y0 + 1, int(round((y + ch) * sy))))
    out = np.zeros(size, dtype=values.dtype)
    part = values
    if part.shape != (y1 - y0, x1 - x0):
        import cv2

        part = cv2.resize(values.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    out[y0:y1, x0:x1] = part
    return np.ascontiguousarray(out[:, ::-1]) if geometry.flipped else out
