"""Pareto dominance, hypervolume, knee and the constrained deployment operating point.

Pure numpy (DataFrames are only used through their own methods). Objectives are the columns of
an (n, k) array with one `maximize` flag per column; internally every column is turned into
"smaller is better" by negating the maximised ones, so one set of routines serves W-F1 (up) and
gaps (down) alike.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ermgap_ray.config import TrialConfig
from ermgap_ray.metrics import mean_ci

if TYPE_CHECKING:
    import pandas as pd


def _as_min(points: Any, maximize: Sequence[bool]) -> np.ndarray:
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise ValueError(f"points must be a 2-D (n, k) array, got shape {pts.shape}")
    flags = np.asarray(maximize, dtype=bool)
    if flags.shape != (pts.shape[1],):
        raise ValueError(f"maximize needs one flag per column ({pts.shape[1]}), got {len(flags)}")
    return np.where(flags, -pts, pts)


def _front_2d(p: np.ndarray) -> np.ndarray:
    """Sort by (x, y) then keep each x-group's minimum y if it beats every smaller x: O(n log n)."""
    order = np.lexsort((p[:, 1], p[:, 0]))
    x, y = p[order, 0], p[order, 1]
    starts = np.r_[True, x[1:] != x[:-1]]
    group = np.cumsum(starts) - 1
    group_min = y[starts]
    beats_earlier = np.r_[True, group_min[1:] < np.minimum.accumulate(group_min)[:-1]]
    keep = (y == group_min[group]) & beats_earlier[group]
    out = np.empty(len(p), dtype=bool)
    out[order] = keep
    return out


def _front_general(p: np.ndarray) -> np.ndarray:
    """Lexicographic sweep: a dominator always sorts earlier, and some front point dominates any
    dominated point (transitivity), so each row is only checked against the front so far."""
    n, k = p.shape
    front = np.empty((n, k))
    size = 0
    out = np.zeros(n, dtype=bool)
    for i in np.lexsort(p.T[::-1]):
        f = front[:size]
        if size and np.any(np.all(f <= p[i], axis=1) & np.any(f < p[i], axis=1)):
            continue
        front[size] = p[i]
        size += 1
        out[i] = True
    return out


def pareto_mask(points: Any, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of `points` (n, k).

    Row a dominates b when a is at least as good in every objective and strictly better in one,
    so exact duplicates never dominate each other and are all kept. Rows with a NaN are never on
    the front (they are also ignored as dominators). k = 2 runs in O(n log n); other k use an
    exact sweep that is O(n * front size).
    """
    pts = _as_min(points, maximize)
    mask = np.zeros(len(pts), dtype=bool)
    rows = np.flatnonzero(~np.isnan(pts).any(axis=1))
    if rows.size:
        sub = pts[rows]
        mask[rows] = _front_2d(sub) if pts.shape[1] == 2 else _front_general(sub)
    return mask


def _hv_min(p: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of minimisation points that all strictly dominate `ref`.

    k = 2 is the staircase sum; higher k slices along the last objective (HSO): between
    consecutive levels the dominated region is the (k-1)-D hypervolume of the points at or
    below that level, times the slab thickness.
    """
    if len(p) == 0:
        return 0.0
    k = p.shape[1]
    if k == 1:
        return float(ref[0] - p[:, 0].min())
    p = p[_front_2d(p) if k == 2 else _front_general(p)]
    if k == 2:
        p = p[np.argsort(p[:, 0], kind="stable")]
        widths = np.r_[p[1:, 0], ref[0]] - p[:, 0]
        return float(np.sum(widths * (ref[1] - p[:, 1])))
    p = p[np.argsort(p[:, -1], kind="stable")]
    levels = np.r_[p[:, -1], ref[-1]]
    total = 0.0
    for i in range(len(p)):
        thickness = levels[i + 1] - levels[i]
        if thickness > 0:
            total += thickness * _hv_min(p[: i + 1, :-1], ref[:-1])
    return total


def hypervolume(points: Any, ref: Sequence[float], maximize: Sequence[bool]) -> float:
    """Volume dominated by `points` and bounded by `ref` (both in the points' own units).

    e.g. ref = (0, 1) for (W-F1 up, gap down). Points that do not strictly dominate `ref`, and
    NaN rows, contribute nothing. Exact for every k (see `_hv_min`).
    """
    pts = _as_min(points, maximize)
    r = np.where(np.asarray(maximize, dtype=bool), -np.asarray(ref, float), np.asarray(ref, float))
    if r.shape != (pts.shape[1],):
        raise ValueError(f"ref needs {pts.shape[1]} coordinates, got {len(r)}")
    keep = ~np.isnan(pts).any(axis=1) & np.all(pts < r, axis=1)
    return _hv_min(pts[keep], r)


def knee_point(points: Any, maximize: Sequence[bool]) -> int:
    """Row index of the knee of a two-objective front.

    Objectives are min-max normalised to [0, 1] over the front (in "smaller is better" form), so
    the front's extremes sit at (0, 1) and (1, 0); the knee is the front point farthest past the
    chord x + y = 1 towards the ideal (0, 0), i.e. the largest 1 - x - y (Das 1999; Kneedle).
    With fewer than three front points there is no bend, and the one with the best first
    objective is returned.
    """
    pts = _as_min(points, maximize)
    if pts.shape[1] != 2:
        raise ValueError("knee_point is defined for two objectives")
    idx = np.flatnonzero(pareto_mask(points, maximize))
    if idx.size == 0:
        raise ValueError("no finite points: the front is empty")
    front = pts[idx]
    if idx.size < 3:
        return int(idx[np.lexsort((front[:, 1], front[:, 0]))[0]])
    lo, span = front.min(axis=0), np.ptp(front, axis=0)
    norm = (front - lo) / np.where(span > 0, span, 1.0)
    return int(idx[np.argmax(1.0 - norm.sum(axis=1))])


def aggregate_seeds(
    df: pd.DataFrame,
    metrics: Sequence[str],
    by: str = "group_hash",
    ci: float = 0.95,
    keep: Sequence[str] = ("family", "modality"),
) -> pd.DataFrame:
    """One row per configuration: `n` (seeds), `<m>_mean`, `<m>_lo`, `<m>_hi` for each metric.

    Rows sharing `by` (the config hash without `seed`) are seeds of one configuration; the
    interval is metrics.mean_ci's Student-t interval over seeds (NaNs dropped; n = 1 gives a
    zero-width interval). Columns in `keep` are carried over from each group's first row.
    """
    missing = [m for m in (by, *metrics) if m not in df.columns]
    if missing:
        raise ValueError(f"unknown column(s) {', '.join(missing)} in trials")
    groups = df.groupby(by, sort=True)
    out = groups[[c for c in keep if c in df.columns and c != by]].first()
    out.insert(0, "n", groups.size())
    for m in metrics:
        stats = np.full((len(out), 3), math.nan)
        for i, (_, s) in enumerate(groups[m]):
            values = s.dropna().to_numpy(float)
            if values.size:
                stats[i] = mean_ci(values, ci=ci)
        for j, suffix in enumerate(("mean", "lo", "hi")):
            out[f"{m}_{suffix}"] = stats[:, j]
    return out.reset_index()


def ci_dominates(
    a_lo: Any, a_hi: Any, b_lo: Any, b_hi: Any, maximize: Sequence[bool]
) -> np.ndarray | bool:
    """Configuration a dominates b only where their CIs over seeds separate.

    a's worst end (lo when maximising, hi when minimising) must be at least as good as b's best
    end in every objective and strictly better in one. With zero-width intervals this is
    ordinary dominance. The last axis indexes objectives; leading axes broadcast.
    """
    flags = np.asarray(maximize, dtype=bool)
    a_worst = np.where(flags, np.asarray(a_lo, float), -np.asarray(a_hi, float))
    b_best = np.where(flags, np.asarray(b_hi, float), -np.asarray(b_lo, float))
    return np.all(a_worst >= b_best, axis=-1) & np.any(a_worst > b_best, axis=-1)


def seed_aware_pareto_mask(
    agg: pd.DataFrame, cols: Sequence[str], maximize: Sequence[bool]
) -> np.ndarray:
    """Configurations that no other configuration CI-dominates (`ci_dominates`).

    `agg` is `aggregate_seeds` output; `cols` are the metric names (their `_lo`/`_hi` are used).
    Rows with a NaN bound are never on the front. This front is a superset of the means' front
    whenever intervals overlap, which is the honest reading of a few seeds.
    """
    lo = agg[[f"{c}_lo" for c in cols]].to_numpy(float)
    hi = agg[[f"{c}_hi" for c in cols]].to_numpy(float)
    finite = ~(np.isnan(lo).any(axis=1) | np.isnan(hi).any(axis=1))
    lo, hi = lo[finite], hi[finite]
    dominated = np.zeros(len(lo), dtype=bool)
    for start in range(0, len(lo), 256):
        sl = slice(start, start + 256)
        dom = ci_dominates(lo[:, None], hi[:, None], lo[None, sl], hi[None, sl], maximize)
        dominated[sl] = dom.any(axis=0)
    mask = np.zeros(len(agg), dtype=bool)
    mask[np.flatnonzero(finite)] = ~dominated
    return mask


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_CONSTRAINT = re.compile(r"^\s*(?P<metric>[^\s<>=]+)\s*(?P<op><=|>=|<|>)\s*(?P<value>[^<>=]+?)\s*$")


def parse_constraint(text: str) -> tuple[str, str, float]:
    """`"max_gap_wf1<=0.02"` -> ("max_gap_wf1", "<=", 0.02); a trailing % divides by 100."""
    match = _CONSTRAINT.match(text)
    if not match:
        raise ValueError(f"cannot parse constraint {text!r}: expected e.g. 'max_gap_wf1<=0.02'")
    raw = match["value"]
    try:
        value = float(raw.rstrip("%")) / (100.0 if raw.endswith("%") else 1.0)
    except ValueError:
        raise ValueError(f"constraint {text!r}: {raw!r} is not a number") from None
    return match["metric"], match["op"], value


def metric_column(df: pd.DataFrame, name: str, split: str) -> str:
    """`wf1` -> `dev/wf1`; an already prefixed name is taken as is. Unknown names raise."""
    for col in (name, f"{split}/{name}"):
        if col in df.columns:
            return col
    known = sorted(c for c in df.columns if c.startswith(f"{split}/"))
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    raise ValueError(f"unknown metric {name!r}: no column '{split}/{name}' (have: {shown})")


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Final rows of finished trials: the ones carrying test metrics and adapters."""
    ok = df["is_final"].fillna(False).astype(bool)
    if "status" in df.columns:
        ok &= df["status"] == "TERMINATED"
    return df[ok]


@dataclass
class OperatingPoint:
    """The chosen deployment configuration; `to_dict()` is plain JSON."""

    feasible: bool
    reason: str
    constraint: str
    objective: str
    split: str
    group_hash: str | None = None
    family: str | None = None
    modality: str | None = None
    n_seeds: int = 0
    objective_mean: float = math.nan
    objective_lo: float = math.nan
    objective_hi: float = math.nan
    constraint_mean: float = math.nan
    constraint_lo: float = math.nan
    constraint_hi: float = math.nan
    trial_ids: list[str] = field(default_factory=list)
    adapter_paths: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    runners_up: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            if isinstance(v, np.generic):
                v = v.item()
            return None if isinstance(v, float) and math.isnan(v) else v

        return clean(asdict(self))


def select_operating_point(
    df: pd.DataFrame,
    constraint: str = "max_gap_wf1<=0.02",
    objective: str = "wf1",
    split: str = "dev",
    maximize: bool = True,
    ci: float = 0.95,
    runners_up: int = 3,
) -> OperatingPoint:
    """Best mean `objective` among configurations whose CI over seeds satisfies `constraint`.

    Final rows are aggregated per group_hash (`aggregate_seeds`). A configuration is feasible
    when the pessimistic CI end satisfies the bound: the upper end for `<`/`<=`, the lower end
    for `>`/`>=`, so a lucky seed cannot buy feasibility. Ties go to the safer constraint value,
    then the group hash. When none qualifies, the closest candidate is named in `reason`.
    """
    metric, op, bound = parse_constraint(constraint)
    rows = final_rows(df)
    c_col, o_col = metric_column(df, metric, split), metric_column(df, objective, split)
    base = OperatingPoint(False, "", constraint, o_col, split)
    if rows.empty:
        base.reason = "no finished trials (no TERMINATED final rows)"
        return base
    agg = aggregate_seeds(rows, [o_col, c_col], ci=ci)
    upper = op in ("<", "<=")
    pessimistic = agg[f"{c_col}_hi" if upper else f"{c_col}_lo"].to_numpy(float)
    feasible = np.array([_OPS[op](v, bound) for v in pessimistic]) & ~np.isnan(pessimistic)
    sign = -1.0 if maximize else 1.0
    agg = agg.assign(_feasible=feasible, _key=sign * agg[f"{o_col}_mean"], _pess=pessimistic)
    safer = "_pess" if upper else "_neg_pess"
    agg["_neg_pess"] = -agg["_pess"]
    ranked = agg[agg["_feasible"]].sort_values(["_key", safer, "group_hash"], na_position="last")

    def summary(r: Any) -> dict[str, Any]:
        return {
            "group_hash": r["group_hash"],
            "family": r.get("family"),
            "modality": r.get("modality"),
            "n_seeds": int(r["n"]),
            "objective_mean": float(r[f"{o_col}_mean"]),
            "constraint_mean": float(r[f"{c_col}_mean"]),
            "constraint_bound_used": float(r["_pess"]),
        }

    end = "upper" if upper else "lower"
    if ranked.empty:
        closest = agg.sort_values([safer, "group_hash"], na_position="last").iloc[0]
        base.reason = (
            f"no configuration satisfies {constraint} on the {end} {ci:.0%} CI end of {c_col}; "
            f"closest: {closest['group_hash']} ({closest.get('family')}, "
            f"{closest.get('modality')}) with {c_col} {end} end {closest['_pess']:.4f} "
            f"(mean {closest[f'{c_col}_mean']:.4f}), {o_col} {closest[f'{o_col}_mean']:.4f}"
        )
        base.runners_up = [summary(closest)]
        return base
    best = ranked.iloc[0]
    chosen = rows[rows["group_hash"] == best["group_hash"]].sort_values("trial_id")
    config_cols = [c for c in TrialConfig.field_names() if c in chosen.columns and c != "seed"]
    paths = chosen["adapter_path"].dropna() if "adapter_path" in chosen.columns else []
    return OperatingPoint(
        feasible=True,
        reason=(
            f"{best['group_hash']} ({best.get('family')}, {best.get('modality')}, "
            f"{int(best['n'])} seeds): best mean {o_col} = {best[f'{o_col}_mean']:.4f} "
            f"[{best[f'{o_col}_lo']:.4f}, {best[f'{o_col}_hi']:.4f}] among {len(ranked)} of "
            f"{len(agg)} configurations whose {end} {ci:.0%} CI end of {c_col} "
            f"({best['_pess']:.4f}) satisfies {op} {bound:g}"
        ),
        constraint=constraint,
        objective=o_col,
        split=split,
        group_hash=str(best["group_hash"]),
        family=best.get("family"),
        modality=best.get("modality"),
        n_seeds=int(best["n"]),
        objective_mean=float(best[f"{o_col}_mean"]),
        objective_lo=float(best[f"{o_col}_lo"]),
        objective_hi=float(best[f"{o_col}_hi"]),
        constraint_mean=float(best[f"{c_col}_mean"]),
        constraint_lo=float(best[f"{c_col}_lo"]),
        constraint_hi=float(best[f"{c_col}_hi"]),
        trial_ids=[str(t) for t in chosen["trial_id"]],
        adapter_paths=[str(p) for p in paths],
        config={c: chosen[c].iloc[0] for c in config_cols},
        runners_up=[summary(r) for _, r in ranked.iloc[1 : 1 + runners_up].iterrows()],
    )
