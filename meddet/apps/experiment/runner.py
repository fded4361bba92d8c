"""Running an experiment: each (variant, seed[, fold]) trained and evaluated in its own run folder
(resumed, cached or refused as `run_experiment` says), then the tables written (runs, summary, paired
differences, verdict). Format and outputs: `meddet.apps.experiment`."""

from __future__ import annotations

import difflib
import logging
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

from meddet.apps.evaluate import evaluate_model
from meddet.apps.experiment.spec import (
    ExperimentSpec,
    RunKey,
    flat_dict,
    load_experiment,
    metric_value,
    variant_cfg,
)
from meddet.config import CfgNode, load_config
from meddet.data.coco import read_json, save_json_atomic
from meddet.data.splits import pool_coco, write_fold
from meddet.errors import ConfigError
from meddet.evaluation.statistics import judge, paired_differences, summarize

logger = logging.getLogger(__name__)

RUN_JSON = "run.json"
RUN_CONFIG = "run_config.yaml"


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
        prev = flat_dict(yaml.safe_load(stored.read_text(encoding="utf-8")) or {})
        now = flat_dict(yaml.safe_load(cfg.dump()))
        changed = [k for k in sorted(set(prev) | set(now)) if prev.get(k) != now.get(k)]
        if changed:
            shown = ", ".join(f"{k}: {prev.get(k)!r} -> {now.get(k)!r}" for k in changed[:3])
            raise ConfigError(
                f"{run_dir}: run {key} was made with another config ({shown}"
                f"{', ...' if len(changed) > 3 else ''}); delete that folder or change output_dir "
                f"in {spec.path}"
            )


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
    metrics = evaluate_model(eval_cfg, gt_path, run_dir / "eval")
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
    """Run the experiment of `yaml_path` (format: `meddet.apps.experiment`); writes its tables, returns them.

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
    pooled = _pooled(base_cfg, spec) if spec.kfold else None
    keys = spec.runs()

    plan: list[tuple[RunKey, CfgNode, bool]] = []
    for key in keys:
        run_dir = spec.run_dir(key)
        cfg = variant_cfg(spec, base_cfg, key.variant)
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
                kf = spec.kfold
                if kf is not None and pooled is not None and key.fold is not None:
                    seed = kf.seed if kf.seed is not None else key.seed
                    write_fold(pooled, kf.k, kf.by, seed, key.fold, run_dir / "data")
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


def _pooled(cfg: CfgNode, spec: ExperimentSpec) -> dict[str, Any]:
    """DATASETS.TRAIN + DATASETS.VAL of the base config as one COCO dict (`meddet.data.splits.pool_coco`)."""
    files = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.VAL)
    if not files:
        raise ConfigError(f"{spec.path}: kfold: the base config {spec.base} has no DATASETS.TRAIN/VAL to split")
    pooled = pool_coco(files, cfg.DATASETS.IMAGE_ROOT)
    if (
        spec.kfold is not None
        and spec.kfold.by == "patient"
        and not any(im.get("patient_id") not in (None, "") for im in pooled["images"])
    ):
        logger.warning(
            "kfold by patient: no image of %s has a patient_id; every image is its own patient", ", ".join(files)
        )
    return pooled


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
