"""Training diagnosis from a run's ``metrics.json``: over-fitting, divergence or oscillation (learning
rate too high), a plateau from the start (learning rate too low, or a data problem) and a data-loading
bottleneck, each with its evidence and a suggested change.

>>> findings = diagnose("output/run/metrics.json")
>>> print(format_findings(findings))
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from meddet.errors import DataError
from meddet.training.events import read_metrics

logger = logging.getLogger(__name__)

__all__ = ["Finding", "diagnose", "format_findings"]

_MIN_TRAIN_LINES = 8  # fewer training lines say nothing about trends


@dataclass(frozen=True)
class Finding:
    """One diagnosed problem: ``kind`` is one of ``overfitting``, ``divergence``, ``oscillation``,
    ``plateau``, ``loading_bottleneck``."""

    kind: str
    evidence: str
    suggestion: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.evidence} Suggestion: {self.suggestion}"


def _train_lines(lines: Sequence[Mapping]) -> list[Mapping]:
    return [x for x in lines if "total_loss" in x and "iteration" in x]


def _eval_lines(lines: Sequence[Mapping]) -> list[Mapping]:
    return [x for x in lines if "iteration" in x and ("val/total_loss" in x or "bbox/AP" in x)]


def _rising_run(values: Sequence[float]) -> int:
    """How many consecutive steps at the end of `values` each went up."""
    n = 0
    for a, b in zip(values[-2::-1], values[:0:-1]):
        if b > a:
            n += 1
        else:
            break
    return n


def _train_loss_at(train: Sequence[Mapping], iteration: int, window: int = 5) -> float:
    """Median training loss of the `window` training lines up to `iteration`."""
    before = [float(x["total_loss"]) for x in train if x["iteration"] <= iteration][-window:]
    return float(np.median(before)) if before else math.nan


def _overfitting(train: Sequence[Mapping], evals: Sequence[Mapping], patience: int) -> list[Finding]:
    for key, sign, label in (("val/total_loss", 1.0, "validation loss rose"), ("bbox/AP", -1.0, "validation AP fell")):
        points = [(int(x["iteration"]), float(x[key])) for x in evals if key in x and math.isfinite(float(x[key]))]
        if len(points) < patience + 1:
            continue
        values = [sign * v for _, v in points]
        run = _rising_run(values)
        if run < patience:
            continue
        window = points[-(run + 1) :]
        its = [it for it, _ in window]
        train_loss = [_train_loss_at(train, it) for it in its]
        if not all(math.isfinite(v) for v in train_loss) or not train_loss[-1] < train_loss[0]:
            continue
        best_it = min(points, key=lambda p: sign * p[1])[0]
        shown = ", ".join(f"{v:.4g}" for _, v in window)
        return [
            Finding(
                "overfitting",
                f"{label} for {run} evaluations in a row (iterations {its[0]}..{its[-1]}: {shown}) while the "
                f"training loss fell from {train_loss[0]:.4g} to {train_loss[-1]:.4g}.",
                f"keep the checkpoint of iteration {best_it} (best validation), stop earlier (early stopping), add "
                "augmentation or weight decay, or train on more data.",
            )
        ]
    return []


def _lr_findings(train: Sequence[Mapping]) -> list[Finding]:
    its = np.array([int(x["iteration"]) for x in train])
    loss = np.array([float(x["total_loss"]) for x in train])
    bad = ~np.isfinite(loss)
    if bad.any():
        return [
            Finding(
                "divergence",
                f"total_loss became {loss[bad][0]} at iteration {its[bad][0]}.",
                "lower SOLVER.BASE_LR (e.g. by 10x), lengthen SOLVER.WARMUP_ITERS, enable "
                "SOLVER.CLIP_GRADIENTS.ENABLED, and check MODEL.PIXEL_STD and trainable normalization "
                "(MODEL.RESNETS.NORM BN/GN) when training from scratch.",
            )
        ]
    if len(loss) < _MIN_TRAIN_LINES:
        return []
    q = max(2, len(loss) // 4)
    first, last = float(np.mean(loss[:q])), float(np.mean(loss[-q:]))
    lowest = float(loss.min())
    rising = Finding(
        "divergence",
        f"the training loss rose: mean {first:.4g} over the first quarter, {last:.4g} over the last quarter "
        f"(lowest {lowest:.4g}).",
        "lower SOLVER.BASE_LR (e.g. by 3-10x) or lengthen SOLVER.WARMUP_ITERS; enable SOLVER.CLIP_GRADIENTS.ENABLED.",
    )
    if last > 1.5 * first:
        return [rising]
    half = loss[len(loss) // 2 :]
    rel_swing = float(np.median(np.abs(np.diff(half))) / max(float(np.mean(half)), 1e-12))
    if rel_swing > 0.5 and last > 0.8 * first:
        return [
            Finding(
                "oscillation",
                f"the training loss swings by a median {rel_swing:.0%} of its level from one log line to the next "
                f"in the second half of training and barely fell (mean {first:.4g} -> {last:.4g}).",
                "lower SOLVER.BASE_LR (e.g. by 3x) or raise SOLVER.IMS_PER_BATCH.",
            )
        ]
    if last > 3.0 * lowest and last > first:
        return [rising]
    if last > 0.95 * first:
        return [
            Finding(
                "plateau",
                f"the training loss did not fall: mean {first:.4g} over the first quarter, {last:.4g} over the last "
                f"quarter (iterations {its[0]}..{its[-1]}).",
                "raise SOLVER.BASE_LR (e.g. by 3-10x) if warm-up is over; otherwise check the data: boxes on the "
                "right objects (`convert_dataset.py --check`), class ids, and INPUT.* pixel normalization.",
            )
        ]
    return []


def _loading(train: Sequence[Mapping], max_ratio: float) -> list[Finding]:
    pairs = [(float(x["data_time"]), float(x["time"])) for x in train if "data_time" in x and "time" in x]
    pairs = [(d, t) for d, t in pairs if math.isfinite(d) and math.isfinite(t) and t > 0]
    if not pairs:
        return []
    data, total = sum(d for d, _ in pairs), sum(t for _, t in pairs)
    ratio = data / total
    if ratio <= max_ratio:
        return []
    return [
        Finding(
            "loading_bottleneck",
            f"data loading takes {ratio:.0%} of each iteration "
            f"({data / len(pairs):.3g} s of {total / len(pairs):.3g} s on average over {len(pairs)} log lines; "
            f"over {max_ratio:.0%} means the accelerator waits for data).",
            "raise DATALOADER.NUM_WORKERS, convert DICOMs to PNG once (convert_dataset.py) instead of decoding them "
            "every epoch, or store images on a faster disk.",
        )
    ]


def diagnose(
    source: str | os.PathLike | Sequence[Mapping],
    patience: int = 3,
    max_data_time_ratio: float = 0.2,
) -> list[Finding]:
    """Diagnose a training run from its ``metrics.json`` (a path) or its lines (parsed dicts).

    ``patience``: consecutive evaluations with rising validation loss or falling AP (while the training
    loss falls) that count as over-fitting. ``max_data_time_ratio``: ``sum(data_time) / sum(time)`` above
    which loading is a bottleneck. Returns an empty list for a healthy run."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise DataError(f"{source}: metrics file not found; expected a run folder's metrics.json (JSON lines)")
        try:
            lines: Sequence[Mapping] = read_metrics(source)
        except ValueError as e:
            raise DataError(f"{source}: not JSON lines ({e}); expected one JSON object per line") from e
    else:
        lines = source
    if patience < 1:
        raise DataError(f"diagnose patience: {patience}; expected at least 1 evaluation")
    train = sorted(_train_lines(lines), key=lambda x: int(x["iteration"]))
    findings = _lr_findings(train)
    findings += _overfitting(train, sorted(_eval_lines(lines), key=lambda x: int(x["iteration"])), patience)
    findings += _loading(train, max_data_time_ratio)
    for f in findings:
        logger.debug("diagnosis: %s", f)
    return findings


def format_findings(findings: Sequence[Finding]) -> str:
    """The findings as text, one paragraph each, for the log and the report."""
    if not findings:
        return "Training diagnosis: no problem found (no over-fitting, divergence, plateau or loading bottleneck)."
    return "Training diagnosis:\n" + "\n".join(f"- {f}" for f in findings)
