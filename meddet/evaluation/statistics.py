"""Statistics of repeated training runs (seeded experiments, `meddet.apps.experiment`): per-variant
summaries with Student t intervals, paired differences against a baseline with paired t-tests, and the
verdict of rules on them. The unit resampled is the training run (seed, fold), never images; the test-set
sampling error of one run is in its evaluation's bootstrap intervals (`meddet.evaluation.bootstrap`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

RULE_KINDS = ("min_gain", "max_drop")
RULE_ON = ("mean", "ci_low")


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


def t_interval(mean: np.ndarray, std: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    lo, hi = t_interval(agg["mean"], agg["std"], agg["count"])
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
    lo, hi = t_interval(out["mean_diff"], out["std_diff"], out["n_pairs"])
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
