"""The experiment YAML (format: `meddet.apps.experiment`): read, checked field by field (errors name the
YAML file and the field), every variant's config overrides applied once so a bad key fails before anything
trains."""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from meddet.config import CfgNode, load_config
from meddet.data.splits import KFOLD_BY
from meddet.errors import ConfigError
from meddet.evaluation.statistics import RULE_KINDS, RULE_ON, Rule

logger = logging.getLogger(__name__)

TOP_FIELDS = ("base", "output_dir", "seeds", "baseline", "overrides", "variants", "metrics", "rules", "kfold")
REQUIRED_FIELDS = ("base", "output_dir", "seeds", "baseline", "variants", "metrics")
RUNNER_KEYS = ("SEED", "OUTPUT_DIR")
KFOLD_KEYS = ("DATASETS.TRAIN", "DATASETS.VAL", "DATASETS.TEST")
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SHORTHANDS = {
    "recall": "prf1/recall-{}",
    "precision": "prf1/precision-{}",
    "F1": "prf1/F1-{}",
    "AP": "bbox/AP-{}",
    "AP50": "bbox/AP50-{}",
}


class _SpecLoader(yaml.SafeLoader):
    """yaml.safe_load, except that mapping keys are never YAML 1.1 booleans: a bare ``on:``, ``off:``,
    ``yes:``, ``no:``, ``y:``, ``n:`` (any case) key is the string written, as the user means it (a
    rule's ``on: ci_low``). Values keep YAML's usual reading."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:bool":
                key_node.tag = "tag:yaml.org,2002:str"
        return super().construct_mapping(node, deep=deep)


def read_spec_yaml(text: str) -> Any:
    """An experiment YAML's content (see `_SpecLoader`: boolean-looking keys stay strings)."""
    return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass


@dataclass(frozen=True)
class KFold:
    """Cross-validation: `k` folds grouped `by` patient or image; `seed` None: each run seed deals its own."""

    k: int
    by: str = "patient"
    seed: int | None = None


@dataclass(frozen=True)
class RunKey:
    """One run of an experiment."""

    variant: str
    seed: int
    fold: int | None = None

    @property
    def relpath(self) -> Path:
        """Its folder under ``<output_dir>/runs``."""
        p = Path(self.variant) / f"seed{self.seed}"
        return p / f"fold{self.fold}" if self.fold is not None else p

    @property
    def pair(self) -> str:
        """What pairs it with the baseline's run: the seed and fold."""
        return f"seed{self.seed}" + (f"/fold{self.fold}" if self.fold is not None else "")

    def __str__(self) -> str:
        return f"{self.variant} {self.pair}"


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated experiment YAML (`load_experiment`)."""

    path: Path
    base: Path
    output_dir: Path
    seeds: tuple[int, ...]
    baseline: str
    variants: dict[str, dict[str, Any]]
    overrides: dict[str, Any]
    metrics: tuple[str, ...]
    rules: tuple[Rule, ...]
    kfold: KFold | None

    def runs(self) -> list[RunKey]:
        """Every run, seed by seed, fold by fold, all variants of each (baseline first)."""
        folds = range(self.kfold.k) if self.kfold else [None]
        names = [self.baseline] + [v for v in self.variants if v != self.baseline]
        return [RunKey(v, s, f) for s in self.seeds for f in folds for v in names]

    def run_dir(self, key: RunKey) -> Path:
        return self.output_dir / "runs" / key.relpath


def _err(path: Path, fld: str, found: Any, expected: str) -> ConfigError:
    return ConfigError(f"{path}: {fld}: found {found!r}; expected {expected}")


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _flatten(path: Path, fld: str, data: Any) -> dict[str, Any]:
    """Overrides as {dotted key: value}: dotted keys, nested mappings or both."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _err(path, fld, data, "a mapping of config keys to values, e.g. {SOLVER.MAX_ITER: 100}")
    out: dict[str, Any] = {}
    for k, v in data.items():
        if not isinstance(k, str) or not k:
            raise _err(path, fld, k, "config key names (strings)")
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in _flatten(path, f"{fld}.{k}", v).items()})
        else:
            out[k] = v
    return out


def _apply_overrides(cfg: CfgNode, overrides: dict[str, Any], path: Path, fld: str, forbidden: Sequence[str]) -> None:
    for key, value in overrides.items():
        where = f"{fld}.{key}"
        if key in forbidden:
            raise ConfigError(f"{path}: {where}: {key} is set by the experiment runner per run; remove it")
        node: Any = cfg
        for part in key.split("."):
            if not isinstance(node, CfgNode) or part not in node:
                close = difflib.get_close_matches(key, list(flat_dict(cfg)), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{path}: {where}: unknown config key {key!r}{hint}")
            node = node[part]
        if isinstance(node, CfgNode):
            raise ConfigError(f"{path}: {where}: {key!r} is a config section; give its keys one by one")
        if isinstance(node, float) and _is_int(value):
            value = float(value)
        try:
            cfg.merge_from_list([key, value])
        except (ValueError, KeyError, AssertionError, TypeError) as e:
            raise ConfigError(f"{path}: {where}: {e}") from None


def _parse_rules(path: Path, data: Any, metrics: Sequence[str]) -> tuple[Rule, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        raise _err(path, "rules", data, "a list of {metric: NAME, min_gain: X} or {metric: NAME, max_drop: X}")
    rules = []
    for i, r in enumerate(data):
        fld = f"rules[{i}]"
        if not isinstance(r, dict):
            raise _err(path, fld, r, "a mapping {metric: NAME, min_gain: X} or {metric: NAME, max_drop: X}")
        unknown = sorted(set(r) - {"metric", "on", *RULE_KINDS})
        if unknown:
            raise _err(path, fld, unknown, f"only the fields metric, {', '.join(RULE_KINDS)}, on")
        metric = r.get("metric")
        if metric not in metrics:
            raise _err(path, f"{fld}.metric", metric, f"one of the experiment's metrics {list(metrics)}")
        kinds = [k for k in RULE_KINDS if k in r]
        if len(kinds) != 1:
            raise _err(path, fld, r, "exactly one of min_gain or max_drop")
        kind = kinds[0]
        value = r[kind]
        if not _is_number(value) or (kind == "max_drop" and value < 0):
            expected = (
                "a number >= 0 (the allowed drop, in the metric's units)"
                if kind == "max_drop"
                else "a number (the required gain, in the metric's units)"
            )
            raise _err(path, f"{fld}.{kind}", value, expected)
        on = r.get("on", "mean")
        if on not in RULE_ON:
            raise _err(path, f"{fld}.on", on, f"one of {list(RULE_ON)}")
        rules.append(Rule(str(metric), kind, float(value), on))
    return tuple(rules)


def _parse_kfold(path: Path, data: Any) -> KFold | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise _err(path, "kfold", data, "a mapping {k: 3, by: patient}")
    unknown = sorted(set(data) - {"k", "by", "seed"})
    if unknown:
        raise _err(path, "kfold", unknown, "only the fields k, by, seed")
    k = data.get("k")
    if not _is_int(k) or k < 2:
        raise _err(path, "kfold.k", k, "an integer >= 2")
    by = data.get("by", "patient")
    if by not in KFOLD_BY:
        raise _err(path, "kfold.by", by, f"one of {list(KFOLD_BY)}")
    seed = data.get("seed")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise _err(path, "kfold.seed", seed, "an integer >= 0, or no seed (each run seed deals its own folds)")
    return KFold(int(k), by, seed)


def load_experiment(yaml_path: str | Path) -> ExperimentSpec:
    """Read and validate an experiment YAML (format: `meddet.apps.experiment`); every config override of every
    variant is applied to the base config once here, so a bad key fails before anything trains."""
    path = Path(yaml_path)
    if not path.is_file():
        raise ConfigError(f"{path}: experiment file not found")
    try:
        data = read_spec_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping with the fields {', '.join(REQUIRED_FIELDS)}; found {type(data).__name__}"
        )
    unknown = sorted(set(data) - set(TOP_FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; expected only {', '.join(TOP_FIELDS)}")
    missing = [f for f in REQUIRED_FIELDS if f not in data]
    if missing:
        raise ConfigError(f"{path}: missing field(s) {missing}")

    base = data["base"]
    if not isinstance(base, str) or not base:
        raise _err(path, "base", base, "the path of a meddet config YAML (relative to this file)")
    base_path = Path(base).expanduser()
    if not base_path.is_absolute():
        base_path = path.parent / base_path
    if not base_path.is_file():
        raise _err(path, "base", base, f"an existing config file (looked for {base_path})")

    out = data["output_dir"]
    if not isinstance(out, str) or not out.strip():
        raise _err(path, "output_dir", out, "a folder path")

    seeds = data["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(_is_int(s) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise _err(path, "seeds", seeds, "a non-empty list of distinct integers >= 0")

    variants_in = data["variants"]
    if not isinstance(variants_in, dict) or not variants_in:
        raise _err(path, "variants", variants_in, "a mapping of variant names to config overrides")
    variants: dict[str, dict[str, Any]] = {}
    for name, ov in variants_in.items():
        if not isinstance(name, str) or not VARIANT_NAME.match(name):
            raise _err(path, "variants", name, "variant names of letters, digits, '_', '.', '-' (folder names)")
        variants[name] = _flatten(path, f"variants.{name}", ov)
    baseline = data["baseline"]
    if baseline not in variants:
        raise _err(path, "baseline", baseline, f"one of the variants {list(variants)}")

    metrics = data["metrics"]
    if (
        not isinstance(metrics, list)
        or not metrics
        or not all(isinstance(m, str) and m for m in metrics)
        or len(set(metrics)) != len(metrics)
    ):
        raise _err(path, "metrics", metrics, "a non-empty list of distinct metric names, e.g. [bbox/AP50]")

    spec = ExperimentSpec(
        path=path,
        base=base_path,
        output_dir=Path(out).expanduser(),
        seeds=tuple(int(s) for s in seeds),
        baseline=baseline,
        variants=variants,
        overrides=_flatten(path, "overrides", data.get("overrides")),
        metrics=tuple(metrics),
        rules=_parse_rules(path, data.get("rules"), metrics),
        kfold=_parse_kfold(path, data.get("kfold")),
    )
    base_cfg = load_config(spec.base)
    for name in variants:
        variant_cfg(spec, base_cfg, name)
    if not spec.kfold and not base_cfg.DATASETS.TEST:
        raise ConfigError(
            f"{path}: base {spec.base}: DATASETS.TEST is empty; the runs are evaluated on "
            "DATASETS.TEST[0] (or use kfold)"
        )
    if not spec.kfold and len(base_cfg.DATASETS.TEST) > 1:
        logger.warning(
            "%s: the runs are evaluated on DATASETS.TEST[0] (%s) only, not on %s",
            path,
            base_cfg.DATASETS.TEST[0],
            ", ".join(base_cfg.DATASETS.TEST[1:]),
        )
    return spec


def variant_cfg(spec: ExperimentSpec, base_cfg: CfgNode, variant: str) -> CfgNode:
    """The base config with the experiment's overrides, then `variant`'s (ConfigError naming the field)."""
    forbidden = RUNNER_KEYS + (KFOLD_KEYS if spec.kfold else ())
    cfg = base_cfg.clone()
    cfg.defrost()
    _apply_overrides(cfg, spec.overrides, spec.path, "overrides", forbidden)
    _apply_overrides(cfg, spec.variants[variant], spec.path, f"variants.{variant}", forbidden)
    return cfg


def flat_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted key: value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat_dict(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def metric_value(metrics: dict[str, Any], name: str) -> float | None:
    """`name` from an evaluation's metrics dict (a key, or a shorthand ``recall/<class>`` etc. of
    `meddet.apps.experiment`); None when it holds neither."""
    if name in metrics:
        return float(metrics[name]) if metrics[name] is not None else float("nan")
    stat, _, cls = name.partition("/")
    if stat in SHORTHANDS and cls and SHORTHANDS[stat].format(cls) in metrics:
        v = metrics[SHORTHANDS[stat].format(cls)]
        return float(v) if v is not None else float("nan")
    return None
