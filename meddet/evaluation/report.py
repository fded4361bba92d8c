"""The evaluation's human-facing summaries: ``report.md`` (tables, plots linked by relative path),
``analysis_report.txt`` (the same in plain text) and ``project_summary.csv`` (one row of
headline numbers, for spreadsheets and `compare`).

Rates are shown as fractions in [0, 1], COCO AP included (metrics.json keeps detectron2's
percent); ``-`` marks an undefined value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from meddet.evaluation.froc import rate_label

if TYPE_CHECKING:
    from meddet.evaluation.evaluator import EvaluationResult

__all__ = ["headline", "summary_row", "write_reports", "markdown_table", "text_table"]


def _fmt(v: object, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}f}"
    if v is pd.NA:
        return "-"
    return str(v)


def _cells(df: pd.DataFrame, digits: int) -> list[list[str]]:
    return [[_fmt(v, digits) for v in row] for row in df.itertuples(index=False)]


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table (first column left-aligned, the others right)."""
    header = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in _cells(df, digits)]
    return "\n".join(lines)


def text_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A plain-text table with aligned columns (first column left-aligned, the others right)."""
    header = [str(c) for c in df.columns]
    rows = _cells(df, digits)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]])


def _ci(result: EvaluationResult, metric: str, scale: float) -> tuple[float, float]:
    m = result.metrics
    return (m.get(f"ci95_low/{metric}", float("nan")) * scale, m.get(f"ci95_high/{metric}", float("nan")) * scale)


def _ci_unit(result: EvaluationResult) -> str:
    """What the bootstrap resampled, e.g. ``patient (40 patients)``; empty without intervals."""
    return result.bootstrap.describe() if result.bootstrap is not None else ""


def headline(result: EvaluationResult) -> pd.DataFrame:
    """The headline table: metric, value, 95% CI low and high (fractions) and, beside each
    interval, what the bootstrap resampled (``CI resamples``)."""
    m = result.metrics
    nan = float("nan")
    at = _thresh_text(result)
    rate = 1.0 if 1.0 in result.froc.fp_rates else result.froc.fp_rates[0]
    rows: list[tuple] = [
        ("mAP50-95 (COCO)", m.get("bbox/AP", nan) / 100, *_ci(result, "bbox/AP", 0.01)),
        ("mAP50 (COCO)", m.get("bbox/AP50", nan) / 100, *_ci(result, "bbox/AP50", 0.01)),
        ("mAP75 (COCO)", m.get("bbox/AP75", nan) / 100, nan, nan),
        (f"precision (micro, {at})", m.get("prf1/precision", nan), nan, nan),
        (f"recall (micro, {at})", m.get("prf1/recall", nan), nan, nan),
        (f"F1 (micro, {at})", m.get("prf1/F1", nan), nan, nan),
        (f"macro F1 ({at})", m.get("prf1/macro_F1", nan), nan, nan),
        (f"weighted F1 ({at})", m.get("prf1/weighted_F1", nan), nan, nan),
        ("macro F1 (F1-optimal threshold per class)", m.get("prf1_opt/macro_F1", nan), nan, nan),
        ("weighted F1 (F1-optimal threshold per class)", m.get("prf1_opt/weighted_F1", nan), nan, nan),
        (
            f"FROC sensitivity at {rate:g} FP/image (all lesions)",
            m.get(f"froc/{rate_label(rate)}", nan),
            *_ci(result, f"froc/{rate_label(rate)}", 1.0),
        ),
        (
            "FROC CPM (mean sensitivity at " + ", ".join(f"{r:g}" for r in result.froc.fp_rates) + " FP/image)",
            m.get("froc/cpm", nan),
            nan,
            nan,
        ),
        ("image-level AUC (any lesion)", m.get("image/auc", nan), nan, nan),
        (
            f"image-level sensitivity / specificity (any lesion, {at})",
            f"{_fmt(m.get('image/sensitivity', nan))} / {_fmt(m.get('image/specificity', nan))}",
            nan,
            nan,
        ),
    ]
    unit = _ci_unit(result)
    rows = [(*r, unit if isinstance(r[2], float) and not math.isnan(r[2]) else "") for r in rows]
    return pd.DataFrame(rows, columns=["metric", "value", "95% CI low", "95% CI high", "CI resamples"])


def _thresh_text(result: EvaluationResult) -> str:
    if np.ndim(result.score_thresh):
        return f"per-class score thresholds, IoU >= {result.iou_thresh:g}"
    return f"score >= {float(result.score_thresh):g}, IoU >= {result.iou_thresh:g}"


def summary_row(result: EvaluationResult) -> pd.DataFrame:
    """``project_summary.csv``: one row of headline numbers (COCO AP as fractions)."""
    m = result.metrics
    nan = float("nan")
    d = result.data
    row = {
        "images": d.num_images,
        "instances": int(d.instances_per_class().sum()),
        "detections": int(d.det_score.size),
        "classes": d.num_classes,
        "score_thresh": float(result.score_thresh) if not np.ndim(result.score_thresh) else nan,
        "iou_thresh": result.iou_thresh,
        "mAP50-95": m.get("bbox/AP", nan) / 100,
        "mAP50": m.get("bbox/AP50", nan) / 100,
        "mAP75": m.get("bbox/AP75", nan) / 100,
        "precision": m.get("prf1/precision", nan),
        "recall": m.get("prf1/recall", nan),
        "F1": m.get("prf1/F1", nan),
        "macro_F1": m.get("prf1/macro_F1", nan),
        "weighted_F1": m.get("prf1/weighted_F1", nan),
        "macro_F1_optimal": m.get("prf1_opt/macro_F1", nan),
        "froc_hit": result.froc.hit_rule,
        "froc_interpolation": result.froc.interpolation,
    }
    for r in result.froc.fp_rates:
        row[f"froc_{rate_label(r)}"] = m.get(f"froc/{rate_label(r)}", nan)
    row["froc_cpm"] = m.get("froc/cpm", nan)
    row["image_auc"] = m.get("image/auc", nan)
    row["image_sensitivity"] = m.get("image/sensitivity", nan)
    row["image_specificity"] = m.get("image/specificity", nan)
    for level in ("breast", "exam"):
        row[f"{level}_auc"] = m.get(f"{level}/auc", nan)
        row[f"{level}_auc_ci95_low"] = m.get(f"ci95_low/{level}/auc", nan)
        row[f"{level}_auc_ci95_high"] = m.get(f"ci95_high/{level}/auc", nan)
    row["calibration_ece"] = m.get("calibration/ece", nan)
    for metric, name, scale in (
        ("bbox/AP50", "mAP50", 0.01),
        ("bbox/AP", "mAP50-95", 0.01),
        ("froc/sens@1fp", "froc_sens@1fp", 1.0),
    ):
        lo, hi = _ci(result, metric, scale)
        row[f"{name}_ci95_low"], row[f"{name}_ci95_high"] = lo, hi
    row["ci95_unit"] = result.bootstrap.unit if result.bootstrap is not None else ""
    row["ci95_units"] = result.bootstrap.n_units if result.bootstrap is not None else 0
    for name in ("confusion", "duplicate", "localisation", "both", "background", "missed"):
        row[f"errors_{name}_share"] = m.get(f"errors/{name}_share", nan)
    return pd.DataFrame([row])


_Section = tuple[str, str, list, list[tuple[str, str | None]]]  # title, intro, tables, [(caption, png or None)]


def _sections(result: EvaluationResult, files: Sequence[str], galleries: Sequence[Path]) -> list[_Section]:
    """(title, intro text, [tables], [(caption, png)]) for both reports."""
    d = result.data
    froc = result.froc
    sections: list[_Section] = [
        (
            "Headline",
            f"{d.num_images} images, {int(d.instances_per_class().sum())} ground-truth boxes, "
            f"{d.det_score.size} detections, {d.num_classes} classes. Operating point: "
            f"{_thresh_text(result)}. COCO AP from {result.backend}.",
            [headline(result)],
            [],
        ),
        ("Per class", "Ultralytics' validation table (P and R at the operating point).", [result.per_class], []),
        (
            "Precision, recall and F1",
            "Per class at the operating point and at each class's own F1-optimal score threshold; micro pools the "
            "counts, macro averages the classes with ground truth, weighted weighs them by instances.",
            [result.prf1_frame()],
            [
                ("Precision-recall", "pr_curve.png"),
                ("F1 against score threshold", "f1_curve.png"),
                ("Precision against score threshold", "p_curve.png"),
                ("Recall against score threshold", "r_curve.png"),
            ],
        ),
        (
            "Confusion matrix",
            "Rows: predicted class, columns: true class (class-agnostic matching at the operating point); the "
            "background row holds missed ground truths, the background column false positives.",
            [],
            [("Confusion matrix", "confusion_matrix.png")],
        ),
        (
            "FROC",
            f"Hit rule: {froc.describe_rule()}. FP/image over all {d.num_images} images; a lesion is found when a "
            "detection hits it, extra hits on a found lesion are neither TP nor FP; sensitivity at x FP/image: "
            f"{froc.describe_interpolation()} (EVAL.FROC_INTERPOLATION). CPM: mean over the listed rates.",
            [froc.summary_frame()],
            [("FROC", "froc.png")],
        ),
        (
            "Image-level ROC",
            "Image score = highest detection score for the class (every detection of the image, crowd regions "
            "included; no detection: below every score); an image is positive when it holds a ground truth of the "
            "class (crowd regions excluded). AUC: trapezoidal area, ties count one half. Sensitivity/specificity at "
            "the operating point (called positive when the image score reaches it) and at Youden's optimum.",
            [result.image_roc.summary_frame()],
            [("Image-level ROC", "roc.png")],
        ),
    ]
    exam = result.exam
    if exam is not None:
        plots: list[tuple[str, str | None]]
        if exam.levels:
            text = (
                "Breast = patient_id + laterality, exam = patient_id (+ study when the images carry one). "
                "Suspicion score = highest detection score over the views (any class; no detection: below "
                "every score); positive when a view holds a ground truth. AUC with a 95% percentile bootstrap "
                "interval resampling patients"
                + (
                    f" ({exam.n_resamples} resamples)"
                    if exam.n_resamples
                    else " (not computed: EVAL.BOOTSTRAP_SAMPLES 0)"
                )
                + "; sensitivity at the lowest threshold with specificity >= 0.9, specificity at the highest "
                "threshold with sensitivity >= 0.9 (empirical ROC points)."
            )
            tables, plots = [exam.summary_frame()], [("Breast / exam ROC", "exam_roc.png")]
        else:
            text = "Not computed: no image carries a patient_id (and laterality for breasts)."
            tables, plots = [], []
        sections.append(("Breast- and exam-level results", text, tables, plots))
        sections.append(
            (
                "Calibration of detection scores",
                f"Each detection's score as the probability that it is a true positive (class-aware match at IoU >= "
                f"{result.iou_thresh:g}), in {len(exam.calibration.count)} equal-width bins. Expected calibration "
                f"error (ECE): {_fmt(exam.calibration.ece)}.",
                [exam.calibration.to_frame()],
                [("Calibration", "calibration.png")],
            )
        )
    if result.bootstrap is not None:
        ci = result.bootstrap.table.copy()
        scale = np.where(ci["metric"].str.startswith("bbox/"), 0.01, 1.0)
        for c in ("estimate", "ci95_low", "ci95_high"):
            ci[c] = ci[c] * scale
        b = result.bootstrap
        how = {
            "patient": "patients (all images of a drawn patient enter together, as views of one patient "
            "are correlated)",
            "image": "images (as if independent: too narrow when several images come from one patient)",
        }
        drawn = how.get(b.unit, f"groups of images sharing their {b.unit!r} field")
        ci.insert(len(ci.columns), "resampled", b.describe())
        sections.append(
            (
                "Bootstrap 95% confidence intervals",
                f"Percentile intervals over {b.n_resamples} resamples of the {b.n_units} {drawn}; unit "
                f"set by EVAL.BOOTSTRAP_UNIT, seed {b.seed}; COCO AP as fractions.",
                [ci],
                [],
            )
        )
    else:
        sections.append(("Bootstrap 95% confidence intervals", "Not computed (EVAL.BOOTSTRAP_SAMPLES 0).", [], []))
    err_text = (
        "False positives at the operating point typed as confusion (other class, IoU >= t), duplicate "
        "(its ground truth already matched), localisation (own class, 0.1 <= IoU < t), both (other class, "
        "0.1 <= IoU < t) or background (IoU < 0.1 with every ground truth); missed = false negatives. "
        "Shares are of all errors."
    )
    if not galleries:
        err_text += " No galleries (no error, galleries disabled, or images not readable)."
    sections.append(
        (
            "Error analysis",
            err_text,
            [result.errors.to_frame()],
            [
                (p.stem.replace("errors_fp_", "false positives: ").replace("errors_fn_", "missed: "), p.name)
                for p in galleries
            ],
        )
    )
    sections.append(("Files", "", [], [(f, None) for f in files]))
    return sections


def write_reports(
    result: EvaluationResult,
    out_dir: str | os.PathLike,
    galleries: Sequence[Path] = (),
    extra_sections: Sequence[tuple[str, str]] = (),
) -> list[Path]:
    """Write ``report.md``, ``analysis_report.txt`` and ``project_summary.csv`` into `out_dir`
    (beside the CSVs and PNGs they refer to); returns their paths. Plots missing from
    `out_dir` are not linked. ``extra_sections``: (title, text) pairs appended before "Files"
    (e.g. the model summary and the training diagnosis)."""
    out = Path(out_dir)
    summary = out / "project_summary.csv"
    summary_row(result).to_csv(summary, index=False, na_rep="NaN")
    names = ["report.md", "analysis_report.txt"]
    files = sorted({p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")} | set(names))
    md, txt = ["# Evaluation report", ""], ["EVALUATION REPORT", "=" * 17, ""]
    sections = _sections(result, files, galleries)
    sections[-1:-1] = [(title, text, [], []) for title, text in extra_sections]
    for title, intro, tables, images in sections:
        md += [f"## {title}", ""]
        txt += [title.upper(), "-" * len(title), ""]
        if intro:
            md += [intro, ""]
            txt += [intro, ""]
        for t in tables:
            md += [markdown_table(t), ""]
            txt += [text_table(t), ""]
        if title == "Files":
            md += [f"- [{f}]({f})" for f in files] + [""]
            txt += [f"  {f}" for f in files] + [""]
            continue
        for caption, png in images:
            if png is not None and (out / png).is_file():
                md += [f"![{caption}]({png})", ""]
                txt += [f"  plot: {png} ({caption})"]
        if images:
            txt.append("")
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    (out / "analysis_report.txt").write_text("\n".join(txt), encoding="utf-8")
    return [out / "report.md", out / "analysis_report.txt", summary]
