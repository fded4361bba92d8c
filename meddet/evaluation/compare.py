"""Comparing runs (``-c compare RUN…``): the headline metrics of several run folders side by side.

Each run folder holds ``eval/metrics.json`` (written by ``-c evaluate``); an evaluation folder
itself (holding a flat ``metrics.json``) is accepted too. The run's name is the last part of
``OUTPUT_DIR`` in its ``config.yaml`` (the name it was trained under), else the folder's name;
clashing names get their folder path instead. Rates are fractions (COCO AP included). The
``CI unit`` column says what each run's bootstrap resampled (``patient``, ``image`` or an image
field, from its ``bootstrap_ci.csv``): intervals over images are narrower than over patients on the
same data, so compare intervals of one unit only.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from meddet.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["HEADLINE_METRICS", "compare", "format_comparison", "write_comparison"]

# Column name -> (metrics.json key, scale to a fraction).
HEADLINE_METRICS: dict[str, tuple[str, float]] = {
    "mAP50-95": ("bbox/AP", 0.01),
    "mAP50": ("bbox/AP50", 0.01),
    "mAP50 CI low": ("ci95_low/bbox/AP50", 0.01),
    "mAP50 CI high": ("ci95_high/bbox/AP50", 0.01),
    "mAP75": ("bbox/AP75", 0.01),
    "P": ("prf1/precision", 1.0),
    "R": ("prf1/recall", 1.0),
    "F1": ("prf1/F1", 1.0),
    "macro F1": ("prf1/macro_F1", 1.0),
    "macro F1 (opt)": ("prf1_opt/macro_F1", 1.0),
    "sens@1FP": ("froc/sens@1fp", 1.0),
    "CPM": ("froc/cpm", 1.0),
    "image AUC": ("image/auc", 1.0),
}
# Interval bounds are shown but not ranked (higher is better for every other column).
_UNRANKED = {"mAP50 CI low", "mAP50 CI high"}


def _metrics_file(run: Path) -> Path:
    evaluated = run / "eval" / "metrics.json"
    if evaluated.is_file():
        return evaluated
    flat = run / "metrics.json"
    if flat.is_file() and not (run / "config.yaml").is_file() and not _is_json_lines(flat):
        return flat  # an evaluation folder itself
    raise DataError(
        f"{run}: no eval/metrics.json (not evaluated yet): run `detectron.py -c evaluate "
        f"--config-file {run / 'config.yaml'}` first"
    )


def _is_json_lines(path: Path) -> bool:
    """Whether `path` is a training metrics.json (JSON lines) rather than one evaluation JSON object."""
    try:
        with path.open(encoding="utf-8") as f:
            first = f.readline().strip()
            second = f.readline().strip()
    except OSError:
        return False
    if not first or not second:
        return False
    try:
        json.loads(first)
        return True
    except json.JSONDecodeError:
        return False


def _read_metrics(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: not an evaluation metrics.json ({e.msg} at line {e.lineno}; a training "
            "metrics.json holds JSON lines — point at the run folder, whose eval/ holds the "
            "evaluation)"
        ) from None
    if not isinstance(data, dict) or "bbox/AP" not in data:
        raise DataError(f"{path}: expected the evaluation's flat metrics dict with 'bbox/AP'")
    return data


def _ci_unit(metrics_file: Path) -> str:
    """The resampling unit in ``bootstrap_ci.csv`` beside `metrics_file`; ``image`` for files written
    before the unit was recorded, empty without intervals."""
    path = metrics_file.parent / "bootstrap_ci.csv"
    if not path.is_file():
        return ""
    try:
        units = pd.read_csv(path, usecols=lambda c: c == "unit")
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return ""
    if "unit" not in units or units["unit"].dropna().empty:
        return "image"
    return str(units["unit"].dropna().iloc[0])


def _run_name(run: Path) -> str:
    cfg = run / "config.yaml"
    if cfg.is_file():
        import yaml

        try:
            out = (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("OUTPUT_DIR")
        except (yaml.YAMLError, AttributeError):
            out = None
        if isinstance(out, str) and Path(out).name:
            return Path(out).name
    return run.resolve().name


def compare(run_dirs: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per run: ``run``, ``path``, ``images`` and the `HEADLINE_METRICS` columns (NaN where
    a run lacks a metric, e.g. evaluated before FROC existed), with ``CI unit`` after the interval."""
    if not run_dirs:
        raise DataError("compare: no run folder given")
    rows = []
    for r in run_dirs:
        run = Path(r)
        if not run.is_dir():
            raise DataError(f"{run}: run folder not found")
        mfile = _metrics_file(run)
        m = _read_metrics(mfile)
        row = {"run": _run_name(run), "path": str(run), "images": m.get("gt/images", float("nan"))}
        for col, (key, scale) in HEADLINE_METRICS.items():
            v = m.get(key)
            row[col] = float(v) * scale if isinstance(v, (int, float)) else float("nan")
            if col == "mAP50 CI high":
                row["CI unit"] = _ci_unit(mfile)
        rows.append(row)
    df = pd.DataFrame(rows)
    units = sorted({u for u in df["CI unit"] if u})
    if len(units) > 1:
        logger.warning(
            "compare: the runs' intervals resample different units (%s); intervals over images "
            "are narrower than over patients on the same data",
            ", ".join(units),
        )
    dup = df["run"].duplicated(keep=False)
    df.loc[dup, "run"] = df.loc[dup, "path"]
    return df


def format_comparison(df: pd.DataFrame, digits: int = 3) -> str:
    """Text table of `compare`'s frame (without the path column); the best value of each
    metric column is marked with ``*``."""
    cols = [c for c in df.columns if c != "path"]
    cells = []
    best = {}
    for c in cols:
        if c in HEADLINE_METRICS and c not in _UNRANKED and df[c].notna().any():
            best[c] = df[c].max()
    for _, row in df.iterrows():
        line = []
        for c in cols:
            v = row[c]
            if isinstance(v, float):
                s = "-" if math.isnan(v) else (str(int(v)) if c == "images" else f"{v:.{digits}f}")
                if c in best and not math.isnan(v) and np.isclose(v, best[c]) and len(df) > 1:
                    s += "*"
            else:
                s = str(v) if str(v) else "-"
            line.append(s)
        cells.append(line)
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]

    def fmt(items: Sequence[str]) -> str:
        return "  ".join(s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(items, widths)))

    return "\n".join([fmt(cols), fmt(["-" * w for w in widths]), *[fmt(r) for r in cells]])


def write_comparison(df: pd.DataFrame, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``compare.csv`` and ``compare.txt`` (the text table) in `out_dir`; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv, txt = out / "compare.csv", out / "compare.txt"
    df.to_csv(csv, index=False, na_rep="NaN")
    txt.write_text(format_comparison(df) + "\n", encoding="utf-8")
    return csv, txt
