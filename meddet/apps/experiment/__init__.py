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

Metric names are keys of the flat metrics dict of `meddet.apps.evaluate.evaluate_model` (``bbox/AP``,
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

from meddet.apps.experiment.runner import ExperimentResult, run_experiment
from meddet.apps.experiment.spec import ExperimentSpec, KFold, RunKey, load_experiment, metric_value, read_spec_yaml
from meddet.evaluation.statistics import Rule

__all__ = [
    "ExperimentSpec",
    "ExperimentResult",
    "Rule",
    "KFold",
    "RunKey",
    "load_experiment",
    "read_spec_yaml",
    "run_experiment",
    "metric_value",
]
