"""Seeded experiments (`detectron.py -c experiment --config-file EXP.yaml`): variants of one config
trained over several seeds (and optionally k folds), compared with the baseline by paired
differences, and judged by rules.

The experiment YAML (every field checked; errors name the YAML file and the field)::

    base: ../cyto_demo_R18_FPN.yaml   # a meddet config; relative paths: to this YAML's folder
    output_dir: output/experiments/x  # like OUTPUT_DIR: relative to the working directory
    seeds: [0, 1]                     # SEED of each run (distinct, >= 0)
    baseline: plain                   # the variant the others are compared with
    overrides: {SOLVER.MAX_ITER: 50}  # optional: applied to every variant, before its own
    variants:                         # name -> config overrides ({} = the base as it is)
      plain: {}
      rfs: {DATALOADER.SAMPLER_TRAIN: RepeatFactorTrainingSampler, DATALOADER.REPEAT_THRESHOLD: 0.3}
    metrics: [bbox/AP50, bbox/AP, recall/cluster]
    rules:                            # optional: a variant PASSes when every rule holds vs baseline
      - {metric: recall/cluster, min_gain: 0.05}          # diff >= 0.05
      - {metric: bbox/AP, max_drop: 3.0, on: ci_low}      # lower 95% CI bound of diff >= -3.0
    kfold: {k: 3, by: patient}        # optional; `seed:` fixes the folds, else each run seed makes its own

Overrides are dotted config keys (or nested mappings) with YAML values; SEED and OUTPUT_DIR are set
by the runner, and under `kfold` so are DATASETS.TRAIN/VAL/TEST.

Metric names are keys of the flat metrics dict of `meddet.tasks.evaluate_model` (``bbox/AP``,
``bbox/AP50``, ``prf1/recall-<class>``, ``froc/sens@1fp``, ...; units as there: ``bbox/*`` in percent,
``prf1/*`` fractions) plus the per-class shorthands ``recall/<class>``, ``precision/<class>`` and
``F1/<class>`` (= ``prf1/<stat>-<class>``, at TEST.SCORE_THRESH and EVAL.IOU_THRESH) and
``AP/<class>``, ``AP50/<class>`` (= ``bbox/AP-<class>``, ``bbox/AP50-<class>``). Rule thresholds are
in the metric's own units.

One run = (variant, seed[, fold]) in ``<output_dir>/runs/<variant>/seed<s>[/fold<k>]``: train
(`meddet.training.train`; resumed from its last checkpoint when one is there), then evaluate the final
model on DATASETS.TEST[0] (under k-fold: on the held-out fold) into ``eval/``; ``run.json`` records
variant, seed, fold, the whole metrics dict and the wall time of the call that finished it.
``run_config.yaml`` holds the config the run was made with: resuming with a different config is
refused. Runs go seed by seed (fold by fold), all variants of a seed before the next seed, so an
interrupted experiment already has pairs.

K-fold: the images of DATASETS.TRAIN and DATASETS.VAL are pooled and dealt into k folds by patient
(``patient_id``; an image without one is its own patient) or by image (tiles of one parent stay
together), groups shuffled by the seed and each given to the fold with the fewest images so far. Fold
k's run trains on the other folds and is tested on fold k (DATASETS.VAL emptied and TEST.EVAL_PERIOD
0: the held-out fold never steers training). Folds of one seed are not independent samples; the
t intervals over them are the usual, optimistic, cross-validation practice.

Outputs in output_dir: ``runs.csv`` (one row per run: status ran / cached / failed / not run, wall
time, error, the metrics), ``summary.csv`` + ``summary.md`` (per variant and metric: n, mean, std,
95% Student t CI over seeds/folds), ``paired.csv`` (per variant vs baseline and metric: mean of the
paired differences over matching seeds/folds, their std, 95% t CI, two-sided paired t-test p),
``verdict.json`` + ``verdict.md`` (each rule per variant: observed value, threshold, pass/fail; a
variant's overall PASS/FAIL). ``-c experiment`` exits 1 when a variant's verdict is FAIL (a CI gate;
``--no-fail-on-verdict`` to exit 0), as it does when a run failed.

Keys are read as written: a bare ``on:`` (or ``off``, ``yes``, ``no``, ``y``, ``n``, which YAML 1.1
reads as booleans) is the key ``"on"``.

What the intervals resample: ``summary.csv`` and ``paired.csv`` say it in their ``unit`` column —
training runs (``run (seed)``, or ``run (seed, fold)``), never images. The test set of a seed is fixed,
so they measure training variability only; the test-set sampling error of one run is in its
``eval/bootstrap_ci.csv``, by patient (``EVAL.BOOTSTRAP_UNIT``).
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from meddet.config import CfgNode, load_config
from meddet.data.coco import load_coco, read_json, resolve_image_path, save_json_atomic
from meddet.data.splits import patient_key, subset_coco
from meddet.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = [
    "ExperimentSpec",
    "ExperimentResult",
    "Rule",
    "KFold",
    "RunKey",
    "load_experiment",
    "run_experiment",
    "kfold_split",
    "metric_value",
    "summarize",
    "paired_differences",
    "judge",
]

TOP_FIELDS = ("base", "output_dir", "seeds", "baseline", "overrides", "variants", "metrics", "rules", "kfold")
REQUIRED_FIELDS = ("base", "output_dir", "seeds", "baseline", "variants", "metrics")
RULE_KINDS = ("min_gain", "max_drop")
RULE_ON = ("mean", "ci_low")
KFOLD_BY = ("patient", "image")
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
RUN_JSON = "run.json"
RUN_CONFIG = "run_config.yaml"


# ---------------------------------------------------------------------------- the spec
class _SpecLoader(yaml.SafeLoader):
    """yaml.safe_load, except that mapping keys are never YAML 1.1 booleans: a bare ``on:``, ``off:``,
    ``yes:``, ``no:``, ``y:``, ``n:`` (any case) key is the string written, as the user means it (a
    rule's ``on: ci_low``). Values keep YAML's usual reading."""

    def construct_mapping(self, node, deep=False):
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:bool":
                key_node.tag = "tag:yaml.org,2002:str"
        return super().construct_mapping(node, deep=deep)


def read_spec_yaml(text: str):
    """An experiment YAML's content (see `_SpecLoader`: boolean-looking keys stay strings)."""
    return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass


@dataclass(frozen=True)
class Rule:
    """One verdict rule: `metric`'s paired difference (variant − baseline) must reach `threshold`.

    kind "min_gain": observed >= threshold; "max_drop": observed >= −threshold. `on` "mean" judges the
    mean difference, "ci_low" the lower bound of its 95% CI (a significant gain / a non-inferiority test).
    """

    metric: str
    kind: str
    threshold: float
    on: str = "mean"

    def holds(self, observed: float) -> bool:
        """Whether `observed` satisfies the rule (NaN never does)."""
        bound = self.threshold if self.kind == "min_gain" else -self.threshold
        return bool(np.isfinite(observed) and observed >= bound)

    def describe(self) -> str:
        """The rule as one line, e.g. ``mean diff of recall/cluster >= +0.05``."""
        bound = self.threshold if self.kind == "min_gain" else -self.threshold
        what = "mean diff" if self.on == "mean" else "95% CI low of diff"
        return f"{what} of {self.metric} >= {bound:+g} ({self.kind} {self.threshold:g})"


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


def _is_int(v: Any) -> bool:
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
                close = difflib.get_close_matches(key, list(_flat_dict(cfg)), n=1)
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
        rules.append(Rule(metric, kind, float(value), on))
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
    """Read and validate an experiment YAML (see the module docstring); every config override of every
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
        _variant_cfg(spec, base_cfg, name)
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


def _variant_cfg(spec: ExperimentSpec, base_cfg: CfgNode, variant: str) -> CfgNode:
    forbidden = RUNNER_KEYS + (KFOLD_KEYS if spec.kfold else ())
    cfg = base_cfg.clone()
    cfg.defrost()
    _apply_overrides(cfg, spec.overrides, spec.path, "overrides", forbidden)
    _apply_overrides(cfg, spec.variants[variant], spec.path, f"variants.{variant}", forbidden)
    return cfg


# ---------------------------------------------------------------------------- k-fold
def kfold_split(images: Sequence[dict[str, Any]], k: int, by: str = "patient", seed: int = 0) -> list[list[Any]]:
    """Image ids of each of `k` folds (input order kept within a fold).

    Groups: the image's patient (`meddet.data.splits.patient_key`) for `by` "patient", else the image
    itself (a tile's ``parent_id`` when it has one). Groups are shuffled with `seed` and each goes to the
    fold holding the fewest images so far, so folds are disjoint by group, cover every image and differ
    in size by at most one group. Deterministic for the same images (in any order), k, by and seed.
    """
    if by not in KFOLD_BY:
        raise ConfigError(f"kfold.by: found {by!r}; expected one of {list(KFOLD_BY)}")
    groups: dict[str, list[Any]] = {}
    for im in images:
        key = patient_key(im) if by == "patient" else f"image:{im.get('parent_id', im['id'])}"
        groups.setdefault(key, []).append(im["id"])
    if len(groups) < k:
        raise DataError(f"kfold: {len(groups)} {by} group(s) in {len(images)} images are too few for k={k} folds")
    keys = sorted(groups)
    sizes = np.zeros(k, dtype=np.int64)
    fold_of: dict[str, int] = {}
    for idx in np.random.default_rng(seed).permutation(len(keys)):
        f = int(np.argmin(sizes))
        fold_of[keys[idx]] = f
        sizes[f] += len(groups[keys[idx]])
    folds: list[list[Any]] = [[] for _ in range(k)]
    for key in keys:
        folds[fold_of[key]].extend(groups[key])
    position = {im["id"]: pos for pos, im in enumerate(images)}
    return [sorted(f, key=position.__getitem__) for f in folds]


def _pooled_coco(cfg: CfgNode, spec: ExperimentSpec) -> dict[str, Any]:
    """DATASETS.TRAIN + DATASETS.VAL as one COCO dict: ids renumbered, file names made absolute."""
    files = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.VAL)
    if not files:
        raise ConfigError(f"{spec.path}: kfold: the base config {spec.base} has no DATASETS.TRAIN/VAL to split")
    pooled: dict[str, Any] = {"images": [], "annotations": [], "categories": None}
    cats_of = None
    for f in files:
        coco = load_coco(f)
        cats = sorted((c["id"], c["name"]) for c in coco["categories"])
        if cats_of is not None and cats != cats_of[1]:
            raise DataError(
                f"{f}: categories {cats} differ from those of {cats_of[0]} ({cats_of[1]}); "
                "kfold pools the files, they must share categories"
            )
        if cats_of is None:
            cats_of = (f, cats)
            pooled["categories"] = coco["categories"]
        new_id = {}
        for im in coco["images"]:
            new_id[im["id"]] = len(pooled["images"]) + 1
            path = resolve_image_path(im["file_name"], f, cfg.DATASETS.IMAGE_ROOT).absolute()
            pooled["images"].append({**im, "id": new_id[im["id"]], "file_name": str(path)})
        for a in coco["annotations"]:
            pooled["annotations"].append({**a, "id": len(pooled["annotations"]) + 1, "image_id": new_id[a["image_id"]]})
    if spec.kfold.by == "patient" and not any(im.get("patient_id") not in (None, "") for im in pooled["images"]):
        logger.warning(
            "kfold by patient: no image of %s has a patient_id; every image is its own patient", ", ".join(files)
        )
    return pooled


def _write_folds(pooled: dict[str, Any], kf: KFold, seed: int, fold: int, run_dir: Path) -> tuple[Path, Path]:
    test_ids = kfold_split(pooled["images"], kf.k, kf.by, kf.seed if kf.seed is not None else seed)[fold]
    held = set(test_ids)
    train_ids = [im["id"] for im in pooled["images"] if im["id"] not in held]
    train_p, test_p = run_dir / "data" / "train.json", run_dir / "data" / "test.json"
    save_json_atomic(subset_coco(pooled, train_ids), train_p)
    save_json_atomic(subset_coco(pooled, test_ids), test_p)
    return train_p, test_p


# ---------------------------------------------------------------------------- metrics and statistics
def metric_value(metrics: dict[str, Any], name: str) -> float | None:
    """`name` from an evaluation's metrics dict (a key, or a shorthand ``recall/<class>`` etc. of the
    module docstring); None when it holds neither."""
    if name in metrics:
        return float(metrics[name]) if metrics[name] is not None else float("nan")
    stat, _, cls = name.partition("/")
    if stat in SHORTHANDS and cls and SHORTHANDS[stat].format(cls) in metrics:
        v = metrics[SHORTHANDS[stat].format(cls)]
        return float(v) if v is not None else float("nan")
    return None


def _t_interval(mean: np.ndarray, std: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% Student t interval of a mean (NaN with fewer than 2 values)."""
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.975, np.where(n > 1, n - 1, np.nan)) * np.asarray(std, float) / np.sqrt(n)
    return np.asarray(mean, float) - half, np.asarray(mean, float) + half


def summarize(runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per variant and metric over the finished runs (`runs` with columns variant, status and one per
    metric): n, mean, std (n − 1), ci95_low, ci95_high (Student t)."""
    done = runs[runs["status"].isin(["ran", "cached"])]
    long = done.melt(id_vars=["variant"], value_vars=list(metrics), var_name="metric").dropna(subset=["value"])
    variants = list(dict.fromkeys(runs["variant"]))
    index = pd.MultiIndex.from_product([variants, list(metrics)], names=["variant", "metric"])
    agg = long.groupby(["variant", "metric"])["value"].agg(["count", "mean", "std"]).reindex(index)
    agg["count"] = agg["count"].fillna(0).astype(int)
    lo, hi = _t_interval(agg["mean"], agg["std"], agg["count"])
    out = agg.rename(columns={"count": "n"}).assign(ci95_low=lo, ci95_high=hi)
    return out.reset_index()


def paired_differences(runs: pd.DataFrame, baseline: str, metrics: Sequence[str]) -> pd.DataFrame:
    """Per variant (not the baseline) and metric: the differences variant − baseline over the runs of
    the same seed (and fold) both finished: n_pairs, mean_diff, std_diff, ci95_low, ci95_high (Student
    t) and p_value (two-sided paired t-test; NaN when the differences do not vary)."""
    done = runs[runs["status"].isin(["ran", "cached"])]
    variants = [v for v in dict.fromkeys(runs["variant"]) if v != baseline]
    wide = {m: done.pivot(index="pair", columns="variant", values=m) for m in metrics}
    rows = []
    for v in variants:
        for metric in metrics:
            if v in wide[metric] and baseline in wide[metric]:
                d = (wide[metric][v] - wide[metric][baseline]).dropna().to_numpy(dtype=float)
            else:
                d = np.empty(0)
            n = d.size
            mean = float(d.mean()) if n else float("nan")
            std = float(d.std(ddof=1)) if n > 1 else float("nan")
            rows.append(
                {"variant": v, "baseline": baseline, "metric": metric, "n_pairs": n, "mean_diff": mean, "std_diff": std}
            )
    out = pd.DataFrame(rows, columns=["variant", "baseline", "metric", "n_pairs", "mean_diff", "std_diff"]).astype(
        {"n_pairs": int, "mean_diff": float, "std_diff": float}
    )
    lo, hi = _t_interval(out["mean_diff"], out["std_diff"], out["n_pairs"])
    with np.errstate(invalid="ignore", divide="ignore"):
        tstat = out["mean_diff"].to_numpy(float) / (out["std_diff"].to_numpy(float) / np.sqrt(out["n_pairs"]))
        df = np.where(out["n_pairs"] > 1, out["n_pairs"] - 1, np.nan)
        p = np.where(out["std_diff"] > 0, 2 * stats.t.sf(np.abs(tstat), df), np.nan)
    return out.assign(ci95_low=lo, ci95_high=hi, p_value=p)


def judge(paired: pd.DataFrame, rules: Sequence[Rule], baseline: str) -> dict[str, Any]:
    """The verdict: for each variant every rule's observed value (paired mean difference, or the lower
    95% CI bound for ``on: ci_low``), threshold and pass/fail, and the variant's PASS (all rules hold)
    or FAIL; ``passing`` lists the variants that PASS (none without rules)."""
    out: dict[str, Any] = {"baseline": baseline, "variants": {}, "passing": []}
    for v in dict.fromkeys(paired["variant"]):
        results = []
        for r in rules:
            row = paired[(paired["variant"] == v) & (paired["metric"] == r.metric)].iloc[0]
            observed = float(row["mean_diff"] if r.on == "mean" else row["ci95_low"])
            results.append(
                {
                    "metric": r.metric,
                    "kind": r.kind,
                    "on": r.on,
                    "threshold": r.threshold,
                    "bound": r.threshold if r.kind == "min_gain" else -r.threshold,
                    "observed": observed,
                    "n_pairs": int(row["n_pairs"]),
                    "passed": r.holds(observed),
                    "rule": r.describe(),
                }
            )
        verdict = "PASS" if results and all(x["passed"] for x in results) else ("FAIL" if results else "-")
        out["variants"][v] = {"verdict": verdict, "rules": results}
        if verdict == "PASS":
            out["passing"].append(v)
    return out


def _fmt(x: float, digits: int = 4) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the result
@dataclass
class ExperimentResult:
    """What `run_experiment` made: the tables (also written as CSV/Markdown/JSON in `output_dir`)."""

    spec: ExperimentSpec
    runs: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    verdict: dict[str, Any]
    failed: list[str] = field(default_factory=list)
    missing_metrics: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No run failed and every metric was found (the CLI exits 1 otherwise)."""
        return not self.failed and not self.missing_metrics

    @property
    def failing_variants(self) -> list[str]:
        """Variants whose verdict is FAIL (the CLI exits 1 when there are any, unless --no-fail-on-verdict)."""
        return [v for v, res in self.verdict.get("variants", {}).items() if res.get("verdict") == "FAIL"]

    def summary_markdown(self) -> str:
        """Variants × metrics: ``mean ± std [95% CI] (n)``."""
        rows = []
        for v in dict.fromkeys(self.summary["variant"]):
            cells = [v + (" (baseline)" if v == self.spec.baseline else "")]
            for m in self.spec.metrics:
                r = self.summary[(self.summary["variant"] == v) & (self.summary["metric"] == m)].iloc[0]
                cells.append(
                    f"{_fmt(r['mean'])} ± {_fmt(r['std'], 2)} [{_fmt(r['ci95_low'])}, "
                    f"{_fmt(r['ci95_high'])}] (n={r['n']})"
                )
            rows.append(cells)
        return _md_table(["variant", *self.spec.metrics], rows)

    def verdict_markdown(self) -> str:
        """Each rule per variant, and the variant's PASS/FAIL."""
        parts = [f"Baseline: {self.spec.baseline}"]
        for v, res in self.verdict["variants"].items():
            rows = [
                [
                    r["rule"],
                    _fmt(r["observed"]),
                    f"{r['bound']:+g}",
                    str(r["n_pairs"]),
                    "pass" if r["passed"] else "FAIL",
                ]
                for r in res["rules"]
            ]
            parts.append(f"\n## {v}: {res['verdict']}\n")
            parts.append(
                _md_table(["rule", "observed", "threshold", "pairs", "result"], rows) if rows else "(no rules)"
            )
        passing = self.verdict["passing"]
        parts.append(f"\nPassing variants: {', '.join(passing) if passing else 'none'}")
        return "\n".join(parts)

    def format(self) -> str:
        """Text for the CLI: where the files are, the summary, paired differences, verdict and failures."""
        lines = [
            f"Experiment {self.spec.path} ({len(self.runs)} runs) -> {self.spec.output_dir}",
            "",
            self.summary_markdown(),
            "",
        ]
        if len(self.paired):
            rows = [
                [
                    r.variant,
                    r.metric,
                    _fmt(r.mean_diff),
                    f"[{_fmt(r.ci95_low)}, {_fmt(r.ci95_high)}]",
                    _fmt(r.p_value, 3),
                    str(r.n_pairs),
                ]
                for r in self.paired.itertuples()
            ]
            lines += [
                f"Paired differences vs {self.spec.baseline} (over {_interval_unit(self.spec)}):",
                _md_table(["variant", "metric", "mean diff", "95% CI", "p", "pairs"], rows),
                "",
            ]
        if self.spec.rules:
            lines += [self.verdict_markdown(), ""]
        for m in self.missing_metrics:
            lines.append(f"Metric {m!r} is in no run's metrics")
        if self.failed:
            lines.append(f"{len(self.failed)} run(s) failed (see runs.csv): {', '.join(self.failed)}")
        return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------- running
def _check_resumable(spec: ExperimentSpec, key: RunKey, cfg: CfgNode, resume: bool) -> None:
    """Refuse a run folder that holds a run made with another config (resume) or any run (no resume)."""
    run_dir = spec.run_dir(key)
    stored = run_dir / RUN_CONFIG
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(
            f"{run_dir} already holds run {key} and resume is off; resume the experiment, "
            f"delete that folder, or change output_dir in {spec.path} (nothing is overwritten)"
        )
    if resume and stored.is_file():
        prev = _flat_dict(yaml.safe_load(stored.read_text(encoding="utf-8")) or {})
        now = _flat_dict(yaml.safe_load(cfg.dump()))
        changed = [k for k in sorted(set(prev) | set(now)) if prev.get(k) != now.get(k)]
        if changed:
            shown = ", ".join(f"{k}: {prev.get(k)!r} -> {now.get(k)!r}" for k in changed[:3])
            raise ConfigError(
                f"{run_dir}: run {key} was made with another config ({shown}"
                f"{', ...' if len(changed) > 3 else ''}); delete that folder or change output_dir "
                f"in {spec.path}"
            )


def _flat_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat_dict(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _execute(cfg: CfgNode, key: RunKey, run_dir: Path, gt_path: str) -> dict[str, Any]:
    """Train (resuming from the last checkpoint when there is one) and evaluate one run; its run.json."""
    import meddet.training  # torch: imported when a run trains, not when an experiment is only planned or compared

    t0 = time.perf_counter()
    # anything a killed training leaves (the trainer refuses such a folder without resume)
    resume = any((run_dir / n).exists() for n in ("last_checkpoint", "metrics.json")) or any(
        run_dir.glob("model_*.pth")
    )
    logger.info("Run %s: %s training in %s", key, "resuming" if resume else "starting", run_dir)
    meddet.training.train(cfg, resume=resume)
    eval_cfg = cfg.clone()
    eval_cfg.defrost()
    eval_cfg.MODEL.WEIGHTS = str(run_dir / "model_final.pth")
    metrics = meddet.tasks.evaluate_model(eval_cfg, gt_path, run_dir / "eval")
    record = {
        "variant": key.variant,
        "seed": key.seed,
        "fold": key.fold,
        "metrics": metrics,
        "wall_s": round(time.perf_counter() - t0, 3),
        "resumed": resume,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    save_json_atomic(record, run_dir / RUN_JSON, indent=1)
    return record


def run_experiment(yaml_path: str | Path, resume: bool = True, only: list[str] | None = None) -> ExperimentResult:
    """Run the experiment of `yaml_path` (module docstring) and write its tables; returns them.

    `resume` (default): runs with a run.json are taken as they are and an interrupted run continues
    from its last checkpoint; off: every run starts afresh and a run folder already holding files is
    refused (nothing is overwritten). `only`: run only these variants now; runs of the others are
    still read from their run.json when present (e.g. a baseline done before). A run that raises is
    logged, written to runs.csv with its error (status "failed", the traceback in the run's error.txt)
    and the others go on; the result's `failed` names it and a later resumed call retries it.
    Interrupting (Ctrl-C) stops the experiment.
    """
    spec = load_experiment(yaml_path)
    if only is not None:
        unknown = [v for v in only if v not in spec.variants]
        if unknown:
            raise ConfigError(f"{spec.path}: only: variant(s) {unknown} are not among variants {list(spec.variants)}")
    base_cfg = load_config(spec.base)
    pooled = _pooled_coco(base_cfg, spec) if spec.kfold else None
    keys = spec.runs()

    plan: list[tuple[RunKey, CfgNode, bool]] = []
    for key in keys:
        run_dir = spec.run_dir(key)
        cfg = _variant_cfg(spec, base_cfg, key.variant)
        cfg.SEED = key.seed
        cfg.OUTPUT_DIR = str(run_dir)
        if spec.kfold:
            cfg.DATASETS.TRAIN = (str(run_dir / "data" / "train.json"),)
            cfg.DATASETS.TEST = (str(run_dir / "data" / "test.json"),)
            cfg.DATASETS.VAL = ()
            cfg.TEST.EVAL_PERIOD = 0
        selected = only is None or key.variant in only
        finished = resume and (run_dir / RUN_JSON).is_file()
        if selected or finished:
            _check_resumable(spec, key, cfg, resume)
        plan.append((key, cfg, selected and not finished))

    rows = []
    failed: list[str] = []
    found: dict[str, float] = {}  # every metric name any finished run has (for missing-metric hints)
    todo = sum(1 for _, _, go in plan if go)
    done = 0
    for key, cfg, go in plan:
        run_dir = spec.run_dir(key)
        row: dict[str, Any] = {
            "variant": key.variant,
            "seed": key.seed,
            "fold": key.fold,
            "pair": key.pair,
            "status": "not run",
            "wall_s": np.nan,
            "error": "",
            "output_dir": str(run_dir),
        }
        record = None
        if go:
            done += 1
            logger.info("Experiment run %d/%d: %s", done, todo, key)
            try:
                if spec.kfold:
                    _write_folds(pooled, spec.kfold, key.seed, key.fold, run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / RUN_CONFIG).write_text(cfg.dump(), encoding="utf-8")
                record = _execute(cfg, key, run_dir, cfg.DATASETS.TEST[0])
                (run_dir / "error.txt").unlink(missing_ok=True)
                row["status"] = "ran"
            except Exception as e:  # one failed run must not stop the others; it is reported
                logger.error("Run %s failed: %s: %s (traceback in %s)", key, type(e).__name__, e, run_dir / "error.txt")
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
                row.update(status="failed", error=f"{type(e).__name__}: {e}")
                failed.append(str(key))
        elif resume and (run_dir / RUN_JSON).is_file():
            record = read_json(run_dir / RUN_JSON, "a run record (run.json)")
            row["status"] = "cached"
        values: dict[str, float | None] = {}
        if record is not None:
            row["wall_s"] = record.get("wall_s", np.nan)
            found.update(record.get("metrics") or {})
            values = {m: metric_value(record.get("metrics") or {}, m) for m in spec.metrics}
        row.update({m: np.nan if values.get(m) is None else values[m] for m in spec.metrics})
        rows.append(row)

    runs = pd.DataFrame(rows)
    runs["fold"] = runs["fold"].astype("Int64")
    missing = [m for m in spec.metrics if found and metric_value(found, m) is None]
    for m in missing:
        close = difflib.get_close_matches(m, list(found), n=3, cutoff=0.4)
        logger.error(
            "%s: metrics: %r is in no run's metrics%s", spec.path, m, f" (close: {', '.join(close)})" if close else ""
        )

    summary = summarize(runs, spec.metrics)
    paired = paired_differences(runs, spec.baseline, spec.metrics)
    verdict = judge(paired, spec.rules, spec.baseline)
    result = ExperimentResult(spec, runs, summary, paired, verdict, failed, missing)
    _write_outputs(result)
    if failed:
        logger.error("%d of %d run(s) failed: %s", len(failed), todo, ", ".join(failed))
    return result


def _interval_unit(spec: ExperimentSpec) -> str:
    """What the experiment's t intervals are over: training runs, by seed (and fold)."""
    return "run (seed, fold)" if spec.kfold else "run (seed)"


def _write_outputs(result: ExperimentResult) -> None:
    out = result.spec.output_dir
    out.mkdir(parents=True, exist_ok=True)
    runs = result.runs.drop(columns=["pair"] + ([] if result.spec.kfold else ["fold"]))
    runs.to_csv(out / "runs.csv", index=False, na_rep="NaN")
    unit = _interval_unit(result.spec)
    result.summary.assign(unit=unit).to_csv(out / "summary.csv", index=False, na_rep="NaN")
    (out / "summary.md").write_text(
        f"# Experiment {result.spec.path.name}\n\nmean ± std [95% t CI] (n runs) per variant and metric; the "
        f"intervals resample training runs ({unit}) on a fixed test set, not patients or images\n\n"
        f"{result.summary_markdown()}\n",
        encoding="utf-8",
    )
    result.paired.assign(unit=unit).to_csv(out / "paired.csv", index=False, na_rep="NaN")
    save_json_atomic(
        {**result.verdict, "failed_runs": result.failed, "missing_metrics": result.missing_metrics},
        out / "verdict.json",
        indent=1,
    )
    (out / "verdict.md").write_text(
        f"# Verdict: {result.spec.path.name}\n\n{result.verdict_markdown()}\n", encoding="utf-8"
    )
