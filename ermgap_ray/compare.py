"""Paired comparisons of a method against a baseline family over the seeds they share.

A seed fixes the LoRA initialisation and the data order, so the seed-s runs of two families
differ only by the objective: the per-seed differences d_s = method_s − baseline_s remove the
seed-to-seed variance that an unpaired (Welch) test leaves in. Δ = mean(d), its interval is
Δ ± t_{(1+ci)/2, n−1}·sd(d)/√n and p is the two-sided paired t-test (scipy.stats.ttest_rel,
the one-sample t on d). The ablation table and `analysis/compare.py` both call `paired_delta`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ermgap_ray.data.schema import MODALITIES
from ermgap_ray.pareto import metric_column
from ermgap_ray.registry import FAMILIES

HEADLINE_METRICS: tuple[str, ...] = (
    "wf1",
    "acc",
    "max_gap_wf1",
    "max_gap_avg",
    "max_gap_acc",
    "max_gap_tpr",
    "max_gap_fpr",
)


def seed_pairs(
    method: pd.DataFrame, baseline: pd.DataFrame, column: str
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """(method values, baseline values, seeds) over the seeds both sides have a value for.

    Rows are final rows of one configuration each; a seed reported twice is averaged.
    """
    a = method.dropna(subset=[column]).groupby("seed")[column].mean()
    b = baseline.dropna(subset=[column]).groupby("seed")[column].mean()
    shared = a.index.intersection(b.index).sort_values()
    return a[shared].to_numpy(float), b[shared].to_numpy(float), shared.tolist()


def paired_delta(method: Sequence[float], baseline: Sequence[float], ci: float = 0.95) -> dict:
    """Δ = mean(method − baseline) over paired seeds, its Student-t CI and two-sided p.

    n = 1 (or differences without spread, e.g. two untrained models) has no interval: lo, hi
    and p are NaN, and callers print "n/a (1 seed)" rather than a false "± 0.0".
    """
    a, b = np.asarray(method, float), np.asarray(baseline, float)
    d = a - b
    n = int(d.size)
    out = {"n": n, "delta": float(d.mean()) if n else math.nan}
    out |= {"lo": math.nan, "hi": math.nan, "p_value": math.nan}
    if n < 2 or np.ptp(d) <= 1e-12:  # no spread: the t statistic is 0/0 or ±inf
        return out
    half = stats.t.ppf((1 + ci) / 2, n - 1) * d.std(ddof=1) / math.sqrt(n)
    out |= {"lo": out["delta"] - half, "hi": out["delta"] + half}
    out["p_value"] = float(stats.ttest_rel(a, b).pvalue)
    return out


def _configs(rows: pd.DataFrame, family: str, modality: str) -> list[pd.DataFrame]:
    sub = rows[(rows["family"] == family) & (rows["modality"] == modality)]
    return [g for _, g in sub.groupby("group_hash", sort=True)]


def paired_comparison(
    final_rows: pd.DataFrame,
    method: str,
    baseline: str = "erm",
    metrics: Sequence[str] = HEADLINE_METRICS,
    split: str = "test",
    modality: str | None = None,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Paired Δ (method − baseline, percentage points) of each metric, per modality.

    One row per (modality, method configuration, metric): `n` shared seeds, `seeds`, the two
    means over those seeds, `delta`, `lo`, `hi` (`ci` t-interval) and `p_value` (two-sided
    paired t). The baseline must be one configuration per modality. Raises ValueError for an
    unknown family, a baseline with several configurations, or no shared seeds at all.
    """
    present = set(final_rows["family"].dropna())
    for family in (method, baseline):
        if family not in present:
            known = [f for f in FAMILIES if f in present] + sorted(present - set(FAMILIES))
            raise ValueError(f"unknown family {family!r}; this run has: {', '.join(known)}")
    cols = [metric_column(final_rows, m, split) for m in metrics]
    mods = [modality] if modality else [m for m in MODALITIES if m in set(final_rows["modality"])]
    mods += [] if modality else sorted(set(final_rows["modality"].dropna()) - set(mods))
    records = []
    for mod in mods:
        base = _configs(final_rows, baseline, mod)
        if len(base) > 1:
            raise ValueError(
                f"baseline {baseline!r} has {len(base)} configurations in modality {mod!r}; "
                "compare against a single configuration"
            )
        for config in _configs(final_rows, method, mod) if base else []:
            for name, col in zip(metrics, cols, strict=True):
                a, b, seeds = seed_pairs(config, base[0], col)
                if not seeds:
                    continue
                records.append(
                    {
                        "modality": mod,
                        "method": method,
                        "baseline": baseline,
                        "group_hash": config["group_hash"].iloc[0],
                        "metric": name,
                        "seeds": ",".join(str(s) for s in seeds),
                        "method_mean": 100 * a.mean(),
                        "baseline_mean": 100 * b.mean(),
                        **{
                            k: 100 * v if k in ("delta", "lo", "hi") else v
                            for k, v in paired_delta(a, b, ci=ci).items()
                        },
                    }
                )
    if not records:
        where = f" in modality {modality!r}" if modality else ""
        raise ValueError(f"{method!r} and {baseline!r} share no seeds with results{where}")
    return pd.DataFrame.from_records(records)


def _interval(r: pd.Series) -> str:
    if r["n"] < 2:
        return "n/a (1 seed)"
    if math.isnan(r["lo"]):
        return "n/a (no spread)"
    return f"[{r['lo']:+.2f}, {r['hi']:+.2f}]"


def format_comparison(frame: pd.DataFrame, ci: float = 0.95) -> str:
    """The comparison as a fixed-width text table (pp; p two-sided)."""
    shown = pd.DataFrame(
        {
            "modality": frame["modality"],
            "metric": frame["metric"],
            "n": frame["n"].astype(str),
            frame["method"].iloc[0]: frame["method_mean"].map("{:.2f}".format),
            frame["baseline"].iloc[0]: frame["baseline_mean"].map("{:.2f}".format),
            "Δ (pp)": frame["delta"].map("{:+.2f}".format),
            f"{ci:.0%} CI": frame.apply(_interval, axis=1),
            "p": frame["p_value"].map(lambda p: "n/a" if math.isnan(p) else f"{p:.3g}"),
        }
    )
    if frame.groupby("modality")["group_hash"].nunique().max() > 1:
        shown.insert(1, "config", frame["group_hash"])
    return shown.to_string(index=False)


def comparison_json(frame: pd.DataFrame, **context: Any) -> str:
    """One JSON line: `context` (run, split, ...) and `rows`, NaN written as null."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return json.dumps({**context, "rows": rows}, allow_nan=False, default=str)
