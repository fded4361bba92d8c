"""Evaluation views behind one interface (as detectron2's ``DatasetEvaluator`` or mmengine's ``BaseMetric``).

A view computes one kind of result from the shared `EvalContext` (the `EvalData` arrays and the
class-aware / class-agnostic `Matches`, each made once, on first use), contributes its entries to the
flat metrics dict and writes its own files. `meddet.evaluation.run_evaluation(views=...)` computes only
the views asked for (and those they read: `EvaluationView.requires`), in registry order.

Adding a view is one class here (or anywhere, before the evaluation runs) decorated with
`register_view`::

    @register_view
    class MyView(EvaluationView):
        name = "mine"
        requires = ("prf1",)                  # views whose results `compute` reads
        metric_prefixes = ("mine/",)          # the metric names it adds (for `views_for_metrics`)
        files = ("mine.csv",)                 # what `write` writes (names or fnmatch patterns)

        def compute(self, ctx):  return ...   # ctx.data, ctx.matches, ctx.result("prf1"), ctx.score_thresh, ...
        def metrics(self, result, ctx):  return {"mine/x": ...}
        def write(self, result, res, out, opts):  ...   # res: the EvaluationResult; returns the paths

The result is then ``EvaluationResult.results["mine"]`` (``res.view("mine")``).

Compute-heavy modules (pandas, SciPy, matplotlib, OpenCV) are imported by the views that use them,
so the COCO view alone needs only NumPy and the COCO backend.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from meddet.errors import ConfigError
from meddet.evaluation.matching import EvalData, Matches, match_detections

if TYPE_CHECKING:
    from meddet.evaluation.evaluator import EvaluationResult

__all__ = [
    "EvalContext",
    "EvaluationView",
    "WriteOptions",
    "VIEWS",
    "register_view",
    "resolve_views",
    "views_for_metrics",
    "view_files",
]


@dataclass(eq=False)
class EvalContext:
    """What every view computes from: the data, the settings of `run_evaluation`, the shared matchings
    (computed on first use, once) and the results of the views computed so far."""

    data: EvalData
    score_thresh: float | np.ndarray = 0.5
    iou_thresh: float = 0.5
    backend: str = "faster_coco_eval"
    max_dets: int = 100
    froc_hit: str = "center"
    froc_iou: float = 0.5
    fp_rates: Sequence[float] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    froc_interpolation: str = "step"
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 0
    bootstrap_unit: str = "patient"
    results: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @cached_property
    def matches(self) -> Matches:
        """Class-aware matching at `iou_thresh` (valid at every score threshold)."""
        return match_detections(self.data, self.iou_thresh)

    @cached_property
    def agnostic_matches(self) -> Matches:
        """Class-agnostic matching at `iou_thresh` (the confusion matrix's)."""
        return match_detections(self.data, self.iou_thresh, class_agnostic=True)

    def computed(self, name: str) -> bool:
        return name in self.__dict__

    def result(self, view: str) -> Any:
        """The result of an already computed view (a KeyError names it otherwise)."""
        try:
            return self.results[view]
        except KeyError:
            raise KeyError(f"view {view!r} was not computed; list it in the reading view's `requires`") from None


@dataclass
class WriteOptions:
    """Options of the files views write (see `EvaluationResult.write`); `written` collects what each
    view wrote, for the views written after it (the report links the error galleries)."""

    image_root: str | os.PathLike | None = None
    gallery_size: int = 16
    dicom_kwargs: dict[str, Any] | None = None
    extra_sections: Sequence[tuple[str, str]] = ()
    written: dict[str, list[Path]] = field(default_factory=dict)


class EvaluationView:
    """One view of an evaluation (see the module docstring). Subclasses set `name`, `requires`,
    `metric_prefixes` and `files`, and implement `compute` (and `metrics` / `write` when they have any)."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    metric_prefixes: ClassVar[tuple[str, ...]] = ()
    files: ClassVar[tuple[str, ...]] = ()

    def compute(self, ctx: EvalContext) -> Any:
        raise NotImplementedError

    def metrics(self, result: Any, ctx: EvalContext) -> dict[str, float]:
        return {}

    def write(self, result: Any, res: EvaluationResult, out: Path, opts: WriteOptions) -> list[Path]:
        return []


VIEWS: dict[str, EvaluationView] = {}


def register_view(cls: type[EvaluationView]) -> type[EvaluationView]:
    """Class decorator: add a view to `VIEWS` (after the views it requires, which must be registered)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: an evaluation view needs a name")
    missing = [r for r in cls.requires if r not in VIEWS]
    if missing:
        raise ValueError(f"view {cls.name!r} requires {missing}, not registered (register them first)")
    VIEWS[cls.name] = cls()
    return cls


def resolve_views(views: Iterable[str] | str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(requested, to compute) view names in registry order: `views` (None or "all": every view; a
    comma-separated string or a sequence of names), and those plus what they require."""
    if views is None or views == "all":
        names = list(VIEWS)
    else:
        if isinstance(views, str):
            views = [v.strip() for v in views.split(",") if v.strip()]
        names = list(views)
        unknown = [v for v in names if v not in VIEWS]
        if unknown or not names:
            raise ConfigError(
                f"evaluation views {unknown or names!r}: expected one or more of {list(VIEWS)} (or 'all')"
            )
    need: set[str] = set()

    def add(n: str) -> None:
        if n not in need:
            need.add(n)
            for r in VIEWS[n].requires:
                add(r)

    for n in names:
        add(n)
    order = list(VIEWS)
    return tuple(n for n in order if n in names), tuple(n for n in order if n in need)


def views_for_metrics(metric_names: Iterable[str]) -> tuple[str, ...]:
    """The views producing the named metrics (or metric prefixes such as ``"bbox/"``): what to ask
    `run_evaluation` for when only those metrics are needed. ``ci95_low/…`` and ``ci95_high/…`` need the
    bootstrap; ``gt/…`` comes with every evaluation; an unknown name raises a ConfigError."""
    out: set[str] = set()
    for m in metric_names:
        if m.startswith("gt/"):
            continue
        hits = [v.name for v in VIEWS.values() if any(m.startswith(p) for p in v.metric_prefixes)]
        if not hits:
            hits = [v.name for v in VIEWS.values() if any(p.startswith(m) for p in v.metric_prefixes)]
        if not hits:
            raise ConfigError(
                f"metric {m!r} is not produced by any evaluation view (known prefixes: "
                f"{sorted(p for v in VIEWS.values() for p in v.metric_prefixes)})"
            )
        out.update(hits[:1])
    if not out:
        out.add("coco")
    return tuple(n for n in VIEWS if n in out)


def view_files(name: str, out_dir: str | os.PathLike) -> list[Path]:
    """The files of view `name` present in `out_dir`."""
    pats = VIEWS[name].files
    return sorted(p for p in Path(out_dir).iterdir() if any(fnmatch.fnmatch(p.name, q) for q in pats))


# ---------------------------------------------------------------------------------------------- views
@register_view
class CocoView(EvaluationView):
    """COCO AP / AR (``bbox/…``), from the data alone (no matching)."""

    name = "coco"
    metric_prefixes = ("bbox/",)

    def compute(self, ctx: EvalContext) -> Any:
        from meddet.evaluation.coco_eval import coco_evaluate

        return coco_evaluate(ctx.data, ctx.backend, ctx.max_dets)

    def metrics(self, result: Any, ctx: EvalContext) -> dict[str, float]:
        return result.to_metrics(ctx.data.class_names)


@dataclass(frozen=True)
class PRF1Result:
    at_threshold: Any  # PRF1 at the operating point
    f1_optimal: Any  # PRF1 at each class's F1-optimal threshold


@register_view
class PRF1View(EvaluationView):
    """P/R/F1 at the operating point (``prf1/…``) and at each class's F1-optimal threshold (``prf1_opt/…``)."""

    name = "prf1"
    metric_prefixes = ("prf1/", "prf1_opt/")
    files = ("prf1.csv",)

    def compute(self, ctx: EvalContext) -> Any:
        from meddet.evaluation.prf1 import f1_optimal, prf1_at

        return PRF1Result(prf1_at(ctx.matches, ctx.score_thresh), f1_optimal(ctx.matches))

    def metrics(self, result: Any, ctx: EvalContext) -> dict[str, float]:
        return {**result.at_threshold.to_metrics(), **result.f1_optimal.to_metrics("prf1_opt")}

    def write(self, result: Any, res: EvaluationResult, out: Path, opts: WriteOptions) -> list[Path]:
        res.prf1_frame().to_csv(out / "prf1.csv", index=False, na_rep="NaN")
        return [out / "prf1.csv"]


@register_view
class PerClassView(EvaluationView):
    """The YOLO-style per-class table (COCO AP50/AP and P/R at the operating point)."""

    name = "per_class"
    requires = ("coco", "prf1")
    files = ("per_class.csv",)

    def compute(self, ctx: EvalContext) -> Any:
        from meddet.evaluation.tables import per_class_table

        return per_class_table({**ctx.metrics, **ctx.data.to_metrics()})

    def write(self, result: Any, res: EvaluationResult, out: Path, opts: WriteOptions) -> list[Path]:
        result.to_csv(out / "per_class.csv", index=False, na_rep="NaN")
        return [out / "per_class.csv"]


@register_view
class ConfusionView(EvaluationView):
    """The detection confusion matrix (class-agnostic matching at the operating point)."""

    name = "confusion"
    files = ("confusion_matrix.csv", "confusion_matrix_normalized.csv", "confusion_matrix.png")

    def compute(self, ctx: EvalContext) -> Any:
        from meddet.evaluation.confusion import confusion_matrix

        return confusion_matrix(ctx.agnostic_matches, ctx.score_thresh)

    def write(self, result: Any, res: EvaluationResult, out: Path, opts: WriteOptions) -> list[Path]:
        from meddet.evaluation.confusion import confusion_frame, normalize_columns, plot_confusion_matrix

        names = res.data.class_names
        confusion_frame(result, names).to_csv(out / "confusion_matrix.csv")
        confusion_frame(normalize_columns(result), names).to_csv(out / "confusion_matrix_normalized.csv", na_rep="NaN")
        at = "per-class score thresholds" if np.ndim(res.score_thresh) else f"score >= {float(res.score_thresh):g}"
        plot_confusion_matrix(
            result, names, out / "confusion_matrix.png", title=f"Confusion matrix ({at}, IoU >= {res.iou_thresh:g})"
        )
        return [out / n for n in self.files]


@register_view
class CurvesView(EvaluationView):
    """PR curve (COCO's interpolated precision at IoU 0.5) and F1 / P / R against the score threshold."""

    name = "curves"
    requires = ("coco",)
    files = ("pr_curve.png", "pr_curve.csv", "f1_curve.*", "p_curve.*", "r_curve.*")

    def compute(self, ctx: EvalContext) -> Any:
        from meddet.evaluation.curves import score_curves

        return score_curves(ctx.matches)

    def write(self, result: Any, res: EvaluationResult, out: Path, opts: WriteOptions) -> list[Path]:
        from meddet.evaluation.curves import write_pr_curve

        return [write_pr_curve(res.coco, res.data.class_names, out), *result.write(out)]


@register_view
class FROCView(EvaluationView):
    """FROC (``froc/…``) with the configured hit rule, FP rates and interpolation."""

    name = "froc"
    metric_prefixes = ("froc/",)
    files = ("froc.png", "froc.csv", "froc_summary.csv")

    def compute(self, ctx: EvalContext) -> Any:
        from meddet.evaluation.froc import froc

        return froc(ctx.data, ctx.froc_hit, ctx.froc_iou, ctx.fp_rates, ctx.froc_interpolation)

    def metrics(self, result: Any, ctx: EvalContext) -> dict[str, float]:
        return result.to_metrics()

    def write(self, result: Any, res: EvaluationResult, out: Path, opts: WriteOptions) -> list[Path]:
        return [result.write(out)]


@register_view
class ImageROCView(EvaluationView):
    """Image-level ROC (``image/…``): image score = highest detection score."""

    name = "roc"
    metric_prefixes = ("image/",)
    files = ("roc.png", "roc.csv", "roc_summary.csv")

    def compute(self, ctx: EvalContext) -> Any:
        from meddet.evaluation.roc import image_roc

        return image_roc(ctx.matches, ctx.score_thresh)

    def metrics(self, result: Any, ctx: EvalContext) -> dict[str, float]:
        return result.to_metrics()

    def write(self, result: Any, res: EvaluationResult, out: Path, opts: WriteOptions) -> list[Path]:
        return [result.write(out)]


@register_view
class ExamView(EvaluationView):
    """Breast- and exam-level ROC (``breast/…``, ``exam/…``) and score calibration (``calibration/…``)."""

    name = "exam"
    metric_prefixes = (
        "breast/",
        "exam/",
        "calibration/",
        "ci95_low/breast/",
        "ci95_high/breast/",
        "ci95_low/exam/",
        "ci95_high/exam/",
    )
    files = ("exam_level.csv", "exam_roc.png", "exam_roc.csv", "calibration.png", "calibration.csv")

    def compute(self, ctx: EvalContext) -> Any:
        from meddet.evaluation.exam import exam_level

        return exam_level(ctx.matches, ctx.bootstrap_samples, ctx.bootstrap_seed)

    def metrics(self, result: Any, ctx: EvalContext) -> dict[str, float]:
        return result.to_metrics()

    def write(self, result: Any, res: EvaluationResult, out: Path, opts: WriteOptions) -> list[Path]:
        result.write(out)
        return [out / n for n in self.files if (out / n).is_file()]


@register_view
class BootstrapView(EvaluationView):
    """Bootstrap 95% intervals (``ci95_low/…``, ``ci95_high/…``); None when ``bootstrap_samples`` is 0."""

    name = "bootstrap"
    requires = ("froc",)
    metric_prefixes = ("ci95_low/", "ci95_high/")
    files = ("bootstrap_ci.csv",)

    def compute(self, ctx: EvalContext) -> Any:
        if not ctx.bootstrap_samples:
            return None
        from meddet.evaluation.bootstrap import APStats, bootstrap_ci

        data = ctx.data
        return bootstrap_ci(
            data,
            ctx.matches,
            ctx.score_thresh,
            ctx.result("froc").all,
            n_resamples=ctx.bootstrap_samples,
            seed=ctx.bootstrap_seed,
            fp_rate=1.0,
            ap_stats=APStats.from_data(data, max_dets=ctx.max_dets),
            unit=ctx.bootstrap_unit,
            froc_interpolation=ctx.froc_interpolation,
        )

    def metrics(self, result: Any, ctx: EvalContext) -> dict[str, float]:
        return result.to_metrics() if result is not None else {}

    def write(self, result: Any, res: EvaluationResult, out: Path, opts: WriteOptions) -> list[Path]:
        if result is None:
            (out / "bootstrap_ci.csv").unlink(missing_ok=True)  # not one of an earlier evaluation
            return []
        result.to_frame().to_csv(out / "bootstrap_ci.csv", index=False, na_rep="NaN")
        return [out / "bootstrap_ci.csv"]


@register_view
class ErrorsView(EvaluationView):
    """Typed errors at the operating point (``errors/…``) and their galleries."""

    name = "errors"
    metric_prefixes = ("errors/",)
    files = ("errors.csv", "errors_detail.csv", "errors_fp_*", "errors_fn_*")

    def compute(self, ctx: EvalContext) -> Any:
        from meddet.evaluation.error_analysis import classify_errors

        return classify_errors(ctx.matches, ctx.score_thresh)

    def metrics(self, result: Any, ctx: EvalContext) -> dict[str, float]:
        return result.to_metrics()

    def write(self, result: Any, res: EvaluationResult, out: Path, opts: WriteOptions) -> list[Path]:
        from meddet.evaluation.error_analysis import write_galleries

        result.to_frame().to_csv(out / "errors.csv", index=False, na_rep="NaN")
        result.detail_frame().to_csv(out / "errors_detail.csv", index=False, na_rep="NaN")
        galleries = write_galleries(result, out, opts.image_root, opts.gallery_size, opts.dicom_kwargs)
        opts.written["galleries"] = list(galleries)
        return [out / "errors.csv", out / "errors_detail.csv", *galleries]


@register_view
class ReportView(EvaluationView):
    """``report.md``, ``analysis_report.txt`` and ``project_summary.csv`` (reads every other view)."""

    name = "report"
    requires = ("coco", "prf1", "per_class", "confusion", "curves", "froc", "roc", "exam", "bootstrap", "errors")
    files = ("report.md", "analysis_report.txt", "project_summary.csv")

    def compute(self, ctx: EvalContext) -> Any:
        return None

    def write(self, result: Any, res: EvaluationResult, out: Path, opts: WriteOptions) -> list[Path]:
        from meddet.evaluation.report import write_reports

        return write_reports(res, out, opts.written.get("galleries", []), extra_sections=opts.extra_sections)
