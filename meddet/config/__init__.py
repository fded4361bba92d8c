"""Configuration: detectron2-style CfgNode defaults, YAML files with `_BASE_` inheritance,
and `KEY VALUE` overrides from the command line."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import yaml
from yacs.config import CfgNode

from meddet.config.defaults import get_cfg
from meddet.errors import ConfigError

__all__ = ["CfgNode", "get_cfg", "load_config", "merge_yaml", "merge_overrides", "save_config"]

logger = logging.getLogger(__name__)

BASE_KEY = "_BASE_"
CONFIG_VERSION = 2  # detectron2's config VERSION whose key names meddet reads


def _load_yaml_with_base(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `_BASE_` inheritance loops back to itself")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, found {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    bases = [base] if isinstance(base, str) else list(base)
    merged: dict = {}
    for b in bases:
        b = os.path.expanduser(b)
        bpath = Path(b) if os.path.isabs(b) else path.parent / b
        _deep_update(merged, _load_yaml_with_base(bpath, seen + (path.resolve(),)))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


# detectron2 keys of parts meddet does not build (detectron2's model-zoo YAMLs carry them): key prefix ->
# (the part, whether the config switches it on). Accepted and not used while the part is off, as detectron2
# itself ignores them then; refused with one line while it is on.
_ABSENT_PARTS: list[tuple[str, str, Callable[[CfgNode], bool]]] = [
    ("MODEL.ROI_MASK_HEAD.", "the mask head (Mask R-CNN; MODEL.MASK_ON)", lambda c: bool(c.MODEL.MASK_ON)),
    ("INPUT.MASK_FORMAT", "the mask head (Mask R-CNN; MODEL.MASK_ON)", lambda c: bool(c.MODEL.MASK_ON)),
    ("MODEL.ROI_KEYPOINT_HEAD.", "the keypoint head (MODEL.KEYPOINT_ON)", lambda c: bool(c.MODEL.KEYPOINT_ON)),
    ("TEST.KEYPOINT_OKS_SIGMAS", "the keypoint head (MODEL.KEYPOINT_ON)", lambda c: bool(c.MODEL.KEYPOINT_ON)),
    (
        "DATASETS.PROPOSAL_FILES_",
        "precomputed proposals (MODEL.LOAD_PROPOSALS)",
        lambda c: bool(c.MODEL.LOAD_PROPOSALS),
    ),
    (
        "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_",
        "precomputed proposals (MODEL.LOAD_PROPOSALS)",
        lambda c: bool(c.MODEL.LOAD_PROPOSALS),
    ),
    (
        "MODEL.SEM_SEG_HEAD.",
        "semantic segmentation (MODEL.META_ARCHITECTURE SemanticSegmentor/PanopticFPN)",
        lambda c: c.MODEL.META_ARCHITECTURE in ("SemanticSegmentor", "PanopticFPN"),
    ),
    (
        "MODEL.PANOPTIC_FPN.",
        "Panoptic FPN (MODEL.META_ARCHITECTURE PanopticFPN)",
        lambda c: c.MODEL.META_ARCHITECTURE == "PanopticFPN",
    ),
    (
        "MODEL.ROI_BOX_CASCADE_HEAD.",
        "the cascade box head (MODEL.ROI_HEADS.NAME CascadeROIHeads)",
        lambda c: c.MODEL.ROI_HEADS.NAME == "CascadeROIHeads",
    ),
]
# Switches of those parts: a config that turns one on is refused (meddet builds box detectors only).
_PART_SWITCHES = {"MASK_ON": "a mask head", "KEYPOINT_ON": "a keypoint head", "LOAD_PROPOSALS": "precomputed proposals"}


def _absent_part(full: str) -> tuple[str, Callable[[CfgNode], bool]] | None:
    for prefix, part, is_on in _ABSENT_PARTS:
        if full.startswith(prefix):
            return part, is_on
    return None


def _leaf_keys(value: object, full: str) -> list[str]:
    """The dotted names of the values under ``full`` (itself when ``value`` is no mapping)."""
    if isinstance(value, dict) and value:
        return [key for k, v in value.items() for key in _leaf_keys(v, f"{full}.{k}")]
    return [full]


def _check_keys(cfg: CfgNode, data: dict, source: str, prefix: str = "", absent: list[str] | None = None) -> dict:
    """Refuse unknown keys with the full dotted name (yacs' own error is less precise). Keys of detectron2
    parts meddet does not build (_ABSENT_PARTS) are left out of the returned data and listed in ``absent``."""
    kept = {}
    for k, v in data.items():
        full = f"{prefix}{k}"
        if k not in cfg:
            leaves = _leaf_keys(v, full)
            if absent is not None and all(_absent_part(key) is not None for key in leaves):
                absent.extend(leaves)
                continue
            raise ConfigError(f"{source}: unknown config key {full!r}")
        if isinstance(cfg[k], CfgNode):
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: {full!r} is a section; expected a mapping, found {v!r}")
            v = _check_keys(cfg[k], v, source, full + ".", absent)
        kept[k] = v
    return kept


def check_parts(cfg: CfgNode, source: str, absent: Sequence[str] = ()) -> None:
    """Refuse a config that switches on a detectron2 part meddet does not build (MODEL.MASK_ON, ...), or
    that gives keys of such a part while it is on; keys of parts switched off are accepted and not used."""
    for switch, what in _PART_SWITCHES.items():
        if cfg.MODEL[switch]:
            raise ConfigError(
                f"{source}: MODEL.{switch} is True; meddet builds box detectors only (Faster R-CNN), "
                f"without {what}; expected False"
            )
    for key in absent:
        part, is_on = _absent_part(key)  # type: ignore[misc]
        if is_on(cfg):
            raise ConfigError(
                f"{source}: {key} belongs to {part}, which meddet does not build; expected that part switched off"
            )
    if absent:
        logger.info(
            "%s: %d keys of detectron2 parts meddet does not build (switched off) are not used: %s",
            source,
            len(absent),
            ", ".join(absent),
        )


def merge_yaml(cfg: CfgNode, path: str | os.PathLike) -> CfgNode:
    data = _load_yaml_with_base(Path(path))
    absent: list[str] = []
    data = _check_keys(cfg, data, str(path), absent=absent)
    try:
        cfg.merge_from_other_cfg(CfgNode(data))
    except (ValueError, KeyError, AssertionError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    check_parts(cfg, str(path), absent)
    if cfg.VERSION != CONFIG_VERSION:
        raise ConfigError(
            f"{path}: VERSION {cfg.VERSION!r}; expected {CONFIG_VERSION}, detectron2's current config version "
            "(older configs need detectron2's upgrade_config first)"
        )
    return cfg


def merge_overrides(cfg: CfgNode, opts: Sequence[str]) -> CfgNode:
    """Apply `KEY VALUE` pairs (values parsed as Python literals, as in detectron2)."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(f"command-line overrides must be KEY VALUE pairs; got an odd number of items: {opts}")
    for key, _ in zip(opts[0::2], opts[1::2]):
        node = cfg
        parts = key.split(".")
        for p in parts:
            if not isinstance(node, CfgNode) or p not in node:
                raise ConfigError(f"command line: unknown config key {key!r}")
            node = node[p]
        if isinstance(node, CfgNode):
            raise ConfigError(f"command line: {key!r} is a section, not a value")
    try:
        cfg.merge_from_list(opts)
    except (ValueError, KeyError, AssertionError, TypeError) as e:
        raise ConfigError(f"command line: {e}") from None
    check_parts(cfg, "command line")
    return cfg


def load_config(path: str | os.PathLike | None = None, opts: Iterable[str] = ()) -> CfgNode:
    """Defaults, then the YAML file (with its `_BASE_` chain), then `KEY VALUE` overrides."""
    cfg = get_cfg()
    if path:
        merge_yaml(cfg, path)
    merge_overrides(cfg, list(opts))
    return cfg


def save_config(cfg: CfgNode, path: str | os.PathLike) -> None:
    """Write the merged config (atomically) so the run folder says exactly what ran."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(cfg.dump(), encoding="utf-8")
    os.replace(tmp, path)
