"""Configuration: detectron2-style CfgNode defaults, YAML files with `_BASE_` inheritance,
and `KEY VALUE` overrides from the command line."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import yaml
from yacs.config import CfgNode

from meddet.config.defaults import get_cfg
from meddet.errors import ConfigError

__all__ = ["CfgNode", "get_cfg", "load_config", "merge_yaml", "merge_overrides", "save_config"]

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


def _check_keys(cfg: CfgNode, data: dict, source: str, prefix: str = "") -> None:
    """Refuse unknown keys with the full dotted name (yacs' own error is less precise)."""
    for k, v in data.items():
        full = f"{prefix}{k}"
        if k not in cfg:
            raise ConfigError(f"{source}: unknown config key {full!r}")
        if isinstance(cfg[k], CfgNode):
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: {full!r} is a section; expected a mapping, found {v!r}")
            _check_keys(cfg[k], v, source, full + ".")


def merge_yaml(cfg: CfgNode, path: str | os.PathLike) -> CfgNode:
    data = _load_yaml_with_base(Path(path))
    _check_keys(cfg, data, str(path))
    try:
        cfg.merge_from_other_cfg(CfgNode(data))
    except (ValueError, KeyError, AssertionError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from None
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
        raise ConfigError(
            f"command-line overrides must be KEY VALUE pairs; got an odd number of items: {opts}"
        )
    for key, _ in zip(opts[0::2], opts[1::2]):
        node = cfg
        parts = key.split(".")
        for i, p in enumerate(parts):
            if not isinstance(node, CfgNode) or p not in node:
                raise ConfigError(f"command line: unknown config key {key!r}")
            node = node[p]
        if isinstance(node, CfgNode):
            raise ConfigError(f"command line: {key!r} is a section, not a value")
    try:
        cfg.merge_from_list(opts)
    except (ValueError, KeyError, AssertionError, TypeError) as e:
        raise ConfigError(f"command line: {e}") from None
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
