"""Pareto dominance, hypervolume, knee and the constrained deployment operating point.

Pure numpy (DataFrames are only used through their own methods). Objectives are the columns of
an (n, k) array with one `maximize` flag per column; internally every column is turned into
"smaller is better" by negating the maximised ones, so one set of routines serves W-F1 (up) and
gaps (down) alike.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ermgap_ray.config import TrialConfig
from ermgap_ray.metrics import mean_ci
from ermgap_ray.registry import REFERENCE_FAMILIES

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
_SHOWN_OPS = {"<=": "≤", ">=": "≥", "<": "<", ">": ">"}
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


def reference_mask(df: pd.DataFrame) -> np.ndarray:
    """Rows that are references, never candidates: a REFERENCE_FAMILIES family or untrained
    (epochs == 0). An untrained backbone is "fair" only because it is equally bad for all."""
    ref = np.zeros(len(df), dtype=bool)
    if "family" in df.columns:
        ref |= df["family"].isin(REFERENCE_FAMILIES).to_numpy(dtype=bool)
    if "epochs" in df.columns:
        ref |= df["epochs"].to_numpy(dtype=float, na_value=np.nan) == 0
    return ref


def pts(col: str, value: float) -> str:
    """A metric value as printed: percentage points (DESIGN.md), except nats and λ."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    raw = "loss" in col or col.endswith("lambda")
    return f"{value:.3g}" if raw else f"{100 * value:.1f}"


def _unit(col: str) -> str:
    return "" if "loss" in col or col.endswith("lambda") else " pts"


def describe_bounds(bounds: Sequence[tuple[str, str, float]], cols: Sequence[str] = ()) -> str:
    """`dev/max_gap_wf1 ≤ 2 pts and dev/wf1 ≥ 50 pts`: parsed bounds, shown in points."""
    names = list(cols) or [m for m, _, _ in bounds]
    out = []
    for (_, op, b), col in zip(bounds, names, strict=True):
        value = f"{b:g}" if not _unit(col) else f"{100 * b:.6g}"
        out.append(f"{col} {_SHOWN_OPS[op]} {value}{_unit(col)}")
    return " and ".join(out)


@dataclass
class OperatingPoint:
    """The chosen deployment configuration; `to_dict()` is plain JSON.

    Metric values are fractions, as in trials.parquet (`units`); `reason` is the human
    summary and prints them in percentage points. `constraints` are the bounds checked
    (`constraint` joins them), `rule` says how seeds were used, `nearest` lists the closest
    configurations when none qualifies, `references` the excluded untrained ones.
    """

    feasible: bool
    reason: str
    constraint: str
    objective: str
    split: str
    constraints: list[str] = field(default_factory=list)
    rule: str = ""
    units: str = "fraction"
    bounds_source: str = ""
    group_hash: str | None = None
    family: str | None = None
    modality: str | None = None
    n_seeds: int = 0
    n_candidates: int = 0
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
    nearest: list[dict[str, Any]] = field(default_factory=list)
    references: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return json_scalar(v)

        return clean(asdict(self))


def json_scalar(value: Any) -> Any:
    """A pandas / numpy scalar as JSON: numpy types become Python ones, NaN and NA None."""
    import pandas as pd

    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def seed_rule(ci: float = 0.95) -> str:
    """How `select_operating_point` uses seeds; printed and stored with every selection."""
    return (
        f"a bound holds when the pessimistic end of the {ci:.0%} Student-t CI over seeds "
        "satisfies it (upper end for <=, lower end for >=); a configuration with 1 seed has no "
        "CI and is checked on its single value (the mean)"
    )


def select_operating_point(
    df: pd.DataFrame,
    constraint: str | Sequence[str] = "max_gap_wf1<=0.02",
    objective: str = "wf1",
    split: str = "dev",
    maximize: bool = True,
    ci: float = 0.95,
    runners_up: int = 3,
    nearest: int = 3,
) -> OperatingPoint:
    """Best mean `objective` among trained configurations whose seeds satisfy every bound.

    `constraint` is one bound or several (e.g. a gap bound and a W-F1 floor `wf1>=0.5`), in
    fractions. Final rows are aggregated per group_hash (`aggregate_seeds`); references
    (`reference_mask`) are reported but never chosen. A bound holds on the pessimistic CI end
    (`seed_rule`), so a lucky seed cannot buy feasibility. Ties go to the safer value of the
    first bound, then the group hash. When none qualifies, `nearest` lists the configurations
    with the smallest total violation (summed over bounds, in the metrics' units).
    """
    texts = [constraint] if isinstance(constraint, str) else list(constraint)
    if not texts:
        raise ValueError("select_operating_point needs at least one bound")
    bounds = [parse_constraint(t) for t in texts]
    c_cols = [metric_column(df, m, split) for m, _, _ in bounds]
    o_col = metric_column(df, objective, split)
    rule = seed_rule(ci)
    base = OperatingPoint(False, "", " and ".join(texts), o_col, split, texts, rule)
    rows = final_rows(df)
    refs = rows[reference_mask(rows)]
    cands = rows[~reference_mask(rows)]
    metrics = list(dict.fromkeys([o_col, *c_cols]))
    if len(refs):
        ref_agg = aggregate_seeds(refs, metrics, ci=ci)
        base.references = [_summary(r, o_col, c_cols, bounds) for _, r in ref_agg.iterrows()]
    ref_note = _reference_note(base.references, o_col, c_cols[0])
    if cands.empty:
        base.reason = "no finished trained configuration (no TERMINATED final rows)" + ref_note
        return base
    agg = aggregate_seeds(cands, metrics, ci=ci)
    feasible, violation = _feasibility(agg, bounds, c_cols)
    first_op = bounds[0][1]
    first_end = f"{c_cols[0]}_hi" if first_op in ("<", "<=") else f"{c_cols[0]}_lo"
    safer = agg[first_end] * (1.0 if first_op in ("<", "<=") else -1.0)
    sign = -1.0 if maximize else 1.0
    agg = agg.assign(
        _feasible=feasible, _key=sign * agg[f"{o_col}_mean"], _safer=safer, _violation=violation
    )
    base.n_candidates = len(agg)
    shown = describe_bounds(bounds, c_cols)
    ranked = agg[agg["_feasible"]].sort_values(["_key", "_safer", "group_hash"])
    if ranked.empty:
        close = agg.sort_values(["_violation", "_key", "group_hash"]).head(nearest)
        base.nearest = [_summary(r, o_col, c_cols, bounds) for _, r in close.iterrows()]
        base.runners_up = base.nearest[:1]
        base.reason = (
            f"no configuration of {len(agg)} satisfies {shown}; closest: "
            + "; ".join(describe_config(s, o_col) for s in base.nearest)
            + ref_note
        )
        return base
    best = ranked.iloc[0]
    head = _summary(best, o_col, c_cols, bounds)
    base.reason = (
        f"chosen: {describe_config(head, o_col)}; best mean {o_col} among {len(ranked)} of "
        f"{len(agg)} trained configurations satisfying {shown}" + ref_note
    )
    base.runners_up = [
        _summary(r, o_col, c_cols, bounds) for _, r in ranked.iloc[1 : 1 + runners_up].iterrows()
    ]
    return _chosen(base, best, rows, c_cols[0])


def _feasibility(
    agg: pd.DataFrame, bounds: list[tuple[str, str, float]], c_cols: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per configuration: does every bound hold on its pessimistic CI end, and by how much
    does it miss them in total (in the metrics' units; inf when an end is undefined)."""
    violation = np.zeros(len(agg))
    feasible = np.ones(len(agg), dtype=bool)
    for (_, op, bound), col in zip(bounds, c_cols, strict=True):
        upper = op in ("<", "<=")
        end = agg[f"{col}_hi" if upper else f"{col}_lo"].to_numpy(float)
        feasible &= ~np.isnan(end) & np.array([_OPS[op](v, bound) for v in end])
        violation += np.nan_to_num(
            np.maximum(0.0, (end - bound) if upper else (bound - end)), nan=np.inf
        )
    return feasible, violation


def _chosen(base: OperatingPoint, best: pd.Series, rows: pd.DataFrame, c0: str) -> OperatingPoint:
    """`base` filled in with the chosen configuration: its seeds, adapters and config."""
    o_col = base.objective
    chosen = rows[rows["group_hash"] == best["group_hash"]].sort_values("trial_id")
    config_cols = [c for c in TrialConfig.field_names() if c in chosen.columns and c != "seed"]
    paths = chosen["adapter_path"].dropna() if "adapter_path" in chosen.columns else []
    return dataclasses.replace(
        base,
        feasible=True,
        group_hash=str(best["group_hash"]),
        family=best.get("family"),
        modality=best.get("modality"),
        n_seeds=int(best["n"]),
        objective_mean=float(best[f"{o_col}_mean"]),
        objective_lo=float(best[f"{o_col}_lo"]),
        objective_hi=float(best[f"{o_col}_hi"]),
        constraint_mean=float(best[f"{c0}_mean"]),
        constraint_lo=float(best[f"{c0}_lo"]),
        constraint_hi=float(best[f"{c0}_hi"]),
        trial_ids=[str(t) for t in chosen["trial_id"]],
        adapter_paths=[str(p) for p in paths],
        config={c: chosen[c].iloc[0] for c in config_cols},
    )


def _summary(
    r: Any, o_col: str, c_cols: list[str], bounds: list[tuple[str, str, float]]
) -> dict[str, Any]:
    """One configuration as JSON (fractions): the objective and each bound's checked end."""
    n = int(r["n"])
    checked = {}
    for (_, op, bound), col in zip(bounds, c_cols, strict=True):
        end = "hi" if op in ("<", "<=") else "lo"
        checked[col] = {
            "mean": float(r[f"{col}_mean"]),
            "checked": float(r[f"{col}_{end}"]),
            "checked_on": "mean (1 seed)"
            if n == 1
            else f"CI {'upper' if end == 'hi' else 'lower'}",
            "bound": f"{op}{bound:g}",
            "satisfied": bool(_OPS[op](float(r[f"{col}_{end}"]), bound)),
        }
    return {
        "group_hash": str(r["group_hash"]),
        "family": r.get("family"),
        "modality": r.get("modality"),
        "n_seeds": n,
        "objective_mean": float(r[f"{o_col}_mean"]),
        "objective_lo": float(r[f"{o_col}_lo"]),
        "objective_hi": float(r[f"{o_col}_hi"]),
        "constraints": checked,
        "constraint_bound_used": float(next(iter(checked.values()))["checked"]),
    }


def describe_config(s: dict[str, Any], o_col: str) -> str:
    """One summary (chosen, runner-up, nearest), every number in percentage points:
    `hash (family, modality, n seeds): wf1 61.2 [60.1, 62.3] pts, max_gap_wf1 CI upper end 2.4
    (mean 1.9) pts`; a bound it misses is marked ✗."""
    parts = [
        f"{o_col} {pts(o_col, s['objective_mean'])} "
        f"[{pts(o_col, s['objective_lo'])}, {pts(o_col, s['objective_hi'])}]{_unit(o_col)}"
    ]
    for col, c in s["constraints"].items():
        mark = "" if c["satisfied"] else " ✗"
        on = "(1 seed, no CI)" if c["checked_on"].startswith("mean") else c["checked_on"] + " end"
        parts.append(
            f"{col} {on} {pts(col, c['checked'])} (mean {pts(col, c['mean'])}){_unit(col)}{mark}"
        )
    n = s["n_seeds"]
    head = f"{s['group_hash']} ({s['family']}, {s['modality']}, {n} seed{'s' * (n != 1)})"
    return f"{head}: " + ", ".join(parts)


def _reference_note(refs: list[dict[str, Any]], o_col: str, c_col: str) -> str:
    if not refs:
        return ""
    shown = ", ".join(
        f"{r['family']}/{r['modality']} ({o_col} {pts(o_col, r['objective_mean'])}, "
        f"{c_col} {pts(c_col, r['constraints'][c_col]['mean'])}{_unit(c_col)})"
        for r in refs
    )
    return f" [references, never candidates: {shown}]"
