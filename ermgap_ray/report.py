"""Paper figures and tables from `RUN_DIR/trials.parquet`: Pareto fronts, hypervolume, ablation.

Optuna's visualization habit: each figure has a pure `*_frame` function that returns exactly what
is drawn (tests compare it cell by cell) and a thin `plot_*` that only draws that frame and
returns the Figure. Fractions come in, percentage points go out (DESIGN.md: fractions in code,
percentages in tables and plots). Figures use `matplotlib.figure.Figure` directly, so importing
this module touches no global backend or pyplot state.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ermgap_ray.compare import paired_delta, seed_pairs
from ermgap_ray.data.schema import LANGUAGES, MODALITIES
from ermgap_ray.metrics import null_summary, shuffled_null
from ermgap_ray.pareto import (
    OperatingPoint,
    aggregate_seeds,
    final_rows,
    hypervolume,
    json_scalar,
    metric_column,
    pareto_mask,
    parse_constraint,
    reference_mask,
    seed_aware_pareto_mask,
    seed_rule,
    select_operating_point,
)
from ermgap_ray.registry import (
    BASELINE_FAMILY,
    FAMILIES,
    FAMILY_LABELS,
    GAP_KINDS,
    METRIC_LABELS,
    REFERENCE_FAMILIES,
    family_style,
)
from ermgap_ray.results import DEFAULT_OBJECTIVES, SweepManifest, load_trials, read_manifest

_RC = {
    "font.size": 7.5,
    "axes.titlesize": 8,
    "axes.labelsize": 7.5,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.linewidth": 0.6,
}
NULL_PERMUTATIONS = 200
NULL_COLOR, NULL_ALPHA = "0.88", 0.6
INFEASIBLE_COLOR, INFEASIBLE_ALPHA = "#d62728", 0.08
FRONT_COLOR = "0.35"
MAX_GAPS: tuple[str, ...] = tuple(f"max_gap_{m}" for m in GAP_KINDS)


def _order(values: pd.Series, known: Sequence[str]) -> pd.Series:
    rank = {v: i for i, v in enumerate(known)}
    return values.map(lambda v: rank.get(v, len(rank)))


def is_reference(rows: pd.DataFrame) -> pd.Series:
    """References (zero-shot, any 0-epoch model) are near chance and so "fair" for free: shown,
    never bold, never "fairest"."""
    ref = rows["family"].isin(REFERENCE_FAMILIES)
    if "epochs" in rows.columns:
        ref |= pd.to_numeric(rows["epochs"], errors="coerce").eq(0)
    return ref


def load_run(run_dir: str | Path) -> tuple[pd.DataFrame, SweepManifest | None]:
    """results.load_trials (is_final as bool) and results.read_manifest (None without sweep.json).

    Raises FileNotFoundError / ValueError with a one-line message for a missing or empty run.
    """
    return load_trials(run_dir), read_manifest(run_dir, missing_ok=True)


def _load_predictions(row: pd.Series, run_dir: Path | None) -> dict[str, np.ndarray] | None:
    candidates = []
    if isinstance(row.get("predictions_path"), str):
        path = Path(row["predictions_path"])
        candidates.append(path if path.is_absolute() or run_dir is None else run_dir / path)
    if run_dir is not None:
        candidates.append(run_dir / "predictions" / f"{row['trial_id']}.npz")
    for path in candidates:
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in ("y_true", "y_pred", "languages", "genders")}
    return None


def null_column(key: str, split: str, p95: bool = False) -> str:
    """`test/null_max_gap_wf1` (mean of the gender-shuffled null) or `..._p95`."""
    return f"{split}/null_{key}" + ("_p95" if p95 else "")


def with_null_columns(
    df: pd.DataFrame,
    split: str = "test",
    keys: Sequence[str] = MAX_GAPS,
    run_dir: str | Path | None = None,
    n_permutations: int = NULL_PERMUTATIONS,
    seed: int = 0,
) -> pd.DataFrame:
    """A copy of `df` with `<split>/null_<key>` and `<split>/null_<key>_p95` for each gap key.

    Values the training loop logged are kept. A final row missing one gets it from its trial's
    predictions npz (`predictions_path`, else RUN_DIR/predictions/<trial_id>.npz) through
    metrics.shuffled_null; those hold test predictions, so only `split="test"` is filled.
    Anything else stays NaN.
    """
    out = df.copy()
    cols = [null_column(k, split, p95) for k in keys for p95 in (False, True)]
    for col in cols:
        if col not in out.columns:
            out[col] = math.nan
    if split != "test":
        return out
    run_path = Path(run_dir) if run_dir is not None else None
    final = final_rows(out)
    for i in final.index[final[cols].isna().any(axis=1)]:
        pred = _load_predictions(out.loc[i], run_path)
        if pred is None:
            continue
        null = shuffled_null(
            pred["y_true"], pred["y_pred"], pred["languages"], pred["genders"], n_permutations, seed
        )
        for key in keys:
            for col, value in zip(
                (null_column(key, split), null_column(key, split, True)),
                null_summary(null[key]),
                strict=True,
            ):
                if pd.isna(out.at[i, col]):
                    out.at[i, col] = value
    return out


def _null_split(df: pd.DataFrame, keys: Sequence[str], split: str) -> str:
    """The split whose gender-shuffled null goes under `split`'s gaps: its own when logged,
    else test (the predictions npz are test predictions; the null depends mostly on the cell
    sizes, which the splits share by construction)."""
    logged = [null_column(k, split) for k in keys]
    if any(c in df.columns and df[c].notna().any() for c in logged):
        return split
    return "test"


def pareto_frame(
    df: pd.DataFrame,
    split: str = "dev",
    gap: str = "max_gap_wf1",
    utility: str = "wf1",
    by_language: bool = False,
    ci: float = 0.95,
    run_dir: str | Path | None = None,
) -> pd.DataFrame:
    """What `plot_pareto` draws: one panel per modality (or per language with `by_language`).

    `kind="config"` rows are configurations (group_hash) with mean and t-CI over seeds, the
    means' Pareto flag `on_front` (max utility, min gap) and the CI-aware `ci_front`
    (pareto.seed_aware_pareto_mask); `kind="trial"` rows are single finished trials. One
    `kind="null"` row per panel, when a gender-shuffled null is known (`with_null_columns`),
    holds its mean over the trained (non-reference) trials in `gap` and its 95th percentile in
    `gap_hi`; `gap_metric` names the null column (a test column under a dev figure says so).
    By language the gap is `gap_<m>/<lang>` and the utility `<utility>/<lang>`. Values in pp.
    """
    rows = final_rows(df)
    panels = _panels(rows, gap, utility, by_language)
    keys = list(
        dict.fromkeys(g.split("/", 1)[1] if g.startswith(f"{split}/") else g for *_, g, _ in panels)
    )
    null_split = _null_split(df, keys, split)
    nulls = final_rows(with_null_columns(df, null_split, keys, run_dir))
    nulls = nulls[~is_reference(nulls)]
    parts = []
    for panel, sub, g, u in panels:
        if sub.empty:
            continue
        g_col, u_col = metric_column(df, g, split), metric_column(df, u, split)
        modality = sub["modality"].iloc[0] if not by_language else ""
        parts += [
            _config_rows(panel, sub, u_col, g_col, ci),
            _trial_rows(panel, sub, u_col, g_col),
            _null_row(
                panel, modality, nulls.loc[nulls.index.intersection(sub.index)], g_col, null_split
            ),
        ]
    parts = [p for p in parts if len(p)]
    if not parts:
        raise ValueError("no finished trials to plot (no TERMINATED final rows)")
    frame = pd.concat(parts, ignore_index=True)
    ranks = frame.assign(
        _p=_order(frame["panel"], [*MODALITIES, *LANGUAGES]),
        _k=frame["kind"].map({"config": 0, "trial": 1, "null": 2}),
        _f=_order(frame["family"], FAMILIES),
    )
    order = ranks.sort_values(["_p", "_k", "_f", "modality", "group_hash", "trial_id"]).index
    return frame.loc[order].reset_index(drop=True)


def _panels(
    rows: pd.DataFrame, gap: str, utility: str, by_language: bool
) -> list[tuple[str, pd.DataFrame, str, str]]:
    """(panel, its rows, gap metric, utility metric): per modality, or per language."""
    if by_language:
        if not gap.startswith("max_gap_"):
            raise ValueError(f"by_language needs a max_gap_<m> metric, got {gap!r}")
        kind = gap.removeprefix("max_gap_")
        return [(lang, rows, f"gap_{kind}/{lang}", f"{utility}/{lang}") for lang in LANGUAGES]
    present = list(dict.fromkeys([*MODALITIES, *rows["modality"].dropna().unique()]))
    return [(m, rows[rows["modality"] == m], gap, utility) for m in present]


def _frame_rows(panel: str, kind: str, n: int, **columns: Any) -> pd.DataFrame:
    """One block of pareto_frame rows, every column present (NaN / empty where not given)."""
    template: dict[str, Any] = {
        "group_hash": "",
        "trial_id": "",
        "family": "",
        "modality": "",
        "utility": math.nan,
        "utility_lo": math.nan,
        "utility_hi": math.nan,
        "gap": math.nan,
        "gap_lo": math.nan,
        "gap_hi": math.nan,
        "on_front": False,
        "ci_front": False,
    }
    return pd.DataFrame({"panel": panel, "kind": kind, "n": n, **template, **columns})


def _config_rows(panel: str, sub: pd.DataFrame, u_col: str, g_col: str, ci: float) -> pd.DataFrame:
    """Configurations: mean and t-CI over seeds; the front is drawn among trained methods only
    (an untrained reference is "fair" because it is equally bad for everyone)."""
    agg = aggregate_seeds(sub, [u_col, g_col], ci=ci)
    candidate = ~is_reference(agg).to_numpy()
    means = agg[[f"{u_col}_mean", f"{g_col}_mean"]].to_numpy(float)
    on_front = np.zeros(len(agg), dtype=bool)
    ci_front = np.zeros(len(agg), dtype=bool)
    if candidate.any():
        on_front[candidate] = pareto_mask(means[candidate], [True, False])
        ci_front[candidate] = seed_aware_pareto_mask(
            agg[candidate].reset_index(drop=True), [u_col, g_col], [True, False]
        )
    return _frame_rows(
        panel,
        "config",
        agg["n"],
        group_hash=agg["group_hash"],
        family=agg["family"],
        modality=agg["modality"],
        utility=100 * agg[f"{u_col}_mean"],
        # t-intervals are symmetric; W-F1 and gaps live in [0, 100] (points).
        utility_lo=(100 * agg[f"{u_col}_lo"]).clip(0, 100),
        utility_hi=(100 * agg[f"{u_col}_hi"]).clip(0, 100),
        gap=100 * agg[f"{g_col}_mean"],
        gap_lo=(100 * agg[f"{g_col}_lo"]).clip(0, 100),
        gap_hi=(100 * agg[f"{g_col}_hi"]).clip(0, 100),
        on_front=on_front,
        ci_front=ci_front,
        gap_metric=g_col,
        utility_metric=u_col,
    )


def _trial_rows(panel: str, sub: pd.DataFrame, u_col: str, g_col: str) -> pd.DataFrame:
    return _frame_rows(
        panel,
        "trial",
        1,
        group_hash=sub["group_hash"],
        trial_id=sub["trial_id"].astype(str),
        family=sub["family"],
        modality=sub["modality"],
        utility=100 * sub[u_col],
        gap=100 * sub[g_col],
        gap_metric=g_col,
        utility_metric=u_col,
    )


def _null_row(
    panel: str, modality: str, nulls: pd.DataFrame, g_col: str, null_split: str
) -> pd.DataFrame:
    """The panel's gender-shuffled null: its mean over trained trials, and their mean p95."""
    key = g_col.split("/", 1)[1]
    n_col, p95_col = null_column(key, null_split), null_column(key, null_split, True)
    known = nulls[[n_col, p95_col]].dropna() if n_col in nulls and p95_col in nulls else nulls[:0]
    row = _frame_rows(
        panel,
        "null",
        len(known),
        modality=[modality],
        gap=100 * known[n_col].mean() if len(known) else math.nan,
        gap_lo=0.0,
        gap_hi=100 * known[p95_col].mean() if len(known) else math.nan,
        gap_metric=n_col,
        utility_metric="",
    )
    return row if len(known) else row[:0]


def _axis_label(column: str, unit: str) -> str:
    split, _, name = column.partition("/")
    lang = ""
    if "/" in name:
        name, lang = name.split("/")
        lang = f", {lang.upper()}"
    if "gap_" in name:
        kind = name.rsplit("gap_", 1)[1]
        where = "worst-language " if name.startswith("max_gap_") else ""
        return f"{split} {where}gender gap, {METRIC_LABELS.get(kind, kind)}{lang} ({unit})"
    return f"{split} {METRIC_LABELS.get(name, name)}{lang} ({unit})"


def _draw_panel(ax: Any, sub: pd.DataFrame, operating_point: OperatingPoint | None) -> None:
    trials, configs = sub[sub["kind"] == "trial"], sub[sub["kind"] == "config"]
    for _, r in sub[sub["kind"] == "null"].iterrows():
        ax.axvspan(0, r["gap_hi"], color=NULL_COLOR, alpha=NULL_ALPHA, lw=0, zorder=0)
        ax.axvline(r["gap"], color="0.55", lw=0.7, ls=":", zorder=0)
    for family, t in trials.groupby("family", sort=False):
        color, marker = family_style(family)
        ax.scatter(
            t["gap"],
            t["utility"],
            s=7,
            color=color,
            marker=marker,
            alpha=0.22,
            linewidths=0,
            zorder=1,
        )
    front = configs[configs["on_front"]].sort_values(["gap", "utility"])
    if len(front):
        ax.step(
            front["gap"],
            front["utility"],
            where="post",
            color=FRONT_COLOR,
            lw=0.8,
            ls="--",
            zorder=2,
        )
    for _, r in configs.iterrows():
        color, marker = family_style(r["family"])
        ax.errorbar(
            r["gap"],
            r["utility"],
            xerr=[[r["gap"] - r["gap_lo"]], [r["gap_hi"] - r["gap"]]],
            yerr=[[r["utility"] - r["utility_lo"]], [r["utility_hi"] - r["utility"]]],
            fmt=marker,
            ms=4,
            color=color,
            mfc=color if r["modality"] == MODALITIES[0] else "white",
            mew=0.8,
            elinewidth=0.6,
            capsize=1.2,
            zorder=3,
        )
    if operating_point is None or not operating_point.feasible:
        return
    chosen = configs[configs["group_hash"] == operating_point.group_hash]
    for _, r in chosen.iterrows():
        ax.scatter(
            r["gap"],
            r["utility"],
            marker="*",
            s=110,
            color="gold",
            edgecolors="black",
            linewidths=0.6,
            zorder=5,
        )
        left = r["gap"] <= np.nanmean(ax.get_xlim())
        ax.annotate(
            f"operating point\n{r['utility']:.1f} / {r['gap']:.1f}",
            (r["gap"], r["utility"]),
            xytext=(14 if left else -14, -20),
            textcoords="offset points",
            ha="left" if left else "right",
            fontsize=6.5,
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.3"},
            zorder=6,
        )


def plot_pareto(
    frame: pd.DataFrame,
    operating_point: OperatingPoint | None = None,
    title: str | None = None,
    panel_size: tuple[float, float] = (3.4, 2.5),
    gap_bound: float | None = None,
) -> Figure:
    """Utility (y) vs worst-language gap (x) per panel: faint trials, configuration means with
    CI whiskers on both axes, the means' front as a step line, the operating point as a star,
    and the gender-shuffled null as a grey band from 0 to its 95th percentile (dotted: its mean):
    gaps inside it are what a gender-blind model shows from finite cells alone.

    `gap_bound` (pp, e.g. the sweep's constraint) shades gap > bound as infeasible, so the
    reader sees which side of the bound the star was chosen from. Hollow markers are
    audio+text. The legend sits below the panels so it never covers data.
    """
    panels = list(dict.fromkeys(frame["panel"]))
    drawn = set(frame.loc[frame["kind"] != "null", "family"])
    families = [f for f in FAMILIES if f in drawn]
    families += sorted(drawn - set(families))
    with matplotlib.rc_context(_RC):
        ncol = 3 if len(panels) == 1 else min(6, 3 * len(panels))
        rows_legend = math.ceil((len(families) + 3) / ncol)
        size = (panel_size[0] * len(panels), panel_size[1] + 0.16 * rows_legend + 0.2)
        fig = Figure(figsize=size, layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
        for ax, panel in zip(axes, panels, strict=True):
            sub = frame[frame["panel"] == panel]
            _draw_panel(ax, sub, operating_point)
            if gap_bound is not None:
                _shade_infeasible(ax, gap_bound)
            ax.set_title(panel.upper() if panel in LANGUAGES else panel)
            ax.set_xlabel(_axis_label(sub["gap_metric"].iloc[0], "pp"))
            ax.grid(True, lw=0.3, alpha=0.5)
            if ax is axes[0]:
                ax.set_ylabel(_axis_label(sub["utility_metric"].iloc[0], "%"))
        handles = [
            Line2D(
                [],
                [],
                ls="",
                marker=family_style(f)[1],
                color=family_style(f)[0],
                ms=4,
                label=FAMILY_LABELS.get(f, f),
            )
            for f in families
        ]
        nulls = frame[frame["kind"] == "null"]
        if len(nulls):
            own = (
                nulls["gap_metric"].str.split("/").str[0]
                == frame["gap_metric"].iloc[0].split("/")[0]
            ).all()
            where = "" if own else f" ({nulls['gap_metric'].iloc[0].split('/')[0]} split)"
            handles.append(
                Patch(
                    color=NULL_COLOR, alpha=NULL_ALPHA, lw=0, label=f"shuffled-gender null{where}"
                )
            )
        if gap_bound is not None:
            handles.append(
                Patch(
                    color=INFEASIBLE_COLOR,
                    alpha=INFEASIBLE_ALPHA,
                    lw=0,
                    label=f"infeasible (gap > {gap_bound:g} pts)",
                )
            )
        handles += [
            Line2D([], [], color=FRONT_COLOR, lw=0.8, ls="--", label="Pareto front"),
            Line2D([], [], ls="", marker="o", color="0.5", alpha=0.3, ms=3, label="single trial"),
        ]
        if operating_point is not None and operating_point.feasible:
            handles.append(
                Line2D(
                    [],
                    [],
                    ls="",
                    marker="*",
                    color="gold",
                    mec="black",
                    ms=7,
                    label="operating point",
                )
            )
        if frame.groupby("panel")["modality"].nunique().max() > 1:
            handles.append(
                Line2D(
                    [],
                    [],
                    ls="",
                    marker="o",
                    color="0.2",
                    mfc="white",
                    ms=4,
                    label="hollow: audio+text",
                )
            )
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=ncol,
            frameon=False,
            handletextpad=0.3,
            columnspacing=0.9,
        )
        _zoom_past_zero_shot(axes, panels, frame)
        if title:
            fig.suptitle(title)
    return fig


def _shade_infeasible(ax: Any, bound: float) -> None:
    """Shade gap > bound up to the data's right edge, without widening the axis."""
    lo, hi = ax.get_xlim()
    if bound < hi:
        span = ax.axvspan(bound, hi, color=INFEASIBLE_COLOR, alpha=INFEASIBLE_ALPHA, lw=0, zorder=0)
        span.set_gid("infeasible")
    ax.set_xlim(lo, hi)


def utility_zoom(frame: pd.DataFrame) -> tuple[float, float, pd.DataFrame] | None:
    """(y low, y high, the off-scale reference configurations) when an untrained reference sits
    so far below every trained model that a common y-axis would squash their trade-off; None
    when no zoom is needed. Shared by the PNG and the HTML explorer, so both frame the same."""
    drawn = frame[frame["kind"] != "null"]
    trained = drawn[~drawn["family"].isin(REFERENCE_FAMILIES)]
    zero = drawn[drawn["family"].isin(REFERENCE_FAMILIES) & (drawn["kind"] == "config")]
    if trained.empty or zero.empty:
        return None
    lo = np.nanmin(np.r_[trained["utility_lo"], trained["utility"]])
    hi = np.nanmax(np.r_[trained["utility_hi"], trained["utility"]])
    pad = 0.08 * (hi - lo) or 1.0
    if (zero["utility"] >= lo - pad).all():
        return None
    return float(lo - pad), float(hi + pad), zero[zero["utility"] < lo - pad]


def _zoom_past_zero_shot(axes: Sequence[Any], panels: Sequence[str], frame: pd.DataFrame) -> None:
    """Scale the shared y-axis to the trained models (`utility_zoom`) and name the off-scale
    reference means in the empty lower-right (high gap, low utility) corner instead."""
    zoom = utility_zoom(frame)
    if zoom is None:
        return
    lo, hi, zero = zoom
    for ax, panel in zip(axes, panels, strict=True):
        ax.set_ylim(lo, hi)
        off = zero[zero["panel"] == panel]
        if len(off):
            values = "; ".join(f"{r.utility:.1f} / {r.gap:.1f}" for r in off.itertuples())
            ax.text(
                0.98,
                0.03,
                f"zero-shot, off scale:\n{values}",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=6.5,
                color="0.3",
            )


def save_figure(fig: Figure, path_stem: str | Path) -> list[Path]:
    """Write `<stem>.pdf` (vector, for the paper) and `<stem>.png` (300 dpi, for reading)."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(f"{stem}.pdf"), Path(f"{stem}.png")]
    for path in paths:
        fig.savefig(path, dpi=300)
    return paths


def hypervolume_over_trials(
    df: pd.DataFrame,
    objectives: Sequence[Sequence[str]] = (("dev/wf1", "max"), ("dev/max_gap_wf1", "min")),
    ref: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Hypervolume of the front of the first n trials (by `trial_index`), n = 1..N.

    Each trial counts with its last reported row, which is what Optuna sees; errored trials add
    nothing. `ref` defaults to the worst fraction per objective (0 for max, 1 for min).
    """
    cols = [c for c, _ in objectives]
    maximize = [d == "max" for _, d in objectives]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"unknown objective column(s) {', '.join(missing)} in trials")
    ref = list(ref) if ref is not None else [0.0 if m else 1.0 for m in maximize]
    last = df.sort_values(["trial_index", "epoch"]).groupby("trial_id", sort=False).tail(1)
    last = last.sort_values("trial_index")
    points = last[cols].to_numpy(float, copy=True)
    if "status" in last.columns:
        points[(last["status"] == "ERROR").to_numpy()] = math.nan
    front = np.empty((0, len(cols)))
    volumes = []
    for p in points:
        if not np.isnan(p).any():
            front = np.vstack([front, p])
            front = front[pareto_mask(front, maximize)]
        volumes.append(hypervolume(front, ref, maximize))
    return pd.DataFrame(
        {
            "n_trials": np.arange(1, len(last) + 1),
            "trial_index": last["trial_index"].to_numpy(),
            "trial_id": last["trial_id"].astype(str).to_numpy(),
            "hypervolume": volumes,
        }
    )


def plot_hypervolume(
    frames: Mapping[str, pd.DataFrame], size: tuple[float, float] = (3.4, 2.4)
) -> Figure:
    """Hypervolume vs number of trials, one step line per run (e.g. per sampler)."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=size, layout="constrained")
        ax = fig.subplots()
        for label, frame in frames.items():
            ax.step(frame["n_trials"], frame["hypervolume"], where="post", lw=1.0, label=label)
        ax.set_xlabel("number of trials")
        ax.set_ylabel("dominated hypervolume")
        ax.grid(True, lw=0.3, alpha=0.5)
        ax.legend(loc="lower right", frameon=False)
    return fig


TABLE_METRICS: tuple[str, ...] = (
    *(f"wf1/{lang}" for lang in LANGUAGES),
    "wf1",
    *(f"acc/{lang}" for lang in LANGUAGES),
    "acc",
    *(f"max_gap_{m}" for m in GAP_KINDS),
)
_KNOBS = (
    "p",
    "lambda_mode",
    "lam",
    "eta",
    "epsilon",
    "lam_max",
    "dev_gap_metric",
    "groupdro_eta",
    "lr",
    "lora_r",
    "epochs",
)


def _variants(rows: pd.DataFrame) -> dict[str, str]:
    """Label each configuration by the knobs that differ within its family x modality."""
    labels: dict[str, str] = {}
    for _, sub in rows.groupby(["family", "modality"]):
        firsts = sub.groupby("group_hash").first()
        knobs = [k for k in _KNOBS if k in firsts.columns and firsts[k].nunique(dropna=False) > 1]
        for gh, r in firsts.iterrows():
            labels[gh] = ", ".join(
                f"{k}={r[k]:g}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in knobs
            )
    return labels


def ablation_frame(
    df: pd.DataFrame,
    split: str = "test",
    gap: str = "max_gap_wf1",
    ci: float = 0.95,
    run_dir: str | Path | None = None,
    baseline: str = BASELINE_FAMILY,
) -> pd.DataFrame:
    """The ablation table's numbers: one row per configuration, ordered modality x family.

    Per metric `<m>` (mean, pp) and `<m>_pm` (t-CI half-width over seeds, pp; NaN with one
    seed). `null_max_gap_<k>` / `null_max_gap_<k>_p95`: the gender-shuffled null's mean and
    95th percentile (`with_null_columns`), averaged over seeds, pp. For `utility` = wf1 and
    `gap`: `delta_<m>`, `delta_<m>_lo`, `delta_<m>_hi` (pp) and `p_<m>` are the paired Δ
    (row − `baseline` of the same modality, over shared seeds; compare.paired_delta), and
    `n_pairs` the shared seeds of `gap`. `reference` marks rows that never compete (zero-shot,
    0 epochs).
    """
    rows = final_rows(with_null_columns(df, split, MAX_GAPS, run_dir))
    if rows.empty:
        raise ValueError("no finished trials for the ablation table (no TERMINATED final rows)")
    cols = [metric_column(df, m, split) for m in TABLE_METRICS]
    nulls = [null_column(k, split, p95) for k in MAX_GAPS for p95 in (False, True)]
    agg = aggregate_seeds(rows, cols + nulls, ci=ci, keep=("family", "modality", "epochs"))
    out = pd.DataFrame(
        {
            "family": agg["family"],
            "modality": agg["modality"],
            "variant": agg["group_hash"].map(_variants(rows)),
            "group_hash": agg["group_hash"],
            "n": agg["n"],
            "reference": is_reference(agg),
        }
    )
    for name, col in zip(TABLE_METRICS, cols, strict=True):
        out[name] = 100 * agg[f"{col}_mean"]
        half = 100 * (agg[f"{col}_hi"] - agg[f"{col}_lo"]) / 2
        out[f"{name}_pm"] = half.where(out["n"] > 1)
    for col in nulls:
        out[col.split("/", 1)[1]] = 100 * agg[f"{col}_mean"]
    compared = list(dict.fromkeys(("wf1", gap)))
    deltas = []
    for _, r in out.iterrows():
        base = out[(out["family"] == baseline) & (out["modality"] == r["modality"])]
        row: dict[str, float] = {}
        for name in compared:
            col = metric_column(df, name, split)
            a, b, seeds = (np.array([]), np.array([]), [])
            if r["family"] != baseline and len(base) == 1:
                a, b, seeds = seed_pairs(
                    rows[rows["group_hash"] == r["group_hash"]],
                    rows[rows["group_hash"] == base["group_hash"].iloc[0]],
                    col,
                )
            d = paired_delta(a, b, ci=ci)
            row |= {f"delta_{name}_{k}": 100 * d[k] for k in ("lo", "hi")}
            row |= {f"delta_{name}": 100 * d["delta"], f"p_{name}": d["p_value"]}
            row["n_pairs"] = d["n"]
        deltas.append(row)
    out = pd.concat([out, pd.DataFrame(deltas, index=out.index)], axis=1)
    keys = out.assign(_m=_order(out["modality"], MODALITIES), _f=_order(out["family"], FAMILIES))
    return out.loc[keys.sort_values(["_m", "_f", "variant", "group_hash"]).index].reset_index(
        drop=True
    )


_LATEX = (
    ("\\", r"\textbackslash{}"),
    ("_", r"\_"),
    ("%", r"\%"),
    ("&", r"\&"),
    ("#", r"\#"),
    ("λ", r"$\lambda$"),
    ("±", r"$\pm$"),
    ("Δ", r"$\Delta$"),
    ("<", r"$<$"),
    ("–", "--"),
)


def _latex_escape(text: str) -> str:
    for a, b in _LATEX:
        text = text.replace(a, b)
    return text


def _numbers(frame: pd.DataFrame, m: str, bold: pd.Series, fmt: str) -> pd.Series:
    """`mean ± half-width [null]` cells of one metric column, in bold where `bold`."""
    pm = " ± " if fmt == "md" else r"\,$\pm$\,"
    text = frame[m].map("{:.1f}".format)
    text = text.where(frame[f"{m}_pm"].isna(), text + pm + frame[f"{m}_pm"].map("{:.1f}".format))
    null = frame.get(f"null_{m}")
    if null is not None:
        text = text.where(null.isna(), text + " [" + null.map("{:.1f}".format) + "]")
    text = text.where(~bold, "**" + text + "**" if fmt == "md" else r"\textbf{" + text + "}")
    return text.where(frame[m].notna(), "–")


def _delta_cell(r: pd.Series, name: str) -> str:
    d, lo, hi = r[f"delta_{name}"], r[f"delta_{name}_lo"], r[f"delta_{name}_hi"]
    if math.isnan(d):
        return "–"
    if r["n_pairs"] < 2:
        return f"{d:+.1f} [n/a (1 seed)]"
    if math.isnan(lo):
        return f"{d:+.1f} [n/a (no spread)]"
    return f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def _p_cell(r: pd.Series, name: str) -> str:
    p = r[f"p_{name}"]
    if math.isnan(p):
        return "n/a (1 seed)" if r["n_pairs"] == 1 else "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def ablation_cells(frame: pd.DataFrame, fmt: str = "md", gap: str = "max_gap_wf1") -> pd.DataFrame:
    """The table's text, one column per printed column: what `render_ablation` lays out.

    Best = highest mean for W-F1/ACC, lowest for gaps, compared as printed (one decimal), so
    ties are all bold. `reference` rows do not compete: a near-chance model has near-zero
    gaps, and a bold "best gap" for it would be read as a result.
    """
    langs = [lang.upper() for lang in LANGUAGES]
    shown = frame[list(TABLE_METRICS)].round(1)
    rivals = ~frame["reference"].astype(bool)
    labels = frame["family"].map(lambda f: FAMILY_LABELS.get(f, f))
    variant = frame["variant"].fillna("")
    cells = pd.DataFrame(
        {
            "Method": labels.where(variant == "", labels + " (" + variant + ")"),
            "Modality": frame["modality"],
            "n": frame["n"].astype(str),
        }
    )
    names = [
        *(f"W-F1 {x}" for x in (*langs, "All")),
        *(f"ACC {x}" for x in (*langs, "All")),
        *(f"Gap {METRIC_LABELS[m]}" for m in GAP_KINDS),
    ]
    for name, m in zip(names, TABLE_METRICS, strict=True):
        best = shown.loc[rivals, m].min() if "gap" in m else shown.loc[rivals, m].max()
        cells[name] = _numbers(frame, m, rivals & (shown[m] == best), fmt)
    gap_name = METRIC_LABELS.get(gap.removeprefix("max_gap_"), gap)
    for name, head in (("wf1", "Δ W-F1"), (gap, f"Δ {gap_name} gap")):
        cells[head] = frame.apply(_delta_cell, axis=1, name=name)
        cells[f"p ({head})"] = frame.apply(_p_cell, axis=1, name=name)
    return cells


def _md_table(cells: pd.DataFrame) -> list[str]:
    head = [c.split(" (Δ")[0] for c in cells.columns]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    return lines + ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]


def _latex_table(cells: pd.DataFrame, note: str) -> list[str]:
    langs = [lang.upper() for lang in LANGUAGES]
    n_metrics = len(TABLE_METRICS)
    lines = [
        r"% requires \usepackage{booktabs}",
        r"\begin{table*}[t]",
        r"\centering",
        r"\scriptsize",
        r"\setlength{\tabcolsep}{2.5pt}",
        r"\begin{tabular}{llc" + "c" * (n_metrics + 4) + "}",
        r"\toprule",
        r" & & & \multicolumn{4}{c}{W-F1 (\%)} & \multicolumn{4}{c}{ACC (\%)} & "
        r"\multicolumn{5}{c}{Max gender gap (pp) [null]} & "
        r"\multicolumn{4}{c}{Paired $\Delta$ vs ERM (pp) [95\% CI]} \\",
        r"\cmidrule(lr){4-7}\cmidrule(lr){8-11}\cmidrule(lr){12-16}\cmidrule(lr){17-20}",
        "Method & Mod. & $n$ & "
        + " & ".join([*langs, "All", *langs, "All"])
        + " & "
        + " & ".join(METRIC_LABELS[m] for m in GAP_KINDS)
        + " & "
        + " & ".join(
            _latex_escape(c.split(" (Δ")[0].removeprefix("Δ ")) for c in cells.columns[-4:]
        )
        + r" \\",
        r"\midrule",
    ]
    text = cells.copy()
    for col in text.columns[:2]:
        text[col] = text[col].map(_latex_escape)
    for col in text.columns[2:-4]:
        text[col] = text[col].str.replace("–", "--")
    for col in text.columns[-4:]:
        text[col] = text[col].str.replace("-", "$-$").map(_latex_escape)
    previous = None
    for mod, row in zip(cells["Modality"], text.itertuples(index=False), strict=True):
        if previous is not None and mod != previous:
            lines.append(r"\midrule")
        previous = mod
        lines.append(" & ".join(row) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{Ablation. " + _latex_escape(note) + "}",
        r"\label{tab:ablation}",
        r"\end{table*}",
    ]
    return lines


def render_ablation(
    frame: pd.DataFrame,
    format: str = "md",
    split: str = "test",
    gap: str = "max_gap_wf1",
    ci: float = 0.95,
    baseline: str = BASELINE_FAMILY,
) -> str:
    """Markdown or LaTeX (booktabs) text of an `ablation_frame` (cells: `ablation_cells`)."""
    if format not in ("md", "latex"):
        raise ValueError(f"format must be 'md' or 'latex', got {format!r}")
    cells = ablation_cells(frame, format, gap)
    gap_name = METRIC_LABELS.get(gap.removeprefix("max_gap_"), gap)
    base = FAMILY_LABELS.get(baseline, baseline)
    note = (
        f"{split} split; mean ± {ci:.0%} t-CI half-width over seeds, in points (no ± with one "
        "seed). Gaps are the max over languages; [x]: the gender-shuffled null's mean (gender "
        "permuted within language, predictions fixed), the gap a gender-blind model shows. "
        "Bold: best per column among trained methods (max W-F1/ACC, min gap; zero-shot and "
        f"0-epoch rows never compete). Δ: method − {base} of the same modality, paired by seed, "
        f"for W-F1 and the {gap_name} gap (negative = smaller gap), with its {ci:.0%} t-interval "
        "[lo, hi]; p: two-sided paired t-test over the shared seeds."
    )
    if format == "md":
        return "\n".join(_md_table(cells)) + f"\n\n{note}\n"
    return "\n".join(_latex_table(cells, note)) + "\n"


def ablation_table(
    df: pd.DataFrame,
    split: str = "test",
    format: str = "md",
    gap: str = "max_gap_wf1",
    ci: float = 0.95,
    run_dir: str | Path | None = None,
) -> str:
    """The paper's ablation table (rows family x modality) as Markdown or LaTeX text."""
    frame = ablation_frame(df, split=split, gap=gap, ci=ci, run_dir=run_dir)
    return render_ablation(frame, format=format, split=split, gap=gap, ci=ci)


REPORT_HTML = "report.html"


def report_metrics(manifest: SweepManifest | None) -> tuple[str, str]:
    """(utility, gap) the figures draw: the sweep's first two objectives when they are a
    maximised and a minimised dev metric (its own trade-off), else W-F1 and its max gap."""
    objectives = manifest.objectives if manifest is not None else list(DEFAULT_OBJECTIVES)
    (u_col, u_dir), (g_col, g_dir) = (list(objectives) + [("", "")] * 2)[:2]
    if u_dir == "max" and g_dir == "min" and u_col.startswith("dev/") and g_col.startswith("dev/"):
        return u_col.removeprefix("dev/"), g_col.removeprefix("dev/")
    return "wf1", "max_gap_wf1"


def gap_bound(constraints: Sequence[str], gap: str) -> float | None:
    """The upper bound (pp) that `constraints` (fractions, as in sweep.json) put on dev `gap`."""
    for text in constraints:
        metric, op, value = parse_constraint(text)
        if metric.removeprefix("dev/") == gap and op in ("<=", "<"):
            return 100 * value
    return None


def write_reports(
    run_dir: str | Path, constraint: str | Sequence[str] | None = None
) -> dict[str, Path]:
    """Figures and tables of a finished sweep; the sweep calls this at the end.

    figures/pareto.{pdf,png} (dev; the operating point starred when feasible and gap > bound
    shaded; gender-shuffled null band), tables/ablation.{md,tex} (test split), report.html
    (the interactive explorer, `write_explorer`; only with the [html] extra's plotly) and, when
    the run has `search` trials, figures/hypervolume.{pdf,png} over the manifest's objectives.
    The bounds are `constraint` (fractions) when given, else those of
    `analysis/operating_point.py` without flags (deploy.resolve_bounds: the sweep's
    `constraints`, else a 2-point gap bound), so the star is the point that CLI would deploy.
    """
    from ermgap_ray.deploy import resolve_bounds

    run = Path(run_dir)
    df, manifest = load_run(run)
    objectives = manifest.objectives if manifest is not None else list(DEFAULT_OBJECTIVES)
    utility, gap = report_metrics(manifest)
    bounds = resolve_bounds(run)
    if constraint is not None:
        constraints = [constraint] if isinstance(constraint, str) else list(constraint)
    else:
        constraints = bounds.constraints
    df = with_null_columns(df, "test", MAX_GAPS, run)  # once, for the figures and the table
    out: dict[str, Path] = {}
    op = select_operating_point(df, constraint=constraints, objective=bounds.objective)
    frame = pareto_frame(df, split="dev", gap=gap, utility=utility, run_dir=run)
    fig = plot_pareto(frame, operating_point=op, gap_bound=gap_bound(constraints, gap))
    out["pareto_pdf"], out["pareto_png"] = save_figure(fig, run / "figures" / "pareto")
    tables = run / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    frame = ablation_frame(df, split="test", gap=gap, run_dir=run)
    for key, fmt, suffix in (("ablation_md", "md", "md"), ("ablation_tex", "latex", "tex")):
        path = tables / f"ablation.{suffix}"
        path.write_text(render_ablation(frame, format=fmt, split="test", gap=gap))
        out[key] = path
    if importlib.util.find_spec("plotly") is not None:
        out["report_html"] = write_explorer(run, df)
    if (df["family"] == "search").any():
        hv = hypervolume_over_trials(df[df["family"] == "search"], objectives)
        name = manifest.name if manifest is not None else run.name
        fig = plot_hypervolume({name: hv})
        out["hypervolume_pdf"], out["hypervolume_png"] = save_figure(
            fig, run / "figures" / "hypervolume"
        )
    return out


def _pp(value: Any) -> float | None:
    value = json_scalar(value)
    return None if value is None else 100 * float(value)


def explorer_data(df: pd.DataFrame, run_dir: str | Path, ci: float = 0.95) -> dict[str, Any]:
    """What report.html draws and selects (report_html.render_report_html), JSON-ready, in pp.

    `points`: `pareto_frame` rows of both splits (`split`; `kind` config | trial), each with
    its family label, variant, knobs, `reference` flag, per-language utility and gap as
    [mean, lo, hi] (t-CI over seeds for a configuration; a trial's lo/hi are its bootstrap CI
    where logged, else None) and its split's `nulls`, axis titles and `utility_zoom`.
    `configs`: each configuration's means and CIs on both splits and `checked`, the dev gap end
    the bound is checked on (CI upper end, unclipped; the value with 1 seed).
    `selection`: `select_operating_point` on dev under a gap bound alone, as
    `analysis/operating_point.py --max-gap B` runs it (deploy.resolve_bounds' objective and gap
    metric). A configuration's feasibility only changes at its `checked` end, so it is solved
    once per distinct end `t` (fraction): a bound b selects the last `states` entry with
    t <= b, else `none`. `bound` (pp) is where the slider starts: the sweep's own gap
    constraint, else deploy's default. `ablation`: the test table's cells (`ablation_cells`)
    with numeric sort keys, and its note.
    """
    from ermgap_ray.deploy import DEFAULT_MAX_GAP, resolve_bounds

    run = Path(run_dir)
    manifest = read_manifest(run, missing_ok=True)
    utility, gap = report_metrics(manifest)
    final = final_rows(df)
    firsts = final.groupby("group_hash").first()
    refs = set(firsts.index[reference_mask(firsts)])
    variants = _variants(final)
    points: list[dict[str, Any]] = []
    splits: dict[str, dict[str, Any]] = {}
    for split in ("dev", "test"):
        frame = pareto_frame(df, split=split, gap=gap, utility=utility, ci=ci, run_dir=run)
        u_col, g_col = metric_column(df, utility, split), metric_column(df, gap, split)
        langs = _language_columns(df, split, utility, gap)
        lang_agg = aggregate_seeds(final, [c for pair in langs.values() for c in pair if c], ci=ci)
        lang_agg = lang_agg.set_index("group_hash")
        trials = final.set_index(final["trial_id"].astype(str))
        for row in frame[frame["kind"] != "null"].to_dict("records"):
            gh, is_trial = row["group_hash"], row["kind"] == "trial"
            src = trials.loc[row["trial_id"]] if is_trial else lang_agg.loc[gh]
            point = {k: json_scalar(v) for k, v in row.items() if k not in _METRIC_NAMES}
            point |= {
                "split": split,
                "n": int(row["n"]),
                "label": FAMILY_LABELS.get(row["family"], row["family"]),
                "variant": variants.get(gh, ""),
                "reference": gh in refs,
                "config": {k: json_scalar(firsts.at[gh, k]) for k in _HOVER_KNOBS if k in firsts},
                "languages": {
                    lang: {
                        name: _language_cell(src, col, is_trial) if col else None
                        for name, col in zip(("utility", "gap"), pair, strict=True)
                    }
                    for lang, pair in langs.items()
                },
            }
            if is_trial:
                point["seed"] = json_scalar(src.get("seed"))
                for name, col in (("utility", u_col), ("gap", g_col)):
                    point[f"{name}_lo"] = _pp(src.get(f"{col}_lo"))
                    point[f"{name}_hi"] = _pp(src.get(f"{col}_hi"))
            points.append(point)
        nulls = frame[frame["kind"] == "null"]
        zoom = utility_zoom(frame)
        splits[split] = {
            "x_title": _axis_label(g_col, "pp"),
            "y_title": _axis_label(u_col, "%"),
            "nulls": [
                {"panel": r.panel, "gap": float(r.gap), "gap_hi": float(r.gap_hi)}
                for r in nulls.itertuples()
            ],
            "y_range": None if zoom is None else [zoom[0], zoom[1]],
            "off_scale": []
            if zoom is None
            else [
                {"panel": r.panel, "utility": float(r.utility), "gap": float(r.gap)}
                for r in zoom[2].itertuples()
            ],
        }
    bounds = resolve_bounds(run)
    start = gap_bound(bounds.constraints, bounds.gap_metric)
    return {
        "title": manifest.name if manifest is not None else run.name,
        "run_dir": str(run.resolve()),
        "n_final": len(final),
        "panels": list(dict.fromkeys(p["panel"] for p in points)),
        "labels": {
            "utility": METRIC_LABELS.get(utility, utility),
            "gap": METRIC_LABELS.get(gap.removeprefix("max_gap_"), gap),
        },
        "styles": {
            "null": {"color": to_hex(NULL_COLOR), "alpha": NULL_ALPHA},
            "infeasible": {"color": to_hex(INFEASIBLE_COLOR), "alpha": INFEASIBLE_ALPHA},
            "front": {"color": to_hex(FRONT_COLOR)},
        },
        "splits": splits,
        "points": points,
        "configs": _explorer_configs(points, final, bounds.gap_metric, ci),
        "selection": {
            **_explorer_selection(final, bounds.objective, bounds.gap_metric, ci),
            "bound": DEFAULT_MAX_GAP if start is None else start,
            "source": bounds.source,
            "other_constraints": [
                c for c in bounds.constraints if gap_bound([c], bounds.gap_metric) is None
            ],
        },
        "ablation": _explorer_ablation(df, run, gap, ci),
    }


_HOVER_KNOBS = ("objective", *_KNOBS)
_METRIC_NAMES = ("gap_metric", "utility_metric", "n", "ci_front")  # per split, not per point


def _language_columns(
    df: pd.DataFrame, split: str, utility: str, gap: str
) -> dict[str, tuple[str | None, str | None]]:
    """Per language: the utility column and the per-language gap behind `max_gap_<kind>`."""
    kind = gap.removeprefix("max_gap_") if gap.startswith("max_gap_") else None
    out: dict[str, tuple[str | None, str | None]] = {}
    for lang in LANGUAGES:
        u, g = f"{split}/{utility}/{lang}", f"{split}/gap_{kind}/{lang}"
        pair = (u if u in df.columns else None, g if kind and g in df.columns else None)
        if any(pair):
            out[lang] = pair
    return out


def _language_cell(src: pd.Series, col: str, is_trial: bool) -> list[float | None]:
    """[mean, lo, hi] in pp; the t-interval clipped to [0, 100] as in `_config_rows`."""
    if is_trial:
        return [_pp(src.get(col)), None, None]
    mean, lo, hi = (_pp(src[f"{col}_{k}"]) for k in ("mean", "lo", "hi"))
    return [mean, *(None if v is None else min(100.0, max(0.0, v)) for v in (lo, hi))]


def _explorer_configs(
    points: list[dict[str, Any]], final: pd.DataFrame, gap_metric: str, ci: float
) -> dict[str, dict[str, Any]]:
    g_col = metric_column(final, gap_metric, "dev")
    checked = aggregate_seeds(final, [g_col], ci=ci).set_index("group_hash")[f"{g_col}_hi"]
    keys = ("utility", "utility_lo", "utility_hi", "gap", "gap_lo", "gap_hi")
    out: dict[str, dict[str, Any]] = {}
    for p in points:
        if p["kind"] != "config":
            continue
        c = out.setdefault(
            p["group_hash"],
            {k: p[k] for k in ("label", "variant", "family", "modality", "panel", "n", "reference")}
            | {"checked": _pp(checked.get(p["group_hash"]))},
        )
        c[p["split"]] = {k: p[k] for k in keys}
    return out


def _explorer_selection(
    final: pd.DataFrame, objective: str, gap_metric: str, ci: float
) -> dict[str, Any]:
    """select_operating_point at every distinct dev gap end of the trained configurations."""
    cands = final[~reference_mask(final)]
    g_col = metric_column(final, gap_metric, "dev")
    his = np.array([])
    if len(cands):
        his = aggregate_seeds(cands, [g_col], ci=ci)[f"{g_col}_hi"].dropna().to_numpy(float)
    ends = np.unique(his)

    def select(t: float) -> OperatingPoint:
        return select_operating_point(final, [f"{gap_metric}<={t!r}"], objective, ci=ci)

    def state(op: OperatingPoint, t: float) -> dict[str, Any]:
        return {
            "group_hash": op.group_hash,
            "n_ok": int((his <= t).sum()),
            "runners_up": [s["group_hash"] for s in op.runners_up] if op.feasible else [],
            "nearest": [s["group_hash"] for s in op.nearest],
        }

    low = float(np.nextafter(ends[0], -np.inf)) if len(ends) else 0.0
    none = select(low)
    return {
        "objective": metric_column(final, objective, "dev"),
        "gap_metric": g_col,
        "rule": seed_rule(ci),
        "n_candidates": none.n_candidates,
        "states": [{"t": float(t), **state(select(float(t)), float(t))} for t in ends],
        "none": state(none, low),
    }


def _explorer_ablation(df: pd.DataFrame, run: Path, gap: str, ci: float) -> dict[str, Any]:
    """The test ablation table's cells with what each column sorts by (its number, not text)."""
    frame = ablation_frame(df, split="test", gap=gap, ci=ci, run_dir=run)
    cells = ablation_cells(frame, "md", gap)
    compared = list(dict.fromkeys(("wf1", gap)))
    keys = [
        cells["Method"],
        frame["modality"],
        frame["n"],
        *(frame[m] for m in TABLE_METRICS),
        *(frame[f"{k}_{name}"] for name in compared for k in ("delta", "p")),
    ]
    if len(keys) != len(cells.columns):
        raise ValueError("ablation_cells' columns changed: update _explorer_ablation's keys")
    note = render_ablation(frame, "md", "test", gap, ci).split("\n\n", 1)[1].strip()
    rows = [
        {
            "reference": bool(frame["reference"].iloc[i]),
            "cells": [
                _table_cell(str(text), key.iloc[i])
                for text, key in zip(cells.iloc[i], keys, strict=True)
            ],
        }
        for i in range(len(cells))
    ]
    return {"columns": list(cells.columns), "rows": rows, "note": note}


def _table_cell(text: str, key: Any) -> dict[str, Any]:
    """A Markdown cell (`**best**` in bold) as text, a bold flag and its sort key."""
    bold = text.startswith("**") and text.endswith("**")
    return {"text": text[2:-2] if bold else text, "bold": bold, "sort": json_scalar(key)}


def write_explorer(
    run_dir: str | Path, df: pd.DataFrame | None = None, path: str | Path | None = None
) -> Path:
    """`path` (RUN_DIR/report.html): the self-contained trade-off explorer (plotly: [html]).

    `df` is the run's trials with null columns (`with_null_columns`), when already loaded.
    """
    from ermgap_ray.fs import atomic_write
    from ermgap_ray.report_html import render_report_html

    run = Path(run_dir)
    if df is None:
        df = with_null_columns(load_run(run)[0], "test", MAX_GAPS, run)
    path = Path(path) if path is not None else run / REPORT_HTML
    with atomic_write(path) as handle:
        handle.write(render_report_html(explorer_data(df, run)))
    return path
