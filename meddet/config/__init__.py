"""Configuration: detectron2-style CfgNode defaults, YAML files with `_BASE_` inheritance,
and `KEY VALUE` overrides from the command line."""

from __future__ import annotations

import ast
import logging
import operator
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import yaml
from yacs.config import CfgNode

from meddet.config.defaults import FPN_ARCHITECTURE, get_cfg, get_fpn_cfg
from meddet.errors import ConfigError

__all__ = [
    "CfgNode",
    "FPN_ARCHITECTURE",
    "get_cfg",
    "get_fpn_cfg",
    "load_config",
    "merge_yaml",
    "merge_overrides",
    "save_config",
]

logger = logging.getLogger(__name__)

BASE_KEY = "_BASE_"
CONFIG_VERSION = 2  # detectron2's config VERSION whose key names meddet reads


# detectron2's YAML files may compute a value with `!!python/object/apply:eval ["<expression>"]` (its
# Base-RetinaNet.yaml: three anchor sizes per octave); detectron2 evaluates the string with Python's eval.
# meddet's loader stays safe: it evaluates that one tag with _safe_eval (literals, arithmetic, list/tuple
# displays and list comprehensions; no names but the comprehensions' own variables, no calls, no attributes).
EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_ELEMENTS = 100_000  # a config value, not a computation: bounds comprehension sizes and powers


def _safe_eval(expression: str) -> object:
    """The value of ``expression`` if it uses only numbers/strings/booleans/None, + - * / // % **, unary +/-,
    list and tuple displays and list comprehensions (``for`` over such a value, optional ``if``); ValueError
    naming the first construct that is anything else."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not a Python expression ({e.msg})") from None

    def value(node: ast.AST, names: dict[str, object]) -> object:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
            return node.value
        if isinstance(node, ast.List):
            return [value(e, names) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(value(e, names) for e in node.elts)
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand, names))  # type: ignore[operator]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left, names), value(node.right, names)
            if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > 64:
                raise ValueError(f"exponent {right!r} is too large")
            if isinstance(node.op, ast.Mult) and any(isinstance(v, (str, list, tuple)) for v in (left, right)):
                raise ValueError("repeating a string or list with * is not allowed")
            try:
                result = _BINARY[type(node.op)](left, right)
            except (TypeError, ZeroDivisionError, OverflowError) as e:
                raise ValueError(str(e)) from None
            if isinstance(result, int) and result.bit_length() > 1024:
                raise ValueError("an integer of more than 1024 bits is not a config value")
            return result
        if isinstance(node, ast.ListComp):
            return comprehension(node, 0, names)
        shown = ast.unparse(node) if hasattr(ast, "unparse") else type(node).__name__
        raise ValueError(
            f"{shown!r} ({type(node).__name__}) is not allowed: only literals, arithmetic and list comprehensions"
        )

    def comprehension(node: ast.ListComp, i: int, names: dict[str, object]) -> list:
        if i == len(node.generators):
            return [value(node.elt, names)]
        gen = node.generators[i]
        if gen.is_async or not isinstance(gen.target, ast.Name):
            raise ValueError("a comprehension must bind one plain name (for x in ...)")
        items = value(gen.iter, names)
        if not isinstance(items, (list, tuple, str)):
            raise ValueError(f"a comprehension iterates over a list or tuple, not {type(items).__name__}")
        out: list = []
        for item in items:
            inner = {**names, gen.target.id: item}
            if all(value(cond, inner) for cond in gen.ifs):
                out.extend(comprehension(node, i + 1, inner))
            if len(out) > _MAX_ELEMENTS:
                raise ValueError(f"the comprehension makes more than {_MAX_ELEMENTS} values")
        return out

    return value(tree.body, {})


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader plus detectron2's ``!!python/object/apply:eval`` tag, evaluated by :func:`_safe_eval`."""


def _construct_eval(loader: _ConfigLoader, node: yaml.Node) -> object:
    args = loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else None
    if not args or len(args) != 1 or not isinstance(args[0], str):
        raise yaml.constructor.ConstructorError(
            None, None, '!!python/object/apply:eval expects one string, as ["<expression>"]', node.start_mark
        )
    try:
        return _safe_eval(args[0])
    except ValueError as e:
        raise yaml.constructor.ConstructorError(
            None, None, f"!!python/object/apply:eval [{args[0]!r}]: {e}", node.start_mark
        ) from None


_ConfigLoader.add_constructor(EVAL_TAG, _construct_eval)


def _load_yaml_with_base(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `_BASE_` inheritance loops back to itself")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_ConfigLoader) or {}
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
