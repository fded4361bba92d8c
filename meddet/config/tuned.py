"""The tuned-thresholds contract of a run folder: ``-c tune`` (meddet.evaluation.tune) writes
``<run>/tune/tuned_config.yaml`` (``tune_ensemble/`` for an ensemble); predict, evaluate and export read it
back through :func:`load_run_config` / :func:`apply_tuned` (the ``--untuned`` flag skips it)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from meddet.config import CfgNode, load_config, merge_overrides, merge_yaml

logger = logging.getLogger(__name__)

TUNE_DIR, TUNE_ENSEMBLE_DIR, TUNED_CONFIG = "tune", "tune_ensemble", "tuned_config.yaml"


def tuned_config_path(run_dir: str | os.PathLike, ensemble: bool = False) -> Path | None:
    """The run's `-c tune` output that its consumers use: ``tune/tuned_config.yaml`` (for an ensemble
    ``tune_ensemble/tuned_config.yaml`` first, written by ``-c tune --ensemble``); None when there is none."""
    folders = (TUNE_ENSEMBLE_DIR, TUNE_DIR) if ensemble else (TUNE_DIR,)
    for folder in folders:
        p = Path(run_dir) / folder / TUNED_CONFIG
        if p.is_file():
            return p
    return None


def apply_tuned(cfg: CfgNode, run_dir: str | os.PathLike | None = None, ensemble: bool = False) -> Path | None:
    """Merge the run's tuned thresholds (see `tuned_config_path`; `run_dir` default cfg.OUTPUT_DIR) into
    `cfg` (not frozen) and log it; returns the file used, or None (cfg unchanged)."""
    path = tuned_config_path(run_dir if run_dir is not None else cfg.OUTPUT_DIR, ensemble=ensemble)
    if path is None:
        return None
    merge_yaml(cfg, path)
    logger.info(
        "using the tuned thresholds of %s (NMS IoU %g, score %g, per class %s); --untuned to not",
        path,
        cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
        cfg.TEST.SCORE_THRESH,
        dict(
            zip(
                list(cfg.TEST.CLASS_SCORE_THRESH_NAMES) or list(cfg.DATASETS.CLASS_NAMES),
                list(cfg.TEST.CLASS_SCORE_THRESH),
            )
        )
        or "-",
    )
    return path


def load_run_config(
    path: str | os.PathLike | None, opts: Sequence[str] = (), tuned: bool = True, ensemble: bool = False
) -> CfgNode:
    """A run's config as predict / evaluate use it: the YAML, then the run's tuned thresholds (when
    `tuned` and OUTPUT_DIR holds `-c tune` output; see `apply_tuned`), then the `KEY VALUE` overrides,
    which win over both."""
    probe = load_config(path, opts)  # OUTPUT_DIR may come from the overrides
    if not tuned or tuned_config_path(probe.OUTPUT_DIR, ensemble=ensemble) is None:
        return probe
    cfg = load_config(path)
    apply_tuned(cfg, probe.OUTPUT_DIR, ensemble=ensemble)
    merge_overrides(cfg, list(opts))
    return cfg
